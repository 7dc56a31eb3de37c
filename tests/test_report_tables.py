"""`bench report` read back: the table CSVs against an independent computation from the run files,
labels that name non-default weights, the default baseline, bold and alignment, figure files."""
from __future__ import annotations

import csv
import json
import re
import xml.etree.ElementTree as ET
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from bench import metrics as M
from bench.errors import UserError
from bench.report import make_report
from bench.report.load import load_results
from bench.report.tables import Analysis
from test_report import write_run

DATASETS = ["pathmnist", "dermamnist", "octmnist", "pneumoniamnist", "breastmnist", "bloodmnist", "organamnist"]
# backbone -> (signal strength, weights)
MODELS = {"resnet50": (0.6, "default"), "dinov2": (1.2, "default"), "clip": (0.9, "default"),
          "resnet18": (0.5, "random")}
SEEDS = (0, 1)
N_BOOT = 100


def write_synthetic_results(results: Path, datasets=DATASETS, models=MODELS, seeds=SEEDS) -> None:
    """Binary tasks with real scores; every metric row computed from the scores by bench.metrics."""
    rng = np.random.default_rng(0)
    for di, d in enumerate(datasets):
        n = 60 + 10 * di
        y = rng.integers(0, 2, n)
        for m, (strength, weights) in models.items():
            for seed in seeds:
                logit = strength * (2 * y - 1) + rng.normal(0, 1, n)
                p1 = 1 / (1 + np.exp(-logit))
                sc = np.stack([1 - p1, p1], 1)
                ev = M.evaluate("binary-class", y, sc)
                write_run(results, backbone=m, dataset=d, seed=seed, weights=weights, scores=(y, sc),
                          metrics={("test", k): v for k, v in ev.items()} | {("val", "auc"): ev["auc"]})


