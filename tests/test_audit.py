"""Subgroup audits (--subgroups): image ids saved with the scores, per-image attributes joined at
report time without rerunning a model, per-group metrics checked against sklearn, bootstrap
intervals against an independent resampling, small groups flagged, numeric bins, older runs
without ids, the export of the same numbers and of per-image predictions."""
from __future__ import annotations

import csv
import json
import math
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import confusion_matrix, roc_auc_score

import bench
from bench import datasets
from bench.cli import main
from bench.datasets.attributes import AGE_EDGES, MISSING, Subgroup, dicom_age, groups, parse
from bench.errors import UserError

N_BOOT = 40


def write_dataset(root: Path, n=(120, 40, 120), seed: int = 0, signal=(30, 8), blank_every: int = 0) -> Path:
    """A CSV dataset with sex, age and site columns: the label brightens a band, less for F
    (``signal`` M, F), so the groups differ in difficulty; ``blank_every``: every k-th sex empty."""
    rng = np.random.default_rng(seed)
    rows = []
    for split, count in zip(("train", "val", "test"), n):
        for i in range(count):
            label = int(rng.random() < 0.4)
            sex = "F" if rng.random() < 0.5 else "M"
            age = int(rng.integers(20, 90))
            a = rng.normal(90, 25, (12, 12))
            a[:4] += signal[sex == "F"] * label
            rel = f"img/{split}_{i:03d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(root / rel)
            blank = blank_every and i % blank_every == 0
            rows.append({"path": rel, "label": label, "split": split, "sex": "" if blank else sex, "age": age,
                         "site": "AB"[i % 2]})
    with open(root / "m.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root / "m.csv"


def sweep(manifest: Path, results: Path, *extra: str) -> None:
    argv = ["sweep", "--backbone", "dummy", "simplecnn", "--weights", "random", "--dataset", f"csv:{manifest}",
            "--size", "28", "--input-size", "32", "--seed", "0", "1", "--head", "linear", "--head-epochs", "5",
            "--results-dir", str(results), "--device", "cpu", *extra]
    assert main(argv) == 0


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """Two backbones x two seeds on a CSV dataset, run once for the module (no --subgroups at run time)."""
    import os

    tmp = tmp_path_factory.mktemp("audit")
    old = os.environ.get("BENCH_CACHE_DIR")
    os.environ["BENCH_CACHE_DIR"] = str(tmp / "cache")  # the module's runs and reports share one decode cache
    manifest = write_dataset(tmp / "data")
    sweep(manifest, tmp / "results")
    yield tmp, manifest, tmp / "results"
    if old is None:
        os.environ.pop("BENCH_CACHE_DIR", None)
    else:
        os.environ["BENCH_CACHE_DIR"] = old


@pytest.fixture
def shared_cache(done, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(done[0] / "cache"))
    return done


def saved(results: Path) -> dict[str, dict]:
    """Per run: its config, y_true, y_score and ids, read from the files directly."""
    out = {}
    for p in sorted((results / "scores").glob("*.npz")):
        meta = json.loads((results / "meta" / f"{p.stem}.json").read_text())
        with np.load(p) as z:
            out[p.stem] = {"cfg": meta["config"], "y": z["y_true"], "s": z["y_score"],
                           "ids": z["ids"].astype(str) if "ids" in z.files else None,
                           "split": str(z["split"]) if "split" in z.files else None}
    return out


def no_runs(monkeypatch) -> None:
    """Any model run from here on fails the test: a report with subgroups must not run one."""
    import bench.assemble
    import bench.runner

    def refuse(*a, **k):
        raise AssertionError("a model ran while building a report")

    monkeypatch.setattr(bench.runner, "execute", refuse)
    monkeypatch.setattr(bench.assemble, "open_context", refuse)


def ece(y: np.ndarray, p1: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE of a binary task, written out directly (Guo et al. 2017; bins (lo, hi])."""
    pred = (p1 > 0.5).astype(int)
    conf = np.where(pred == 1, p1, 1 - p1)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        m = (conf > lo) & (conf <= hi) if b else (conf >= 0) & (conf <= hi)
        if m.any():
            total += m.sum() / len(y) * abs((pred[m] == y[m]).mean() - conf[m].mean())
    return total


def test_ids_are_saved_with_the_scores_and_run_ids_do_not_change(done):
    tmp, manifest, results = done
    runs = saved(results)
    assert len(runs) == 4
    order = [r["path"] for r in csv.DictReader(open(manifest)) if r["split"] == "test"]
    for r in runs.values():
        assert r["split"] == "test" and len(r["ids"]) == len(r["y"]) == 120
        assert sorted(r["ids"]) == sorted(order)  # the manifest's paths, as it names them
    # --subgroups is never part of the run id: the same config with and without it
    from bench.resolve import bind_data
    from bench.run_config import RunConfig, make_run_options

    kw = dict(weights="random", size=28, input_size=32, seed=0, head_epochs=5)
    with_groups = bind_data(bench.config("dummy", f"csv:{manifest}", **kw), make_run_options(subgroups="sex,age"))
    assert with_groups.run_id in runs and "subgroups" not in RunConfig.__dataclass_fields__


def test_report_with_subgroups_added_later_matches_sklearn_without_running_a_model(shared_cache, monkeypatch):
    tmp, manifest, results = shared_cache
    before = {p: p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file()}
    no_runs(monkeypatch)
    out = tmp / "report"
    assert main(["report", "--results-dir", str(results), "--out", str(out), "--format", "md", "--n-boot", str(N_BOOT),
                 "--subgroups", "sex,age"]) == 0
    assert {p: p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file()} == before  # nothing written
    md = (out / "report.md").read_text()
    assert "## Subgroups" in md and "Performance per subgroup" in md and "Paired test of the AUC gap" in md
    tab = pd.concat([pd.read_csv(p) for p in (out / "tables").glob("subgroups_*.csv")])
    gaps = pd.concat([pd.read_csv(p) for p in (out / "tables").glob("subgroup_gaps_*.csv")])
    paired = pd.concat([pd.read_csv(p) for p in (out / "tables").glob("subgroup_paired_*.csv")])
    # an independent computation: the CSV's columns joined to the saved scores by path, sklearn per group
    attrs = pd.read_csv(manifest).set_index("path")
    runs = saved(results)
    models = {}
    for rid, r in runs.items():
        models.setdefault(r["cfg"]["backbone"], []).append(r)
    assert len(models) == 2 and all(len(v) == 2 for v in models.values())
    expect_gap = {}
    for backbone, rs in models.items():
        sex = attrs.loc[rs[0]["ids"], "sex"].to_numpy()
        got = tab[(tab.backbone == backbone) & (tab.attribute == "sex")]
        per_group = {}
        for g in ("F", "M"):
            m = sex == g
            auc = np.mean([roc_auc_score(r["y"][m], r["s"][m, 1]) for r in rs])  # seed mean
            acc = np.mean([((r["s"][m, 1] > 0.5) == r["y"][m]).mean() for r in rs])
            e = np.mean([ece(r["y"][m], r["s"][m, 1]) for r in rs])
            row = got[got.group == g].set_index("metric")
            assert row.loc["auc", "value"] == pytest.approx(auc, abs=1e-9)
            assert row.loc["acc", "value"] == pytest.approx(acc, abs=1e-9)
            assert row.loc["ece", "value"] == pytest.approx(e, abs=1e-6)  # float32 scores: sums differ in the 8th digit
            assert row.loc["auc", "n"] == m.sum() and row.loc["auc", "positives"] == rs[0]["y"][m].sum()
            assert row.loc["auc", "ci_low"] <= row.loc["auc", "ci_high"]
            per_group[g] = auc
            # TPR / FPR at the run's threshold, from sklearn's confusion matrix
            rates = []
            for r in rs:
                tn, fp, fn, tp = confusion_matrix(r["y"][m], (r["s"][m, 1] > 0.5).astype(int), labels=[0, 1]).ravel()
                rates.append((tp / (tp + fn), fp / (fp + tn)))
            per_group[g, "rates"] = np.mean(rates, axis=0)
        gap = abs(per_group["F"] - per_group["M"])
        expect_gap[backbone] = gap
        g = gaps[(gaps.backbone == backbone) & (gaps.attribute == "sex") & gaps.target.isna()].set_index("metric")
        assert g.loc["auc_gap", "value"] == pytest.approx(gap, abs=1e-9)
        assert g.loc["auc_worst", "value"] == pytest.approx(min(per_group["F"], per_group["M"]), abs=1e-9)
        eod = gaps[(gaps.backbone == backbone) & (gaps.attribute == "sex") & (gaps.metric == "eod")]
        tpr_gap = abs(per_group["F", "rates"][0] - per_group["M", "rates"][0])
        fpr_gap = abs(per_group["F", "rates"][1] - per_group["M", "rates"][1])
        assert eod.value.iloc[0] == pytest.approx(max(tpr_gap, fpr_gap), abs=1e-9)
    # the paired test: one model's gap minus the other's, on the same images
    row = paired[paired.attribute == "sex"].iloc[0]
    assert row.value == pytest.approx(expect_gap[row.backbone] - expect_gap[
        next(b for b in models if b != row.backbone)], abs=1e-9)
    assert 0 < row.p <= 1 and math.isfinite(row.ci_low) and row.ci_low <= row.value <= row.ci_high
    # age: binned by the default age bins, every image in one bin
    ages = tab[(tab.attribute == "age") & (tab.metric == "auc")]
    assert set(ages.group) <= {"0–40", "40–60", "60–80", "≥80"}
    assert ages.groupby("model").n.sum().tolist() == [120, 120]


def test_bootstrap_interval_is_the_report_resampling_over_test_images(shared_cache):
    """The interval of one group, recomputed from the documented recipe (bench.report.stats):
    resample the whole test set, take the group's drawn images, sklearn AUC per seed, seed mean."""
    tmp, manifest, results = shared_cache
    from bench.report.export import subgroup_table

    df = subgroup_table(results, subgroups="sex", n_boot=N_BOOT, seed=3)
    rs = [r for r in saved(results).values() if r["cfg"]["backbone"] == "dummy"]
    sex = pd.read_csv(manifest).set_index("path").loc[rs[0]["ids"], "sex"].to_numpy()
    dataset = rs[0]["cfg"]["dataset"]
    n = len(sex)
    rng = np.random.default_rng(np.random.SeedSequence([3, zlib.crc32(dataset.encode()), n]))
    draws = [rng.integers(0, n, size=n) for _ in range(N_BOOT)]
    vals = []
    for ix in draws:
        ix = ix[sex[ix] == "F"]
        y = rs[0]["y"][ix]
        vals.append(np.mean([roc_auc_score(y, r["s"][ix, 1]) for r in rs]) if 0 < y.sum() < len(y) else np.nan)
    lo, hi = np.percentile(np.array(vals)[np.isfinite(vals)], [2.5, 97.5])
    row = df[(df.backbone == "dummy") & (df.kind == "group") & (df.group == "F") & (df.metric == "auc")].iloc[0]
    assert row.ci_low == pytest.approx(lo, abs=1e-9) and row.ci_high == pytest.approx(hi, abs=1e-9)


def test_small_groups_are_shown_and_flagged(shared_cache):
    tmp, manifest, results = shared_cache
    out = tmp / "small"
    assert main(["report", "--results-dir", str(results), "--out", str(out), "--format", "md", "--n-boot", "20",
                 "--subgroups", "age:0,25,120"]) == 0
    tab = pd.concat([pd.read_csv(p) for p in (out / "tables").glob("subgroups_*.csv")])
    tiny = tab[(tab.group == "0–25") & (tab.metric == "auc")]
    assert len(tiny) == 2 and (tiny.n < 30).all() and tiny.small.all()  # both models, flagged, not hidden
    big = tab[(tab.group == "25–120") & (tab.metric == "auc")]
    assert (~big.small).all() and (tiny.n.to_numpy() + big.n.to_numpy() == 120).all()
    md = (out / "report.md").read_text()
    assert "0–25 †" in md and "fewer than 30 images or 10 positives" in md


def test_subgroups_recorded_by_run_are_checked_and_used_by_the_report(tmp_path, capsys):
    manifest = write_dataset(tmp_path / "data", n=(60, 20, 40), blank_every=5)
    kw = ["--backbone", "dummy", "--weights", "random", "--dataset", f"csv:{manifest}", "--size", "28",
          "--head", "knn", "--results-dir", str(tmp_path / "r"), "-q"]
    assert main(["run", *kw, "--subgroups", "sexx"]) == 2  # a typo: one line, nothing run
    err = capsys.readouterr().err.strip()
    assert "no column 'sexx'" in err and "sex" in err and "\n" not in err
    assert not (tmp_path / "r" / "runs").exists()
    assert main(["run", *kw, "--subgroups", "sex,age:0,50,120"]) == 0
    meta = json.loads(next((tmp_path / "r" / "meta").glob("*.json")).read_text())
    assert meta["subgroups"] == "sex,age:0,50,120"
    # the report uses what the runs recorded when --subgroups is not given
    assert main(["report", "--results-dir", str(tmp_path / "r"), "--out", str(tmp_path / "rep"), "--format", "md",
                 "--n-boot", "20"]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Subgroups" in md and "50–120" in md
    tab = pd.concat([pd.read_csv(p) for p in (tmp_path / "rep" / "tables").glob("subgroups_*.csv")])
    assert set(tab[tab.attribute == "sex"].group) == {"F", "M", "(missing)"}  # shown...
    gaps = pd.concat([pd.read_csv(p) for p in (tmp_path / "rep" / "tables").glob("subgroup_gaps_*.csv")])
    assert (gaps[(gaps.attribute == "sex") & (gaps.metric == "acc_gap")].n == 2).all()  # ...but not compared
    # MedMNIST carries no attributes: one line before running
    data = tmp_path / "mm"
    from conftest import write_synthetic_npz

    write_synthetic_npz(data, "breastmnist")
    assert main(["run", "--backbone", "dummy", "--weights", "random", "--dataset", "breastmnist", "--data-root",
                 str(data), "--skip-md5", "--results-dir", str(tmp_path / "r2"), "-q", "--subgroups", "sex"]) == 2
    assert "no per-image attributes" in capsys.readouterr().err


def test_no_subgroups_no_section_and_a_typo_in_the_report_is_one_line(shared_cache, capsys):
    tmp, manifest, results = shared_cache
    assert main(["report", "--results-dir", str(results), "--out", str(tmp / "plain"), "--format", "md",
                 "--n-boot", "10"]) == 0
    assert "Subgroups" not in (tmp / "plain" / "report.md").read_text()
    assert main(["report", "--results-dir", str(results), "--out", str(tmp / "typo"), "--format", "md",
                 "--n-boot", "10", "--subgroups", "sx"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no column 'sx'" in err and "\n" not in err
    assert main(["report", "--results-dir", str(results), "--out", str(tmp / "bad"), "--subgroups", "age:60,40"]) == 2
    assert "increasing" in capsys.readouterr().err


def test_old_scores_without_ids_are_rebuilt_where_the_data_is_unchanged(shared_cache, tmp_path, capsys):
    tmp, manifest, results = shared_cache
    import shutil

    old = tmp_path / "old"
    shutil.copytree(results, old)
    for p in (old / "scores").glob("*.npz"):  # as runs saved before ids were recorded
        with np.load(p) as z:
            arrays = {k: z[k] for k in z.files if k not in ("ids", "split")}
        np.savez_compressed(p, **arrays)
    from bench.report.export import subgroup_table

    new = subgroup_table(results, subgroups="sex", n_boot=10)
    rebuilt = subgroup_table(old, subgroups="sex", n_boot=10)
    assert set(rebuilt.ids) == {"rebuilt"} and set(new.ids) == {"saved"}
    cols = ["kind", "model", "attribute", "group", "target", "metric", "value", "ci_low", "ci_high"]
    pd.testing.assert_frame_equal(new[cols].reset_index(drop=True), rebuilt[cols].reset_index(drop=True))
    assert main(["report", "--results-dir", str(old), "--out", str(tmp_path / "rep"), "--format", "md",
                 "--n-boot", "10", "--subgroups", "sex"]) == 0
    assert "4 run(s) were saved before image ids were recorded" in (tmp_path / "rep" / "report.md").read_text()
    # the data changed since: the fingerprint differs, so the ids cannot be trusted: a one-line note each
    moved = tmp_path / "changed"
    shutil.copytree(manifest.parent, moved)
    rows = list(csv.DictReader(open(moved / "m.csv")))
    rows[0]["label"] = str(1 - int(rows[0]["label"]))
    with open(moved / "m.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for p in (old / "meta").glob("*.json"):  # the runs now point at the changed copy
        m = json.loads(p.read_text())
        m["config"]["dataset"] = f"csv:{moved / 'm.csv'}"
        p.write_text(json.dumps(m))
    from bench.report import tables as T
    from bench.report.load import load_results
    from bench.report.subgroups import audit

    au = audit(T.Analysis(load_results(old), "auc", None, n_boot=10), parse("sex"))
    assert au.frame.empty and len(au.notes) == 4
    assert all("data changed since it ran" in n and "\n" not in n for n in au.notes)


def test_export_subgroups_is_the_report_numbers_and_predictions_match_the_scores(shared_cache):
    tmp, manifest, results = shared_cache
    assert main(["report", "--results-dir", str(results), "--out", str(tmp / "rep_x"), "--format", "md",
                 "--n-boot", "20", "--subgroups", "sex,site"]) == 0
    assert main(["results", "export", "--results-dir", str(results), "--out", str(tmp / "sub.csv"),
                 "--n-boot", "20", "--subgroups", "sex,site"]) == 0
    exp = pd.read_csv(tmp / "sub.csv")
    rep = pd.concat([pd.read_csv(p) for p in (tmp / "rep_x" / "tables").glob("subgroup*.csv")])
    keys = ["kind", "model", "other_model", "attribute", "group", "target", "metric"]
    merged = rep.merge(exp, on=keys, suffixes=("_r", "_e"))
    assert len(merged) == len(rep) and len(exp) == len(rep)
    for c in ("value", "ci_low", "ci_high"):
        np.testing.assert_allclose(merged[f"{c}_r"], merged[f"{c}_e"], equal_nan=True)
    # per-image predictions: one row per scored test image of every run, as saved
    assert main(["results", "export", "--results-dir", str(results), "--out", str(tmp / "pred.parquet"),
                 "--predictions", "--subgroups", "sex"]) == 0
    pred = pd.read_parquet(tmp / "pred.parquet")
    runs = saved(results)
    assert len(pred) == sum(len(r["y"]) for r in runs.values())
    attrs = pd.read_csv(manifest).set_index("path")
    for rid, r in runs.items():
        p = pred[pred.run_id == rid].sort_values("index")
        assert (p.split == "test").all() and p.image_id.tolist() == r["ids"].tolist()
        assert p.label.tolist() == r["y"].tolist()
        np.testing.assert_array_equal(p[["score_0", "score_1"]].to_numpy(), r["s"])
        assert p.prediction.tolist() == (r["s"][:, 1] > 0.5).astype(int).tolist()
        assert p.sex.tolist() == attrs.loc[r["ids"], "sex"].tolist()


def test_parse_and_numeric_bins():
    assert parse("sex,age:0,40,60,120") == [Subgroup("sex"), Subgroup("age", (0.0, 40.0, 60.0, 120.0))]
    assert parse("Frontal/Lateral, site") == [Subgroup("Frontal/Lateral"), Subgroup("site")]
    assert parse("") == [] and parse(None) == []
    for bad in ("age:40,20", "age:5", "sex,sex"):
        with pytest.raises(UserError):
            parse(bad)
    # given edges: [a, b) bins, values outside named as such, empties as (missing)
    labels, order, _ = groups(["10", "39.9", "40", "59", "60", "130", "", "-1"], Subgroup("age", (0, 40, 60, 120)))
    assert labels.tolist() == ["0–40", "0–40", "40–60", "40–60", "60–120", "≥120", MISSING, "<0"]
    assert order == ["<0", "0–40", "40–60", "60–120", "≥120", MISSING]
    # an age column by default: AGE_EDGES; other numeric columns with many values: quartiles
    labels, order, how = groups(["30", "45", "70", "85"], Subgroup("PatientAge"))
    assert AGE_EDGES[1] == 40 and labels.tolist() == ["0–40", "40–60", "60–80", "≥80"] and "age" in how
    x = [str(v) for v in range(100)]
    labels, order, how = groups(x, Subgroup("bmi"))
    assert len(order) == 4 and "quartiles" in how and sorted(pd.Series(labels).value_counts()) == [25, 25, 25, 25]
    # a numeric code with few values, and text: groups by value
    assert groups(["1", "2", "1"], Subgroup("site"))[1] == ["1", "2"]
    assert groups(["M", "F", ""], Subgroup("sex"))[1] == ["F", "M", MISSING]
    with pytest.raises(UserError, match="not a number"):
        groups(["M", "F"], Subgroup("sex", (0, 1)))
    assert dicom_age("045Y") == "45" and dicom_age("006M") == "0.5" and dicom_age("") == ""


def _dicom(path: Path, sex: str, age: str, maker: str, label: int) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientSex, ds.PatientAge, ds.Manufacturer = sex, age, maker
    px = np.full((16, 16), 1000, np.uint16)
    px[: 4 + 4 * label] = 3000
    ds.Rows, ds.Columns = px.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = px.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)


def test_dicom_tags_are_attributes(tmp_path):
    pytest.importorskip("pydicom")
    from bench.datasets import LoadOptions

    root = tmp_path / "dcm"
    for c in (0, 1):
        for i in range(6):
            _dicom(root / f"c{c}" / f"{i}.dcm", "MF"[i % 2], f"{30 + 10 * i:03d}Y", "ACME" if i < 3 else "Other", c)
    opts = LoadOptions(cache_dir=tmp_path / "cache", quiet=True)
    table = datasets.source_for(f"folder:{root}").attributes(f"folder:{root}", opts, None)
    assert set(table.columns) == {"PatientSex", "PatientAge", "Manufacturer"}
    got = dict(zip(table.ids, zip(table.columns["PatientSex"], table.columns["PatientAge"], table.columns["Manufacturer"])))
    assert got["c1/4.dcm"] == ("M", "70", "Other") and got["c0/0.dcm"] == ("M", "30", "ACME")
    labels, order, how = groups(table.columns["PatientAge"], Subgroup("PatientAge"))
    assert order == ["0–40", "40–60", "60–80", "≥80"] and "age" in how


def _chexpert(tmp_path: Path) -> Path:
    from bench.datasets.paper import CHEXPERT14

    root = tmp_path / "CheXpert-v1.0-small"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for csv_name, split, n in (("train.csv", "train", 40), ("valid.csv", "valid", 12)):
        rows = []
        for i in range(n):
            patient = i // 2 + (1000 if split == "valid" else 0)
            rel = f"CheXpert-v1.0-small/{split}/patient{patient:05d}/study1/view{i % 2 + 1}_frontal.jpg"
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (16, 14), dtype=np.uint8)).save(tmp_path / rel)
            labs = {o: str(float((i + k) % 2)) for k, o in enumerate(CHEXPERT14)}
            rows.append({"Path": rel, "Sex": "FM"[i % 2], "Age": str(30 + 3 * i), "Frontal/Lateral": "Frontal",
                         "AP/PA": "AP", **labs})
        with open(root / csv_name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return root


def test_chexpert_layout_sex_and_age_join_the_saved_ids_and_the_config_dry_runs(tmp_path, capsys):
    from bench.datasets import LoadOptions

    root = _chexpert(tmp_path)
    opts = LoadOptions(root=root, cache_dir=tmp_path / "cache", quiet=True)
    ds = datasets.load("chexpert", 8, opts).validate()
    ids = ds.image_ids("test")
    table = datasets.source_for("chexpert").attributes("chexpert", opts, set(ids))
    sex, missing = table.lookup("Sex", ids.tolist())
    assert missing == 0 and set(sex) == {"F", "M"} and len(ids) == 12
    assert "Cardiomegaly" not in table.columns and {"Sex", "Age", "AP/PA"} <= set(table.columns)
    config = Path(__file__).resolve().parents[1] / "configs" / "subgroups.yaml"
    # without the data: one line naming what is missing
    assert main(["sweep", str(config), "--dry-run", "--data-root", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err.strip()
    assert "train.csv not found" in err and "\n" not in err
    assert main(["sweep", str(config), "--dry-run", "--data-root", str(root), "--results-dir",
                 str(tmp_path / "r")]) == 0
    assert "runs" in capsys.readouterr().out


@pytest.mark.parametrize("task", ["binary-class", "multi-class", "multi-label, binary-class"])
def test_resample_metrics_equal_bench_metrics_on_the_drawn_images(task):
    """The count-matrix forms (ECE, TPR/FPR, and stats' AUC/ACC) give bench.metrics' value on the
    images a resample draws, for every task (multi-label with unknown labels)."""
    from bench import metrics as M
    from bench.report.subgroups import metric_counts, predicted, rate_counts, targets

    rng = np.random.default_rng(1)
    n, c = 80, 3
    if task == "multi-class":
        y = rng.integers(0, c, n)
        s = rng.dirichlet(np.ones(c), n)
    elif task == "binary-class":
        y = rng.integers(0, 2, n)
        p = rng.random(n)
        s = np.stack([1 - p, p], 1)
    else:
        y = rng.integers(0, 2, (n, c))
        y[rng.random((n, c)) < 0.1] = -1
        s = rng.random((n, c))
    w = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(5)])
    for name in ("auc", "acc", "ece"):
        got = metric_counts(name, task, y, s)(w)
        want = [getattr(M, name)(task, y[np.repeat(np.arange(n), row)], s[np.repeat(np.arange(n), row)]) for row in w]
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    tg = targets(task, {}, y, s.shape[1])
    pred = predicted(task, s, len(tg))
    for k, t in enumerate(tg):
        tpr, fpr = rate_counts(t, pred[:, k])
        for b, row in enumerate(w):
            ix = np.repeat(np.arange(n), row)
            kn, pos, pr = t.known[ix], t.pos[ix], pred[ix, k]
            assert tpr(w)[b] == pytest.approx((pos & pr).sum() / pos.sum())
            assert fpr(w)[b] == pytest.approx((kn & ~pos & pr).sum() / (kn & ~pos).sum())
