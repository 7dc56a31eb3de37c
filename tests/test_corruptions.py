"""bench.shift against the MedMNIST-C package itself (medmnistc 0.1.0).

tests/fixtures/medmnistc/ holds what the real package wrote (make_golden.py says how it was run):
for all 12 datasets, every corruption at severities 1-5 of three 224-px inputs, as SHA-256 digests
of each output image (and, for torchvision's Gaussian blur, the whole images), plus the package's
AlexNet constants and what its Evaluator computed. The fixtures are committed: nothing here skips.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.errors import UserError
from bench.shift import (corrupt_generic, corrupt_images_at, corrupt_split, corruptions, datasets,
                         generic_corruptions, generic_reference, iter_corrupted, resize_images, roundtrip)
from bench.shift import baselines
from bench.shift.corrupt_blur import gaussian_blur_float
from bench.shift.generic import GENERIC
from bench.shift.medmnistc import RGB, TABLE

FIX = Path(__file__).parent / "fixtures" / "medmnistc"
# torchvision's float32 conv2d vs the port's double: every differing pixel must be a rounding tie
TIE = 2e-4             # |value - (k + 0.5)| below which a 1-apart pixel is a tie (seen: <= 6.5e-5)
MAX_TIES = 1e-4        # share of pixels allowed to be such ties (seen: 3 in 50,176)


@lru_cache(maxsize=None)
def golden() -> dict:
    return json.loads((FIX / "golden.json").read_text())


@lru_cache(maxsize=None)
def inputs() -> dict[str, np.ndarray]:
    with np.load(FIX / "inputs.npz") as f:
        return {k: f[k] for k in f.files}


@lru_cache(maxsize=None)
def full() -> dict[str, np.ndarray]:
    with np.load(FIX / "outputs.npz") as f:
        return {k: f[k] for k in f.files}


def x_of(dataset: str) -> np.ndarray:
    return inputs()["rgb" if RGB[dataset] else "gray"]


def digest(img: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest()[: golden()["hash_chars"]]


def kernel_size(dataset: str, severity: int) -> int:
    return next(c for c in TABLE[dataset] if c.name == "gaussian_blur").params[severity - 1]


def gaussian_reference(dataset: str, severity: int) -> np.ndarray:
    """The stored package output with the same kernel size (the blur is deterministic)."""
    k = kernel_size(dataset, severity)
    for key, arr in full().items():
        ref_ds = key.split("/")[0]
        for s in range(1, 6):
            if kernel_size(ref_ds, s) == k:
                assert golden()["datasets"][dataset]["corruptions"]["gaussian_blur"][severity - 1] == \
                    golden()["datasets"][ref_ds]["corruptions"]["gaussian_blur"][s - 1]
                return arr[(s - 1) * 3:s * 3]
    raise AssertionError(f"no stored Gaussian blur of size {k}")


def check_gaussian(dataset: str, severity: int, x: np.ndarray, out: np.ndarray) -> None:
    ref = gaussian_reference(dataset, severity)
    assert np.abs(out.astype(int) - ref).max() <= 1
    for j in range(len(x)):
        differ = out[j] != ref[j]
        assert differ.mean() <= MAX_TIES, (dataset, severity, j, int(differ.sum()))
        value = gaussian_blur_float(Image.fromarray(x[j]).convert("RGB"), kernel_size(dataset, severity))
        value = value if value.ndim == out[j].ndim else value[..., 0]  # grey: the three channels are equal
        frac = value[differ] - np.floor(value[differ])
        assert np.all(np.abs(frac - 0.5) < TIE), (dataset, severity, j)


def test_fixtures_cover_every_dataset_and_stay_small():
    assert datasets() == sorted(golden()["datasets"])
    assert golden()["versions"]["medmnistc"] == "0.1.0"
    assert sum(p.stat().st_size for p in FIX.iterdir() if p.is_file()) < 1_500_000


@pytest.mark.parametrize("dataset", sorted(TABLE))
def test_every_corruption_and_severity_equals_the_package(dataset):
    """One pass over the dataset's whole table, like the package's DatasetManager: every output
    image equals the package's byte for byte (Gaussian blur: up to rounding ties, see above)."""
    want = golden()["datasets"][dataset]["corruptions"]
    x = x_of(dataset)
    seen = []
    for corr, severity, out in iter_corrupted(x, dataset):
        seen.append((corr, severity))
        assert out.shape == x.shape and out.dtype == np.uint8
        if corr == "gaussian_blur":
            check_gaussian(dataset, severity, x, out)
        else:
            assert [digest(o) for o in out] == want[corr][severity - 1], (dataset, corr, severity)
    assert seen == [(c, s) for c in want for s in range(1, 6)]  # the package's order, all of it
    assert corruptions(dataset) == list(want)