@pytest.fixture(scope="module")
def synth_report(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("synth")
    write_synthetic_results(root / "results")
    make_report(root / "results", root / "rep", formats=("md", "html", "png"), n_boot=N_BOOT)
    return root / "results", root / "rep"


def _read_runs(results: Path) -> dict[tuple[str, str, str], list[float]]:
    """(backbone, dataset, metric) -> test values over seeds, read with the csv module only."""
    out: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for p in sorted((results / "runs").glob("*.csv")):
        with open(p, newline="") as f:
            for r in csv.DictReader(f):
                if r["split"] == "test":
                    out[(r["backbone"], r["dataset"], r["metric"])].append(float(r["value"]))
    return out


def _label(backbone: str) -> str:
    return f"{backbone} (random)" if MODELS[backbone][1] == "random" else backbone


def _table(rep: Path, prefix: str) -> pd.DataFrame:
    [path] = sorted((rep / "tables").glob(f"{prefix}_*.csv"))
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


# -- item 8: the CSVs against an independent computation ---------------------------------------

def test_table_csvs_equal_an_independent_computation_from_the_run_files(synth_report):
    results, rep = synth_report
    runs = _read_runs(results)
    mean = {k: float(np.mean(v)) for k, v in runs.items()}

    seeds = _table(rep, "seeds")
    assert len(seeds) == len(MODELS) * len(DATASETS)
    for r in seeds.itertuples():
        backbone = r.model.split(" ")[0]
        v = runs[(backbone, r.dataset, "auc")]
        assert r.mean == pytest.approx(np.mean(v), abs=1e-12)
        assert r.std == pytest.approx(np.std(v, ddof=1), abs=1e-12)
        assert r.n == len(v) == len(SEEDS)

    avg = pd.read_csv(rep / "tables" / "average_linear_none.csv").set_index("model")
    for b in MODELS:
        assert avg.loc[_label(b), "mean_over_datasets"] == pytest.approx(
            np.mean([mean[(b, d, "auc")] for d in DATASETS]), abs=1e-12)

    gain = _table(rep, "gain").set_index(["model", "dataset"])
    for b in ("dinov2", "clip", "resnet18"):
        for d in DATASETS:
            want = 100 * (mean[(b, d, "auc")] - mean[("resnet50", d, "auc")]) / mean[("resnet50", d, "auc")]
            assert gain.loc[(_label(b), d), "rel_gain_pct"] == pytest.approx(want, abs=1e-9)

    # across datasets: one seed-mean difference per dataset, exact signed-rank, Holm over 3 models
    wil = _table(rep, "wilcoxon").set_index("model")
    raw = {}
    for b in ("dinov2", "clip", "resnet18"):
        diffs = [mean[(b, d, "auc")] - mean[("resnet50", d, "auc")] for d in DATASETS]
        raw[b] = sps.wilcoxon(diffs, method="exact").pvalue
        assert wil.loc[_label(b), "datasets"] == len(DATASETS)
        assert wil.loc[_label(b), "p"] == pytest.approx(raw[b], abs=1e-12)
    order = sorted(raw, key=raw.get)
    holm, running = {}, 0.0
    for i, b in enumerate(order):
        running = max(running, min(1.0, (len(order) - i) * raw[b]))
        holm[b] = running
    for b in raw:
        assert wil.loc[_label(b), "p_holm"] == pytest.approx(holm[b], abs=1e-12)

    # ranking: ranks within each dataset (1 = best), Friedman as scipy, Nemenyi CD as Demsar
    rank = _table(rep, "ranking")
    backbones = list(MODELS)
    vals = np.array([[mean[(b, d, "auc")] for b in backbones] for d in DATASETS])
    ranks = sps.rankdata(-vals, axis=1)
    for r in rank.itertuples():
        i, j = DATASETS.index(r.dataset), backbones.index(r.model.split(" ")[0])
        assert r.value == pytest.approx(vals[i, j], abs=1e-12)
        assert r.rank == ranks[i, j] and r.mean_rank == pytest.approx(ranks[:, j].mean())
    fr = _table(rep, "friedman").iloc[0]
    ref = sps.friedmanchisquare(*vals.T)
    assert fr.chi2 == pytest.approx(ref.statistic) and fr.p_chi2 == pytest.approx(ref.pvalue)
    k, n = len(backbones), len(DATASETS)
    cd = sps.studentized_range.ppf(0.95, k, np.inf) / np.sqrt(2) * np.sqrt(k * (k + 1) / (6 * n))
    assert fr.nemenyi_cd == pytest.approx(cd) and (fr.datasets, fr.models) == (n, k)

    # calibration: the run rows, and the Brier score recomputed from the saved scores by hand
    cal = _table(rep, "calibration")
    for r in cal.itertuples():
        v = runs[(r.model.split(" ")[0], r.dataset, r.metric)]
        assert r.mean == pytest.approx(np.mean(v), abs=1e-12) and r.seeds == len(v)
    scores = sorted((results / "runs").glob("*.scores.npz"))
    rid = scores[0].name[: -len(".scores.npz")]
    meta = json.loads((results / "runs" / f"{rid}.json").read_text())["config"]
    with np.load(scores[0]) as z:
        brier = float(np.mean((z["y_score"][:, 1] - z["y_true"]) ** 2))
    with open(results / "runs" / f"{rid}.csv", newline="") as f:
        row = [r for r in csv.DictReader(f) if r["metric"] == "brier"][0]
    assert float(row["value"]) == pytest.approx(brier)
    assert meta["backbone"] == row["backbone"]


def test_every_table_csv_names_variant_weights_and_recipe(synth_report):
    _, rep = synth_report
    with_model = 0
    for path in sorted((rep / "tables").glob("*.csv")):
        df = pd.read_csv(path, keep_default_na=False)
        if "model" not in df.columns:
            assert path.name.startswith(("provenance", "friedman")), path.name
            continue
        with_model += 1
        cols = list(df.columns)
        i = cols.index("model")
        assert cols[i + 1:i + 5] == ["backbone", "variant", "weights", "recipe"], path.name
        random = df[df.model == "resnet18 (random)"]
        assert len(random) and (random.weights == "random").all(), path.name
        assert (df[df.model == "dinov2"].weights == "default").all()
    assert with_model >= 8


# -- item 3: labels -----------------------------------------------------------------------------

def test_labels_name_non_default_weights_variants_and_local_files(tmp_path):
    results = tmp_path / "results"
    runs = [("resnet18", "", "random"), ("resnet18", "", "default"), ("clip", "ViT-B-16/openai", "default"),
            ("resnet50", "", str(tmp_path / "secret" / "mine.pth"))]
    for backbone, variant, weights in runs:
        for d in ("breastmnist", "pneumoniamnist"):
            write_run(results, backbone=backbone, variant=variant, weights=weights, dataset=d,
                      metrics={("test", "auc"): 0.7 + 0.01 * len(backbone)})
    rs = load_results(results)
    assert set(rs.runs.model) == {"resnet18 (random)", "resnet18", "clip ViT-B-16/openai", "resnet50 (mine.pth)"}
    out = tmp_path / "rep"
    make_report(results, out, formats=("md", "html"), n_boot=20, baseline="resnet18")
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    for text in (md, html):
        assert "resnet18 (random)" in text and "clip ViT-B-16/openai" in text and "resnet50 (mine.pth)" in text
        assert str(tmp_path) not in text and "secret" not in text  # no machine paths anywhere
    for path in (out / "tables").glob("*.csv"):
        text = path.read_text()
        assert str(tmp_path) not in text, path.name
    seeds = pd.read_csv(next((out / "tables").glob("seeds_*.csv")), keep_default_na=False)
    assert set(seeds[seeds.backbone == "resnet50"].weights) == {"mine.pth"}
    assert "Not ImageNet/default weights: resnet18 (random), resnet50 (mine.pth)" in md


def test_recipe_shows_only_when_several_are_present(tmp_path):
    one = tmp_path / "one"
    for b in ("resnet50", "dinov2"):
        write_run(one, backbone=b, dataset="breastmnist", metrics={("test", "auc"): 0.8},
                  extra_config={"recipe": "paper"})
    assert set(load_results(one).runs.model) == {"resnet50", "dinov2"}
    two = tmp_path / "two"
    write_run(two, backbone="resnet50", dataset="breastmnist", metrics={("test", "auc"): 0.8},
              extra_config={"recipe": "paper"})
    write_run(two, backbone="resnet50", dataset="breastmnist", metrics={("test", "auc"): 0.7})
    rs = load_results(two)
    assert set(rs.runs.model) == {"resnet50 [paper]", "resnet50 [no recipe]"}
    from bench.report.load import model_table
    assert model_table(rs).loc["resnet50 [paper]", "recipe"] == "paper"


# -- item 2: the baseline -----------------------------------------------------------------------

def _two(results: Path, specs) -> None:
    for backbone, weights in specs:
        for d in ("breastmnist", "pneumoniamnist"):
            write_run(results, backbone=backbone, dataset=d, weights=weights,
                      metrics={("test", "auc"): 0.6 + 0.02 * len(backbone)})


@pytest.mark.parametrize("present,expected", [
    ([("resnet18", "default"), ("dinov2", "default")], "resnet18"),
    ([("resnet18", "default"), ("resnet152", "default"), ("deit", "default")], "resnet152"),
    ([("resnet18", "default"), ("deit", "default")], "deit"),
    ([("resnet50", "random"), ("resnet18", "default")], "resnet18"),  # random weights are no reference
    ([("resnet50", "random"), ("dinov2", "default")], None),
])
def test_default_baseline_is_the_first_imagenet_reference_with_runs(tmp_path, present, expected):
    from bench.report.tables import default_baseline

    _two(tmp_path / "r", present)
    assert default_baseline(load_results(tmp_path / "r")) == expected


def test_no_baseline_is_said_in_one_sentence_and_override_works(tmp_path):
    results = tmp_path / "r"
    _two(results, [("resnet50", "random"), ("dinov2", "default")])
    make_report(results, tmp_path / "a", formats=("md",), n_boot=20)
    md = (tmp_path / "a" / "report.md").read_text()
    assert "No baseline: none of the ImageNet references (resnet50, resnet152, deit, resnet18" in md
    assert "Nothing to compare against:" in md
    assert "Relative gain over" not in md and "Paired bootstrap" not in md and "Signed-rank" not in md
    assert "baseline: resnet50" not in md.lower()
    make_report(results, tmp_path / "b", formats=("md",), n_boot=20, baseline="dinov2")
    md = (tmp_path / "b" / "report.md").read_text()
    assert "Baseline: dinov2 (chosen with --baseline)." in md and "Relative gain over dinov2" in md
    with pytest.raises(UserError, match="unknown baseline"):
        make_report(results, tmp_path / "c", formats=("md",), baseline="resnet152")


# -- item 4: bold, alignment, figures ------------------------------------------------------------

def test_bold_marks_only_the_best_in_each_column(synth_report):
    results, _ = synth_report
    from bench.report.ranking import ranking_tables
    from bench.report.tables import calibration_table, recall_table, seed_table

    for metric in ("auc", "ece"):
        a = Analysis(load_results(results), metric, "resnet50", n_boot=N_BOOT)
        [sec] = a.sections()
        t = seed_table(a, sec)
        means = t.data.pivot(index="model", columns="dataset", values="mean")
        for j, col in enumerate(t.columns[1:], start=1):
            [d] = [d for d in DATASETS if col.lower() == d]
            best = means[d].idxmax() if metric == "auc" else means[d].idxmin()
            bold = [r[0].text for r in t.rows if r[j].bold]
            assert bold == [best], (metric, col)
    a = Analysis(load_results(results), "auc", "resnet50", n_boot=N_BOOT)
    [sec] = a.sections()
    rt, _ = recall_table(a, sec)
    assert rt is None or not any(c.bold for r in rt.rows for c in r)
    cal, _ = calibration_table(a, sec)
    for j in range(1, len(cal.columns)):
        assert sum(r[j].bold for r in cal.rows) == 1
    [rank_t, _], _, _ = ranking_tables(a, sec)
    assert [r[0].text for r in rank_t.rows if any(c.bold for c in r)] == [rank_t.rows[0][0].text]


def test_lower_is_better_metric_turns_gains_and_verdicts_around(synth_report):
    results, _ = synth_report
    from bench.report.tables import gains

    a = Analysis(load_results(results), "ece", "resnet50", n_boot=N_BOOT)
    [sec] = a.sections()
    g = gains(a, sec)
    # a lower ECE than the baseline is a positive gain
    assert (np.sign(g.rel_gain_pct) == np.sign(g.baseline_mean - g["mean"])).all()


def test_html_headers_align_with_their_columns(synth_report):
    _, rep = synth_report
    html = (rep / "report.html").read_text()
    tables = re.findall(r"<table>.*?</table>", html, flags=re.S)
    assert len(tables) > 8
    for t in tables:
        heads = re.findall(r'<th class="(txt|num)">', t)
        body = re.findall(r"<tr>(.*?)</tr>", t.split("<tbody>")[1], flags=re.S)
        for row in body:
            tds = re.findall(r"<td([^>]*)>", row)
            if len(tds) != len(heads):
                continue  # the 'no rows' placeholder
            for h, td in zip(heads, tds):
                assert ("txt" in td) == (h == "txt"), (h, td)
        assert heads[0] == "txt"  # the model/label column


def test_figures_are_200_dpi_png_with_svg_and_a_cd_diagram(synth_report):
    from PIL import Image

    _, rep = synth_report
    pngs = sorted((rep / "figures").glob("*.png"))
    names = {p.stem for p in pngs}
    assert {"gain_over_baseline", "cd_linear_none_28_in224_resize"} <= names
    for p in pngs:
        dpi = Image.open(p).info.get("dpi")
        assert dpi and round(dpi[0]) == 200, p.name
        svg = p.with_suffix(".svg")
        assert ET.parse(svg).getroot().tag.endswith("svg"), svg.name
    md = (rep / "report.md").read_text()
    assert "Whiskers: 95% paired-bootstrap interval" in md and "Bars without whiskers" not in md


def test_gain_interval_matches_an_independent_paired_bootstrap(tmp_path):
    """mean_gains: per dataset the documented resample indices, the same for model and baseline;
    the b-th resamples' relative gains averaged over datasets, then percentiles."""
    rng = np.random.default_rng(3)
    results = tmp_path / "r"
    data = {}
    for d, n in (("breastmnist", 40), ("pneumoniamnist", 50)):
        y = np.array([0, 1] * (n // 2))
        for b, p_ok in (("resnet50", 0.7), ("dinov2", 0.85)):
            right = rng.random(n) < p_ok
            p1 = np.where(right == (y == 1), 0.8, 0.2)
            sc = np.stack([1 - p1, p1], 1)
            data[(b, d)] = (y, sc)
            write_run(results, backbone=b, dataset=d, metrics={("test", "acc"): M.acc("binary-class", y, sc)},
                      scores=(y, sc))
    a = Analysis(load_results(results), "acc", "resnet50", n_boot=N_BOOT, seed=5)
    from bench.report.tables import mean_gains

    [sec] = a.sections()
    row = mean_gains(a, sec).set_index("model").loc["dinov2"]
    per_ds = []
    for d in ("breastmnist", "pneumoniamnist"):
        y = data[("resnet50", d)][0]
        n = len(y)
        rng_b = np.random.default_rng(np.random.SeedSequence([5, zlib.crc32(d.encode()), n]))
        idx = np.stack([rng_b.integers(0, n, size=n) for _ in range(N_BOOT)])
        accs = {b: ((data[(b, d)][1][idx, 1] > 0.5) == y[idx]).mean(axis=1) for b in ("resnet50", "dinov2")}
        per_ds.append(100 * (accs["dinov2"] - accs["resnet50"]) / accs["resnet50"])
    lo, hi = np.percentile(np.mean(per_ds, axis=0), [2.5, 97.5])
    assert (row.ci_low, row.ci_high) == pytest.approx((lo, hi))
    assert row.ci_low <= row.mean_rel_gain_pct <= row.ci_high


def test_ranking_leaves_out_a_model_missing_a_dataset(tmp_path):
    results = tmp_path / "r"
    write_synthetic_results(results, datasets=DATASETS[:3], seeds=(0,))
    write_run(results, backbone="dino", dataset=DATASETS[0], metrics={("test", "auc"): 0.99})
    a = Analysis(load_results(results), "auc", "resnet50", n_boot=N_BOOT)
    from bench.report.ranking import ranking

    [sec] = a.sections()
    rk, notes = ranking(a, sec)
    assert "dino" not in rk.models and rk.left_out == ["dino"] and len(rk.datasets) == 3
    assert any("leaves out dino" in n for n in notes)


def test_model_colours_are_one_mapping_for_the_whole_report(synth_report):
    results, rep = synth_report
    from matplotlib.colors import to_hex

    from bench.report.figures import model_colors

    a = Analysis(load_results(results), "auc", "resnet50", n_boot=N_BOOT)
    colors = model_colors(a)
    assert sorted(colors) == sorted({_label(b) for b in MODELS})
    assert len({to_hex(c) for c in colors.values()}) == len(colors)
    gain_svg = (rep / "figures" / "gain_over_baseline.svg").read_text().lower()
    cd_svg = (rep / "figures" / "cd_linear_none_28_in224_resize.svg").read_text().lower()
    for m, c in colors.items():
        if m != "resnet50":
            assert to_hex(c) in gain_svg, m
        assert to_hex(c) in cd_svg, m


def test_header_names_the_baseline_as_the_tables_do(tmp_path):
    results = tmp_path / "r"
    _two(results, [("resnet18", "random"), ("dinov2", "default")])
    make_report(results, tmp_path / "a", formats=("md",), n_boot=20, baseline="resnet18")
    md = (tmp_path / "a" / "report.md").read_text()
    assert "Baseline: resnet18 (random) (chosen with --baseline)." in md
    assert "## Gain over resnet18 (random)" in md
