"""`bench results export` (every run as one tidy table with its config) and `bench results ls`."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.errors import UserError
from bench.report.export import export, format_status, status_table, tidy_table
from test_report import write_run


def _results(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    for seed in (0, 1):
        for d in ("breastmnist", "retinamnist"):
            write_run(results, backbone="resnet18", weights="random", dataset=d, seed=seed,
                      metrics={("test", "auc"): 0.7 + seed / 100, ("test", "ece"): 0.1, ("val", "auc"): 0.69},
                      extra_config={"lr": 0.001, "recipe": "paper"})
        write_run(results, backbone="dummy", variant="small", dataset="breastmnist", seed=seed,
                  metrics={("test", "auc"): 0.6, ("val", "auc"): 0.61})
    # a failed run with its config, as the sweep records it
    cfg = {"backbone": "dummy", "variant": "small", "weights": "default", "dataset": "retinamnist", "size": 28,
           "input_size": 224, "resize": "resize", "head": "linear", "unfreeze": "none", "seed": 0, "limit": None}
    (results / "failures").mkdir()
    (results / "failures" / "dummy-fail.json").write_text(json.dumps({"run_id": "dummy-fail", "config": cfg,
                                                                      "error": "RuntimeError: boom"}))
    return results


def test_export_is_one_tidy_row_per_run_metric_with_config_columns(tmp_path):
    results = _results(tmp_path)
    out, n_rows, n_runs = export(results, tmp_path / "all.csv")
    df = pd.read_csv(out, keep_default_na=False)
    # every row of every run CSV, read independently
    raw = []
    for p in sorted((results / "runs").glob("*.csv")):
        with open(p, newline="") as f:
            raw += list(csv.DictReader(f))
    assert n_rows == len(df) == len(raw) and n_runs == 6 == df.run_id.nunique()
    for col in ("run_id", "model", "backbone", "variant", "weights", "dataset", "size", "seed", "head",
                "unfreeze", "lr", "recipe", "task", "created", "git", "split", "metric", "value"):
        assert col in df.columns, col
    got = {(r["run_id"], r["split"], r["metric"]): float(r["value"]) for r in df.to_dict("records")}
    assert got == {(r["run_id"], r["split"], r["metric"]): float(r["value"]) for r in raw}
    r18 = df[df.backbone == "resnet18"]
    assert set(r18.model) == {"resnet18 (random) [paper]"} and set(r18.recipe) == {"paper"}
    assert set(r18.lr) == {"0.001"} and set(df[df.backbone == "dummy"].lr) == {""}  # absent config: empty
    assert set(df[df.backbone == "dummy"].recipe) == {""}
    # the export is what a notebook pivots: one value per (model, dataset, seed, split, metric)
    assert not df.duplicated(["model", "dataset", "seed", "split", "metric"]).any()
    # filters as in `bench report`
    assert set(tidy_table(results, ["dataset=retinamnist"]).dataset) == {"retinamnist"}


def test_export_parquet_round_trip_or_a_clear_error(tmp_path, monkeypatch):
    results = _results(tmp_path)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="pyarrow"):
            export(results, tmp_path / "all.parquet")
    else:
        out, n, _ = export(results, tmp_path / "all.parquet")
        assert len(pd.read_parquet(out)) == n
    with pytest.raises(UserError, match=r"\.csv or \.parquet"):
        export(results, tmp_path / "all.xlsx")


def test_ls_counts_done_and_failed_per_model_and_dataset(tmp_path):
    results = _results(tmp_path)
    st = status_table(results).set_index(["model", "dataset", "size"])
    # labels as in the report: several recipes are present, so each label names its own
    assert st.loc[("resnet18 (random) [paper]", "breastmnist", 28), "done"] == 2
    assert st.loc[("resnet18 (random) [paper]", "breastmnist", 28), "seeds_done"] == "0 1"
    assert st.loc[("dummy small (random) (test model) [no recipe]", "breastmnist", 28), ["done", "failed"]].tolist() == [2, 0]
    assert st.loc[("dummy small (random) (test model) [no recipe]", "retinamnist", 28), ["done", "failed"]].tolist() == [0, 1]
    text = format_status(status_table(results))
    assert "2/1 failed" not in text and "0/1 failed" in text
    assert "6 run(s) done, 1 failed" in text
    # only failures: still listed
    only = tmp_path / "only"
    (only / "failures").mkdir(parents=True)
    for p in (results / "failures").glob("*.json"):
        (only / "failures" / p.name).write_text(p.read_text())
    assert status_table(only).failed.sum() == 1


def test_results_cli_errors_are_one_line_with_exit_2(tmp_path, capsys):
    assert main(["results", "ls", "--results-dir", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bench: error: results folder") and "\n" not in err
    results = _results(tmp_path)
    assert main(["results", "export", "--results-dir", str(results), "--out", str(tmp_path / "x.txt")]) == 2
    assert main(["results", "export", "--results-dir", str(results), "--out", str(tmp_path / "x.csv")]) == 0
    assert "rows of 6 run(s) written to" in capsys.readouterr().out
    assert main(["results", "ls", "--results-dir", str(results)]) == 0
    assert "resnet18 (random) [paper]" in capsys.readouterr().out


def test_results_subcommand_in_help():
    r = subprocess.run([sys.executable, "-m", "bench.cli", "results", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "export" in r.stdout and "ls" in r.stdout
