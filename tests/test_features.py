import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from cxr_impressions.data.images import load_image
from cxr_impressions.errors import InputError
from cxr_impressions.features.backbones import (
    bf16_support,
    build_backbone,
    get_spec,
    resolve_precision,
    resolve_weights,
)
from cxr_impressions.features.extraction import extract_features, partial_dir
from cxr_impressions.features.store import FeatureStore
from cxr_impressions.settings.features import FeaturesParams

from .helpers import IUXRAY, REPO, SAMPLE, XCEPTION_WEIGHTS, needs_shared, write_params

SMALL = FeaturesParams(weights="none", image_size=71, batch_size=4, grid=False)


def sample_images(n: int) -> tuple[list[str], list[str]]:
    files = sorted((SAMPLE / "images").iterdir())[:n]
    return [f.name.removesuffix(".dcm.jpg") for f in files], [str(f) for f in files]


def read_all(path: Path) -> tuple[dict, dict]:
    with h5py.File(path, "r") as h5:
        data = {k: h5[k][...] for k in h5}
        attrs = dict(h5.attrs)
    return data, attrs


@pytest.fixture(scope="module")
def small_features(tmp_path_factory) -> tuple[Path, dict, list[str]]:
    ids, paths = sample_images(12)
    out = tmp_path_factory.mktemp("f") / "xception.h5"
    stats = extract_features(ids, paths, out, FeaturesParams(**{**SMALL.__dict__, "grid": True}),
                             None, progress=False)
    return out, stats, ids


def test_features_read_back_by_id(small_features) -> None:
    out, stats, ids = small_features
    assert stats["images"] == 12 and stats["skipped"] == 0 and stats["feature_dim"] == 2048
    assert not partial_dir(out).exists()
    with FeatureStore(out) as store:
        assert list(store.ids) == ids and store.dim == 2048
        picked = store.pooled([ids[5], ids[1], ids[5]])
        assert picked.shape == (3, 2048) and picked.dtype == np.float32
        np.testing.assert_array_equal(picked[0], picked[2])
        assert not np.array_equal(picked[0], picked[1])
        grid = store.grid([ids[1]])
        assert grid.dtype == np.float16 and grid.shape == (1, 3, 3, 2048)
        # The pooled vector is the mean of the grid (up to float16 storage).
        np.testing.assert_allclose(grid[0].astype(np.float32).mean(axis=(0, 1)), picked[1],
                                   rtol=2e-2, atol=2e-3)
        with pytest.raises(InputError, match="no features for image nope"):
            store.pooled(["nope"])
        images = pd.DataFrame({"uid": [1, 1], "image_id": ids[:2],
                               "view": ["frontal", "lateral"]})
        views = store.report_views(images, 1)
        np.testing.assert_array_equal(views["lateral"], store.pooled([ids[1]])[0])


def test_hdf5_attributes(small_features) -> None:
    out, _, _ = small_features
    _, attrs = read_all(out)
    assert attrs["backbone"] == "xception" and attrs["weights"] == "none"
    assert attrs["input_size"] == 71 and attrs["resize"] == "squash"
    assert attrs["weights_sha256"] == "" and attrs["n_images"] == 12
    assert attrs["precision"] == "float32"
    assert set(json.loads(attrs["versions"])) == {"tensorflow", "keras", "h5py", "numpy"}


def test_corrupt_and_missing_images_are_skipped_and_counted(tmp_path: Path) -> None:
    ids, paths = sample_images(8)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(Path(paths[2]).read_bytes()[:300])
    paths[2] = str(broken)
    paths[5] = str(tmp_path / "missing.jpg")
    stats = extract_features(ids, paths, tmp_path / "x.h5", SMALL, None, progress=False)
    assert stats["images"] == 6 and stats["skipped"] == 2
    assert stats["skipped_ids"] == [ids[2], ids[5]]
    with FeatureStore(tmp_path / "x.h5") as store:
        assert ids[2] not in store and ids[0] in store
        assert store.skipped_ids == [ids[2], ids[5]]


