"""Label efficiency (--train-fraction / --shots): seeded, stratified, nested subsets of train; val
and test untouched; indices recorded; probes reuse the cached features; every protocol."""
from __future__ import annotations

import json

import numpy as np
import pytest

import bench
from bench import subsets
from bench.cli import main


def _labels(counts=(300, 60, 12)) -> np.ndarray:
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    return np.random.default_rng(1).permutation(y)[:, None]


def test_nested_stratified_seeded():
    y = _labels()
    fracs = [0.01, 0.05, 0.1, 0.5, 1.0]
    subs = [set(subsets.indices(y, 3, fraction=f)) for f in fracs]
    assert all(a <= b for a, b in zip(subs, subs[1:]))  # nested for one seed
    assert subs[-1] == set(range(len(y)))
    for f, s in zip(fracs, subs):
        per_class = np.bincount(y[sorted(s), 0], minlength=3)
        assert per_class.tolist() == [max(1, round(f * n)) for n in (300, 60, 12)]  # stratified, >= 1 each
    shots = [set(subsets.indices(y, 3, shots=n)) for n in (1, 5, 10, 50)]
    assert all(a <= b for a, b in zip(shots, shots[1:]))
    assert np.bincount(y[sorted(shots[2]), 0]).tolist() == [10, 10, 10]
    assert np.bincount(y[sorted(shots[3]), 0]).tolist() == [50, 50, 12]  # a class smaller than N: all of it
    assert set(subsets.indices(y, 3, shots=5)) <= set(subsets.indices(y, 3, fraction=0.5))  # one order per seed
    assert subsets.indices(y, 3, fraction=0.1).tolist() == subsets.indices(y, 3, fraction=0.1).tolist()
    assert subsets.indices(y, 4, fraction=0.1).tolist() != subsets.indices(y, 3, fraction=0.1).tolist()


def test_multilabel_subsets_keep_their_size_and_every_label():
    # 14 labels, rare ones included: hundreds of distinct label rows, which strata per row would
    # each keep one image of (a 1% subset of 20,000 images would hold about 900)
    rng = np.random.default_rng(0)
    y = (rng.random((20000, 14)) < np.linspace(0.002, 0.3, 14)).astype(np.int64)
    y[rng.random(y.shape) < 0.05] = -1  # U-Ignore unknowns are not positives
    assert len(np.unique(y, axis=0)) > 500
    fracs = [0.001, 0.01, 0.1, 0.5]
    subs = [subsets.indices(y, 2, fraction=f) for f in fracs]
    for f, idx in zip(fracs, subs):
        assert round(f * len(y)) <= len(idx) <= round(f * len(y)) + 14  # the fraction, plus at most 1 per label
        assert ((y[idx] == 1).sum(0) >= 1).all()  # every label keeps a positive
    assert all(set(a) <= set(b) for a, b in zip(subs, subs[1:]))  # nested
    shots = [subsets.indices(y, 2, shots=n) for n in (1, 5, 20)]
    for n, idx in zip((1, 5, 20), shots):
        assert ((y[idx] == 1).sum(0) >= np.minimum(n, (y == 1).sum(0))).all()
        assert len(idx) <= 14 * n
    assert all(set(a) <= set(b) for a, b in zip(shots, shots[1:]))
    assert subsets.per_class(y[shots[0]], True, 14).tolist() == (y[shots[0]] == 1).sum(0).tolist()
    # one label column of a multi-label task (unknowns included) is still multi-label, by the task
    one = y[:, 13:]
    idx = subsets.indices(one, 2, fraction=0.01, multilabel=True)
    assert len(idx) in (200, 201) and (one[idx] == 1).any()
    assert subsets.per_class(one[idx], True, 1).tolist() == [int((one[idx] == 1).sum())]
    # a class that train lacks is counted as 0, wherever it is
    assert subsets.per_class(np.array([[0], [0], [2]]), False, 3).tolist() == [2, 0, 1]
    assert subsets.per_class(np.array([[0], [0], [1]]), False, 3).tolist() == [2, 1, 0]


@pytest.fixture
def opts(data_root, tmp_path):
    return dict(data_root=str(data_root), skip_md5=True, results_dir=str(tmp_path / "results"),
                cache_dir=str(tmp_path / "cache"), head_epochs=10, device="cpu", quiet=True, weights="random")


def _meta(tmp_path, res) -> dict:
    return json.loads((tmp_path / "results" / "meta" / f"{res.run_id}.json").read_text())


def test_probe_fractions_reuse_cached_features_val_test_untouched(opts, tmp_path, monkeypatch):
    import bench.features as features

    calls = []
    real = features.extract
    monkeypatch.setattr(features, "extract", lambda fn, images, *a, **k: calls.append(len(images)) or
                        real(fn, images, *a, **k))
    full = bench.run("dummy", "breastmnist", **opts)
    assert calls == [96, 32, 48]
    seen = []
    for f in (0.1, 0.25, 0.5):
        res = bench.run("dummy", "breastmnist", train_fraction=f, **opts)
        sub = _meta(tmp_path, res)["train_subset"]
        seen.append(set(sub["indices"]))
        assert sub["n_full"] == 96 and sub["n"] == len(sub["indices"]) and sub["seed"] == 0
        assert _meta(tmp_path, res)["dataset"]["n"] == {"train": 96, "val": 32, "test": 48}
        assert len(res.test_scores()[0]) == 48  # the whole test split, every time
    assert calls == [96, 32, 48]  # no new extraction for any fraction
    assert seen[0] <= seen[1] <= seen[2]
    knn = bench.run("dummy", "breastmnist", head="knn", shots=4, **opts)
    assert _meta(tmp_path, knn)["train_subset"]["per_class"] == [4, 4]
    assert calls == [96, 32, 48]
    assert full.run_id == bench.run("dummy", "breastmnist", train_fraction=1.0, shots=0, **opts).run_id


