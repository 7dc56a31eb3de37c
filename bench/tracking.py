"""Experiment tracking (``--log tensorboard|mlflow|wandb``): a finished run, read back from the
results store, sent to each tracker through its own API; a report's tables and figures attached
to the group of tracked runs it covers.

A run is tracked only after its result files are written, from those files: the resolved config
as parameters, the per-epoch curves of curves/<run_id>.csv (step = epoch; logged after the run,
not live, so the training loop knows nothing of trackers), the final metrics per split of
runs/<run_id>.csv, and the run id and data fingerprint as tags. A tracker that fails is one
warning line and an ``error`` in the run's meta JSON (``tracking``); the run stays done.

Local by default: TensorBoard event files and an MLflow SQLite store under
``<results>/tracking/`` (``MLFLOW_TRACKING_URI`` wins), W&B offline there unless logged in.
One small class per tracker behind :class:`Tracker`; the libraries are imported only here,
only when asked for.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .fsio import atomic_write_text
from .progress import log
from .results import ResultStore

DEFAULT_GROUP = "medfm-bench"
EXTRA = "tracking"  # pip install 'medfm-bench[tracking]' (all three) or the tracker's own extra


@dataclass
class RunRecord:
    """What a tracker is given for one run, read from its result files."""

    run_id: str
    group: str
    params: dict[str, str]                       # the resolved config (None left out)
    tags: dict[str, str]                         # bench.run_id, bench.data_fingerprint, ...
    metrics: dict[str, float]                    # "<split>/<metric>" (and "layer<k>/<split>/<metric>")
    curves: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # (epoch, {name: value})
    config: dict = field(default_factory=dict)


class Tracker:
    """One tracker: ``log_run`` sends a run, ``log_report`` attaches a report's files to a group.
    Each returns what the run's meta records about it (where it went)."""

    name = ""
    module = ""        # the library, checked (not imported) before anything runs
    package = ""       # its pip name, for the one-line error

    def __init__(self, root: Path) -> None:
        self.root = Path(root) / "tracking"  # <results>/tracking/

    def log_run(self, rec: RunRecord) -> dict:
        raise NotImplementedError

    def log_report(self, group: str, folder: Path) -> dict:
        raise NotImplementedError


class TensorBoard(Tracker):
    """Event files in <results>/tracking/tensorboard/<group>/<run_id>/ (``tensorboard --logdir``
    on the group folder compares a sweep's runs)."""

    name, module, package = "tensorboard", "tensorboard", "tensorboard"

    def _writer(self, folder: Path):
        from torch.utils.tensorboard import SummaryWriter

        shutil.rmtree(folder, ignore_errors=True)  # a rerun (--force) replaces the run's events
        return SummaryWriter(log_dir=str(folder))

    def log_run(self, rec: RunRecord) -> dict:
        folder = self.root / "tensorboard" / rec.group / rec.run_id
        w = self._writer(folder)
        try:
            for epoch, values in rec.curves:
                for k, v in values.items():
                    w.add_scalar(k, v, epoch)
            for k, v in rec.metrics.items():
                w.add_scalar(f"final/{k}", v, 0)
            w.add_text("config", "```\n" + json.dumps(rec.config, indent=1, default=str) + "\n```", 0)
            w.add_text("tags", "\n".join(f"{k}: {v}" for k, v in rec.tags.items()), 0)
            w.add_hparams({k: v for k, v in rec.params.items()},
                          {f"hparam/{k}": v for k, v in rec.metrics.items() if "layer" not in k}, run_name=".")
        finally:
            w.close()
        return {"dir": str(folder)}

    def log_report(self, group: str, folder: Path) -> dict:
        target = self.root / "tensorboard" / group / "report"
        w = self._writer(target)
        try:
            for md in sorted(folder.rglob("*.md")):
                w.add_text(str(md.relative_to(folder)), md.read_text(), 0)
            for png in sorted(folder.rglob("*.png")):
                import numpy as np
                from PIL import Image

                w.add_image(str(png.relative_to(folder)), np.asarray(Image.open(png).convert("RGB")), 0,
                            dataformats="HWC")
        finally:
            w.close()
        return {"dir": str(target)}


