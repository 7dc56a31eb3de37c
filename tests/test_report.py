"""`bench report`: exact tables, gains and intervals from fixture results, honest missing cells,
figures, HTML in a headless browser, published references, and a real-run end to end."""
from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.errors import UserError
from bench.report import make_report
from bench.report import stats as S
from bench.report.load import ROW_COLUMNS, load_results
from bench.report.reference import load_reference
from bench.report.tables import Analysis
from conftest import write_synthetic_npz

FIXTURE = Path(__file__).parent / "fixtures" / "report" / "runs.csv"
LABELS = {"breastmnist": {"0": "malignant", "1": "normal, benign"},
          "pneumoniamnist": {"0": "normal", "1": "pneumonia"}}
N_BOOT = 200


# -- fixture writers ---------------------------------------------------------------------------

def write_run(results: Path, *, backbone: str, dataset: str, metrics: dict[tuple[str, str], float],
              size: int = 28, head: str = "linear", unfreeze: str = "none", seed: int = 0, variant: str = "",
              weights: str = "default", input_size: int = 224, limit: str = "", task: str = "binary-class",
              scores: tuple[np.ndarray, np.ndarray] | None = None, git: str | None = "abc123",
              created: str = "2026-11-01T10:00:00+00:00", extra_config: dict | None = None) -> str:
    """One run in the layout `bench run` writes: tidy CSV, provenance JSON, optional test scores.
    ``extra_config``: more keys of the run's config (e.g. recipe, lr)."""
    cfg = dict(backbone=backbone, variant=variant, weights=weights, dataset=dataset, size=size,
               input_size=input_size, resize="resize", head=head, unfreeze=unfreeze, seed=seed, limit=limit,
               **(extra_config or {}))
    digest = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:10]
    run_id = f"{backbone}-{dataset}_{size}-{head}-{unfreeze}-s{seed}-{digest}"
    runs = results / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(ROW_COLUMNS)
    for (split, metric), value in metrics.items():
        w.writerow([run_id, *[cfg[c] for c in ROW_COLUMNS[1:12]], split, metric, value])
    (runs / f"{run_id}.csv").write_text(buf.getvalue())
    meta = {"run_id": run_id, "config": cfg, "task": task, "labels": LABELS.get(dataset, {}),
            "seeds": {"seed": seed}, "versions": {"python": "3.11.9", "torch": "2.4.1", "timm": "1.0.9",
                                                  "medfm-bench": "0.1.0"},
            "git": git, "device": "cpu", "timings": {"total_s": 1.0}, "created": created,
            "backbone": {"blocks": 4}}
    (runs / f"{run_id}.json").write_text(json.dumps(meta))
    if scores is not None:
        np.savez_compressed(runs / f"{run_id}.scores.npz", y_true=scores[0], y_score=scores[1])
    return run_id


def fixture_table() -> pd.DataFrame:
    return pd.read_csv(FIXTURE)


def write_fixture(results: Path) -> pd.DataFrame:
    """The hand-written values of tests/fixtures/report/runs.csv as a results folder."""
    df = fixture_table()
    for r in df.itertuples():
        metrics = {("test", "auc"): r.test_auc, ("test", "acc"): r.test_acc,
                   ("test", "balanced_acc"): r.test_balanced_acc, ("test", "recall_0"): r.test_recall_0,
                   ("test", "recall_1"): r.test_recall_1, ("val", "auc"): r.val_auc}
        write_run(results, backbone=r.backbone, dataset=r.dataset, size=r.size, head=r.head,
                  unfreeze=r.unfreeze, seed=r.seed, metrics=metrics,
                  git="abc123" if r.seed < 2 else "def456")
    # a failed run is counted in the provenance, never tabled
    (results / "failures").mkdir(parents=True, exist_ok=True)
    (results / "failures" / "clip-pneumoniamnist_28-x.json").write_text(json.dumps({"run_id": "x", "error": "OOM"}))
    # per-epoch curves live next to the run CSVs and must not be read as results
    (results / "runs" / "resnet50-breastmnist_28-x.curves.csv").write_text("epoch,split,metric,value\n1,val,auc,0.5\n")
    return df


@pytest.fixture
def fixture_results(tmp_path) -> Path:
    write_fixture(tmp_path / "results")
    return tmp_path / "results"