@pytest.mark.parametrize("dataset,corruption,severity", [
    ("dermamnist", "characters", 5),      # after every noise, blur and artefact draw of the dataset
    ("dermamnist", "impulse_noise", 4),   # scikit-image's generator, after severities 1-3
    ("pathmnist", "bubble", 2),
    ("bloodmnist", "stain_deposit", 5),
    ("breastmnist", "motion_blur", 3),
    ("organsmnist", "shot_noise", 5),
])
def test_corrupt_split_replays_the_draws_before_it(dataset, corruption, severity):
    x = x_of(dataset)
    out = corrupt_split(x, dataset, corruption, severity)
    assert out.shape == x.shape and out.dtype == np.uint8
    assert [digest(o) for o in out] == golden()["datasets"][dataset]["corruptions"][corruption][severity - 1]


def test_wanted_pairs_come_in_the_package_order_and_equal_single_calls():
    x = x_of("retinamnist")
    got = list(iter_corrupted(x, "retinamnist", [("motion_blur", 2), ("gaussian_noise", 5)]))
    assert [(c, s) for c, s, _ in got] == [("gaussian_noise", 5), ("motion_blur", 2)]
    assert np.array_equal(got[1][2], corrupt_split(x, "retinamnist", "motion_blur", 2))


def test_draws_depend_on_position_and_seed():
    x = x_of("breastmnist")
    speckle = golden()["datasets"]["breastmnist"]["corruptions"]["speckle_noise"]
    # speckle is BreastMNIST's first random corruption: image 0 at severity 1 takes the first draws
    # whatever the split's length, later severities start after every image of the earlier ones
    assert [digest(corrupt_split(x[:1], "breastmnist", "speckle_noise", 1)[0])] == speckle[0][:1]
    assert [digest(corrupt_split(x[:1], "breastmnist", "speckle_noise", 2)[0])] != speckle[1][:1]
    assert not np.array_equal(corrupt_split(x, "breastmnist", "speckle_noise", 1, seed=1),
                              corrupt_split(x, "breastmnist", "speckle_noise", 1))


@pytest.mark.parametrize("severity", [0, 6, -1, 2.0, True, "3", None])
def test_bad_severity_is_a_one_line_user_error(severity):
    with pytest.raises(UserError) as e:
        corrupt_split(x_of("breastmnist"), "breastmnist", "pixelate", severity)
    assert "\n" not in str(e.value) and "1 to 5" in str(e.value)


def test_unknown_names_are_one_line_user_errors_with_close_matches():
    x = x_of("breastmnist")
    with pytest.raises(UserError, match="did you mean: motion_blur"):
        corrupt_split(x, "breastmnist", "motion_blurr", 1)
    with pytest.raises(UserError, match="did you mean: breastmnist"):
        corruptions("breastmnst")
    with pytest.raises(UserError, match="did you mean: pathmnist"):
        corrupt_split(x, "pathmist", "pixelate", 1)
    with pytest.raises(UserError) as e:
        corrupt_split(x, "breastmnist", "characters", 1)  # a dermamnist corruption
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("images,why", [
    (np.zeros((2, 224, 224, 3), np.uint8), "(N, H, W)"),    # colour images for a grey dataset
    (np.zeros((2, 224, 224), np.float32), "uint8"),
    (np.zeros((2, 28, 28), np.uint8), "224-px"),
])
def test_images_not_as_medmnist_stores_them_are_refused(images, why):
    with pytest.raises(UserError) as e:
        corrupt_split(images, "breastmnist", "pixelate", 1)
    assert why in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("size", [28, 64, 128, 224])
def test_smaller_runs_get_the_224_px_corruption_resized(size):
    x = x_of("retinamnist")
    out = corrupt_images_at(x, size, "retinamnist", "defocus_blur", 2)
    assert out.shape == (3, size, size, 3) and out.dtype == np.uint8
    at224 = corrupt_split(x, "retinamnist", "defocus_blur", 2)
    bicubic = np.stack([np.asarray(Image.fromarray(o).resize((size, size), Image.BICUBIC)) for o in at224])
    assert np.array_equal(out, bicubic)
    assert np.array_equal(resize_images(x, size)[0], np.asarray(Image.fromarray(x[0]).resize((size, size), Image.BICUBIC)))
    with pytest.raises(UserError):
        corrupt_images_at(x, 0, "retinamnist", "defocus_blur", 2)


