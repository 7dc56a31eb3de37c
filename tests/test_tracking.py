"""Experiment tracking (--log): local stores read back, never a failed run, flags never abbreviated."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from bench.cli import main

FAST = ["--skip-md5", "--limit", "32", "--device", "cpu", "-q", "--backbone", "dummy", "--weights", "random",
        "--dataset", "breastmnist"]
TUNE = ["--unfreeze", "last1", "--epochs", "2"]


def _results(root: Path) -> dict[str, dict[str, float]]:
    """run id -> {"<split>/<metric>": value} from the result CSVs."""
    out: dict[str, dict[str, float]] = {}
    for p in sorted((root / "runs").glob("*.csv")):
        with open(p) as f:
            for r in csv.DictReader(f):
                out.setdefault(r["run_id"], {})[f"{r['split']}/{r['metric']}"] = float(r["value"])
    return out


def _events(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_two_seed_sweep_tracked_in_mlflow_and_tensorboard(tmp_path, data_root, monkeypatch):
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tmp_path / "two-seeds.yaml"
    cfg.write_text("name: two-seeds\nseeds: [0, 1]\n")
    out = tmp_path / "results"
    assert main(["sweep", str(cfg), "--data-root", str(data_root), "--results-dir", str(out), *FAST, *TUNE,
                 "--log", "mlflow", "--log", "tensorboard"]) == 0
    results = _results(out)
    assert len(results) == 2

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'tracking' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("two-seeds")  # the sweep's group: its YAML's name
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags["bench.run_id"] for r in runs) == sorted(results)
    for r in runs:
        rid = r.data.tags["bench.run_id"]
        meta = json.loads((out / "meta" / f"{rid}.json").read_text())
        assert r.data.tags["bench.data_fingerprint"] == meta["config"]["data_fingerprint"]
        assert r.data.params["seed"] == str(meta["config"]["seed"]) and r.data.params["backbone"] == "dummy"
        for key, value in results[rid].items():  # the metrics of the result CSV, per split
            assert r.data.metrics[key] == pytest.approx(value)
        history = client.get_metric_history(r.info.run_id, "val_loss")
        assert sorted(m.step for m in history) == [1, 2]  # per epoch
        assert meta["tracking"]["group"] == "two-seeds" and meta["tracking"]["mlflow"]["run"] == r.info.run_id

    for rid in results:  # per-epoch curves in the event files, one folder per run in the sweep's folder
        scalars = _events(out / "tracking" / "tensorboard" / "two-seeds" / rid)
        for tag in ("train_loss", "val_loss", "val_auc", "lr"):
            assert [s for s, _ in scalars[tag]] == [1, 2], tag
        assert scalars["final/test/auc"][0][1] == pytest.approx(results[rid]["test/auc"])


def test_probe_curves_are_the_selected_heads():
    from bench.tracking import curves_by_epoch

    rows = [{"lr": "0.1", "wd": "0.0", "epoch": "1", "split": "val", "metric": "auc", "value": "0.9"},
            {"lr": "0.3", "wd": "0.0", "epoch": "1", "split": "val", "metric": "auc", "value": "0.7"}]
    got = dict(curves_by_epoch(rows, {"lr": 0.1, "weight_decay": 0.0}))
    assert got[1]["val_auc"] == 0.9 and got[1]["grid/lr=0.3,wd=0.0/val_auc"] == 0.7


def test_tracker_failure_keeps_the_run(tmp_path, data_root, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unknownscheme://nowhere")  # the store cannot be opened
    out = tmp_path / "r"
    assert main(["run", "--data-root", str(data_root), "--results-dir", str(out), *FAST, "--head", "linear",
                 "--head-epochs", "2", "--log", "mlflow"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "--log mlflow failed" in line]
    assert len(err) == 1 and err[0].startswith("bench: warning:")
    (rid,) = _results(out)
    meta = json.loads((out / "meta" / f"{rid}.json").read_text())
    assert "error" in meta["tracking"]["mlflow"]


def test_missing_library_is_one_line_naming_the_extra(tmp_path, data_root, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert main(["run", "--data-root", str(data_root), "--results-dir", str(tmp_path / "r"), *FAST,
                 "--head", "linear", "--log", "wandb"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "medfm-bench[wandb]" in err and "medfm-bench[tracking]" in err
    assert not (tmp_path / "r" / "runs").exists()


def test_flags_are_never_abbreviated(capsys):
    from bench.cli import build_parser

    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--backbone", "dummy", "--dataset", "breastmnist", "--log-gr", "x"])
    with pytest.raises(SystemExit):  # `--lo` is not --log (nor --log-dir)
        parser.parse_args(["sweep", "--lo", "mlflow"])
    args = parser.parse_args(["sweep", "--log", "mlflow", "--log", "tensorboard", "--log-dir", "d"])
    assert args.log == ["mlflow", "tensorboard"] and args.log_dir == Path("d")


def test_wandb_offline_files(tmp_path, data_root, monkeypatch):
    pytest.importorskip("wandb")
    for k in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # not logged in: offline
    out = tmp_path / "r"
    assert main(["run", "--data-root", str(data_root), "--results-dir", str(out), *FAST, *TUNE,
                 "--log", "wandb"]) == 0
    (rid,) = _results(out)
    meta = json.loads((out / "meta" / f"{rid}.json").read_text())
    assert meta["tracking"]["wandb"]["mode"] == "offline", meta["tracking"]
    runs = list((out / "tracking" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))  # what `wandb sync` uploads later


def test_report_attaches_to_the_sweeps_group(tmp_path, data_root, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "results"
    assert main(["sweep", "--data-root", str(data_root), "--results-dir", str(out), *FAST, "--head", "linear",
                 "--head-epochs", "2", "--seed", "0", "1", "--log", "mlflow", "--log-group", "g1"]) == 0
    rep = tmp_path / "rep"
    assert main(["report", "--results-dir", str(out), "--out", str(rep), "--format", "md", "--n-boot", "20",
                 "--log", "mlflow"]) == 0
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'tracking' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("g1")
    (report,) = client.search_runs([exp.experiment_id], filter_string="tags.`bench.kind` = 'report'")
    names = {a.path for a in client.list_artifacts(report.info.run_id)}
    assert "report.md" in names and "tables" in names
