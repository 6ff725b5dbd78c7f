"""train-segmentation: a tiny run end to end (width-32 backbone, 16 x 32 x 32), the run folder contract, reloading,
exact resume, the coronal class mask from the label table, and a bad manifest."""
from __future__ import annotations

import csv
import os
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from OrthoDiffusionLib import labels
from io_helpers import write_rows_csv
from OrthoDiffusionLib.model.backbone import DiffusionUNet
from OrthoDiffusionLib.model.checkpoints import load_backbone_state, save_backbone, tensors_sha256
from OrthoDiffusionLib.cli import main
from OrthoDiffusionLib.errors import InputError, MissingPathError
from OrthoDiffusionLib.training.segmentation.data import SegVolumes, nested_patient_subset, read_seg_cases
from OrthoDiffusionLib.training.segmentation.losses import class_mask_for_plane
from OrthoDiffusionLib.training.segmentation.model import DiffusionSegmenter, predict_probabilities
from OrthoDiffusionLib.training.segmentation.trainer import evaluate, latest_checkpoint
from OrthoDiffusionLib.training.segmentation.keep import keep_segmentation_run
from OrthoDiffusionLib.training.segmentation.train import (build_head, head_config, load_seg_config,
                                                           load_segmentation_run, train_segmentation)

# direction matrices (ITK, row-major; column j = direction of array axis j) giving the canonical orientations
DIRECTIONS = {
    "sagittal": (0, 0, 1, 1, 0, 0, 0, -1, 0),    # columns -> P, rows -> I, slices -> L   ("PIL")
    "coronal": (1, 0, 0, 0, 0, 1, 0, -1, 0),     # columns -> L, rows -> I, slices -> P   ("LIP")
}
TINY = ["preprocessing.size=32", "epochs=2", "batch_size=2", "head.decoder_channels=[32,16,16,8]",
        "eval.noise_draws=1", "augment.p_affine=0.5"]


def _case(rng: np.random.Generator, plane: str, shift: int):
    """A 20 x 40 x 40 series with box-shaped structures (one per label value) and its labelmap."""
    lab = np.zeros((20, 40, 40), np.uint8)
    for v in range(1, 12):
        r, c = 3 + 3 * ((v - 1) % 4) * 1 + shift, 3 + 8 * ((v - 1) // 4) + shift
        lab[4:16, r * 1:r + 3, c:c + 6] = v
    img = (100 + 40 * lab.astype(np.float32) + rng.normal(0, 5, lab.shape)).astype(np.float32)
    out = []
    for arr, dtype in ((img, sitk.sitkFloat32), (lab, sitk.sitkUInt8)):
        im = sitk.Cast(sitk.GetImageFromArray(arr), dtype)
        im.SetSpacing((0.5, 0.5, 3.0))
        im.SetDirection(DIRECTIONS[plane])
        out.append(im)
    return out


def _cohort(root: Path, planes=("sagittal",), n: int = 8) -> Path:
    rng = np.random.default_rng(0)
    splits = ["train"] * (n - 4) + ["val"] * 2 + ["test"] * 2
    rows = []
    for i in range(n):
        pid = f"P{i:03d}"
        (root / pid).mkdir(parents=True)
        for plane in planes:
            img, lab = _case(rng, plane, shift=i % 3)
            sitk.WriteImage(img, str(root / pid / f"{plane}.nii.gz"))
            sitk.WriteImage(lab, str(root / pid / f"{plane}_seg.nii.gz"))
            rows.append({"patient_id": pid, "plane": plane, "series_path": f"{pid}/{plane}.nii.gz",
                         "split": splits[i], "seg_path": f"{pid}/{plane}_seg.nii.gz"})
    manifest = root / "manifest.csv"
    return write_rows_csv(manifest, rows)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return _cohort(tmp_path_factory.mktemp("seg-cohort"), planes=("sagittal", "coronal"))


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory) -> Path:
    torch.manual_seed(3)
    net = DiffusionUNet(model_channels=32)
    path = tmp_path_factory.mktemp("bb") / "backbone.safetensors"
    save_backbone(net, path, "sagittal")
    return path


