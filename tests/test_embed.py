"""`bench embed` / bench.embed: a frozen backbone's features per image (id, split, labels), from the
feature cache, to .parquet (one row per image) and .npz."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import bench
from bench import datasets
from bench.cli import main
from test_audit import write_dataset

KW = dict(weights="random", size=28, quiet=True)


def test_parquet_one_row_per_image_and_npz_from_the_probe_cache(tmp_path, monkeypatch, capsys):
    manifest = write_dataset(tmp_path / "data", n=(40, 12, 20))
    ds_name = f"csv:{manifest}"
    # a linear probe fills the feature cache; embed then reads it, extracting nothing
    bench.run("dummy", ds_name, head="knn", results_dir=tmp_path / "r", **KW)
    from bench import features

    def refuse(*a, **k):
        raise AssertionError("features extracted although they were cached")

    monkeypatch.setattr(features, "extract", refuse)
    out = tmp_path / "feats.parquet"
    assert main(["embed", "--backbone", "dummy", "--weights", "random", "--dataset", ds_name, "--size", "28",
                 "--results-dir", str(tmp_path / "r"), "-q", "--out", str(out)]) == 0
    assert "written to" in capsys.readouterr().out
    df = pd.read_parquet(out)
    assert len(df) == 72 and list(df.columns) == ["image_id", "split", "label", "features"]  # one row per image
    assert df.groupby("split").size().to_dict() == {"test": 20, "train": 40, "val": 12}
    assert df.image_id.is_unique and set(df.image_id) == set(pd.read_csv(manifest).path)
    feats = np.stack(df.features)
    assert feats.shape == (72, 32) and feats.dtype == np.float32
    # the same numbers as the API's arrays, and labels and ids as the dataset has them
    emb = bench.embed("dummy", ds_name, results_dir=tmp_path / "r", out=tmp_path / "feats.npz", **KW)
    ds = datasets.load(ds_name, 28, datasets.LoadOptions(cache_dir=None, quiet=True))
    for s in ("train", "val", "test"):
        part = df[df.split == s]
        np.testing.assert_array_equal(np.stack(part.features), emb[s]["features"])
        assert part.image_id.tolist() == emb[s]["ids"].tolist() == ds.image_ids(s).tolist()
        assert part.label.tolist() == emb[s]["labels"].tolist() == ds.targets(s).tolist()
    with np.load(tmp_path / "feats.npz") as z:
        assert set(z.files) == {f"{s}_{k}" for s in ("train", "val", "test") for k in ("ids", "labels", "features")}
        np.testing.assert_array_equal(z["test_features"], emb["test"]["features"])
        assert z["train_ids"].tolist() == emb["train"]["ids"].tolist()


def test_layers_and_medmnist_ids_and_bad_input(tmp_path, data_root, capsys):
    emb = bench.embed("dummy", "breastmnist", data_root=data_root, skip_md5=True, layers="2,4", splits=["test"],
                      results_dir=tmp_path / "r", **KW)
    assert list(emb) == ["test"] and set(emb["test"]) == {"ids", "labels", "layer_2", "layer_4"}
    assert emb["test"]["ids"][:2].tolist() == ["test/0", "test/1"]  # MedMNIST: the index within the split file
    plain = bench.embed("dummy", "breastmnist", data_root=data_root, skip_md5=True, splits=["test"],
                        results_dir=tmp_path / "r", **KW)
    np.testing.assert_array_equal(plain["test"]["features"], emb["test"]["layer_4"])  # the last block is the readout
    out = tmp_path / "l.parquet"
    assert main(["embed", "--backbone", "dummy", "--weights", "random", "--dataset", "breastmnist", "--data-root",
                 str(data_root), "--skip-md5", "--layers", "2,4", "--splits", "val", "-q", "--results-dir",
                 str(tmp_path / "r"), "--out", str(out)]) == 0
    df = pd.read_parquet(out)
    assert list(df.columns) == ["image_id", "split", "label", "layer_2", "layer_4"] and len(df) == 32
    for argv, why in ((["--out", str(tmp_path / "x.txt")], ".npz or .parquet"),
                      (["--out", str(tmp_path / "x.npz"), "--splits", "dev"], "--splits"),
                      (["--out", str(tmp_path / "x.npz"), "--layers", "9"], "--layers")):
        assert main(["embed", "--backbone", "dummy", "--weights", "random", "--dataset", "breastmnist",
                     "--data-root", str(data_root), "--skip-md5", "-q", "--results-dir", str(tmp_path / "r"),
                     *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert why in err and "\n" not in err
    with pytest.raises(Exception, match="--head"):
        bench.embed("dummy", "breastmnist", data_root=data_root, skip_md5=True, head="knn", **KW)


def test_multilabel_labels_are_columns(tmp_path, data_root):
    from conftest import write_synthetic_npz

    write_synthetic_npz(data_root, "chestmnist", n=(40, 12, 16))
    out = tmp_path / "c.parquet"
    bench.embed("dummy", "chestmnist", data_root=data_root, skip_md5=True, out=out, results_dir=tmp_path / "r", **KW)
    df = pd.read_parquet(out)
    assert [c for c in df.columns if c.startswith("label_")] == [f"label_{k}" for k in range(14)]
    assert len(df) == 68 and set(df.label_0.unique()) <= {0, 1}