def test_generic_sets_cover_every_medmnist_modality():
    from bench.datasets.medmnist import MODALITY

    for flag, modality in MODALITY.items():
        assert generic_reference(modality) == flag or flag in ("pneumoniamnist", "organcmnist", "organsmnist")
        assert generic_corruptions(modality) == corruptions(generic_reference(modality))
    assert generic_corruptions("RGB") == [c for c in corruptions("dermamnist") if c not in ("black_corner", "characters")]
    assert generic_corruptions("grey") == corruptions("chestmnist")
    assert generic_reference("x-ray") == "chestmnist" and generic_reference("ct") == "organamnist"
    assert set(GENERIC) >= set(MODALITY.values())
    with pytest.raises(UserError, match="no generic corruption set"):
        generic_corruptions("sonar")


def test_generic_corruption_of_own_data():
    x = x_of("breastmnist")
    # at 224 px own grey data under the chest x-ray set is exactly MedMNIST-C's ChestMNIST pass
    assert np.array_equal(corrupt_generic(x, "chest x-ray", "impulse_noise", 2),
                          corrupt_split(x, "chestmnist", "impulse_noise", 2))
    small = resize_images(x, 64)
    out = corrupt_generic(small, "gray", "gaussian_blur", 3)
    assert out.shape == small.shape and out.dtype == np.uint8
    assert np.array_equal(out, resize_images(corrupt_split(resize_images(small, 224), "chestmnist", "gaussian_blur", 3), 64))
    assert np.array_equal(roundtrip(small), resize_images(resize_images(small, 224), 64))
    rgb = x_of("dermamnist")
    assert corrupt_generic(rgb, "rgb", "pixelate", 1).shape == rgb.shape
    with pytest.raises(UserError):
        corrupt_generic(rgb, "rgb", "characters", 1)  # left out of the generic colour set


def test_alexnet_constants_are_the_packages():
    want = golden()["baselines"]
    assert set(baselines.ALEXNET) == set(want)
    for ds, (clean, raw) in baselines.ALEXNET.items():
        assert clean == want[ds]["clean_score"] and raw == want[ds]["raw_scores"]
        assert list(raw) == corruptions(ds)  # one constant per corruption, in the table's order


@pytest.mark.parametrize("case", range(3))
def test_balanced_error_be_and_rbe_equal_the_packages_evaluator(case):
    c = golden()["evaluator"][case]
    y = np.array(c["y_true"])
    thr = [0.5] * y.shape[1] if c["task"] == "multi-label, binary-class" else 0.5
    clean = baselines.balanced_error(y, np.array(c["clean"]), c["task"], thr)
    assert clean == pytest.approx(c["clean_error"], abs=1e-15)
    errors = {}
    for corr, scores in c["scores"].items():
        s = np.array(scores)
        n = len(y)
        errors[corr] = [baselines.balanced_error(y, s[k * n:(k + 1) * n], c["task"], thr) for k in range(5)]
        assert errors[corr] == pytest.approx(c["errors"][corr], abs=1e-15)
        assert baselines.be(c["dataset"], corr, errors[corr]) == pytest.approx(c["be_scores"][corr], rel=1e-14)
        assert baselines.rbe(c["dataset"], corr, errors[corr], clean) == pytest.approx(c["rbe_scores"][corr], rel=1e-14)
    summary = baselines.summary(c["dataset"], errors, clean)
    assert summary["metrics"]["be"] == pytest.approx(c["be"], rel=1e-14)
    assert summary["metrics"]["rbe"] == pytest.approx(c["rbe"], rel=1e-14)


def test_baseline_errors_are_one_line():
    with pytest.raises(UserError, match="did you mean: motion_blur"):
        baselines.be("breastmnist", "motion_blurr", [0.1] * 5)
    with pytest.raises(UserError, match="5 severities"):
        baselines.be("breastmnist", "motion_blur", [0.1] * 4)
    with pytest.raises(UserError, match="unknown MedMNIST task"):
        baselines.balanced_error([0, 1], np.eye(2), "regression")
