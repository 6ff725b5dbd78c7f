"""CPU-scale backbone (space-to-depth, GroupNorm groups), the model grid, the simulated pool and domain randomisation."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from OrthoDiffusionLib.model.backbone import DiffusionUNet
from OrthoDiffusionLib.inference.preprocess import resample_to_model_grid
from OrthoDiffusionLib.simulate.randomize import SEQUENCES, randomize_contrast
from OrthoDiffusionLib.simulate.tissues import Tissue

CPU_SCALE = dict(patch_size=4, model_channels=16, channel_mult=(1, 2, 4, 8), attention_resolutions=(8,), norm_groups=8)


def test_space_to_depth_is_a_lossless_rearrangement():
    net = DiffusionUNet(**CPU_SCALE)
    x = torch.randn(2, 1, 16, 32, 48)
    y = net._space_to_depth(x)
    assert y.shape == (2, 16, 16, 8, 12)
    # channel (i, j) of the 4x4 patch holds pixel (4h + i, 4w + j)
    assert torch.equal(y[:, 1 * 4 + 2, :, 3, 5], x[:, 0, :, 4 * 3 + 1, 4 * 5 + 2])
    assert torch.equal(net._depth_to_space(y), x)


def test_cpu_scale_network_shapes_taps_and_config_round_trip():
    torch.manual_seed(0)
    net = DiffusionUNet(**CPU_SCALE).eval()
    x = torch.randn(1, 1, 16, 128, 128)
    with torch.no_grad():
        eps = net(x, torch.tensor([10]))
        taps = net.encode(x, 10, taps=("in_0", "in_4", "mid_0", "mid_2"))
    assert eps.shape == x.shape
    for name, t in taps.items():
        assert tuple(t.shape[2:]) == net.tap_shape(name, (16, 128, 128)), name
        assert t.shape[1] == net.tap_channels(name)
    assert tuple(taps["mid_0"].shape) == (1, 128, 2, 4, 4)
    again = DiffusionUNet(**net.config())
    assert again.state_dict().keys() == net.state_dict().keys()
    assert again.config() == net.config()
    with pytest.raises(ValueError, match="multiples"):
        net(torch.randn(1, 1, 16, 120, 128), 1)
    with pytest.raises(ValueError, match="GroupNorm"):
        DiffusionUNet(model_channels=12, channel_mult=(1, 2), norm_groups=8)


def test_authors_layout_is_unchanged_by_the_new_options():
    net = DiffusionUNet()
    assert net.patch_size == 1 and net.norm_groups == 32
    assert net.input_blocks[0][0].weight.shape == (64, 1, 3, 3, 3)
    assert sum(p.numel() for p in net.parameters()) == 34_524_545


def _image(size, spacing, origin=(0.0, 0.0, 0.0), value=None):
    arr = np.zeros(size[::-1], dtype=np.float32) if value is None else value
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    return img


def test_model_grid_keeps_the_centre_and_covers_the_series():
    img = _image((200, 180, 60), (0.7, 0.7, 1.5), origin=(-10.0, 5.0, 3.0))
    out = resample_to_model_grid(img, slice_mm=4.0, inplane_mm=1.2, size=128)
    assert out.GetSize() == (128, 128, round(60 * 1.5 / 4.0))
    assert out.GetSpacing() == pytest.approx((1.2, 1.2, 4.0))

    def centre(im):
        n = np.array(im.GetSize(), dtype=float)
        return np.array(im.TransformContinuousIndexToPhysicalPoint(tuple((n - 1) / 2)))

    np.testing.assert_allclose(centre(out), centre(img), atol=1e-6)


def test_model_grid_averages_thin_slices_like_a_thick_slice():
    # a 1.5 mm-thick bright sheet in a thin-slice series: on a 4 mm grid it becomes a partial-volume voxel, not
    # a full-intensity slice or nothing (aliasing)
    arr = np.zeros((60, 32, 32), dtype=np.float32)
    arr[30] = 1.0
    out = sitk.GetArrayFromImage(resample_to_model_grid(_image((32, 32, 60), (1.2, 1.2, 1.5), value=arr), 4.0, 1.2,
                                                        32, "linear"))
    peak = out[:, 16, 16].max()
    assert 0.1 < peak < 0.6
    labels = sitk.GetArrayFromImage(resample_to_model_grid(sitk.Cast(_image((32, 32, 60), (1.2, 1.2, 1.5),
                                                                            value=arr), sitk.sitkUInt8),
                                                           4.0, 1.2, 32, "nearest"))
    assert set(np.unique(labels)) <= {0, 1}


def _knee_tissue() -> np.ndarray:
    t = np.full((16, 64, 64), int(Tissue.FAT), dtype=np.uint8)
    t[:, 10:30, 10:50] = int(Tissue.FEMUR)
    t[:, 30:33, 10:50] = int(Tissue.FEMORAL_CARTILAGE)
    t[:, 33:36, 10:50] = int(Tissue.FLUID)
    t[:, 36:56, 10:50] = int(Tissue.TIBIA)
    t[:, 0:4] = int(Tissue.AIR)
    return t


def test_randomised_contrast_spans_the_sequences_and_is_reproducible():
    t = _knee_tissue()
    a = randomize_contrast(t, np.random.default_rng(3))
    b = randomize_contrast(t, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert a.shape == t.shape and a.dtype == np.float32 and np.isfinite(a).all()

    def marrow_vs_fluid(seq):
        img = np.mean([randomize_contrast(t, np.random.default_rng(s), sequence=seq, p_random=0.0)
                       for s in range(6)], axis=0)
        return img[:, 18, 30].mean(), img[:, 34, 30].mean()

    marrow, fluid = marrow_vs_fluid("t1")
    assert marrow > fluid + 0.3  # T1: fatty marrow bright, fluid dark
    marrow, fluid = marrow_vs_fluid("dess")
    assert fluid > marrow + 0.3  # DESS: marrow suppressed, fluid bright
    assert set(SEQUENCES) == {"pd", "pd_fs", "t1", "t2", "dess"}


def test_pool_windows_are_deterministic_normalised_and_never_read_labels(tmp_path):
    from OrthoDiffusionLib.simulate.pool import write_pool
    from OrthoDiffusionLib.training.pretrain.ddpm import PoolWindows

    manifest = write_pool(tmp_path / "pool", 2, seed=5)
    from OrthoDiffusionLib.simulate.pool import read_pool

    complete = read_pool(manifest)
    manifest.rename(tmp_path / "pool.csv.bak")  # a pool still being written has no pool.csv yet
    assert read_pool(tmp_path / "pool") == complete
    (tmp_path / "pool.csv.bak").rename(manifest)
    with np.load(tmp_path / "pool" / "E00000.npz") as z:
        assert set(z.files) == {f"{p}_{k}" for p in ("sagittal", "coronal", "axial") for k in ("image", "tissue")}
        assert z["sagittal_image"].shape[1:] == (128, 128)
    ds = PoolWindows(manifest, slices=16, seed=1, virtual_epochs=3)
    assert len(ds) == 2 * 3 * 3
    x, y = ds[7], ds[7]
    assert x.shape == (1, 16, 128, 128)
    assert torch.equal(x, y)
    assert float(x.min()) == pytest.approx(-1.0) and float(x.max()) == pytest.approx(1.0)
    assert not torch.equal(ds[7], ds[7 + 6])  # the same series, another draw
    cropped = PoolWindows(manifest, slices=16, seed=1, virtual_epochs=3, crop=64)
    c = cropped[7]
    assert c.shape == (1, 16, 64, 64) and torch.equal(c, cropped[7])
    assert float(c.min()) == pytest.approx(-1.0) and float(c.max()) == pytest.approx(1.0)
    # a crop keeps the pool's pixels: the window is a 64 x 64 block of the stored image, not a resized image
    from OrthoDiffusionLib.training.pretrain.ddpm import normalize_window

    plain = PoolWindows(manifest, slices=16, seed=1, virtual_epochs=3, crop=64, p_randomized=0.0)
    path, plane = plain.series[1]
    with np.load(path) as z:
        image = z[f"{plane}_image"].astype(np.float32)
    got = plain[1][0].numpy()
    rng = np.random.default_rng(np.random.SeedSequence([1, 5501, 1]))  # the draw of item 1 (see PoolWindows)
    start = int(rng.integers(0, image.shape[0] - 16 + 1))
    y, x = (int(rng.integers(0, 128 - 64 + 1)) for _ in range(2))
    np.testing.assert_allclose(got, normalize_window(image[start:start + 16, y:y + 64, x:x + 64], 16), atol=1e-6)

    from OrthoDiffusionLib.io import read_series
    from OrthoDiffusionLib.simulate.pool import write_pool_cohort

    cohort = write_pool_cohort(manifest, tmp_path / "cohort", splits=(1, 1, 0))
    rows = cohort.read_text().splitlines()
    assert rows[0].endswith("tissue_path") and len(rows) == 1 + 2 * 3
    for plane in ("sagittal", "coronal", "axial"):
        series = read_series(tmp_path / "cohort" / "P00001" / f"{plane}.nii.gz")
        assert series.plane == plane
        assert series.image.GetSpacing() == pytest.approx((1.2, 1.2, 4.0))

    from OrthoDiffusionLib.training.segmentation.data import SegVolumes, read_seg_cases

    cases = read_seg_cases(cohort, "sagittal")
    assert all(c.tissue_path for c in cases)
    grid = {"slice_mm": 4.0, "inplane_mm": 1.2}
    plain, randomised = SegVolumes(cases, 16, 128, grid=grid), SegVolumes(cases, 16, 128, grid=grid, randomize=1.0)
    (x0, y0), (x1, y1) = plain[0], randomised[0]
    assert torch.equal(y0, y1) and x0.shape == x1.shape == (1, 16, 128, 128)
    assert not torch.allclose(x0, x1, atol=0.1)
    assert float(x1.min()) == pytest.approx(-1.0) and float(x1.max()) == pytest.approx(1.0)


def test_pretraining_continues_from_a_float16_backbone_in_a_new_run_folder(tmp_path):
    from OrthoDiffusionLib.model.checkpoints import load_backbone_state
    from OrthoDiffusionLib.training.pretrain.ddpm import InMemoryVolumes, PretrainConfig, pretrain

    rng = np.random.default_rng(0)
    data = InMemoryVolumes([rng.uniform(-1, 1, (16, 32, 32)).astype(np.float32) for _ in range(4)])
    common = dict(plane="shared", batch_size=2, width=16, channel_mult=(1, 2), attention_resolutions=(2,),
                  patch_size=2, norm_groups=8, size=32, slices=16, ckpt_every=100, log_every=1, device="cpu",
                  ema_start=0, ema_every=1)
    first = PretrainConfig(out=str(tmp_path / "a"), steps=3, **common)
    pretrain(first, data)
    half = tmp_path / "a" / "backbone_shared.fp16.safetensors"
    from OrthoDiffusionLib.training.pretrain.ddpm import backbone_from_checkpoint

    kept = backbone_from_checkpoint(tmp_path / "a", tmp_path / "kept.fp16.safetensors")
    assert load_backbone_state(kept)[0].keys() == load_backbone_state(half)[0].keys()
    assert load_backbone_state(kept)[1]["provenance"]["trained_steps"] == 3
    state, meta = load_backbone_state(half)
    assert all(v.dtype == torch.float16 for v in state.values())
    assert meta["provenance"]["trained_steps"] == 3
    second = PretrainConfig(out=str(tmp_path / "b"), steps=5, **common)
    summary = pretrain(second, data, init_from=half)
    assert summary["step"] == 5
    steps = [int(line.split(",")[0]) for line in (tmp_path / "b" / "log.csv").read_text().splitlines()[1:]]
    assert steps == [4, 5]
    wrong = PretrainConfig(out=str(tmp_path / "c"), steps=5, **{**common, "width": 32})
    with pytest.raises(Exception, match="init-from"):
        pretrain(wrong, data, init_from=half)


def test_segmentation_head_reaches_full_resolution_on_a_space_to_depth_backbone():
    from OrthoDiffusionLib.model.seg_head import build_seg_head

    net = DiffusionUNet(**CPU_SCALE).eval()
    channels = {t: net.tap_channels(t) for t in net.tap_names()}
    head = build_seg_head("skip", num_classes=12, bottleneck_tap="mid_2", tap_channels=channels,
                          skip_taps=(("in_5", 1), ("in_3", 2), ("in_1", 3)), decoder_channels=(32, 16, 16, 16, 16),
                          strides=((2, 2, 2),) * 3 + ((1, 2, 2),) * 2)
    x = torch.randn(1, 1, 16, 64, 64)
    with torch.no_grad():
        logits = head(net.encode(x, 50, taps=head.required_taps))
    assert logits.shape == (1, 12, 16, 64, 64)
    with pytest.raises(ValueError, match="one per upsampling stage"):
        build_seg_head("skip", tap_channels=channels, skip_taps=(), decoder_channels=(32, 16),
                       strides=((2, 2, 2),) * 3)


def test_the_image_path_gives_the_full_resolution_stages_the_input_and_starts_as_identity():
    """On the space-to-depth backbone the shallowest tap is 4x coarser in-plane than the input; image_stages join
    the input itself (the ``input`` pseudo-tap) at the two full-resolution stages. Grown from a head without it,
    the zero-initialised fusion gives the same logits, and once trained the input changes them."""
    from OrthoDiffusionLib.model.backbone import INPUT_TAP
    from OrthoDiffusionLib.model.seg_head import build_seg_head

    net = DiffusionUNet(**CPU_SCALE).eval()
    kwargs = dict(num_classes=12, bottleneck_tap="mid_2", tap_channels={t: net.tap_channels(t) for t in net.tap_names()},
                  skip_taps=(("in_5", 1), ("in_3", 2), ("in_1", 3)), decoder_channels=(32, 16, 16, 16, 16),
                  strides=((2, 2, 2),) * 3 + ((1, 2, 2),) * 2)
    plain = build_seg_head("skip", **kwargs)
    head = build_seg_head("skip", image_stages=(4, 5), image_channels=8, **kwargs)
    assert head.required_taps == (*plain.required_taps, INPUT_TAP) and INPUT_TAP not in net.tap_names()
    missing, unexpected = head.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("image_") for k in missing)
    x = torch.randn(1, 1, 16, 64, 64)
    taps = net.encode(x, 50, taps=head.required_taps)
    assert torch.equal(taps[INPUT_TAP], x) and set(net.encode(x, 50, taps=(INPUT_TAP,))) == {INPUT_TAP}
    with torch.no_grad():
        assert torch.equal(head(taps), plain(taps))
        for fuse in head.image_fuse.values():
            torch.nn.init.normal_(fuse[-1].weight, std=0.1)
        changed = head(taps)
        taps2 = dict(taps, **{INPUT_TAP: x.flip(-1)})      # only the input differs
        assert changed.shape == (1, 12, 16, 64, 64) and not torch.allclose(head(taps2), changed)
    with pytest.raises(ValueError, match="image_stages"):
        build_seg_head("skip", image_stages=(6,), **kwargs)
    with pytest.raises(ValueError, match="skip head"):
        build_seg_head("bottleneck", image_stages=(3,))


def test_a_thin_slice_3d_series_is_shown_on_the_model_grid(shared_data):
    """The real 80-slice DESS (1.5 mm slices, 0.31 mm pixels) preprocessed on the 4 mm / 1.2 mm grid: the 16
    central slices span 64 mm of the knee, the pixels 1.2 mm, and results map back onto the DICOM grid."""
    from io_helpers import load_dess

    from OrthoDiffusionLib.inference.preprocess import preprocess_series

    dess = load_dess(shared_data)
    pp = preprocess_series(dess, slices=16, size=128, slice_mm=4.0, inplane_mm=1.2)
    assert pp.volume.shape == (16, 128, 128)
    assert pp.reference.GetSpacing() == pytest.approx((1.2, 1.2, 4.0))
    assert pp.volume.min() == pytest.approx(-1.0) and pp.volume.max() == pytest.approx(1.0)
    whole = preprocess_series(dess, slices=None, size=128, slice_mm=4.0, inplane_mm=1.2)
    assert whole.volume.shape == (round(80 * 1.5 / 4.0), 128, 128)
    back = pp.to_original(np.ones((16, 128, 128), np.uint8))
    assert back.GetSize() == dess.image.GetSize()
    covered = sitk.GetArrayFromImage(back).any(axis=(1, 2)).sum()
    assert abs(covered * 1.5 - 64.0) <= 4.0  # 16 slices x 4 mm of the knee, on 1.5 mm DICOM slices


def test_whole_series_windows_cover_every_slice_and_blend_to_probabilities():
    from OrthoDiffusionLib.inference.windows import segment_series_in_windows

    seen = []

    def network(slabs):
        seen.append(slabs.clone())
        p1 = (slabs > 0).float() * 0.8 + 0.1
        return torch.cat([1 - p1, p1], dim=1)

    volume = torch.zeros(37, 8, 8)
    volume[:, :, 4:] = 5.0  # right half bright on every slice
    probs = segment_series_in_windows(volume, network, window=16, overlap=0.5)
    assert probs.shape == (2, 37, 8, 8)
    torch.testing.assert_close(probs.sum(0), torch.ones(37, 8, 8))
    assert (probs[1, :, :, 4:] > 0.85).all() and (probs[1, :, :, :4] < 0.15).all()
    assert all(s.shape[2] == 16 and float(s.min()) == -1.0 and float(s.max()) == 1.0 for s in seen)
    short = segment_series_in_windows(volume[:5], network)
    assert short.shape == (2, 5, 8, 8)


def test_linear_probe_scores_informative_features_high_and_noise_at_chance():
    from OrthoDiffusionLib.training.evaluation.probe_curve import probe_aurocs

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=(400, 2))
    informative = labels[:, :1] * 1.5 + rng.normal(size=(400, 5))
    aucs = probe_aurocs(informative, labels, n_train=300)
    assert aucs[0] > 0.8 and 0.35 < aucs[1] < 0.65


def test_a_model_with_a_physical_grid_segments_the_whole_series(tmp_path):
    """Segmentation heads of grid models cover every slice of the series (overlapping windows on the grid), not
    only the 16 central slices; the labelmap lies on the series' own geometry."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from bundle_helpers import make_tiny_bundle, tiny_exam

    from OrthoDiffusionLib.inference.predictor import Predictor

    grid = {"slice_mm": 0.5, "inplane_mm": 1.25}  # the 20-slice 1 mm tiny series becomes 40 grid slices
    bundle = make_tiny_bundle(tmp_path / "grid.odbundle", diagnosis=False, segmentation_planes=("sagittal",),
                              seg_grid=grid)
    exam = tiny_exam(planes=("sagittal",))
    result = Predictor(bundle, device="cpu").predict(exam, diagnosis=False)
    seg = result.segmentations["sagittal"]
    assert seg.GetSize() == exam.sagittal.image.GetSize()
    assert seg.GetDirection() == pytest.approx(exam.sagittal.image.GetDirection())
    labelled_slices = sitk.GetArrayFromImage(seg).any(axis=(1, 2)).sum()
    assert labelled_slices == 20  # 16 central grid slices would reach only 8 of the 20