@pytest.fixture(scope="module")
def finished_run(cohort, backbone_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "sag"
    train_segmentation(cohort, "sagittal", backbone_file, out, config="seg-demo", overrides=TINY, device="cpu",
                       command="test")
    return out


def test_run_folder_matches_the_contract(finished_run, backbone_file):
    run = json.loads((finished_run / "run.json").read_text())
    assert run["format"] == "orthodiffusion.segmentation-run" and run["version"] == 1
    assert (run["plane"], run["timestep"], run["block"]) == ("sagittal", 50, "mid_2")
    assert run["preprocessing"] == {"slices": 16, "size": 32}
    assert run["head"]["name"] == "skip" and run["head"]["bottleneck_tap"] == "mid_2"
    assert run["head"]["tap_channels"]["mid_2"] == 128 and run["head"]["decoder_channels"] == [32, 16, 16, 8]
    assert run["num_classes"] == 12
    assert run["structures"] == [s.key for s in labels.knee_structures("sagittal")] and len(run["structures"]) == 11
    assert run["config"]["epochs"] == 2 and run["config"]["lr"] == 1e-3 and run["config"]["backbone_lr_scale"] == 0.05
    prov = run["provenance"]
    assert {"command", "manifest", "manifest_sha256", "started", "finished", "backbone_sha256",
            "synthetic_data_only"} <= set(prov)
    assert prov["backbone_sha256"]["sagittal"] == run["config"]["backbone_sha256"]
    for split, n in (("val", 2), ("test", 2)):
        m = run["metrics"][split]
        assert m["n_cases"] == n and set(run["structures"]) | {"mean"} == set(m["dice"]) == set(m["hd95"])
        assert 0.0 <= m["dice"]["mean"]["mean"] <= 1.0
        with open(finished_run / m["cases_file"]) as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == n and "dice_femur" in rows[0] and "hd95_pcl" in rows[0]
    # the fine-tuned backbone differs from the input one in the trained encoder blocks; the decoder and the
    # full-resolution blocks that seg-demo freezes (frozen_input_blocks 3) are unchanged
    tuned, meta = load_backbone_state(finished_run / run["backbone"])
    base, _ = load_backbone_state(backbone_file)
    assert meta["plane"] == "sagittal" and run["config"]["frozen_input_blocks"] == 3
    assert not torch.equal(tuned["input_blocks.3.0.in_layers.2.weight"], base["input_blocks.3.0.in_layers.2.weight"])
    assert not torch.equal(tuned["middle_block.2.out_layers.3.weight"], base["middle_block.2.out_layers.3.weight"])
    assert torch.equal(tuned["input_blocks.1.0.in_layers.2.weight"], base["input_blocks.1.0.in_layers.2.weight"])
    assert torch.equal(tuned["out.2.weight"], base["out.2.weight"])
    log = (finished_run / "log.csv").read_text().splitlines()
    assert len(log) == 3 and log[0].startswith("epoch,loss")


def test_reloaded_run_reproduces_its_test_metrics(finished_run):
    model, run = load_segmentation_run(finished_run)
    assert isinstance(model, DiffusionSegmenter)
    cases = [c for c in read_seg_cases(run["provenance"]["manifest"], "sagittal") if c.split == "test"]
    data = SegVolumes(cases, 16, 32)
    res = evaluate(model, data, "sagittal", torch.device("cpu"), 1, run["config"]["eval"]["seed"])
    for key in run["structures"]:
        assert res["summary"]["dice"][key]["mean"] == pytest.approx(run["metrics"]["test"]["dice"][key]["mean"],
                                                                    abs=1e-12, nan_ok=True)


def test_resume_gives_the_same_weights_and_metrics(cohort, backbone_file, finished_run, tmp_path):
    out = tmp_path / "resumed"
    assert train_segmentation(cohort, "sagittal", backbone_file, out, config="seg-demo", overrides=TINY,
                              device="cpu", stop_after_epoch=1) is None
    assert latest_checkpoint(out).name == "epoch_001" and not (out / "run.json").exists()
    with pytest.raises(Exception, match="--resume"):
        train_segmentation(cohort, "sagittal", backbone_file, out, config="seg-demo", overrides=TINY, device="cpu")
    with pytest.raises(Exception, match="different settings"):
        train_segmentation(cohort, "sagittal", backbone_file, out, config="seg-demo", overrides=TINY + ["lr=0.01"],
                           device="cpu", resume=True)
    run = train_segmentation(cohort, "sagittal", backbone_file, out, config="seg-demo", overrides=TINY,
                             device="cpu", resume=True)
    ref = json.loads((finished_run / "run.json").read_text())
    for name in ("seg_head.safetensors", "backbone.safetensors"):
        a, _ = _state(out / name)
        b, _ = _state(finished_run / name)
        assert tensors_sha256(a) == tensors_sha256(b), name
    assert run["metrics"]["test"]["dice"] == ref["metrics"]["test"]["dice"]
    assert (out / "log.csv").read_text().splitlines()[1:] != []


def test_init_from_starts_at_the_finished_runs_weights(cohort, finished_run, tmp_path, capsys):
    """--init-from continues a finished run on a new schedule: with a negligible learning rate the weights stay
    those of the run (so both head and backbone were loaded, not a fresh head); a run of another plane or head is
    refused with the folder named."""
    out = tmp_path / "continued"
    run = train_segmentation(cohort, "sagittal", None, out, config="seg-demo", overrides=TINY + ["lr=1e-12"],
                             device="cpu", init_from=finished_run)
    fresh = build_head(run["head"]).state_dict()
    for name in ("seg_head.safetensors", "backbone.safetensors"):
        a, _ = _state(out / name)
        b, _ = _state(finished_run / name)
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in b), name
    a, _ = _state(out / "seg_head.safetensors")
    assert max(float((a[k] - fresh[k]).abs().max()) for k in fresh) > 1e-3
    ref = json.loads((finished_run / "run.json").read_text())
    assert run["metrics"]["test"]["dice"]["mean"] == pytest.approx(ref["metrics"]["test"]["dice"]["mean"], abs=1e-9)
    assert run["config"]["init_head_sha256"]
    # a head grown with the image path (image_stages) starts from the run's head: the same test Dice
    grown = train_segmentation(cohort, "sagittal", None, tmp_path / "grown", config="seg-demo",
                               overrides=TINY + ["lr=1e-12", "head.image_stages=[3,4]", "head.image_channels=8"],
                               device="cpu", init_from=finished_run)
    assert grown["head"]["image_stages"] == [3, 4] and "input" in build_head(grown["head"]).required_taps
    assert grown["metrics"]["test"]["dice"]["mean"] == pytest.approx(ref["metrics"]["test"]["dice"]["mean"], abs=1e-6)
    # a run kept as float16 files continues the same way, from weights equal to float16 precision
    kept = keep_segmentation_run(finished_run, tmp_path / "kept")
    assert {p.name for p in kept.iterdir()} == {"run.json", "log.csv", "backbone.safetensors", "seg_head.safetensors"}
    assert (kept / "backbone.safetensors").stat().st_size < 0.6 * (finished_run / "backbone.safetensors").stat().st_size
    train_segmentation(cohort, "sagittal", None, tmp_path / "from-kept", config="seg-demo",
                       overrides=TINY + ["lr=1e-12"], device="cpu", init_from=kept)
    a, _ = _state(tmp_path / "from-kept" / "seg_head.safetensors")
    b, _ = _state(finished_run / "seg_head.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=2e-3, rtol=2e-3) for k in b)
    with pytest.raises(InputError, match="coronal") as e:
        train_segmentation(cohort, "coronal", None, tmp_path / "c", config="seg-demo", overrides=TINY,
                           device="cpu", init_from=finished_run)
    assert str(finished_run) in str(e.value)
    with pytest.raises(InputError, match="head differs"):
        train_segmentation(cohort, "sagittal", None, tmp_path / "d", config="seg-demo",
                           overrides=TINY[:3] + ["head.decoder_channels=[16,16,16,8]"], device="cpu",
                           init_from=finished_run)
    assert main(["train-segmentation", "--manifest", str(cohort), "--plane", "sagittal", "--out", str(tmp_path / "e"),
                 "--init-from", str(tmp_path / "nothing"), "--config", "seg-demo"]) == 2
    assert "no run.json" in capsys.readouterr().err
    # the command: a second copy through the CLI equals the first; a folder holding anything is refused
    assert main(["keep-segmentation-run", "--run", str(finished_run), "--out", str(tmp_path / "kept2")]) == 0
    # (the same tensors and metadata; safetensors writes its metadata in no fixed order, so not the same bytes)
    for name in ("seg_head.safetensors", "backbone.safetensors"):
        first, second = _tensors_and_metadata(kept / name), _tensors_and_metadata(tmp_path / "kept2" / name)
        assert first[1] == second[1] and first[0].keys() == second[0].keys()
        assert all(torch.equal(first[0][k], second[0][k]) and first[0][k].dtype == torch.float16 for k in first[0])
    assert main(["keep-segmentation-run", "--run", str(finished_run), "--out", str(kept)]) == 2
    assert "not an empty folder" in capsys.readouterr().err and not (tmp_path / "kept.partial").exists()


def _tensors_and_metadata(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _state(path):
    from safetensors.torch import load_file

    return load_file(str(path)), None


def test_random_init_trains_the_backbones_architecture_from_fresh_weights(cohort, backbone_file, tmp_path, capsys):
    """--random-init, the no-pretraining ablation: the backbone file gives the architecture, the config's seed the
    weights; the run records it. With --init-from it is refused."""
    run = train_segmentation(cohort, "sagittal", backbone_file, tmp_path / "r", config="seg-demo",
                             overrides=TINY + ["lr=1e-12"], device="cpu", random_init=True)
    assert run["config"]["backbone_init"] == "random"
    torch.manual_seed(0)  # seg-demo's seed
    fresh = DiffusionUNet(model_channels=32).state_dict()
    trained, _ = _state(tmp_path / "r" / "backbone.safetensors")
    pretrained, _ = _state(backbone_file)
    key = "input_blocks.0.0.weight"
    assert torch.allclose(trained[key], fresh[key], atol=1e-6) and not torch.allclose(trained[key], pretrained[key])
    assert main(["train-segmentation", "--manifest", str(cohort), "--plane", "sagittal", "--out", str(tmp_path / "x"),
                 "--init-from", str(tmp_path / "r"), "--random-init"]) == 2
    assert "--random-init" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_coronal_class_mask_comes_from_the_label_table(backbone_file):
    excluded = {s.value for s in labels.knee_structures() if "coronal" not in s.planes}
    assert {labels.structure_by_key()[k].value for k in ("patella", "patellar_cartilage")} == excluded
    mask = class_mask_for_plane("coronal")
    assert [i for i in range(12) if not mask[i]] == sorted(excluded)
    net, _ = _net(backbone_file)
    head = build_head(head_config("skip", net, "mid_2", {"decoder_channels": [32, 16, 16, 8]}))
    model = DiffusionSegmenter(net, head, 50)
    x = torch.rand(1, 1, 16, 32, 32) * 2 - 1
    probs = predict_probabilities(model, x, "coronal", torch.Generator().manual_seed(0))
    assert probs.shape == (1, 12, 16, 32, 32)
    assert float(probs[0, sorted(excluded)].abs().max()) == 0.0
    assert torch.allclose(probs.sum(1), torch.ones(1, 16, 32, 32), atol=1e-5)


def _net(path):
    from OrthoDiffusionLib.model.checkpoints import load_backbone

    return load_backbone(path)


def test_labels_are_resampled_with_the_image(cohort):
    case = [c for c in read_seg_cases(cohort, "coronal") if c.split == "train"][0]
    image, lab, spacing = SegVolumes([case], 16, 32).arrays(0)
    assert image.shape == lab.shape == (16, 32, 32) and lab.dtype == np.uint8
    assert set(np.unique(lab).tolist()) == set(range(12))  # nearest: only table values, every structure kept
    assert spacing == pytest.approx([3.0, 40 * 0.5 / 32, 40 * 0.5 / 32])
    # bright voxels are the labelled ones (image intensity grows with the label value)
    assert image[lab == 11].mean() > image[lab == 1].mean() > image[lab == 0].mean()


def test_nested_patient_subsets():
    ids = [f"P{i}" for i in range(30)]
    small, large = nested_patient_subset(ids, 5, seed=1), nested_patient_subset(ids, 12, seed=1)
    assert len(small) == 5 and set(small) < set(large)
    with pytest.raises(InputError):
        nested_patient_subset(ids, 31)


def test_missing_labelmap_is_one_clear_error(cohort, backbone_file, tmp_path, capsys):
    bad = tmp_path / "manifest.csv"
    text = cohort.read_text().replace("P001/sagittal_seg.nii.gz", "P001/missing_seg.nii.gz")
    bad.write_text(text)
    for name in ("P001", "P000"):
        (tmp_path / name).symlink_to(cohort.parent / name)
    with pytest.raises(MissingPathError, match="missing_seg.nii.gz.*row 3"):
        read_seg_cases(bad, "sagittal")
    out = tmp_path / "run"
    code = main(["train-segmentation", "--manifest", str(bad), "--plane", "sagittal", "--backbone",
                 str(backbone_file), "--out", str(out), "--config", "seg-demo", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "missing_seg.nii.gz" in err[0] and "does not exist" in err[0]
    assert not out.exists()


def test_config_overrides_and_errors(tmp_path):
    cfg = load_seg_config("seg-ft", ["planes.sagittal.timestep=100", "head.name=skip", "augment.enabled=false"])
    assert cfg["planes"]["sagittal"] == {"timestep": 100, "block": "mid_2"} and cfg["head"]["name"] == "skip"
    assert cfg["epochs"] == 30 and cfg["preprocessing"] == {"slices": 16, "size": 256}
    demo = load_seg_config("seg-demo")
    assert demo["preprocessing"]["size"] == 64 and "Deviations" in demo["description"]
    with pytest.raises(InputError, match="block"):
        load_seg_config("seg-ft", ["planes.coronal.block=mid_7"])
    with pytest.raises(InputError, match="not a segmentation configuration"):
        load_seg_config("knee-ft-opt")
    with pytest.raises(MissingPathError):
        load_seg_config(tmp_path / "none.json")


def test_baseline_trains_on_the_same_cases_and_reloads(cohort, tmp_path):
    pytest.importorskip("monai")
    from OrthoDiffusionLib.training.segmentation.train import train_seg_baseline

    out = tmp_path / "unet"
    run = train_seg_baseline(cohort, "sagittal", "unet", out, config="seg-demo", device="cpu",
                             overrides=["preprocessing.size=32", "baseline.epochs=1",
                                        "baseline.unet3d.channels=[8,8,16,16,32]"])
    assert run["format"] == "orthodiffusion.segmentation-baseline-run"
    assert run["model"] == {"name": "unet3d", "channels": [8, 8, 16, 16, 32]}
    assert run["data"] == {"train_cases": 4, "val_cases": 2, "test_cases": 2, "train_patients": 4}
    model, _ = load_segmentation_run(out)
    cases = [c for c in read_seg_cases(cohort, "sagittal") if c.split == "test"]
    res = evaluate(model, SegVolumes(cases, 16, 32), "sagittal", torch.device("cpu"))
    assert res["summary"]["dice"]["mean"]["mean"] == pytest.approx(run["metrics"]["test"]["dice"]["mean"]["mean"])


def test_evaluate_segmentation_tables_and_fusion(cohort, backbone_file, finished_run, tmp_path, capsys):
    cor = tmp_path / "cor"
    train_segmentation(cohort, "coronal", backbone_file, cor, config="seg-demo", device="cpu",
                       overrides=[o if o != "epochs=2" else "epochs=1" for o in TINY])
    out = tmp_path / "eval"
    assert main(["evaluate-segmentation", "--runs", str(finished_run), str(cor), "--out", str(out)]) == 0
    md = (out / "table.md").read_text()
    assert "### Sagittal: Dice (%)" in md and "### Coronal: HD95 (mm)" in md
    coronal_part = md.split("### Coronal")[1]
    assert "Patella" not in coronal_part and "Femur" in coronal_part and "OrthoDiffusion FT" in coronal_part
    with open(out / "table.csv") as f:
        rows = list(csv.DictReader(f))
    run = json.loads((finished_run / "run.json").read_text())
    femur = [r for r in rows if r["plane"] == "sagittal" and r["metric"] == "dice" and r["structure"] == "femur"]
    assert float(femur[0]["mean"]) == pytest.approx(run["metrics"]["test"]["dice"]["femur"]["mean"], rel=1e-5)
    with open(out / "fusion.csv") as f:
        fusion = list(csv.DictReader(f))
    assert {r["method"] for r in fusion} == {"sagittal only", "coronal only", "fused"}
    assert {r["grid"] for r in fusion} == {"sagittal", "coronal"}
    assert all(int(r["n"]) <= 2 for r in fusion)
    example = list(out.glob("fusion_example_*.nii.gz"))
    assert len(example) == 1
    fused = sitk.GetArrayFromImage(sitk.ReadImage(str(example[0])))
    assert fused.max() <= 11 and fused.ndim == 3
    assert "fused" in capsys.readouterr().out


def _with_tissue_maps(cohort: Path, root: Path) -> Path:
    """The cohort's manifest with a tissue_path column: each labelmap plus two context tissues (fluid, fat) in
    boxes the structures leave free."""
    from OrthoDiffusionLib.simulate.tissues import Tissue

    rows = list(csv.DictReader(open(cohort, newline="")))
    for r in rows:
        seg = sitk.ReadImage(str(cohort.parent / r["seg_path"]))
        arr = sitk.GetArrayFromImage(seg)
        arr[4:16, 30:36, 2:10] = Tissue.FLUID.value
        arr[4:16, 30:36, 30:38] = Tissue.FAT.value
        tissue = sitk.GetImageFromArray(arr)
        tissue.CopyInformation(seg)
        name = r["seg_path"].replace("_seg.nii.gz", "_tissue.nii.gz")
        sitk.WriteImage(tissue, str(cohort.parent / name))
        r["tissue_path"] = os.path.relpath(cohort.parent / name, root)
        r["series_path"] = os.path.relpath(cohort.parent / r["series_path"], root)
        r["seg_path"] = os.path.relpath(cohort.parent / r["seg_path"], root)
    manifest = root / "manifest_tissue.csv"
    return write_rows_csv(manifest, rows)


def test_context_tissues_grow_the_head_and_stay_background_in_labelmaps(cohort, finished_run, tmp_path):
    """context_tissues: the labels are the tissue maps (24 classes); --init-from a structures-only run grows its
    output layer, keeping the structures' weights; the context classes are allowed on every plane and exported as
    background; a manifest without tissue maps is refused."""
    from OrthoDiffusionLib.bundle.export import _class_values
    from OrthoDiffusionLib.simulate.tissues import Tissue
    from OrthoDiffusionLib.training.segmentation.losses import context_tissue_names, num_seg_classes

    manifest = _with_tissue_maps(cohort, tmp_path)
    names = context_tissue_names()
    assert num_seg_classes(True) == 24 and len(names) == 12 and names[4] == "fluid"
    assert bool(class_mask_for_plane("coronal", 24)[12:].all()) and not bool(class_mask_for_plane("coronal", 24)[3])
    cases = read_seg_cases(manifest, "sagittal")
    labels_of = SegVolumes(cases, 16, 32, context_tissues=True)[0][1]
    assert Tissue.FLUID.value in labels_of.unique().tolist()
    out = tmp_path / "context"
    run = train_segmentation(manifest, "sagittal", None, out, config="seg-demo",
                             overrides=TINY + ["lr=1e-12", "context_tissues=true"], device="cpu",
                             init_from=finished_run)
    assert run["num_classes"] == 24 and run["context_tissues"] == names and run["head"]["num_classes"] == 24
    grown, _ = _state(out / "seg_head.safetensors")
    base, _ = _state(finished_run / "seg_head.safetensors")
    assert torch.allclose(grown["classifier.weight"][:12], base["classifier.weight"], atol=1e-6)
    assert grown["classifier.weight"].shape[0] == 24
    assert _class_values(24, run["structures"], out / "run.json", 12) == list(range(12)) + [0] * 12
    with pytest.raises(InputError, match="tissue map"):
        train_segmentation(cohort, "sagittal", None, tmp_path / "no-maps", config="seg-demo",
                           overrides=TINY + ["context_tissues=true"], device="cpu", init_from=finished_run)
    # a baseline learns the same 24 classes (the label-efficiency comparison trains every arm alike)
    pytest.importorskip("monai")
    from OrthoDiffusionLib.training.segmentation.train import train_seg_baseline

    base_run = train_seg_baseline(manifest, "sagittal", "unet", tmp_path / "unet", config="seg-demo", device="cpu",
                                  overrides=["preprocessing.size=32", "baseline.epochs=1", "context_tissues=true",
                                             "baseline.unet3d.channels=[8,8,16,16,32]"])
    model, _ = load_segmentation_run(tmp_path / "unet")
    assert base_run["num_classes"] == 24 and model(torch.zeros(1, 1, 16, 32, 32)).shape[1] == 24


def test_paired_comparison_of_runs_on_their_common_cases(tmp_path):
    """paired.md: the first run of a plane against each other one, per-case mean Dice, paired permutation p."""
    from OrthoDiffusionLib.training.evaluation.segmentation import paired_comparisons

    def run_folder(name, dice_by_case):
        folder = tmp_path / name
        folder.mkdir()
        write_rows_csv(folder / "metrics_test.csv", [
            {"case_id": c, "patient_id": c, "dice_femur": d, "dice_acl": d - 0.2 if d > 0.2 else ""}
            for c, d in dice_by_case.items()])
        return name, folder, {"plane": "sagittal", "structures": ["femur", "acl"]}

    rng = np.random.default_rng(0)
    base = {f"c{i:02d}": float(v) for i, v in enumerate(rng.uniform(0.5, 0.9, 20))}
    first = run_folder("first", {c: d + 0.05 for c, d in base.items()})
    worse = run_folder("worse", base)
    same = run_folder("same", {c: d + 0.05 for c, d in base.items() if c != "c00"})  # one case fewer
    rows, md = paired_comparisons([first, worse, same], n_perm=2000)
    by = {r["other"]: r for r in rows}
    assert by["worse"]["difference"] == pytest.approx(0.05) and by["worse"]["first_better"] == 20
    assert by["worse"]["p_value"] < 0.001 and by["same"]["p_value"] == 1.0 and by["same"]["cases"] == 19
    assert "### Sagittal: first against" in md and "| worse | 20 |" in md
    elsewhere = run_folder("elsewhere", {"other": 0.7})
    with pytest.raises(InputError, match="no test case in common"):
        paired_comparisons([first, elsewhere])


def test_replicate_arms_are_compared_run_by_run_and_across_runs(tmp_path, capsys):
    """--replicates 3: paired.md pairs the i-th runs; replicates.md tests the arms over their three runs."""
    def run_folder(name, shift):
        folder = tmp_path / name
        folder.mkdir()
        write_rows_csv(folder / "metrics_test.csv", [
            {"case_id": f"c{i}", "patient_id": f"c{i}", "dice_femur": 0.5 + 0.01 * i + shift} for i in range(10)])
        (folder / "run.json").write_text(json.dumps({"plane": "sagittal", "structures": ["femur"]}))
        return folder

    shifts = {"pre": [0.10, 0.06, 0.08], "rand": [0.0, 0.01, -0.01]}
    folders = [run_folder(f"{arm}-s{i}", s) for arm, arm_shifts in shifts.items() for i, s in enumerate(arm_shifts)]
    import OrthoDiffusionLib.training.segmentation.train as seg_train

    def read(folder):
        return json.loads((Path(folder) / "run.json").read_text())

    original, seg_train.read_segmentation_run = seg_train.read_segmentation_run, read
    try:
        rc = main(["evaluate-segmentation", "--runs", *map(str, folders), "--replicates", "3",
                   "--names", "pretrained", "random", "--out", str(tmp_path / "eval")])
        assert rc == 0
        rows = list(csv.DictReader(open(tmp_path / "eval" / "replicates.csv")))
        assert len(rows) == 1 and rows[0]["other"] == "random" and rows[0]["first_better"] == "3"
        assert float(rows[0]["difference"]) == pytest.approx(np.mean([0.10, 0.05, 0.09]))
        assert float(rows[0]["p_sign_flip"]) == pytest.approx(0.25) and float(rows[0]["p_t_test"]) < 0.05
        paired = list(csv.DictReader(open(tmp_path / "eval" / "paired.csv")))
        assert [(r["replicate"], r["first"], r["other"]) for r in paired] == [
            (str(i + 1), f"pretrained [pre-s{i}]", f"random [rand-s{i}]") for i in range(3)]
        assert "| pretrained | 64.5 | 60.5 | 62.5 | 62.5 | 2.0 |" in capsys.readouterr().out
        assert main(["evaluate-segmentation", "--runs", *map(str, folders[:5]), "--replicates", "3",
                     "--out", str(tmp_path / "bad")]) == 2
        assert "does not divide the 5 runs" in capsys.readouterr().err and not (tmp_path / "bad").exists()
        assert main(["evaluate-segmentation", "--runs", *map(str, folders), "--replicates", "3",
                     "--names", "a", "b", "c", "--out", str(tmp_path / "bad")]) == 2
        assert "3 names for 2 arms" in capsys.readouterr().err
    finally:
        seg_train.read_segmentation_run = original