def test_no_readable_image_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="none of the 2 images could be read"):
        extract_features(["a", "b"], ["/nope/a.png", "/nope/b.png"], tmp_path / "x.h5", SMALL,
                         None, progress=False)
    assert not (tmp_path / "x.h5").exists()


def _stage(workdir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "stages" / "features.py"), "--images", "images.parquet",
         "--out", "features/xception.h5", "--metrics", "metrics.json"],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stage_workdir(workdir: Path) -> Path:
    ids, paths = sample_images(30)
    pd.DataFrame({"uid": [int(i.split("_")[0]) for i in ids], "image_id": ids, "path": paths,
                  "exists": True}).to_parquet(workdir / "images.parquet")
    write_params(workdir, "features:\n  weights: none\n  image_size: 96\n  batch_size: 2\n")
    return workdir / "features" / "xception.h5"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The stage script run once without interruption: the reference content."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    out = _stage_workdir(workdir)
    fresh = _stage(workdir)
    _, stderr = fresh.communicate(timeout=600)
    assert fresh.returncode == 0, stderr
    assert "resuming" not in stderr
    return out


def assert_same_content(a: Path, b: Path) -> None:
    """Same ids, order, hashes and attributes; the values equal up to float rounding: the CPU
    kernels' sums depend on an image's position in its batch (measured: at most 6e-8 apart),
    and an incremental run batches the new images differently from a from-scratch run."""
    a_data, a_attrs = read_all(a)
    b_data, b_attrs = read_all(b)
    assert a_attrs == b_attrs
    assert a_data.keys() == b_data.keys()
    for key in ("ids", "image_sha256"):
        np.testing.assert_array_equal(a_data[key], b_data[key], err_msg=key)
    np.testing.assert_allclose(a_data["pooled"], b_data["pooled"], rtol=1e-5, atol=1e-6)
    if "grid" in a_data:  # float16: one rounding step apart at most
        np.testing.assert_allclose(a_data["grid"].astype(np.float32),
                                   b_data["grid"].astype(np.float32), rtol=1e-3, atol=1e-6)


def test_adding_images_computes_only_those_and_equals_a_fresh_run(small_features,
                                                                   tmp_path: Path) -> None:
    """The earlier 12 images are reused; 3 new ones, placed among them in the input order, are
    the only ones computed; the file equals one made from scratch on all 15."""
    old, _, old_ids = small_features
    params = FeaturesParams(**{**SMALL.__dict__, "grid": True})
    ids, paths = sample_images(15)
    order = [0, 12, 1, 2, 3, 13, 4, 5, 6, 7, 8, 9, 10, 11, 14]  # new images 12..14 interleaved
    ids, paths = [ids[i] for i in order], [paths[i] for i in order]
    out = tmp_path / "xception.h5"
    out.write_bytes(old.read_bytes())  # what `persist: true` leaves in place, or `dvc pull` fetched
    stats = extract_features(ids, paths, out, params, None, progress=False)
    assert stats["computed"] == 3 and stats["reused"] == 12 and stats["images"] == 15
    fresh = tmp_path / "fresh.h5"
    fresh_stats = extract_features(ids, paths, fresh, params, None, progress=False)
    assert fresh_stats["computed"] == 15 and fresh_stats["reused"] == 0
    assert_same_content(out, fresh)
    with FeatureStore(out) as store:
        assert list(store.ids) == ids and set(old_ids) < set(store.ids)

    # A changed image file is recomputed; other settings reuse nothing.
    changed = tmp_path / "changed.jpg"
    changed.write_bytes(Path(paths[1]).read_bytes())
    paths[3] = str(changed)
    stats = extract_features(ids, paths, out, params, None, progress=False)
    assert stats["computed"] == 1 and stats["reused"] == 14
    bigger = FeaturesParams(**{**params.__dict__, "image_size": 75})
    assert extract_features(ids, paths, out, bigger, None, progress=False)["reused"] == 0


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_interrupted_run_resumes_to_identical_content(tmp_path: Path, how: int,
                                                      uninterrupted: Path) -> None:
    out = _stage_workdir(tmp_path)

    process = _stage(tmp_path)
    deadline = time.monotonic() + 300
    while len(list(partial_dir(out).glob("*.npz"))) < 3:
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(how)
    process.wait(timeout=60)
    assert process.returncode != 0
    assert not out.exists()  # a crashed run never leaves a file that looks complete
    done = len(list(partial_dir(out).glob("*.npz")))
    assert 0 < done < 15

    resumed = _stage(tmp_path)
    _, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr
    assert "resuming after" in stderr
    assert not partial_dir(out).exists()
    resumed_data, resumed_attrs = read_all(out)
    fresh_data, fresh_attrs = read_all(uninterrupted)
    assert resumed_attrs == fresh_attrs
    assert resumed_data.keys() == fresh_data.keys()
    for key in fresh_data:
        np.testing.assert_array_equal(resumed_data[key], fresh_data[key])