def test_bench_train_times_the_cpu_scale_network_and_names_the_cpu():
    from OrthoDiffusionLib.bench.train import bench_train

    r = bench_train(("pretrain",), size=32, slices=16, batch=1, steps=2, warmup=1, network="cpu",
                    ours_precision="fp32")
    assert r["network_config"]["patch_size"] == 4 and r["device"]
    ref, ours = r["rows"]
    assert ref["losses"] == pytest.approx(ours["losses"], rel=1e-4)  # fp32 both: channels-last changes no number


def test_learning_speed_curve_trains_each_network_kind(tmp_path):
    """The recipe-choosing experiment runs for the pretrained backbone, the same network from scratch and the CNN
    reference, and reports one finite training loss and a test AUROC per epoch."""
    import math

    from OrthoDiffusionLib.model.backbone import CPU_SCALE_CONFIG, DiffusionUNet
    from OrthoDiffusionLib.model.checkpoints import save_backbone
    from OrthoDiffusionLib.simulate.pool import read_pool, write_pool
    from training.evaluation.learning_speed import learning_curve

    manifest = write_pool(tmp_path / "pool", 6, seed=11, prevalence=0.5)
    rows = read_pool(manifest)
    label = next(k for k in ("joint_effusion", "acl_injury", "medial_meniscus_tear", "pcl_injury")
                 if len({rows[i][k] for i in (3, 4, 5)}) == 2)
    backbone = tmp_path / "b.safetensors"
    save_backbone(DiffusionUNet(**CPU_SCALE_CONFIG), backbone, "shared")
    for network in ("pretrained", "random", "cnn"):
        curve = learning_curve(manifest, label, [0, 1, 2], [3, 4, 5], network=network, backbone=str(backbone),
                               epochs=2)
        assert [r[0] for r in curve] == [1, 2]
        assert all(math.isfinite(r[1]) and 0.0 <= r[2] <= 1.0 for r in curve)
