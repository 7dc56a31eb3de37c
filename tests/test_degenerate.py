"""Degenerate configurations are refused or flagged, never silent (a kNN k the smallest class cannot
fill, shots or fractions beyond a class, a val split too small to select on, an option the protocol
does not read, hard-vote AUC), and `bench results export` / `ls` cover every run kind."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import bench
from bench import subsets
from bench.assemble import small_val
from bench.cli import main
from bench.report import make_report
from bench.report.export import export, format_status, status_table


@pytest.fixture
def opts(data_root, tmp_path):
    return dict(data_root=str(data_root), skip_md5=True, results_dir=str(tmp_path / "results"),
                cache_dir=str(tmp_path / "cache"), head_epochs=5, device="cpu", quiet=True, weights="random")


def _meta(res) -> dict:
    return json.loads(res.paths["meta"].read_text())


def _kinds(res) -> list[str]:
    return [w["kind"] for w in _meta(res).get("warnings", [])]


def test_knn_k_is_cut_below_the_smallest_class_warned_and_recorded(opts, capsys):
    # 5 shots x 2 classes = 10 train images: k = 11 would see all of them, every score [0.5, 0.5]
    res = bench.run("dummy", "breastmnist", head="knn", shots=5, **opts)
    assert res.selected["k"] == 4 and res.selected["k_asked"] == 11
    assert res.config.knn_k == 11  # the run id keeps what was asked
    assert _kinds(res) == ["knn_k"]
    assert "warning: --knn-k 11 is not below the smallest class's train count" in capsys.readouterr().err
    _, scores = res.test_scores()
    assert (scores.max(0) - scores.min(0)).max() > 0  # not the same scores for every image
    one = bench.run("dummy", "breastmnist", head="knn", shots=1, **opts)
    assert one.selected["k"] == 1 and _kinds(one) == ["knn_k"]
    full = bench.run("dummy", "breastmnist", head="knn", **opts)  # 48 per class: k = 11 as asked
    assert full.selected["k"] == 11 and "k_asked" not in full.selected and _kinds(full) == []
    # the layer-wise kNN cuts k on every layer, and says it once
    lay = bench.run("dummy", "breastmnist", head="knn", layers="2,4", shots=3, **opts)
    assert {v["selected"]["k"] for v in _meta(lay)["layers"].values()} == {2} and _kinds(lay) == ["knn_k"]


def test_effective_k_rules():
    from bench.protocols.knn import effective_k

    y = np.array([0] * 5 + [1] * 30 + [2] * 0)[:, None]
    assert effective_k(11, y, False, 3)[0] == 4            # a class absent from train does not count
    assert effective_k(4, y, False, 3) == (4, None)        # below the smallest class: as asked
    assert effective_k(5, y, False, 3)[0] == 4
    assert effective_k(1, np.array([[0], [1]]), False, 2) == (1, None)  # nothing smaller to cut to
    ml = (np.random.default_rng(0).random((8, 3)) < 0.5).astype(int)
    assert effective_k(11, ml, True, 3)[0] == 7 and effective_k(5, ml, True, 3) == (5, None)


def test_shots_and_fractions_beyond_a_class_warn_and_record(opts, capsys):
    res = bench.run("dummy", "breastmnist", head="knn", shots=1000, **opts)
    sub = _meta(res)["train_subset"]
    assert sub["n"] == sub["n_full"] == 96 and sub["per_class"] == [48, 48]
    assert sub["short"] == {"0": {"asked": 1000, "used": 48, "available": 48},
                            "1": {"asked": 1000, "used": 48, "available": 48}}
    assert "train_subset" in _kinds(res)
    err = capsys.readouterr().err
    assert "warning: --shots 1000: 2 class(es) have fewer train images" in err and "the whole train split" in err
    # 1% of 48 images rounds to none: one image of each class is kept, and said
    frac = bench.run("dummy", "breastmnist", head="linear", train_fraction=0.01, **opts)
    assert _meta(frac)["train_subset"]["per_class"] == [1, 1] and "train_subset" in _kinds(frac)
    assert "one image of each is kept" in capsys.readouterr().err
    ok = bench.run("dummy", "breastmnist", head="knn", shots=5, **opts)
    assert "short" not in _meta(ok)["train_subset"] and "train_subset" not in _kinds(ok)
    assert subsets.shortfall(np.array([[0]] * 3 + [[2]] * 9), False, 3, shots=5) == \
        {0: {"asked": 5, "used": 3, "available": 3}}  # class 1 is absent: nothing to take


def test_small_val_is_warned_and_marked_in_the_report(opts, tmp_path, capsys):
    res = bench.run("dummy", "breastmnist", limit=10, **opts)  # 10 val images: selection on them is chance
    assert _kinds(res) == ["small_val"]
    assert "warning: the val split has 10 images, 2 classes: too small to select on" in capsys.readouterr().err
    knn = bench.run("dummy", "breastmnist", head="knn", knn_k=3, limit=10, **opts)  # kNN chooses nothing on val
    assert "small_val" not in _kinds(knn)
    out = make_report(tmp_path / "results", tmp_path / "rep", formats=("md",), n_boot=20)
    md = out.read_text()
    assert "[small val]" in md and "[small val]: chosen on a val split too small to select on" in md
    seeds = pd.read_csv(tmp_path / "rep" / "tables" / "seeds_linear_none_28_in32_resize_limit10.csv",
                        keep_default_na=False)
    assert seeds.caveats.tolist() == ["small val"]
    one_class = SimpleNamespace(multilabel=False, splits={"val": SimpleNamespace(labels=np.zeros((40, 1), int))})
    assert "40 images, 1 class:" in small_val(one_class)
    fine = SimpleNamespace(multilabel=False, splits={"val": SimpleNamespace(labels=np.arange(40)[:, None] % 2)})
    assert small_val(fine) is None


def test_options_the_protocol_does_not_read_are_warned_in_run_and_sweep(data_root, tmp_path, capsys):
    base = ["--backbone", "dummy", "--dataset", "breastmnist", "--data-root", str(data_root), "--skip-md5",
            "--results-dir", str(tmp_path / "results")]
    assert main(["run", *base, "--knn-k", "3", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "warning: --knn-k 3 is not read by --head linear (protocol probe)" in err
    assert main(["run", *base, "--head", "knn", "--knn-k", "3", "--dry-run"]) == 0
    assert "warning" not in capsys.readouterr().err
    # a recipe's values are never warned about (medmnistplus sets kNN and fine-tuning values)
    assert main(["run", *base, "--recipe", "medmnistplus", "--dry-run"]) == 0
    assert "warning" not in capsys.readouterr().err
    sweep = ["sweep", "--backbone", "dummy", "--dataset", "breastmnist", "--data-root", str(data_root),
             "--skip-md5", "--results-dir", str(tmp_path / "results"), "--dry-run"]
    assert main([*sweep, "--head", "linear", "--knn-k", "3"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "--knn-k is not read by any run of this sweep (--head linear)" in err
    assert main([*sweep, "--head", "linear", "knn", "--knn-k", "3"]) == 0
    assert "--knn-k is not read by 1 of the sweep's 2 runs (--head linear)" in capsys.readouterr().err


def test_hard_vote_auc_is_shown_as_not_meaningful(data_root, tmp_path, capsys):
    args = ["run", "--backbone", "dummy", "--dataset", "breastmnist", "--data-root", str(data_root), "--skip-md5",
            "--weights", "random", "--results-dir", str(tmp_path / "results"), "--cache-dir", str(tmp_path / "c"),
            "--head", "knn", "--quiet"]
    assert main([*args, "--recipe", "medmnistplus"]) == 0
    out = capsys.readouterr()
    assert "warning: --knn-vote majority" in out.err
    assert "auc" in out.out and out.out.count("(not meaningful: hard votes)") == 2  # val and test lines
    assert "warnings: hard_votes" in out.out
    assert main(args) == 0
    assert "not meaningful" not in capsys.readouterr().out  # vote shares: a ranking
    rep = make_report(tmp_path / "results", tmp_path / "rep", formats=("md",), n_boot=20).read_text()
    marked = [line for line in rep.splitlines() if "[medmnistplus]" in line and line.startswith("| dummy")]
    assert sum("[hard votes]" in line for line in marked) == 3  # average, seeds and interval tables (not ECE)
    plain = [line for line in rep.splitlines() if "[medfm]" in line and line.startswith("| dummy")]
    assert plain and not any("[hard votes]" in line for line in plain)
    acc = make_report(tmp_path / "results", tmp_path / "acc", formats=("md",), n_boot=20, metric="acc")
    assert "[hard votes]" not in acc.read_text()  # accuracy of majority votes is meaningful


def test_report_shows_no_flat_knn_point_without_its_mark(opts, tmp_path, monkeypatch):
    """kNN at 1 and 5 shots: a run cuts k and is marked [k cut]; a run from before the cut (k = 11,
    every score equal) is marked [k too large, constant scores] from what its JSON and scores hold."""
    import bench.protocols.knn as knn

    for shots in (1, 5, 0):
        bench.run("dummy", "breastmnist", head="knn", shots=shots, **opts)
    old = dict(opts, results_dir=str(tmp_path / "old"))
    monkeypatch.setattr(knn, "effective_k", lambda k, *a, **kw: (k, None))  # the code before the fix
    for shots in (1, 5, 0):
        bench.run("dummy", "breastmnist", head="knn", shots=shots, **old)
    monkeypatch.undo()
    for results, expect in (("results", "k cut"), ("old", "k too large")):
        make_report(tmp_path / results, tmp_path / f"rep-{results}", formats=("md", "png"), n_boot=50)
        t = pd.read_csv(tmp_path / f"rep-{results}" / "tables" / "label_efficiency.csv", keep_default_na=False)
        few = t[t.budget == "shots"]
        assert len(few) == 2 and all(expect in c for c in few.caveats)
        flat = t[(t["mean"] - 0.5).abs() < 1e-9]
        assert all(c for c in flat.caveats)  # every 0.5 point carries its mark
        assert (t[t.budget == "all"].caveats == "").all()
        md = (tmp_path / f"rep-{results}" / "report.md").read_text()
        assert f"[{expect}" in md
    old_t = pd.read_csv(tmp_path / "rep-old" / "tables" / "label_efficiency.csv", keep_default_na=False)
    assert len(old_t[(old_t["mean"] - 0.5).abs() < 1e-9]) == 2  # the bug this guards against was there
    assert all("constant scores" in c for c in old_t[old_t.budget == "shots"].caveats)


def test_export_and_ls_cover_every_run_kind_and_agree_with_load_results(opts, tmp_path, capsys):
    results = tmp_path / "results"
    bench.run("dummy", "breastmnist", **opts)
    bench.run("dummy", "breastmnist", head="knn", **opts)
    bench.run("dummy", "breastmnist", layers="2,4", **opts)
    bench.run("dummy", "breastmnist", train_fraction=0.5, **opts)
    bench.run("dummy", "breastmnist", head="knn", shots=3, **opts)
    deit = dict(opts, head_epochs=None, limit=24)
    for adapt in ("lora", "bitfit"):
        bench.run("deit", "breastmnist", variant="tiny", unfreeze="last1", adapt=adapt, epochs=1, **deit)
    raw = bench.load_results(results)
    assert raw.run_id.nunique() == 7 == len(list((results / "runs").glob("*.csv")))
    out, n_rows, n_runs = export(results, tmp_path / "all.csv")
    assert (n_runs, n_rows) == (7, len(raw))
    df = pd.read_csv(out, keep_default_na=False, dtype=str)
    assert sorted(df.run_id.unique()) == sorted(raw.run_id.unique())
    assert sorted(set(df.kind)) == ["bitfit", "fraction", "layers", "lora", "shots", "standard"]
    for col in ("layer", "layers", "shots", "train_fraction", "adapt", "lora_rank", "kind", "caveats"):
        assert col in df.columns, col
    lay = df[df.kind == "layers"]
    assert set(lay.layer) == {"", "2", "4"} and set(lay.layers) == {"2,4"}
    assert set(df[df.kind == "shots"].shots) == {"3"} and set(df[df.kind == "fraction"].train_fraction) == {"0.5"}
    assert set(df[df.kind == "lora"].lora_rank) == {"8"} and set(df[df.kind == "bitfit"].adapt) == {"bitfit"}
    # every (run, layer, split, metric) once
    assert not df.duplicated(["run_id", "layer", "split", "metric"]).any()
    st = status_table(results)
    assert int(st.done.sum()) == 7
    text = format_status(st)
    assert "7 run(s) done" in text and "fraction 1" in text and "layers 1" in text and "lora 1" in text
    assert main(["results", "export", "--results-dir", str(results), "--out", str(tmp_path / "x.csv")]) == 0
    assert "of 7 run(s) written to" in capsys.readouterr().out
    assert main(["results", "ls", "--results-dir", str(results)]) == 0
    assert "7 run(s) done" in capsys.readouterr().out