def test_changed_params_discard_partial_shards(tmp_path: Path) -> None:
    ids, paths = sample_images(4)
    out = tmp_path / "x.h5"
    folder = partial_dir(out)
    folder.mkdir()
    (folder / "fingerprint").write_text("from another run")
    (folder / "0000000.npz").write_bytes(b"stale")
    stats = extract_features(ids, paths, out, SMALL, None, progress=False)
    assert stats["images"] == 4 and not folder.exists()


def test_inceptionv3_runs_with_random_weights(tmp_path: Path) -> None:
    ids, paths = sample_images(2)
    params = FeaturesParams(backbone="inceptionv3", weights="none", image_size=75, batch_size=2,
                            grid=False)
    stats = extract_features(ids, paths, tmp_path / "i.h5", params, None, progress=False)
    assert stats["images"] == 2 and stats["feature_dim"] == 2048


def test_missing_imagenet_weights_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        resolve_weights(get_spec("inceptionv3"), "imagenet", str(tmp_path), False)
    message = str(info.value)
    assert "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(tmp_path) in message and "https://storage.googleapis.com" in message
    with pytest.raises(InputError, match="weights file not found"):
        resolve_weights(get_spec("xception"), str(tmp_path / "w.h5"), str(tmp_path), False)


def test_weights_beside_the_repo_are_found_from_a_queued_experiment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every stage that loads a backbone (finetune as well as features) finds `../shared/weights`
    when `dvc queue` runs it in a copy of the repo under `.dvc/tmp/exps/`."""
    spec = get_spec("xception")
    shared = tmp_path / "shared" / "weights"
    shared.mkdir(parents=True)
    (shared / spec.weights_file).write_bytes(b"weights")
    (shared / "adapted.h5").write_bytes(b"weights")
    copy = tmp_path / "project" / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    found = resolve_weights(spec, "imagenet", "../shared/weights", False)
    assert Path(found).resolve() == (shared / spec.weights_file).resolve()
    found = resolve_weights(spec, "../shared/weights/adapted.h5", "unused", False)
    assert Path(found).resolve() == (shared / "adapted.h5").resolve()


@needs_shared(XCEPTION_WEIGHTS)
def test_real_xception_weights_load_and_differ_from_random(tmp_path: Path) -> None:
    weights = resolve_weights(get_spec("xception"), "imagenet", str(XCEPTION_WEIGHTS.parent),
                              False)
    assert weights == str(XCEPTION_WEIGHTS)
    ids, paths = sample_images(2)
    params = FeaturesParams(weights="imagenet", image_size=96, batch_size=2, grid=False)
    extract_features(ids, paths, tmp_path / "real.h5", params, weights, progress=False)
    extract_features(ids, paths, tmp_path / "none.h5", FeaturesParams(
        weights="none", image_size=96, batch_size=2, grid=False), None, progress=False)
    real, attrs = read_all(tmp_path / "real.h5")
    rand, _ = read_all(tmp_path / "none.h5")
    assert attrs["weights_sha256"] == (
        "b8742fd329245cf27aafac0e0fd8de99305ccadb5b59382f3277c485ab11cf8a")
    assert not np.allclose(real["pooled"], rand["pooled"], atol=1e-2)
    assert (real["pooled"] >= 0).all() and real["pooled"].std() > 0.01


@needs_shared(IUXRAY)
def test_full_resolution_png_and_resize_policies() -> None:
    big = load_image(IUXRAY / "originals" / "3_IM-1384-1001.dcm.png", 64).numpy()
    assert big.shape == (64, 64, 3)  # a 2048x2048 grey PNG
    assert np.allclose(big[..., 0], big[..., 2])  # grey expanded to 3 channels
    tall = IUXRAY / "originals" / "CXR1000_IM-0003-2001.png"  # Open-i, 512x624 RGB
    squash = load_image(tall, 64, policy="squash").numpy()
    pad = load_image(tall, 64, policy="pad").numpy()
    assert squash.shape == pad.shape == (64, 64, 3)
    # A tall image padded keeps its aspect ratio: black columns at the sides.
    assert pad[:, 0].max() == 0 and pad[:, -1].max() == 0
    assert squash[:, 0].max() > 0 and pad[:, 32].max() > 0
    with pytest.raises(InputError, match="file not found"):
        load_image(IUXRAY / "originals" / "nope.png", 64)


def test_load_image_of_a_directory_or_unreadable_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=f"^{tmp_path}: a directory, not an image file$"):
        load_image(tmp_path, 64)
    (tmp_path / "x.png").write_bytes(b"\x89PNG but cut")
    with pytest.raises(InputError, match=r"x\.png: not a PNG, JPEG or DICOM image, or corrupt$"):
        load_image(tmp_path / "x.png", 64)


BF16 = bf16_support()


@pytest.mark.skipif(BF16 is not None, reason=f"this machine runs bf16 ({BF16}); no fallback")
def test_bfloat16_falls_back_to_float32_in_one_line_without_hardware_support(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"):
        assert resolve_precision("bfloat16") == "float32"
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "neither AVX512_BF16 nor AMX" in lines[0] and "float32" in lines[0]
    # The features stage records the precision it ran at, not the one asked for.
    ids, paths = sample_images(2)
    out = tmp_path / "x.h5"
    extract_features(ids, paths, out, FeaturesParams(weights="none", image_size=71,
                                                     precision="bfloat16"), None, progress=False)
    assert read_all(out)[1]["precision"] == "float32"


def test_bfloat16_backbone_outputs_float32_and_leaves_the_global_policy() -> None:
    """The bf16 model itself (built directly: it runs, emulated and slowly, on any CPU)."""
    import keras

    model = build_backbone("xception", None, 71, precision="bfloat16")
    assert model.get_layer("preprocess").dtype_policy.name == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == "float32"
    out = model(np.zeros((1, 71, 71, 3), np.float32), training=False)
    assert out["pooled"].dtype == "float32" and out["grid"].dtype == "float32"
    with pytest.raises(InputError, match="precision must be float32 or bfloat16"):
        build_backbone("xception", None, 71, precision="float16")


@needs_shared(XCEPTION_WEIGHTS)
@pytest.mark.skipif(BF16 is None, reason="this CPU has neither AVX512_BF16 nor AMX and there is "
                    "no GPU: bf16 falls back to float32 (tested above)")
def test_bfloat16_features_are_close_to_float32() -> None:
    _, paths = sample_images(8)
    images = np.stack([load_image(p, 299).numpy() for p in paths])
    pooled = {}
    for precision in ("float32", "bfloat16"):
        model = build_backbone("xception", str(XCEPTION_WEIGHTS), 299,
                               precision=resolve_precision(precision), grid=False)
        pooled[precision] = model(images, training=False)["pooled"].numpy()
    a, b = pooled["float32"], pooled["bfloat16"]
    assert b.dtype == np.float32
    # bf16 keeps 8 bits of mantissa, and Xception's 36 convolutions add up its rounding. Measured
    # on an AMD EPYC with AVX512_BF16 (48 sample images): cosine to float32 0.9965 at worst,
    # 0.9988 at the median; what retrieval and the probes read, the similarities between
    # images, moved by at most 0.019.
    cosine = (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= 0.99 and np.median(cosine) >= 0.998, cosine

    def similarities(x: np.ndarray) -> np.ndarray:
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        return unit @ unit.T

    moved = np.abs(similarities(a) - similarities(b)).max()
    assert moved <= 0.03, moved
