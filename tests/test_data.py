"""MedMNIST files: INFO-driven checks, clear errors, memory-mapping of large arrays."""
import numpy as np
import pytest

from bench.datasets import medmnist as data
from bench.errors import UserError
from conftest import write_synthetic_npz


def test_twelve_2d_flags_from_info():
    flags = data.flags()
    assert len(flags) == 12 and "breastmnist" in flags and not any(f.endswith("3d") for f in flags)


def test_load_synthetic_keeps_uint8(tmp_path):
    write_synthetic_npz(tmp_path, "retinamnist", 28, n=(20, 8, 10))
    ds = data.load("retinamnist", 28, tmp_path, check_md5=False)
    assert ds.task == "ordinal-regression" and ds.n_outputs == 5
    assert ds.splits["train"].images.dtype == np.uint8 and ds.splits["train"].images.shape == (20, 28, 28, 3)
    assert ds.splits["test"].labels.shape == (10, 1)


def test_md5_mismatch_is_an_error_unless_skipped(tmp_path):
    write_synthetic_npz(tmp_path, "breastmnist", 28)
    with pytest.raises(UserError, match="md5 .* expected 750601b1f35ba3300ea97c75c52ff8f6"):
        data.load("breastmnist", 28, tmp_path)
    assert len(data.load("breastmnist", 28, tmp_path, check_md5=False).splits["val"]) == 32


def test_missing_file_offline_names_file_md5_and_folder(tmp_path, monkeypatch):
    import backbones.hub as hub

    monkeypatch.setattr(hub, "host_reachable", lambda host, port=443: False)
    with pytest.raises(UserError) as e:
        data.load("pathmnist", 224, tmp_path)
    msg = str(e.value)
    assert "pathmnist_224.npz" in msg and data.expected_md5("pathmnist", 224) in msg and str(tmp_path) in msg
    assert "\n" not in msg


@pytest.mark.parametrize("mutate,match", [
    (lambda a: a.update(train_images=a["train_images"].astype(np.float32)), "expected uint8"),
    (lambda a: a.update(val_images=a["val_images"][:, :20]), "expected uint8"),
    (lambda a: a.pop("test_labels"), "no array 'test_labels'"),
    (lambda a: a.update(train_labels=np.full((96, 1), 7, np.uint8)), "do not match the task"),
])
def test_wrong_content_is_a_clear_error(tmp_path, mutate, match):
    path = write_synthetic_npz(tmp_path, "breastmnist", 28)
    arrays = dict(np.load(path))
    mutate(arrays)
    np.savez_compressed(path, **arrays)
    with pytest.raises(UserError, match=match):
        data.load("breastmnist", 28, tmp_path, check_md5=False)


def test_unreadable_file(tmp_path):
    (tmp_path / "breastmnist.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(UserError, match="not a readable MedMNIST .npz"):
        data.load("breastmnist", 28, tmp_path, check_md5=False)


def test_large_arrays_are_memory_mapped_with_identical_content(tmp_path, monkeypatch):
    write_synthetic_npz(tmp_path, "breastmnist", 64, n=(40, 8, 8))
    in_memory = data.load("breastmnist", 64, tmp_path, check_md5=False)
    monkeypatch.setattr(data, "MMAP_THRESHOLD", 1000)
    mapped = data.load("breastmnist", 64, tmp_path, check_md5=False, cache_dir=tmp_path / "cache")
    assert isinstance(mapped.splits["train"].images, np.memmap)
    assert np.array_equal(mapped.splits["train"].images, in_memory.splits["train"].images)


def test_unknown_dataset_and_size_suggest():
    with pytest.raises(UserError, match="did you mean: breastmnist"):
        data.info("breastmnst")
    with pytest.raises(UserError, match="28, 64, 128, 224"):
        data.check_size(32)


def test_limit_caps_every_split(tmp_path):
    write_synthetic_npz(tmp_path, "breastmnist", 28)
    ds = data.load("breastmnist", 28, tmp_path, check_md5=False, limit=10)
    assert [len(s) for s in ds.splits.values()] == [10, 10, 10]


def test_real_files_match_info_md5(shared_medmnist):
    ds = data.load("breastmnist", 28, shared_medmnist)
    assert [len(ds.splits[s]) for s in data.SPLITS] == [546, 78, 156]