class MLflow(Tracker):
    """One MLflow run per bench run in the experiment named after the group; the store is
    ``MLFLOW_TRACKING_URI`` or a SQLite file <results>/tracking/mlflow.db (artifacts beside it)."""

    name, module, package = "mlflow", "mlflow", "mlflow"

    def uri(self) -> str:
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        self.root.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(self.root / 'mlflow.db').resolve()}"

    def _client(self, group: str):
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        uri = self.uri()
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(group)
        if exp is None:
            location = None if os.environ.get("MLFLOW_TRACKING_URI") else \
                (self.root / "mlflow-artifacts" / group).resolve().as_uri()
            try:
                return client, client.create_experiment(group, artifact_location=location), uri
            except MlflowException:  # another worker of the sweep created it meanwhile
                exp = client.get_experiment_by_name(group)
                if exp is None:
                    raise
        return client, exp.experiment_id, uri

    def _replace(self, client, exp_id: str, key: str, value: str) -> None:
        """A rerun (--force) replaces the run tracked before: one tracked run per run id."""
        for old in client.search_runs([exp_id], filter_string=f"tags.`{key}` = '{value}'"):
            client.delete_run(old.info.run_id)

    def log_run(self, rec: RunRecord) -> dict:
        import time

        from mlflow.entities import Metric, Param, RunTag

        client, exp_id, uri = self._client(rec.group)
        self._replace(client, exp_id, "bench.run_id", rec.run_id)
        run = client.create_run(exp_id, run_name=rec.run_id, tags=rec.tags)
        rid = run.info.run_id
        ms = int(time.time() * 1000)
        metrics = [Metric(k, v, ms, epoch) for epoch, values in rec.curves for k, v in values.items()]
        metrics += [Metric(k, v, ms, 0) for k, v in rec.metrics.items()]
        params = [Param(k, v[:6000]) for k, v in rec.params.items()]
        client.log_batch(rid, tags=[RunTag(k, v) for k, v in rec.tags.items()])
        for i in range(0, len(params), 100):  # MLflow's batch limits: 100 params, 1000 metrics
            client.log_batch(rid, params=params[i:i + 100])
        for i in range(0, len(metrics), 1000):
            client.log_batch(rid, metrics=metrics[i:i + 1000])
        client.set_terminated(rid)
        return {"run": rid, "experiment": exp_id, "uri": uri}

    def log_report(self, group: str, folder: Path) -> dict:
        client, exp_id, uri = self._client(group)
        self._replace(client, exp_id, "bench.kind", "report")
        run = client.create_run(exp_id, run_name="report", tags={"bench.kind": "report"})
        client.log_artifacts(run.info.run_id, str(folder))
        client.set_terminated(run.info.run_id)
        return {"run": run.info.run_id, "experiment": exp_id, "uri": uri}


class WandB(Tracker):
    """A W&B run per bench run, in the group; offline files under <results>/tracking/wandb/
    (``wandb sync`` later) unless logged in (WANDB_API_KEY or a netrc entry) or WANDB_MODE says."""

    name, module, package = "wandb", "wandb", "wandb"

    @staticmethod
    def mode() -> str:
        if os.environ.get("WANDB_MODE"):
            return os.environ["WANDB_MODE"]
        if os.environ.get("WANDB_API_KEY"):
            return "online"
        import netrc
        from urllib.parse import urlparse

        host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""
        try:
            path = os.environ.get("NETRC") or None
            return "online" if netrc.netrc(path).authenticators(host) else "offline"
        except (OSError, netrc.NetrcParseError):
            return "offline"

    def _init(self, group: str, name: str, **kw):
        import wandb

        self.root.mkdir(parents=True, exist_ok=True)
        return wandb.init(project=os.environ.get("WANDB_PROJECT", DEFAULT_GROUP), group=group, name=name,
                          dir=str(self.root), mode=self.mode(), reinit="create_new",
                          settings=wandb.Settings(console="off", silent=True), **kw)

    def log_run(self, rec: RunRecord) -> dict:
        run = self._init(rec.group, rec.run_id, config=rec.config, job_type="run",
                         tags=[f"{k.split('.')[-1]}:{v}"[:64] for k, v in rec.tags.items()])
        try:
            for epoch, values in rec.curves:
                run.log({**values, "epoch": epoch}, step=epoch)
            run.summary.update({**rec.metrics, **rec.tags})
            return {"run": run.id, "mode": self.mode(), "dir": str(Path(run.dir).parent)}
        finally:
            run.finish()

    def log_report(self, group: str, folder: Path) -> dict:
        import wandb

        run = self._init(group, "report", job_type="report")
        try:
            run.log({str(p.relative_to(folder)): wandb.Image(str(p)) for p in sorted(folder.rglob("*.png"))})
            art = wandb.Artifact(f"report-{group}".replace("/", "-"), type="report")
            art.add_dir(str(folder))
            run.log_artifact(art)
            return {"run": run.id, "mode": self.mode()}
        finally:
            run.finish()


TRACKERS: dict[str, type[Tracker]] = {t.name: t for t in (TensorBoard, MLflow, WandB)}


def check_available(names) -> None:
    """Before anything runs: a tracker whose library is missing is one line naming the extra."""
    for name in names or ():
        t = TRACKERS[name]
        if importlib.util.find_spec(t.module) is None:
            raise UserError(f"--log {name} needs the {t.package} package: pip install 'medfm-bench[{name}]' "
                            f"(or 'medfm-bench[{EXTRA}]' for all trackers)")


# -- a run's record, from its files ---------------------------------------------------------------
_CURVE_KEYS = ("epoch", "split", "metric", "value", "step")
_ALIASES = {"wd": "weight_decay"}  # curve column -> its name in meta["selected"]


