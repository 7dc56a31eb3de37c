"""The report's "Explanations" section: the sheets `bench explain` wrote under
``<results>/explain/`` for runs in the report (each PNG with its JSON record beside it)."""
from __future__ import annotations

import json
from pathlib import Path

from .doc import Figure, Section

ORDER = {"compare": 0, "cam": 1, "feature-maps": 2, "filters": 3}


def explanations_section(results_dir: Path, run_ids: set[str]) -> Section | None:
    """A section with every explain sheet of a run in ``run_ids``; None when there is none."""
    found = []
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
        title = str(rec.get("title", png.stem)).split("\n")[0]
        found.append((ORDER.get(rec.get("kind"), 9), path.parent.name, Figure(
            f"explain-{path.parent.name}-{path.stem}", title, png.read_bytes(), caption=str(rec.get("caption", "")))))
    if not found:
        return None
    found.sort(key=lambda t: (t[0], t[1]))
    return Section("Explanations", intro="Sheets written by `bench explain` for runs in this report: heatmaps of "
                   "the predicted class on chosen test images (per class the most confident correct, most confident "
                   "wrong and least confident prediction), comparisons of runs on the same images, first-layer "
                   "filters and mean feature maps. Their JSON records beside the PNGs list the image indices.",
                   figures=[f for _, _, f in found])
