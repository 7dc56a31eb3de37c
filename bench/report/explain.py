"""The report's "Explanations" section: the sheets `bench explain` wrote under
``<results>/explain/`` for runs in the report (each PNG with its JSON record beside it). A sheet
made before one of its runs was last run (``bench run --force`` keeps the run id) shows a model
that is gone: it is left out, and the section says how many were."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from .doc import Figure, Section

ORDER = {"compare": 0, "cam": 1, "feature-maps": 2, "filters": 3}


def _time(value: object) -> datetime | None:
    try:
        t = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)  # env.now() writes UTC


def run_created(results_dir: Path, run_id: str) -> datetime | None:
    """When the run's current results were written (its meta's ``created``); None if unknown."""
    from ..results import ResultStore

    try:
        meta = json.loads(ResultStore(results_dir).path("meta", run_id).read_text())
    except (OSError, ValueError):
        return None
    return _time(meta.get("created")) if isinstance(meta, dict) else None


def is_stale(rec: dict, results_dir: Path) -> bool:
    """Was the sheet made before any of its runs' current results (a rerun under the same id)?"""
    made = _time(rec.get("created"))
    if made is None:
        return False  # no time to compare: shown, as before records carried one
    times = (run_created(results_dir, r) for r in rec.get("runs") or ())
    return any(t is not None and t > made for t in times)


def explanations_section(results_dir: Path, run_ids: set[str]) -> Section | None:
    """A section with every current explain sheet of a run in ``run_ids``; None when there is none."""
    found, stale = [], 0
    for path in sorted(Path(results_dir, "explain").glob("*/*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a record being written or damaged: the sheet is left out, not the report
        if not isinstance(rec, dict):
            continue
        png = path.with_name(str(rec.get("png", "")))
        runs = set(rec.get("runs") or ())
        if not png.is_file() or not runs & run_ids:
            continue
        if is_stale(rec, results_dir):
            stale += 1
            continue
        title = str(rec.get("title", png.stem)).split("\n")[0]
        found.append((ORDER.get(rec.get("kind"), 9), path.parent.name, Figure(
            f"explain-{path.parent.name}-{path.stem}", title, png.read_bytes(), caption=str(rec.get("caption", "")))))
    if not found and not stale:
        return None
    found.sort(key=lambda t: (t[0], t[1]))
    left_out = (f" Left out: {stale} sheet(s) made before a run they show was rerun under the same id "
                f"(`bench run --force`); run `bench explain` again for them." if stale else "")
    return Section("Explanations", intro="Sheets written by `bench explain` for runs in this report: heatmaps of "
                   "the predicted class (multi-label: of the label each image was picked for) on chosen test "
                   "images (per class the most confident correct, most confident wrong and least confident "
                   "prediction), comparisons of runs on the same images, first-layer filters and mean feature "
                   "maps. Their JSON records beside the PNGs list the image indices." + left_out,
                   figures=[f for _, _, f in found])
