"""The researcher's path through training: make-manifest, configs, named options (protocol, size, labels),
pretraining's data selection / summary / Ctrl-C, training curves, small-split warnings, import-weights on wrong files.

The whole path end to end (simulate -> manifest -> pretrain -> fine-tune -> export -> predict) is
``test_train_your_own_guide.py``; these are its parts, small and fast.
"""
from __future__ import annotations

import csv
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from OrthoDiffusionLib.model.backbone import DiffusionUNet
from OrthoDiffusionLib.model.checkpoints import load_backbone, save_backbone
from OrthoDiffusionLib.cli import main
from OrthoDiffusionLib.errors import InputError
from OrthoDiffusionLib.io import write_dicom_series

SAGITTAL = (0, 0, 1, 1, 0, 0, 0, -1, 0)
CORONAL = (1, 0, 0, 0, 0, 1, 0, -1, 0)
AXIAL = (1, 0, 0, 0, 1, 0, 0, 0, 1)
TINY_ARGS = ["--width", "32", "--channel-mult", "1,2", "--attention-resolutions", "", "--size", "32",
             "--slices", "16"]
KNEE = ["acl_injury", "pcl_injury", "medial_meniscus_tear", "lateral_meniscus_tear", "mcl_injury", "lcl_injury",
        "patellar_dislocation", "joint_effusion"]


def image(direction, seed, shape=(20, 40, 40)):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(shape).cumsum(1).cumsum(2)
    v = ((v - v.min()) / (v.max() - v.min()) * 900 + 50).astype(np.float32)
    img = sitk.GetImageFromArray(v)
    img.SetDirection(direction)
    img.SetSpacing((0.5, 0.5, 3.0))
    return img


def labelmap_like(img):
    lab = sitk.GetImageFromArray((sitk.GetArrayFromImage(img) > 500).astype(np.uint8) * 4)
    lab.CopyInformation(img)
    return lab


# ---------------------------------------------------------------------------------------------- make-manifest
def exams_folder(tmp_path, n=6):
    """n patients: DICOM sagittal/coronal/axial folders, a sagittal label map, and a NIfTI copy for P1."""
    root = tmp_path / "exams"
    for i in range(1, n + 1):
        pid = f"P{i}"
        for plane, direction in (("sagittal", SAGITTAL), ("coronal", CORONAL), ("axial", AXIAL)):
            img = image(direction, 10 * i + len(plane))
            write_dicom_series(img, root / pid / f"{plane}_1", series_description=f"PD {plane[:3].upper()}",
                               uid_seed=f"{pid}-{plane}")
            if plane == "sagittal":
                sitk.WriteImage(labelmap_like(img), str(root / pid / f"{pid}_sagittal_1_seg.nii.gz"))
                if i == 1:
                    sitk.WriteImage(img, str(root / pid / "sagittal_copy.nii.gz"))
    return root


