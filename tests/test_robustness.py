"""`bench robust`: finished runs scored under MedMNIST-C corruptions and on other datasets' test
splits without retraining; the cells a killed pass left are resumed; the report's Robustness section.

The data: a synthetic BreastMNIST at 28 px and its 224-px file (the 28-px images upscaled 8x, the
same labels), so MedMNIST-C's 224-px corruptions, resized to 28 px, are those of real runs.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from bench.cli import main
from bench.errors import UserError
from bench.results import ResultStore
from bench.robust.files import Cell, RobustStore
from bench.run_config import make_run_options
from bench.shift import medmnistc as C
from conftest import write_synthetic_npz

FAST = ["pixelate", "speckle_noise", "brightness_up"]  # one of them draws random numbers (speckle)


def write_pair(root: Path, n=(64, 24, 12)) -> None:
    """breastmnist.npz (28 px) and breastmnist_224.npz: the same images upscaled, the same labels."""
    p28 = write_synthetic_npz(root, "breastmnist", 28, n=n)
    with np.load(p28) as z:
        arrays = {k: (np.repeat(np.repeat(v, 8, 1), 8, 2) if k.endswith("images") else v) for k, v in z.items()}
    np.savez_compressed(root / "breastmnist_224.npz", **arrays)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("robust")
    write_pair(tmp / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCH_CACHE_DIR", str(tmp / "cache"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TQDM_DISABLE", "1")
        yield SimpleNamespace(tmp=tmp, data=tmp / "data", results=tmp / "results",
                              common=["--data-root", str(tmp / "data"), "--skip-md5", "--results-dir",
                                      str(tmp / "results"), "-q"])


def _run(env, *args: str, dataset: str = "breastmnist") -> str:
    assert main(["run", *args, "--dataset", dataset, *env.common]) == 0
    store = ResultStore(env.results)
    return max(store.run_ids(), key=lambda r: store.path("meta", r).stat().st_mtime)


def _robust(env, capsys, *args: str, results: Path | None = None, cache: Path | None = None) -> tuple[int, str, str]:
    extra = ["--cache-dir", str(cache)] if cache else []
    capsys.readouterr()  # what ran before (a run's own output) is not this command's
    code = main(["robust", *args, "--results-dir", str(results or env.results), "--data-root", str(env.data),
                 "--skip-md5", "-q", *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def probe_id(env) -> str:
    return _run(env, "--backbone", "dummy", "--head-epochs", "30")


@pytest.fixture(scope="module")
def last1_id(env) -> str:
    return _run(env, "--backbone", "dummy", "--unfreeze", "last1", "--epochs", "2", "--save-model")


def _corrupted_28(env, corruption: str, severity: int) -> np.ndarray:
    """The test split under one corruption, as bench.shift makes it: 224 px corrupted, resized to 28."""
    with np.load(env.data / "breastmnist_224.npz") as z:
        test224 = z["test_images"]
    return C.corrupt_images_at(test224, 28, "breastmnist", corruption, severity)


# -- the corrupted evaluation is a run on corrupted data ------------------------------------------------------

@pytest.mark.parametrize("corruption,severity", [("speckle_noise", 3), ("brightness_up", 5)])
def test_probe_corrupted_evaluation_equals_a_fresh_run_on_the_corrupted_file(env, probe_id, capsys, corruption,
                                                                             severity):
    code, out, err = _robust(env, capsys, probe_id, "--corruptions", ",".join(FAST))
    assert code == 0, err
    rstore = RobustStore(env.results)
    y_true, robust_scores = rstore.read_cell(probe_id, Cell("medmnistc", corruption, severity))
    # the same run on a file whose test images are corrupted the same way (train and val untouched)
    other = env.tmp / f"data-{corruption}"
    other.mkdir()
    with np.load(env.data / "breastmnist.npz") as z:
        arrays = dict(z)
    arrays["test_images"] = _corrupted_28(env, corruption, severity)
    np.savez_compressed(other / "breastmnist.npz", **arrays)
    fresh = env.tmp / f"results-{corruption}"
    assert main(["run", "--backbone", "dummy", "--head-epochs", "30", "--dataset", "breastmnist", "--data-root",
                 str(other), "--skip-md5", "--results-dir", str(fresh), "-q"]) == 0
    [fresh_id] = ResultStore(fresh).run_ids()
    fresh_true, fresh_scores = ResultStore(fresh).read_scores(fresh_id)
    assert np.array_equal(fresh_true, y_true)
    np.testing.assert_allclose(robust_scores, fresh_scores, rtol=0, atol=1e-6)
    # and the rows say what the fresh run's rows say
    rows = pd.read_csv(rstore.csv_path(probe_id))
    mine = rows[(rows.corruption == corruption) & (rows.severity == severity)].set_index("metric").value
    theirs = pd.read_csv(ResultStore(fresh).csv_path(fresh_id)).query("split == 'test'").set_index("metric").value
    for m in ("acc", "auc", "balanced_acc", "ece"):
        assert mine[m] == pytest.approx(theirs[m], abs=1e-9), m


def test_rows_hold_clean_row_every_cell_and_drops(env, probe_id, capsys):
    assert _robust(env, capsys, probe_id, "--corruptions", ",".join(FAST))[0] == 0
    rows = pd.read_csv(RobustStore(env.results).csv_path(probe_id), keep_default_na=False)
    cells = set(zip(rows.corruption, rows.severity))
    assert cells == {("clean", 0), ("resize-only", 0)} | {(c, s) for c in FAST for s in C.SEVERITIES}
    saved = pd.read_csv(ResultStore(env.results).csv_path(probe_id)).query("split == 'test'").set_index("metric").value
    clean = rows[rows.corruption == "clean"].set_index("metric").value.astype(float)
    assert clean["auc"] == pytest.approx(saved["auc"]) and clean["acc"] == pytest.approx(saved["acc"])
    r = rows[(rows.metric == "auc") & (rows.corruption == "brightness_up") & (rows.severity == 5)].iloc[0]
    assert float(r["drop"]) == pytest.approx(float(r.clean) - float(r.value))  # AUC: clean - shifted
    e = rows[(rows.metric == "ece") & (rows.corruption == "brightness_up") & (rows.severity == 5)].iloc[0]
    assert float(e["drop"]) == pytest.approx(float(e.value) - float(e.clean))  # ECE: lower is better
    rec = json.loads(RobustStore(env.results).meta_path(probe_id).read_text())
    assert rec["check"]["max_abs_diff"] < 1e-6 and rec["way"] == "features"


# -- resume --------------------------------------------------------------------------------------------------

def test_a_killed_pass_resumes_at_the_next_cell(env, probe_id, capsys, monkeypatch):
    """Killed after the first corruption; the rerun scores only what is left, and every cell equals an
    uninterrupted pass (own cache: the random stream of speckle noise is replayed, not read back)."""
    from bench.robust.scorer import Scorer

    assert _robust(env, capsys, probe_id, "--corruptions", ",".join(FAST))[0] == 0  # the uninterrupted pass
    copy = env.tmp / "results-killed"
    shutil.copytree(env.results, copy, ignore=shutil.ignore_patterns("robust"))
    cache = env.tmp / "cache-killed"
    real = Scorer.scores
    seen: list[tuple[str, int]] = []

    def killed(self, images, images_id, shift, desc=""):
        if shift["corruption"] == FAST[1]:
            raise RuntimeError("killed")  # the kill, as the second corruption starts
        seen.append((shift["corruption"], shift["severity"]))
        return real(self, images, images_id, shift, desc)

    monkeypatch.setattr(Scorer, "scores", killed)
    with pytest.raises(RuntimeError, match="killed"):
        _robust(env, capsys, probe_id, "--corruptions", ",".join(FAST), results=copy, cache=cache)
    rstore = RobustStore(copy)
    assert not rstore.csv_path(probe_id).exists()  # no rows from a pass that did not finish
    assert sorted(c for c, _ in rstore.cells(probe_id)) == sorted(
        [Cell("medmnistc", "resize-only", 0)] + [Cell("medmnistc", FAST[0], s) for s in C.SEVERITIES])

    seen.clear()
    monkeypatch.setattr(Scorer, "scores", lambda self, *a, **k: (seen.append(a[2]["corruption"]), real(self, *a, **k))[1])
    assert _robust(env, capsys, probe_id, "--corruptions", ",".join(FAST), results=copy, cache=cache)[0] == 0
    assert sorted(seen) == sorted([FAST[1]] * 5 + [FAST[2]] * 5)  # only the cells left
    ref = RobustStore(env.results)
    for cell, _ in ref.cells(probe_id):
        np.testing.assert_array_equal(rstore.read_cell(probe_id, cell)[1], ref.read_cell(probe_id, cell)[1])
    pd.testing.assert_frame_equal(pd.read_csv(rstore.csv_path(probe_id)), pd.read_csv(ref.csv_path(probe_id)))


def test_a_rerun_of_the_run_makes_its_cells_stale(env, capsys):
    run_id = _run(env, "--backbone", "dummy", "--head-epochs", "5", "--seed", "3")
    assert _robust(env, capsys, run_id, "--corruptions", "pixelate")[0] == 0
    assert main(["run", "--backbone", "dummy", "--head-epochs", "5", "--seed", "3", "--force", "--dataset",
                 "breastmnist", *env.common]) == 0
    code, _, err = _robust(env, capsys, run_id, "--corruptions", "pixelate")
    assert code == 0 and "earlier version of the run" in err


# -- which runs, and the errors ------------------------------------------------------------------------------

def _one_line_error(env, capsys, *args: str) -> str:
    code, out, err = _robust(env, capsys, *args)
    assert code == 2 and out == "", (out, err)
    assert err.startswith("bench: error: ") and len(err.strip().splitlines()) == 1, err
    return err


def test_finetuned_run_without_save_model_says_how_to_get_it(env, capsys):
    run_id = _run(env, "--backbone", "dummy", "--unfreeze", "last1", "--epochs", "1", "--seed", "1")
    err = _one_line_error(env, capsys, run_id)
    assert "trained its backbone (--unfreeze last1)" in err and "--save-model" in err and "bench run" in err
    assert not RobustStore(env.results).csv_path(run_id).exists()


def test_last1_save_model_run_is_scored_with_its_saved_model(env, last1_id, capsys):
    """The model way: the saved backbone and head on the corrupted images, as bench explain rebuilds them."""
    import torch

    from bench.explain.model import rebuild

    code, _, err = _robust(env, capsys, last1_id, "--corruptions", "pixelate")
    assert code == 0, err
    rec = json.loads(RobustStore(env.results).meta_path(last1_id).read_text())
    assert rec["way"] == "model" and rec["check"]["max_abs_diff"] < 1e-5
    rb = rebuild(ResultStore(env.results), last1_id, make_run_options(results_dir=env.results, data_root=env.data,
                                                                       skip_md5=True, quiet=True))
    images = _corrupted_28(env, "pixelate", 4)
    with torch.no_grad():
        logits = rb.net(rb.pre(rb.pre.to_device(images, rb.device)))
    expected = torch.softmax(logits.float(), -1).numpy()
    got = RobustStore(env.results).read_cell(last1_id, Cell("medmnistc", "pixelate", 4))[1]
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("args,way", [
    (("--backbone", "dummy", "--head", "knn"), "features"),
    (("--backbone", "dummy", "--layers", "1,2", "--head-epochs", "5"), "features"),
    (("--backbone", "deit", "--variant", "tiny", "--weights", "random", "--input-size", "32", "--head", "deit",
      "--head-arch", "deit_tiny", "--epochs", "1"), "prefix"),
])
def test_every_frozen_way_reproduces_the_runs_own_test_scores(env, capsys, args, way):
    run_id = _run(env, *args)
    code, _, err = _robust(env, capsys, run_id, "--corruptions", "pixelate")
    assert code == 0, err
    rec = json.loads(RobustStore(env.results).meta_path(run_id).read_text())
    assert rec["way"] == way and rec["check"]["images"] == 12 and rec["check"]["max_abs_diff"] < 1e-5


def test_label_space_mismatch_is_one_line_naming_both(env, probe_id, capsys):
    write_synthetic_npz(env.data, "pneumoniamnist", 28, n=(20, 10, 10))
    err = _one_line_error(env, capsys, probe_id, "--test-dataset", "pneumoniamnist")
    assert "pneumoniamnist" in err and "breastmnist" in err and "label space" in err
    err = _one_line_error(env, capsys, probe_id, "--corruptions", "no_such_blur")
    assert "pixelate" in err or "did you mean" in err or "motion_blur" in err


def _write_folder(root: Path, names: list[str], per_split: int = 6) -> Path:
    from PIL import Image

    rng = np.random.default_rng(1)
    for split in ("train", "val", "test"):
        for c, name in enumerate(names):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_split):
                img = rng.normal(100, 20, (28, 28))
                img[c * 14:(c + 1) * 14] += 90
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / split / name / f"{i}.png")
    return root


def test_cross_dataset_scores_another_datasets_test_split(env, probe_id, capsys):
    other = _write_folder(env.tmp / "hospital", ["malignant", "normal, benign"])  # breastmnist's classes
    code, _, err = _robust(env, capsys, probe_id, "--test-dataset", f"folder:{other}")
    assert code == 0, err
    rows = pd.read_csv(RobustStore(env.results).csv_path(probe_id), keep_default_na=False)
    cross = rows[rows["shift"] == "dataset"]
    assert set(cross.test_dataset) == {f"folder:{other}"} and set(cross.severity) == {0}
    [(cell, _)] = [(c, r) for c, r in RobustStore(env.results).cells(probe_id) if c.shift == "dataset"]
    y_true, scores = RobustStore(env.results).read_cell(probe_id, cell)
    assert len(y_true) == 12 and scores.shape == (12, 2)
    assert set(rows["shift"]) >= {"none", "medmnistc", "dataset"}  # the earlier corruption cells are kept


def test_own_data_gets_its_modalitys_generic_set(env, capsys):
    other = _write_folder(env.tmp / "own", ["a", "b"])
    run_id = _run(env, "--backbone", "dummy", "--head-epochs", "5", dataset=f"folder:{other}")
    err = _one_line_error(env, capsys, run_id)
    assert "--modality" in err
    code, _, err = _robust(env, capsys, run_id, "--modality", "ultrasound", "--corruptions", "pixelate")
    assert code == 0, err
    rec = json.loads(RobustStore(env.results).meta_path(run_id).read_text())
    assert rec["shifts"]["generic"]["borrowed_from"] == "breastmnist"
    assert {c.corruption for c, _ in RobustStore(env.results).cells(run_id)} == {"resize-only", "pixelate"}


def test_python_api_returns_the_rows(env, probe_id):
    import bench

    df = bench.robust(probe_id, corruptions=["pixelate"], results_dir=env.results, data_root=env.data,
                      skip_md5=True, quiet=True)
    assert {"clean", "pixelate"} <= set(df.corruption) and set(df.run_id) == {probe_id}
    with pytest.raises(UserError, match="run option"):
        bench.robust(probe_id, lr=0.1, results_dir=env.results)


# -- the report ------------------------------------------------------------------------------------------------

def test_report_section_with_be_rbe_and_the_paired_drop(env, probe_id, last1_id, capsys, tmp_path):
    """Every BreastMNIST corruption for a linear probe and a last-1 fine-tune: BE and rBE as MedMNIST-C
    computes them from the saved cell scores (sklearn's balanced accuracy, its AlexNet constants), and
    the paired drop between the two."""
    from sklearn.metrics import balanced_accuracy_score

    from bench.report import make_report
    from bench.shift.baselines import ALEXNET

    results = tmp_path / "results"
    shutil.copytree(env.results, results, ignore=shutil.ignore_patterns("robust"))
    keep = {probe_id, last1_id}
    for rid in ResultStore(results).run_ids():  # only the two runs
        if rid not in keep:
            ResultStore(results).csv_path(rid).unlink()
    out = tmp_path / "plain"
    make_report(results, out, formats=("md",), n_boot=50)
    assert "Robustness" not in (out / "report.md").read_text()  # nothing scored: no section
    for rid in keep:
        assert _robust(env, capsys, rid, results=results)[0] == 0
    report = make_report(results, tmp_path / "rep", formats=("md", "png"), n_boot=200)
    text = report.read_text()
    assert "## Robustness" in text and "Paired drop" in text and "rBE" in text
    summary = pd.read_csv(tmp_path / "rep" / "tables" / "robust_summary_medmnistc_breastmnist_28.csv")
    alex_clean, alex = ALEXNET["breastmnist"]
    rstore = RobustStore(results)
    for rid in keep:
        y, s = ResultStore(results).read_scores(rid)
        clean_err = 1 - balanced_accuracy_score(y, s[:, -1] > 0.5)
        be, rbe = [], []
        for c in C.corruptions("breastmnist"):
            errs = []
            for sev in C.SEVERITIES:
                yc, sc = rstore.read_cell(rid, Cell("medmnistc", c, sev))
                errs.append(1 - balanced_accuracy_score(yc, sc[:, -1] > 0.5))
            be.append(np.mean(errs) / alex[c])
            rbe.append((np.mean(errs) - clean_err) / (alex[c] - alex_clean))
        row = summary[summary.entity.str.contains("frozen" if rid == probe_id else "last 1")].iloc[0]
        assert row.be == pytest.approx(np.mean(be)) and row.rbe == pytest.approx(np.mean(rbe))
    paired = pd.read_csv(tmp_path / "rep" / "tables" / "robust_paired_medmnistc_breastmnist_28.csv")
    assert len(paired) == 1 and np.isfinite(paired.delta_drop.iloc[0]) and 0 < paired.p.iloc[0] <= 1
    drops = summary.set_index("entity")["drop"]
    assert paired.delta_drop.iloc[0] == pytest.approx(drops[paired.model_a.iloc[0]] - drops[paired.model_b.iloc[0]])
    assert (tmp_path / "rep" / "figures" / "robust_severity_medmnistc_breastmnist_28.png").is_file()


def test_all_scores_every_run_and_says_which_it_cannot(env, probe_id, capsys):
    """--all (after a sweep): every finished run; one that cannot be scored (a fine-tune without its
    saved backbone) is said in one line and the exit code is 1."""
    unsaved = _run(env, "--backbone", "dummy", "--unfreeze", "last1", "--epochs", "1", "--seed", "1")
    code, out, err = _robust(env, capsys, "--all", "--corruptions", "pixelate")
    store, rstore = ResultStore(env.results), RobustStore(env.results)
    failed = [line for line in err.splitlines() if " not scored: " in line]
    assert any(unsaved in line for line in failed)
    assert code == 1 and failed and all("--save-model" in line or "--modality" in line for line in failed)
    scored = set(out.split())
    assert scored == {str(rstore.csv_path(r)) for r in store.run_ids() if not any(r in line for line in failed)}
    with pytest.raises(UserError, match="--all"):
        from bench.robust import Request, robust

        robust(Request(["x"], every=True), make_run_options(results_dir=env.results))