def _number(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def curves_by_epoch(rows: list[dict], selected: dict) -> list[tuple[int, dict[str, float]]]:
    """Per-epoch values of a curves CSV. Wide files (epoch, train_loss, val_loss, val_auc, lr...)
    as they are; long files of a head grid (lr, wd, epoch, split, metric, value) as the selected
    head's ``<split>_<metric>`` (the grid's other heads under ``grid/<lr=..,wd=..>/``)."""
    by: dict[int, dict[str, float]] = {}
    for r in rows:
        epoch = _number(r.get("epoch"))
        if epoch is None:
            continue
        got = by.setdefault(int(epoch), {})
        if "metric" in r and "value" in r:
            head = {k: v for k, v in r.items() if k not in _CURVE_KEYS and v not in ("", None)}
            chosen = all(_number(selected.get(_ALIASES.get(k, k))) == _number(v) for k, v in head.items())
            name = f"{r.get('split') or 'val'}_{r['metric']}"
            if not chosen:
                name = "grid/" + ",".join(f"{k}={v}" for k, v in head.items()) + "/" + name
            if (v := _number(r["value"])) is not None:
                got[name] = v
        else:
            for k, v in r.items():
                if k not in ("epoch", "split") and (x := _number(v)) is not None:
                    got[k] = x
    return sorted(by.items())


def run_record(store: ResultStore, run_id: str, group: str) -> RunRecord:
    meta = store.read_meta(run_id)
    config = meta.get("config", {})
    metrics = {}
    for r in _read_csv(store.csv_path(run_id)):
        if (v := _number(r.get("value"))) is not None:
            prefix = f"layer{r['layer']}/" if r.get("layer") else ""
            metrics[f"{prefix}{r['split']}/{r['metric']}"] = v
    tags = {"bench.run_id": run_id, "bench.data_fingerprint": str(config.get("data_fingerprint") or ""),
            "bench.protocol": str(meta.get("protocol") or ""), "bench.group": group}
    for k in ("backbone", "dataset", "head", "unfreeze", "seed"):
        if config.get(k) is not None:
            tags[f"bench.{k}"] = str(config[k])
    params = {k: str(v) for k, v in config.items() if v is not None and v != ""}
    curves = curves_by_epoch(_read_csv(store.path("curves", run_id)), meta.get("selected") or {})
    return RunRecord(run_id, group, params, tags, metrics, curves, config)


def _record(store: ResultStore, run_id: str, entry: dict) -> None:
    """The tracking outcome into the run's meta JSON (atomically)."""
    meta = store.read_meta(run_id)
    meta["tracking"] = {**(meta.get("tracking") or {}), **entry}
    atomic_write_text(store.path("meta", run_id), json.dumps(meta, indent=1, default=str), "run metadata")


def track_run(results_dir: Path, run_id: str, names, group: str | None) -> dict:
    """Send a written run to each tracker in ``names``. Never raises: a failure is one warning
    line and ``{"error": ...}`` in the run's meta (``tracking.<name>``)."""
    store = ResultStore(results_dir)
    group = group or DEFAULT_GROUP
    entry: dict = {"group": group}
    try:
        rec = run_record(store, run_id, group)
    except Exception as e:  # noqa: BLE001 - a tracker never fails a run
        rec, entry["error"] = None, f"{type(e).__name__}: {e}"
        log(f"warning: {run_id}: tracking skipped: {entry['error']}")
    for name in names or () if rec is not None else ():
        try:
            entry[name] = TRACKERS[name](results_dir).log_run(rec)
        except Exception as e:  # noqa: BLE001
            entry[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            log(f"warning: {run_id}: --log {name} failed, the run's result is kept: {entry[name]['error']}")
    try:
        _record(store, run_id, entry)
    except Exception as e:  # noqa: BLE001
        log(f"warning: {run_id}: could not record the tracking outcome in its meta JSON: {e}")
    return entry


def groups_of(results_dir: Path, run_ids) -> list[str]:
    """The tracked groups the runs of a report were sent to (from their meta JSON)."""
    store = ResultStore(results_dir)
    seen = dict.fromkeys(g for rid in run_ids if (g := (store.read_meta(rid).get("tracking") or {}).get("group")))
    return list(seen)


def track_report(results_dir: Path, folder: Path, names, groups: list[str]) -> dict:
    """Attach a report's files (tables, figures, documents) to each group; failures warn."""
    out: dict = {}
    for group in groups or [DEFAULT_GROUP]:
        for name in names or ():
            try:
                out[f"{group}/{name}"] = TRACKERS[name](results_dir).log_report(group, Path(folder))
            except Exception as e:  # noqa: BLE001
                out[f"{group}/{name}"] = {"error": f"{type(e).__name__}: {e}"}
                log(f"warning: report: --log {name} failed for group {group}: {type(e).__name__}: {e}")
    return out