def label_sheet(path, rows, columns=("patient_id", "acl_injury", "joint_effusion", "age", "center")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows(rows)
    return path


def test_make_manifest_builds_checks_and_reports(tmp_path, capsys):
    root = exams_folder(tmp_path)
    # a 7th patient with two series in ONE folder, an 8th listed in the sheet without images
    for n, direction in enumerate((SAGITTAL, CORONAL)):
        write_dicom_series(image(direction, 99 + n), root / "P7" / "mixed", series_number=n + 1,
                           file_prefix=f"S{n}_", uid_seed=f"P7-{n}")
    rows = [[f"P{i}", i % 2, int(i < 4), 30 + i, "a" if i < 4 else "b"] for i in range(1, 9)]
    sheet = label_sheet(tmp_path / "labels.csv", rows)
    out = tmp_path / "m" / "manifest.csv"
    assert main(["make-manifest", "--images", str(root), "--labels", str(sheet), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    with open(out, newline="") as f:
        data = list(csv.DictReader(f))
    header = list(data[0])
    assert header == ["patient_id", "plane", "series_path", "split", "acl_injury", "joint_effusion", "seg_path",
                      "age", "center"]
    assert len(data) == 18 and {r["patient_id"] for r in data} == {f"P{i}" for i in range(1, 7)}
    assert {r["plane"] for r in data} == {"sagittal", "coronal", "axial"}
    sag = [r for r in data if r["plane"] == "sagittal"]
    assert all(r["seg_path"].endswith("_sagittal_1_seg.nii.gz") for r in sag)
    assert all(not r["seg_path"] for r in data if r["plane"] != "sagittal")
    assert not any("copy" in r["series_path"] for r in data)  # the NIfTI copy of a DICOM series is left out
    assert all(not os.path.isabs(r["series_path"]) for r in data)
    splits = {r["patient_id"]: r["split"] for r in data}
    assert list(splits.values()).count("train") == 4 and "val" in splits.values() and "test" in splits.values()
    assert "patients: 6 with images and labels" in printed and "sagittal 6, coronal 6, axial 6" in printed
    assert "P7: " in printed and "holds 2 series" in printed
    assert "P8" in printed and "no usable images" in printed
    assert "NIfTI/NRRD image file(s) left out as copies" in printed
    assert "acl_injury" in printed and "validation split has" in printed
    # the same seed gives the same manifest
    again = tmp_path / "m" / "again.csv"
    assert main(["make-manifest", "--images", str(root), "--labels", str(sheet), "--out", str(again)]) == 0
    assert again.read_text() == out.read_text()


def test_make_manifest_uses_a_given_split_and_refuses_bad_labels(tmp_path, capsys):
    root = exams_folder(tmp_path, n=3)
    sheet = label_sheet(tmp_path / "labels.csv", [["P1", 1, "train"], ["P2", 0, "val"], ["P3", 1, "test"]],
                        columns=("patient_id", "acl_injury", "split"))
    out = tmp_path / "manifest.csv"
    assert main(["make-manifest", "--images", str(root), "--labels", str(sheet), "--out", str(out)]) == 0
    with open(out, newline="") as f:
        assert {r["patient_id"]: r["split"] for r in csv.DictReader(f)} == {"P1": "train", "P2": "val",
                                                                             "P3": "test"}
    bad = label_sheet(tmp_path / "bad.csv", [["P1", 2], ["P2", 0]], columns=("patient_id", "acl_injury"))
    capsys.readouterr()
    assert main(["make-manifest", "--images", str(root), "--labels", str(bad), "--out",
                 str(tmp_path / "no.csv")]) == 2
    err = capsys.readouterr().err
    assert "bad.csv: line 2: acl_injury='2' is not 0 or 1" in err and err.count("\n") == 1
    assert not (tmp_path / "no.csv").exists()


def test_assign_splits_is_seeded_patient_level_and_keeps_small_splits():
    from OrthoDiffusionLib.training.manifest_builder import assign_splits

    ids = [f"p{i}" for i in range(6)]
    a = assign_splits(ids, (0.7, 0.1, 0.2), seed=3)
    assert a == assign_splits(list(reversed(ids)), (0.7, 0.1, 0.2), seed=3)
    assert sorted(a.values()) == ["test", "train", "train", "train", "train", "val"]
    assert assign_splits(ids, (0.7, 0.1, 0.2), seed=4) != a
    with pytest.raises(InputError, match="three fractions"):
        assign_splits(ids, (0.5, 0.1, 0.1))


# ---------------------------------------------------------------------------------------------- configs
def test_configs_lists_every_shipped_configuration_and_resolves_one(capsys):
    assert main(["configs"]) == 0
    listing = capsys.readouterr().out
    for name in ("knee-ft-opt", "knee-lp-opt", "knee-demo-ft", "knee-ablation", "ankle-ft-opt", "shoulder-ft-opt",
                 "seg-ft", "seg-demo"):
        assert sum(line.startswith(name + " ") for line in listing.splitlines()) == 1, name
    assert main(["configs", "knee-ft-opt", "--protocol", "linear-probe", "--size", "64",
                 "--set", "stage1.epochs=3"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["protocol"] == "linear_probe" and cfg["stage1"]["noise"] == "fixed-draw-cached"
    assert cfg["stage1"]["backbone_lr_scale"] is None and cfg["stage1"]["epochs"] == 3
    assert cfg["preprocessing"]["size"] == 64 and cfg["num_labels"] == 8
    assert main(["configs", "knee-lp-opt", "--protocol", "fine-tune"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["protocol"] == "finetune" and cfg["stage1"]["backbone_lr_scale"] == 0.05
    assert cfg["stage1"]["epochs"] == 5 and cfg["stage1"]["noise"] == "redraw-every-step"
    assert main(["configs", "seg-ft"]) == 0
    assert json.loads(capsys.readouterr().out)["eval"]["val_every"] == 1  # validation every epoch by default
    assert main(["configs", "seg-ft", "--protocol", "fine-tune"]) == 2


def test_protocol_already_followed_changes_nothing():
    from OrthoDiffusionLib.training.named_options import protocol_overrides

    assert protocol_overrides("fine-tune", "finetune") == []
    assert protocol_overrides(None, "finetune") == []
    assert 'protocol="linear_probe"' in protocol_overrides("linear-probe", "finetune")
    with pytest.raises(InputError, match="--protocol must be one of"):
        protocol_overrides("zero-shot", "finetune")


def test_label_set_comes_from_the_configuration():
    from OrthoDiffusionLib.training.diagnosis.train import resolve_config

    cfg = resolve_config("knee-demo-ft", ['labels=["acl_injury", {"key": "bone_bruise", "name": "bone bruise"}]'])
    assert cfg["labels"] == ["acl_injury", "bone_bruise"] and cfg["num_labels"] == 2
    assert cfg["label_names"] == {"acl_injury": "ACL injury", "bone_bruise": "bone bruise"}
    assert resolve_config("knee-ft-opt")["num_labels"] == 8
    with pytest.raises(InputError, match="repeated label key"):
        resolve_config("knee-demo-ft", ['labels=["a", "a"]'])


def test_a_manifest_without_patellar_dislocation_trains_its_own_labels(tmp_path):
    from OrthoDiffusionLib.training.diagnosis.data import read_diagnosis_manifest
    from OrthoDiffusionLib.training.named_options import label_overrides, manifest_label_columns
    from OrthoDiffusionLib.training.diagnosis.train import resolve_config

    series = tmp_path / "s.nii.gz"
    sitk.WriteImage(image(SAGITTAL, 1), str(series))
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patient_id", "plane", "series_path", "split", "acl_injury", "bone_bruise", "seg_path", "age",
                    "center"])
        w.writerow(["p1", "sagittal", "s.nii.gz", "train", 1, 0, "", 30, "a"])
        w.writerow(["p2", "sagittal", "s.nii.gz", "val", 0, 1, "", 40, "a"])
    assert manifest_label_columns(manifest) == ["acl_injury", "bone_bruise"]

    cfg = resolve_config("knee-demo-ft", label_overrides(from_manifest=manifest))
    assert cfg["labels"] == ["acl_injury", "bone_bruise"]
    assert read_diagnosis_manifest(manifest, cfg["labels"]).label_keys == ["acl_injury", "bone_bruise"]
    with pytest.raises(InputError, match="missing label column.*patellar_dislocation.*--labels-from-manifest"):
        read_diagnosis_manifest(manifest, resolve_config("knee-demo-ft")["labels"])


def test_export_names_the_labels_of_a_custom_set(tmp_path):
    sys.path.insert(0, os.path.dirname(__file__))
    from bundle_helpers import make_diagnosis_run

    from OrthoDiffusionLib.bundle.export import export_bundle
    from OrthoDiffusionLib.bundle.format import load_bundle
    from OrthoDiffusionLib.model.heads import DiagnosisHead
    from safetensors.torch import save_file

    run = make_diagnosis_run(tmp_path / "run")
    info = json.loads((run / "run.json").read_text())
    head = DiagnosisHead(2, channels=DiffusionUNet(model_channels=32).tap_channels("mid_0"), fusion="concat",
                         with_mpae=True)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(run / "diagnosis_head.safetensors"))
    info.update(labels=["acl_injury", "bone_bruise"], label_names={"acl_injury": "ACL injury",
                                                                    "bone_bruise": "bone bruise"},
                head=head.config())
    (run / "run.json").write_text(json.dumps(info))
    bundle = load_bundle(export_bundle(run, [], "two", tmp_path / "two.odbundle"))
    assert bundle.meta["labels"] == [{"key": "acl_injury", "name": "ACL injury"},
                                     {"key": "bone_bruise", "name": "bone bruise"}]


# ---------------------------------------------------------------------------------------------- sizes
def test_input_size_comes_from_the_backbone_unless_given(tmp_path):
    from OrthoDiffusionLib.training.named_options import backbone_preprocessing, size_overrides

    net = DiffusionUNet(model_channels=32, channel_mult=(1, 2), attention_resolutions=())
    a, b, old = tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "old.safetensors"
    save_backbone(net, a, "shared", preprocessing={"slices": 16, "size": 64})
    save_backbone(net, b, "shared", preprocessing={"slices": 16, "size": 128})
    save_backbone(net, old, "shared")
    assert backbone_preprocessing(a) == {"slices": 16, "size": 64} and backbone_preprocessing(old) is None
    sets, note = size_overrides(None, None, [], [a, old])
    assert sets == ["preprocessing.size=64", "preprocessing.slices=16"] and "a.safetensors" in note
    assert size_overrides(96, None, [], [a])[0] == ["preprocessing.size=96", "preprocessing.slices=16"]
    assert size_overrides(None, None, ["preprocessing.size=32"], [a])[0] == ["preprocessing.slices=16"]
    assert size_overrides(None, None, [], [old]) == ([], None)
    with pytest.raises(InputError, match="different input sizes"):
        size_overrides(None, None, [], [a, b])
    _, meta = load_backbone(a)  # the loader still reads such files
    assert meta["plane"] == "shared"


# ---------------------------------------------------------------------------------------------- pretraining data
def test_label_maps_and_copies_are_never_pretraining_images(tmp_path):
    from OrthoDiffusionLib.training.pretrain.data import (is_labelmap_name, looks_like_labelmap,
                                                          select_folder_series, select_manifest_rows)

    for name in ("P1_sagittal_1_seg.nii.gz", "x_label.nrrd", "x-seg.mha", "a.seg.nrrd", "knee_mask.nii"):
        assert is_labelmap_name(name), name
    for name in ("P1_sagittal_1.nii.gz", "segment.nii.gz", "sagittal_1"):
        assert not is_labelmap_name(name), name
    assert looks_like_labelmap(np.array([[0, 1], [4, 11]], dtype=np.float32))
    assert not looks_like_labelmap(np.linspace(0, 1000, 500).reshape(5, 100))

    data = tmp_path / "data"
    img = image(SAGITTAL, 1)
    write_dicom_series(img, data / "P1" / "sag", uid_seed="x")
    sitk.WriteImage(img, str(data / "P1" / "sag.nii.gz"))  # the same image again
    sitk.WriteImage(labelmap_like(img), str(data / "P1" / "sag_seg.nii.gz"))
    sitk.WriteImage(labelmap_like(image(SAGITTAL, 2)), str(data / "P1" / "unnamed.nii.gz"))  # a label map by content
    sitk.WriteImage(image(SAGITTAL, 3), str(data / "P2.nii.gz"))
    sel = select_folder_series(data, "sagittal")
    assert len(sel.series) == 2 and len(sel.skipped_labelmaps) == 2 and len(sel.skipped_duplicates) == 1
    assert "2 series of 2 patients" in sel.summary() and "left out 2 label maps and 1 duplicate" in sel.summary()

    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patient_id", "plane", "series_path", "split", "seg_path"])
        w.writerow(["P1", "sagittal", "data/P1/sag", "train", "data/P1/sag_seg.nii.gz"])
        w.writerow(["P1", "sagittal", "data/P1/sag_seg.nii.gz", "train", ""])
        w.writerow(["P2", "sagittal", "data/P2.nii.gz", "val", ""])
        w.writerow(["P3", "sagittal", "data/P3.nii.gz", "test", ""])
    sel = select_manifest_rows(manifest, "sagittal")
    assert [os.path.basename(p) for p in sel.paths] == ["sag"] and len(sel.skipped_labelmaps) == 1
    assert "1 series of 1 patient (splits: train 1; planes: sagittal 1)" in sel.summary()
    sel = select_manifest_rows(manifest, "sagittal", ("train", "val"))
    assert sel.splits == ["train", "val"]
    from OrthoDiffusionLib.training.pretrain.ddpm import ImageSeriesVolumes

    with pytest.raises(InputError, match="unnamed.nii.gz: this (looks like|is) a label map"):  # listed by mistake
        ImageSeriesVolumes([data / "P1" / "unnamed.nii.gz"], slices=16, size=32)[0]


def test_pretrain_prints_its_plan_and_ctrl_c_stops_with_a_backbone(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    rows = []
    for i, split in enumerate(("train", "train", "val", "test")):
        sitk.WriteImage(image(SAGITTAL, 20 + i), str(folder / f"s{i}.nii.gz"))
        rows.append([f"p{i}", "sagittal", f"s/s{i}.nii.gz", split])
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([["patient_id", "plane", "series_path", "split"], *rows])
    run = tmp_path / "run"
    args = [sys.executable, "-m", "OrthoDiffusionLib", "pretrain", "--manifest", str(manifest), "--plane",
            "sagittal", "--out", str(run), "--steps", "100000", "--batch-size", "1", "--log-every", "1",
            "--val-every", "1", "--device", "cpu", *TINY_ARGS]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if (run / "val_log.csv").is_file() and len((run / "val_log.csv").read_text().splitlines()) >= 2:
                proc.send_signal(signal.SIGINT)
                break
            time.sleep(0.1)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "pretrain sagittal: 2 series of 2 patients (splits: train 2; planes: sagittal 2)" in out
    assert "steps to go of 100000" in out and "validation loss on 1 val series every 1 steps" in out
    assert "stopped by Ctrl-C" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_by_interrupt"] is True and 1 <= summary["step"] < 100000
    _, meta = load_backbone(run / "backbone_sagittal.safetensors")
    assert meta["provenance"]["stopped_by_interrupt"] is True
    assert json.loads(meta["preprocessing"]) == {"slices": 16, "size": 32}
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == summary["step"]
    assert (run / "curves.png").is_file()


def test_pretrain_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 21500)", "(default: 10)", "(default: 256)", "(default: train)", "(default: 64)"):
        assert default in text, default


# ---------------------------------------------------------------------------------------------- watching
def test_training_curves_from_a_staged_log(tmp_path):
    from OrthoDiffusionLib.training.curves import plot_run_curves

    log = tmp_path / "log.csv"
    log.write_text("stage,epoch,train_loss,lr,seconds,val_macro_auroc\n"
                   "stage1.sagittal,1,0.7,0.1,1,\nstage1.sagittal,2,0.6,0.1,1,0.55\n"
                   "stage2,1,0.65,0.1,1,nan\nstage2,2,0.5,0.1,1,0.61\n")
    png = plot_run_curves(log, title="t")
    assert png == tmp_path / "curves.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_run_curves(tmp_path / "missing.csv") is None


def test_small_validation_split_warns(capsys):
    from OrthoDiffusionLib.training.split_checks import small_split_message, warn_if_small

    y = np.array([[1, 0], [0, 0], [1, 0]])
    message = small_split_message(y, ["a", "b"], "calibration")
    assert "3 patient(s)" in message and "a 2+/1-" in message and "b 0+/3-" in message
    assert small_split_message(np.tile([[1], [0]], (10, 1)), ["a"], "x") is None
    assert warn_if_small(y, ["a", "b"], "calibration", who="train-diagnosis")
    assert "train-diagnosis: warning: the validation split has 3 patient(s)" in capsys.readouterr().err


def test_stage_bars_show_loss_and_validation(capsys):
    from OrthoDiffusionLib.training.progress_bars import StageBars

    bars = StageBars()
    bars.progress("stage1.sagittal", 0.5)
    bars.step("stage1.sagittal", 1, 0.69)
    bars.epoch({"stage": "stage1.sagittal", "epoch": 1, "train_loss": 0.69, "val_macro_auroc": 0.75})
    bars.progress("stage2", 1.0)
    bars.close()
    err = capsys.readouterr().err
    assert "loss=0.6900" in err and "val_macro_auroc=0.7500" in err and "‰" not in err


# ---------------------------------------------------------------------------------------------- import-weights
def test_import_weights_refuses_wrong_files_in_one_short_line(tmp_path, capsys):
    net = DiffusionUNet(model_channels=32, channel_mult=(1, 2), attention_resolutions=())
    ours = tmp_path / "backbone.safetensors"
    save_backbone(net, ours, "sagittal")
    text = tmp_path / "notes.txt"
    text.write_text("train_diffusion_pose_1/model.pt\n")
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"a": [1, 2, 3]}))
    small = tmp_path / "small.pt"
    torch.save({"step": 3, "net": {"w": torch.zeros(2)}}, small)
    expected = {ours: "already an OrthoDiffusion backbone file", text: "a text file",
                plain: "not a checkpoint written by torch.save", small: "no 'ema' weights in the checkpoint"}
    for path, words in expected.items():
        assert main(["import-weights", "--sagittal", str(path), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1 and len(err) < 400, err
    assert not (tmp_path / "out").exists()


def test_import_weights_help_says_where_and_what(capsys):
    with pytest.raises(SystemExit):
        main(["import-weights", "--help"])
    text = capsys.readouterr().out
    for words in ("lanstat0123/orthodiffusion", "train_diffusion_pose_0/model.pt", "--axial",
                  "knee-ft-opt", "256", "backbones.json", "inferred"):
        assert words in text, words