def analysis(results: Path, metric: str = "auc", baseline: str = "resnet50", filters=()) -> Analysis:
    return Analysis(load_results(results, list(filters)), metric, baseline, n_boot=N_BOOT)


def sec28(a: Analysis):
    [sec] = [s for s in a.sections() if s.size == 28 and s.unfreeze == "none"]
    return sec


# -- input errors ------------------------------------------------------------------------------

def test_missing_and_empty_results_folder_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        make_report(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty" / "runs").mkdir(parents=True)
    with pytest.raises(UserError, match="no completed runs"):
        make_report(tmp_path / "empty", tmp_path / "out")


def test_unknown_baseline_metric_filter_and_format_suggest_fixes(fixture_results, tmp_path):
    with pytest.raises(UserError, match="resnet50"):
        make_report(fixture_results, tmp_path / "o", baseline="resnet5")
    with pytest.raises(UserError, match="balanced_acc"):
        make_report(fixture_results, tmp_path / "o", metric="balanced_ac")
    with pytest.raises(UserError, match="dataset"):
        make_report(fixture_results, tmp_path / "o", filters=["datset=breastmnist"])
    with pytest.raises(UserError, match="breastmnist"):
        make_report(fixture_results, tmp_path / "o", filters=["dataset=breastmnis"])
    with pytest.raises(UserError, match="KEY=VALUE"):
        make_report(fixture_results, tmp_path / "o", filters=["dataset"])
    with pytest.raises(UserError, match="latex"):
        make_report(fixture_results, tmp_path / "o", formats=("latx",))


# -- tables: exact values, missing cells, partial seeds ----------------------------------------

def test_seed_table_values_missing_cell_and_partial_seeds(fixture_results):
    a = analysis(fixture_results)
    sec = sec28(a)
    df = fixture_table()
    main = df[(df["size"] == 28) & (df.unfreeze == "none")]
    for (model, dataset), g in main.groupby(["backbone", "dataset"]):
        c = a.cell(sec, model, dataset)
        v = g.test_auc.to_numpy()
        assert c["mean"] == pytest.approx(v.mean(), abs=1e-12)
        assert c["std"] == pytest.approx(v.std(ddof=1), abs=1e-12)
        assert c["n"] == len(v) and c["expected_n"] == 3
    assert a.cell(sec, "clip", "pneumoniamnist") is None  # never run: missing, not zero

    from bench.report.tables import seed_table
    t = seed_table(a, sec)
    assert t.columns == ["model", "PneumoniaMNIST", "BreastMNIST"]  # MedMNIST's dataset order
    rows = {r[0].text: dict(zip(t.columns[1:], r[1:])) for r in t.rows}
    assert [r[0].text for r in t.rows][0] == "resnet50"  # baseline first
    clip_pneu = rows["clip"]["PneumoniaMNIST"]
    assert clip_pneu.missing and clip_pneu.text == "—"
    dino_pneu = rows["dinov2"]["PneumoniaMNIST"]
    assert dino_pneu.flag and "n=2/3" in dino_pneu.text  # partial seeds flagged
    v = main[(main.backbone == "dinov2") & (main.dataset == "pneumoniamnist")].test_auc.to_numpy()
    assert dino_pneu.text.startswith(f"{v.mean():.3f} ± {v.std(ddof=1):.3f}")
    # best per column: dinov2 has the highest mean AUC on both datasets
    assert all(c.bold for c in rows["dinov2"].values())
    assert not any(c.bold for m in ("resnet50", "clip") for c in rows[m].values())


def test_gains_over_baseline_are_exact(fixture_results):
    from bench.report.tables import gains

    a = analysis(fixture_results)
    g = gains(a, sec28(a)).set_index(["model", "dataset"])
    df = fixture_table()
    main = df[(df["size"] == 28) & (df.unfreeze == "none")]
    mean = main.groupby(["backbone", "dataset"]).test_auc.mean()
    for model in ("dinov2", "clip"):
        for ds in ("breastmnist", "pneumoniamnist"):
            if (model, ds) not in mean.index:
                assert (model, ds) not in g.index
                continue
            expected = 100 * (mean[(model, ds)] - mean[("resnet50", ds)]) / mean[("resnet50", ds)]
            assert g.loc[(model, ds), "rel_gain_pct"] == pytest.approx(expected, abs=1e-9)
    # hand check of one: dinov2 on BreastMNIST 0.90 vs 0.82 -> +9.756...%
    assert g.loc[("dinov2", "breastmnist"), "rel_gain_pct"] == pytest.approx(100 * 0.08 / 0.82)


def test_average_over_datasets_flags_incomplete_models(fixture_results):
    from bench.report.tables import average_tables

    a = analysis(fixture_results)
    [t] = [t for t in average_tables(a) if t.name == "average_linear_none"]
    assert t.columns == ["model", "28 px (input 224 px)", "64 px (input 224 px)"]
    rows = {r[0].text: r[1:] for r in t.rows}
    df = fixture_table()
    main = df[(df["size"] == 28) & (df.unfreeze == "none")]
    per_ds = main.groupby(["backbone", "dataset"]).test_auc.mean()
    expected_r50 = np.mean([per_ds[("resnet50", "breastmnist")], per_ds[("resnet50", "pneumoniamnist")]])
    assert rows["resnet50"][0].text == f"{expected_r50:.3f} (2 datasets)"
    assert rows["clip"][0].flag and "(1/2 datasets)" in rows["clip"][0].text
    assert rows["dinov2"][0].bold and not rows["clip"][0].bold


def test_per_class_recall_exposes_a_failing_class(fixture_results):
    from bench.report.tables import recall_table

    a = analysis(fixture_results)
    t, checked = recall_table(a, sec28(a))
    assert checked == 2 * (2 + 2 + 1)  # two classes x five (model, dataset) cells
    shown = [(r[0].text, r[1].text, r[2].text) for r in t.rows]
    assert shown == [("dinov2", "BreastMNIST", "0: malignant")]
    v = fixture_table().query("backbone == 'dinov2' and dataset == 'breastmnist' and size == 28 "
                              "and unfreeze == 'none'").test_recall_0
    assert t.rows[0][3].text == f"{v.mean():.3f} ± {v.std(ddof=1):.3f}"


# -- statistics --------------------------------------------------------------------------------

def _binary_scores(rng, y, p_correct):
    """Probabilities whose argmax is right with probability p_correct (known accuracy)."""
    right = rng.random(len(y)) < p_correct
    pred = np.where(right, y, 1 - y)
    p1 = np.where(pred == 1, rng.uniform(0.55, 0.95, len(y)), rng.uniform(0.05, 0.45, len(y)))
    return np.stack([1 - p1, p1], axis=1)


def test_bootstrap_interval_and_paired_test_match_independent_numpy(tmp_path):
    rng = np.random.default_rng(7)
    n = 40
    y = np.array([0, 1] * (n // 2))
    results = tmp_path / "results"
    scores = {("resnet50", s): _binary_scores(rng, y, 0.7) for s in (0, 1)}
    scores |= {("dinov2", s): _binary_scores(rng, y, 0.9) for s in (0, 1)}
    for (model, s), sc in scores.items():
        acc = float(((sc[:, 1] > 0.5).astype(int) == y).mean())
        write_run(results, backbone=model, dataset="breastmnist", seed=s, metrics={("test", "acc"): acc},
                  scores=(y, sc))
    a = Analysis(load_results(results), "acc", "resnet50", n_boot=N_BOOT, seed=3)
    [sec] = a.sections()

    # independent recomputation: the documented index recipe, accuracy in plain numpy
    rng_b = np.random.default_rng(np.random.SeedSequence([3, zlib.crc32(b"breastmnist"), n]))
    idx = np.stack([rng_b.integers(0, n, size=n) for _ in range(N_BOOT)])  # one resample after the other
    def boot(model):
        accs = [((scores[(model, s)][idx, 1] > 0.5).astype(int) == y[idx]).mean(axis=1) for s in (0, 1)]
        return np.mean(accs, axis=0)
    dino, base = boot("dinov2"), boot("resnet50")

    from bench.report.tables import ci_table, paired_table
    ct, _ = ci_table(a, sec)
    ci = ct.data.set_index("model")
    lo, hi = np.percentile(dino, [2.5, 97.5])
    assert ci.loc["dinov2", "ci_low"] == pytest.approx(lo) and ci.loc["dinov2", "ci_high"] == pytest.approx(hi)
    mean_acc = np.mean([((scores[("dinov2", s)][:, 1] > 0.5) == y).mean() for s in (0, 1)])
    assert ci.loc["dinov2", "mean"] == pytest.approx(mean_acc)
    assert lo <= mean_acc <= hi

    pt = paired_table(a, sec)
    row = pt.data.set_index("model").loc["dinov2"]
    d = dino - base
    assert (row.ci_low, row.ci_high) == pytest.approx(tuple(np.percentile(d, [2.5, 97.5])))
    expected_p = min(1.0, 2 * min((np.sum(d <= 0) + 1) / (N_BOOT + 1), (np.sum(d >= 0) + 1) / (N_BOOT + 1)))
    assert row.p == pytest.approx(expected_p)
    assert row.p_holm == pytest.approx(expected_p)  # a family of one comparison


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning", "ignore::UserWarning")
@pytest.mark.parametrize("task,n_classes", [("binary-class", 2), ("multi-class", 4), ("ordinal-regression", 5),
                                             ("multi-label, binary-class", 3)])
@pytest.mark.parametrize("metric", ["auc", "acc", "balanced_acc"])
def test_bootstrap_metrics_equal_bench_metrics_on_each_resample(task, n_classes, metric):
    """The vectorised ACC/AUC of the bootstrap give what bench.metrics gives on the same resample,
    including ties in the scores and resamples that miss a class (NaN, where sklearn raises)."""
    from bench import metrics as M

    rng = np.random.default_rng(0)
    n = 30
    if task.startswith("multi-label"):
        y = (rng.random((n, n_classes)) < 0.3).astype(int)
        sc = np.round(rng.random((n, n_classes)), 1)  # rounding makes ties
    else:
        y = rng.integers(0, n_classes, n)
        y[:n_classes] = np.arange(n_classes)
        sc = np.round(rng.dirichlet(np.ones(n_classes), n), 1)
    n_boot = 60 if metric != "balanced_acc" else 15  # balanced_acc takes the slow path
    got = S.bootstrap_samples(metric, task, y, [sc], n_boot, seed=1, key="x")
    rng_b = np.random.default_rng(np.random.SeedSequence([1, zlib.crc32(b"x"), n]))
    fn = {"auc": M.auc, "acc": M.acc}.get(metric, lambda t, a, b: M.evaluate(t, a, b)[metric])
    for b in range(n_boot):
        ix = rng_b.integers(0, n, size=n)
        try:
            want = fn(task, y[ix], sc[ix])
        except ValueError:
            want = float("nan")
        if np.isnan(want):
            assert np.isnan(got[b])
        else:
            assert got[b] == pytest.approx(want, abs=1e-12)
    if metric == "auc" and task in ("multi-class", "ordinal-regression"):
        assert np.isnan(got).any() and np.isfinite(got).any()  # both kinds of resample were exercised


def test_holm_and_wilcoxon_by_hand():
    # Holm: sorted p 0.01, 0.02, 0.04 -> 3*0.01, max(0.03, 2*0.02), max(0.04, 1*0.04)
    assert S.holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert S.holm([0.5, 0.01]) == pytest.approx([0.5, 0.02])
    out = S.holm([np.nan, 0.03])
    assert np.isnan(out[0]) and out[1] == pytest.approx(0.03)
    # five positive differences, exact two-sided signed-rank p = 2 / 2**5
    p, n = S.wilcoxon_p([1.1, 2.2, 3.3, 4.4, 5.5], [1.0, 2.0, 3.0, 4.0, 5.0])
    assert (p, n) == (pytest.approx(2 / 32), 5)
    assert np.isnan(S.wilcoxon_p([1.0], [1.0])[0])  # no non-zero difference: not testable


def test_wilcoxon_table_uses_datasets_not_seeds_as_units(fixture_results):
    from bench.report.ranking import wilcoxon_table

    a = analysis(fixture_results)
    t = wilcoxon_table(a, sec28(a))
    df = t.data.set_index("model")
    # dinov2 vs resnet50: 3 BreastMNIST seeds + 2 PneumoniaMNIST seeds, but only 2 datasets
    assert df.loc["dinov2", "datasets"] == 2 and df.loc["dinov2", "wins"] == 2
    assert df.loc["dinov2", "p"] == pytest.approx(0.5)  # exact: 2 / 2**2
    assert not df.loc["dinov2", "testable"] and np.isnan(df.loc["dinov2", "p_holm"])
    assert df.loc["clip", "datasets"] == 1
    reading = {r[0].text: r[-1].text for r in t.rows}
    assert reading["dinov2"].startswith("too few datasets: 2 cannot reach p < 0.05")


# -- files: markdown, figures, html, latex, provenance, reference --------------------------------

def _pixel_std(png: Path) -> float:
    import matplotlib.image as mpimg

    return float(mpimg.imread(png)[..., :3].std())


def test_report_files_figures_and_provenance(fixture_results, tmp_path):
    df = fixture_table()
    n, n_new = len(df), int((df.seed >= 2).sum())
    out = make_report(fixture_results, tmp_path / "rep", formats=("md", "html", "png", "latex"), n_boot=N_BOOT)
    rep = tmp_path / "rep"
    assert out == rep / "report.html"
    md = (rep / "report.md").read_text()
    assert "| clip | " in md and "—" in md and "n=2/3" in md and "†" in md
    assert "Gain over resnet50" in md and "+9.8%" in md  # dinov2 BreastMNIST, 100*0.08/0.82
    # provenance: runs, failures, seeds, versions, git revisions, dates
    assert f"{n} (of {n} completed; 1 failed)" in md
    assert "| seeds | 0, 1, 2 |" in md
    assert f"torch | 2.4.1 ({n} runs)" in md
    assert f"abc123 ({n - n_new} runs), def456 ({n_new} runs)" in md
    assert "2026-11-01T10:00:00+00:00 to 2026-11-01T10:00:00+00:00" in md
    figs = sorted(p.name for p in (rep / "figures").glob("*.png"))
    assert {"gain_over_baseline.png", "metric_vs_resolution.png", "metric_vs_unfrozen_blocks.png"} <= set(figs)
    assert any(f.startswith("heatmap_linear_none_28") for f in figs)
    for f in (rep / "figures").glob("*.png"):
        assert _pixel_std(f) > 0.05, f.name  # not blank
    assert (rep / "tables" / "provenance.csv").exists()
    tex = (rep / "report.tex").read_text()
    assert r"\begin{tabular}" in tex and r"\toprule" in tex and r"\textbf{" in tex and "$\\pm$" in tex
    assert "resnet50" in tex and "Provenance" in tex


def test_skipped_figures_are_explained(tmp_path):
    results = tmp_path / "results"
    for model, auc in (("resnet50", 0.8), ("dinov2", 0.9)):
        write_run(results, backbone=model, dataset="breastmnist", metrics={("test", "auc"): auc})
    make_report(results, tmp_path / "rep", formats=("md", "png"), n_boot=N_BOOT)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Unfreeze figure skipped" in md and "Resolution figure skipped" in md
    assert not (tmp_path / "rep" / "figures" / "metric_vs_resolution.png").exists()
    assert "No saved test scores" in md  # intervals need the .scores.npz files


def test_filters_restrict_runs(fixture_results, tmp_path):
    make_report(fixture_results, tmp_path / "rep", filters=["dataset=breastmnist", "size=28"], formats=("md",),
                n_boot=N_BOOT)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "PneumoniaMNIST" not in md.split("## Provenance")[0]
    df = fixture_table()
    kept = int(((df.dataset == "breastmnist") & (df["size"] == 28)).sum())
    assert f"Filters: dataset=breastmnist; size=28 ({kept} of {len(df)} runs kept)" in md
    with pytest.raises(UserError, match="its parent"):
        make_report(fixture_results / "runs", tmp_path / "o")


def test_latex_escapes_names_and_symbols():
    from bench.report.render import tex

    assert tex("vit_base & 50% ± Δ #1") == r"vit\_base \& 50\% $\pm$ $\Delta$ \#1"
    assert tex("a\\b {x}") == r"a\textbackslash{}b \{x\}"


def test_reference_numbers_are_sourced_and_anchors_hold(fixture_results, tmp_path):
    ref = load_reference()
    assert (ref.source.str.len() > 0).all()
    assert (ref[ref.value.isna()].note.str.len() > 0).all()  # every blank says why
    assert ref.value.dropna().between(0, 1).all()
    def v(method, ds, metric):
        return ref[(ref.method == method) & (ref.dataset == ds) & (ref.metric == metric)].value.item()
    assert v("ResNet-18 (28)", "breastmnist", "auc") == 0.901 and v("ResNet-18 (28)", "breastmnist", "acc") == 0.863
    assert v("ResNet-18 (28)", "retinamnist", "auc") == 0.717 and v("ResNet-18 (28)", "retinamnist", "acc") == 0.524
    assert set(ref[ref.dataset != "average"].method) == {
        "ResNet-18 (28)", "ResNet-18 (224)", "ResNet-50 (28)", "ResNet-50 (224)", "auto-sklearn", "AutoKeras",
        "Google AutoML Vision", "SimpleCNN (primer)"}
    assert v("SimpleCNN (primer)", "pneumoniamnist", "acc") == 0.8782  # the seed document's one run
    assert ref[ref.method == "SimpleCNN (primer)"].runs.tolist() == ["1"]
    assert ref[ref.dataset != "average"].dataset.nunique() == 12
    make_report(fixture_results, tmp_path / "rep", formats=("md",), with_reference=True, n_boot=N_BOOT)
    md = (tmp_path / "rep" / "report.md").read_text()
    [row] = [line for line in md.splitlines() if line.startswith("| ResNet-18 (28) [published] |")]
    assert row.split(" | ")[1:] == ["0.944", "0.901 |"]  # PneumoniaMNIST, BreastMNIST (MedMNIST order)
    assert "| dinov2 · linear head, frozen backbone · 28 px (input 224 px) |" in md


# -- the HTML report in a real browser ---------------------------------------------------------

def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):  # the test setup may install it
        install = ["apt-get", "install", "-y", "-q", "chromium"]
        if subprocess.run(install, capture_output=True, timeout=600).returncode != 0:
            # a fresh machine has no package lists yet
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=600)
            subprocess.run(install, capture_output=True, timeout=600)
    return shutil.which("chromium")


def test_html_is_self_contained_and_renders_in_headless_chromium(fixture_results, tmp_path):
    html = make_report(fixture_results, tmp_path / "rep", formats=("html",), n_boot=N_BOOT)
    text = html.read_text()
    assert "http://" not in text and "https://" not in text  # no external resources
    assert text.count('src="data:image/png;base64,') >= 3
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed and cannot be installed here")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    cells = re.findall(r"<td[^>]*>([^<]*)", dom.stdout)
    assert "resnet50" in cells and "dinov2" in cells and len(cells) > 40
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,1600", html.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.exists() and _pixel_std(shot) > 0.05


# -- real runs, end to end ---------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("bench.cli") is None, reason="bench.cli is not written yet")
def test_real_dummy_runs_then_report_end_to_end(tmp_path):
    root = tmp_path / "medmnist"
    write_synthetic_npz(root, "breastmnist", 28)
    results = tmp_path / "results"
    env = dict(os.environ)
    base = [sys.executable, "-m", "bench.cli"]

    def run(variant: str, seed: int) -> subprocess.Popen:
        return subprocess.Popen([*base, "run", "--backbone", "dummy", "--variant", variant, "--dataset", "breastmnist",
                                 "--data-root", str(root), "--skip-md5", "--results-dir", str(results),
                                 "--seed", str(seed), "--head", "linear", "--limit", "64", "--head-epochs", "10", "-q"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # side by side: the feature cache is locked per entry, and most of each run is Python start-up
    for p in [run(*job) for job in (("tiny", 0), ("small", 0))]:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    out = tmp_path / "report"
    r = subprocess.run([*base, "report", "--results-dir", str(results), "--out", str(out),
                        "--baseline", "dummy tiny", "--format", "md", "--format", "html", "--format", "png"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    md = (out / "report.md").read_text()
    # test models are labelled so, and an explicit --baseline may still name one without its marks
    assert "dummy small (random) (test model)" in md and "Paired bootstrap against dummy tiny (random) (test model)" in md
    ci = pd.read_csv(next((out / "tables").glob("ci_linear_none_28*.csv"))).set_index("model")
    assert (ci.ci_low <= ci["mean"]).all() and (ci["mean"] <= ci.ci_high).all()
    assert set(ci.index) == {"dummy tiny (random) (test model)", "dummy small (random) (test model)"} and (ci.valid_resamples > 0).all()
    assert (out / "report.html").exists() and list((out / "figures").glob("heatmap_*.png"))


def test_latex_maps_the_statistics_symbols_to_commands():
    from bench.report.render import tex

    out = tex("χ² p (Holm) · CD (α=0.05) = q_α √(k(k+1)/(6N)) · (p − y)²")
    assert out.isascii() and r"$\chi$\textsuperscript{2}" in out and r"$\alpha$" in out and r"$\surd$" in out


def test_reproductions_put_each_published_number_beside_ours(tmp_path):
    """A reference row's `ours` runs: seed mean, bootstrap interval over test images and a reading;
    a single published run is compared as one; a published dataset not run here says so."""
    import numpy as np

    from bench.cli import main
    from bench.report.reproduce import parse_ours, reading, reproduction_table

    assert parse_ours("backbone=simplecnn recipe=primer unfreeze=all") == {
        "backbone": "simplecnn", "recipe": "primer", "unfreeze": "all"}
    o = {"values": [0.80, 0.83], "ci_low": 0.79, "ci_high": 0.86}
    assert reading(0.81, o, single=False) == "published inside our interval"
    assert reading(0.90, o, single=False) == "published above our interval"
    assert reading(0.8782, o, single=True) == ("published above our interval; a single published run, compared as "
                                               "one: above our 2 single runs (0.800–0.830)")
    assert reading(float("nan"), o, single=False) == "no published number"
    assert reading(0.9, {"values": []}, single=False) == "not run here"

    res = tmp_path / "r"
    for seed in (0, 1):
        assert main(["run", "--backbone", "simplecnn", "--dataset", "breastmnist", "--recipe", "primer",
                     "--unfreeze", "all", "--epochs", "1", "--limit", "60", "--seed", str(seed),
                     "--results-dir", str(res), "--device", "cpu", "-q"]) == 0
    ref = pd.DataFrame([
        {"method": "SimpleCNN (primer)", "resolution": "28", "dataset": "pneumoniamnist", "split": "test",
         "metric": "acc", "value": 0.8782, "source": "the primer", "note": "", "runs": "1",
         "ours": "backbone=simplecnn recipe=primer unfreeze=all size=28"},
        {"method": "SimpleCNN (primer)", "resolution": "28", "dataset": "breastmnist", "split": "test",
         "metric": "acc", "value": 0.5, "source": "made up", "note": "", "runs": "1",
         "ours": "backbone=simplecnn recipe=primer unfreeze=all size=28"},
        {"method": "ResNet-18 (28)", "resolution": "28", "dataset": "breastmnist", "split": "test",
         "metric": "acc", "value": 0.863, "source": "v2", "note": "", "runs": "",
         "ours": "backbone=resnet18_28 recipe=medmnist-v2 unfreeze=all size=28"}])
    a = Analysis(load_results(res), "acc", None, n_boot=200, require_baseline=False)
    t, notes = reproduction_table(a, ref)
    d = t.data.set_index("dataset")
    assert list(t.data.method) == ["SimpleCNN (primer)", "SimpleCNN (primer)"]  # no ResNet-18 (28) runs here
    breast = d.loc["breastmnist"]
    values = [float(x) for x in breast.single_runs.split()]
    assert len(values) == 2 and np.isclose(breast["mean"], np.mean(values))
    assert breast.ci_low <= breast["mean"] <= breast.ci_high and breast.seeds == "0 1"
    assert "a single published run, compared as one" in breast.reading
    assert d.loc["pneumoniamnist"].reading == "not run here"
    md = "\n".join(" | ".join(c.text for c in row) for row in t.rows)
    assert "0.8782 (1 run) | not run here" in md
    assert notes == ["No runs here reproduce: ResNet-18 (28) (backbone=resnet18_28 recipe=medmnist-v2 unfreeze=all "
                     "size=28)."]


def test_a_multiclass_brier_above_one_is_in_range(tmp_path):
    """bench.metrics.brier sums over classes for multi-class tasks: up to 2 (one-hot kNN votes reach 1.08)."""
    from bench.report.load import _check_run

    def df(value):
        return pd.DataFrame({"run_id": ["r1"], "layer": [""], "split": ["val"], "metric": ["brier"], "value": [value]})

    assert _check_run(None, tmp_path / "r1.csv", df(1.08333), {}) == "r1"
    with pytest.raises(UserError, match="val brier = 2.5 is out of its range"):
        _check_run(None, tmp_path / "r1.csv", df(2.5), {})