def test_finetune_and_layers_train_on_the_subset(opts, tmp_path, monkeypatch):
    """A trained protocol learns from the subset's rows (its frozen prefix cached for the whole
    split, so every fraction shares it); the layer-wise probe takes the same subset per layer."""
    import bench.train as train

    seen = {}
    real = train.finetune

    def spy(ctx, plan, head):
        seen["n_train"] = len(ctx.dataset.splits["train"])
        seen["val"], seen["test"] = len(ctx.dataset.splits["val"]), len(ctx.dataset.splits["test"])
        return real(ctx, plan, head)

    monkeypatch.setattr(train, "finetune", spy)
    res = bench.run("dummy", "breastmnist", unfreeze="last1", epochs=1, train_fraction=0.25, **opts)
    assert seen == {"n_train": _meta(tmp_path, res)["train_subset"]["n"], "val": 32, "test": 48}
    assert seen["n_train"] == 24
    lay = bench.run("dummy", "breastmnist", layers="2,4", shots=3, **opts)
    assert _meta(tmp_path, lay)["train_subset"]["n"] == 6
    assert sorted(set(lay.metrics.layer.dropna())) == [2, 4]


@pytest.mark.parametrize("args,match", [
    (["--train-fraction", "0.5", "--shots", "3"], "give one of them"),
    (["--train-fraction", "0"], "--train-fraction 0"),
    (["--train-fraction", "1.5"], "at most 1"),
    (["--shots", "-1"], "at least 0"),
])
def test_bad_subset_options_exit_2(capsys, data_root, tmp_path, args, match):
    code = main(["run", "--backbone", "dummy", "--dataset", "breastmnist", "--data-root", str(data_root),
                 "--skip-md5", "--results-dir", str(tmp_path / "r"), *args])
    err = capsys.readouterr().err
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1, err


def test_report_labels_section_with_seed_mean_intervals(opts, tmp_path):
    """`bench report`: subset runs get their own section (table + figure, labels per class, a
    bootstrap interval of the seed mean over the test images), not rows of the ordinary tables."""
    import pandas as pd

    from bench.report import make_report
    from bench.report import stats as S
    from bench.results import ResultStore

    from conftest import write_synthetic_npz

    write_synthetic_npz(tmp_path / "faint", "breastmnist", 28, signal=12.0)  # not solved by 5 labels per class
    opts = {**opts, "data_root": str(tmp_path / "faint")}
    ids = {}
    for seed in (0, 1):
        for f in (0.1, 1.0):
            ids[(seed, f)] = bench.run("dummy", "breastmnist", seed=seed, train_fraction=f, **opts).run_id
    out = tmp_path / "report"
    make_report(tmp_path / "results", out, formats=("md", "png"), n_boot=200)
    md = (out / "report.md").read_text()
    assert "## How many labels: label efficiency" in md and (out / "figures" / "metric_vs_labels.png").exists()
    t = pd.read_csv(out / "tables" / "label_efficiency.csv")
    assert sorted(t.budget) == ["all", "fraction"] and set(t.seeds) == {2}
    assert t.set_index("budget").per_class.to_dict() == {"all": 48.0, "fraction": 5.0}  # round(0.1 x 48) per class
    store = ResultStore(tmp_path / "results")
    got = [store.read_scores(ids[(s, 0.1)]) for s in (0, 1)]
    lo, hi = S.percentile_ci(S.bootstrap_samples("auc", "binary-class", got[0][0], [g[1] for g in got], 200, 0,
                                                 "breastmnist"))
    row = t[t.budget == "fraction"].iloc[0]
    assert (row.ci_low, row.ci_high) == pytest.approx((lo, hi)) and lo < row["mean"] < hi
    seeds = pd.read_csv(next((out / "tables").glob("seeds_*.csv")))
    assert set(seeds.model) == {"dummy (random) (test model)"} and set(seeds.n) == {2}  # the subset runs are not seeds of it


def test_report_labels_curve_from_subset_runs_alone(opts, tmp_path):
    """A results folder holding only label-budget runs: each model is still one curve over its
    budgets (not one single-point 'model' per fraction)."""
    import pandas as pd

    from bench.report import make_report

    for f in (0.1, 0.5):
        bench.run("dummy", "breastmnist", seed=0, train_fraction=f, **opts)
    out = tmp_path / "report"
    make_report(tmp_path / "results", out, formats=("md",), n_boot=50)
    t = pd.read_csv(out / "tables" / "label_efficiency.csv")
    assert len(t) == 2 and t.model.nunique() == 1 and sorted(t.amount) == [0.1, 0.5]
