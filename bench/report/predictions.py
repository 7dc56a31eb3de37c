"""`bench results export --predictions`: one row per scored test image of every run that saved
scores (run id, its model and config columns, split, image index and id, label, prediction and
every output's score), from the saved scores alone.

Columns: single-label tasks have ``label`` and ``prediction`` (class indices); multi-label tasks
``label_<k>`` (0/1, -1 unknown) and ``prediction_<k>`` per label; every run ``score_<k>`` per
output (softmax or sigmoid probabilities, as the metrics read them). ``index`` is the image's
position in the run's test split; ``image_id`` its id (bench.audit: saved, or rebuilt for older runs
whose data fingerprint matches; empty, with one line on stderr, where neither). With
``--subgroups``, one more column per attribute: each image's group, as the report forms it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .. import metrics as M
from ..audit import Auditor
from ..datasets.attributes import groups, parse
from ..results import ResultStore
from .load import ROW_COLUMNS, load_results

RUN_COLUMNS = ("run_id", "model", *ROW_COLUMNS[1:12])


def predictions_table(results_dir: Path, filters: list[str] | tuple[str, ...] = (), subgroups: str | None = None,
                      data_root: Path | None = None) -> pd.DataFrame:
    rs = load_results(Path(results_dir), list(filters), all_definitions=True)
    store = ResultStore(rs.root)
    auditor = Auditor(store, data_root)
    specs = parse(subgroups)
    runs = rs.all_rows.drop_duplicates("run_id").set_index("run_id", drop=False)
    frames, without_ids, without_scores = [], [], 0
    for rid, r in runs.iterrows():
        got = store.read_scores(rid)
        if got is None:
            without_scores += 1
            continue
        y_true, y_score = np.asarray(got[0]), np.asarray(got[1])
        meta = rs.meta.get(rid, {})
        task = str(meta.get("task") or "")
        ids, how = auditor.test_ids(rid, meta, len(y_true))
        if ids is None:
            without_ids.append(f"{rid}: {how}")
        n = len(y_true)
        cols: dict[str, object] = {c: [r[c]] * n for c in RUN_COLUMNS}
        cols.update(split=["test"] * n, index=np.arange(n), image_id=ids if ids is not None else [""] * n)
        pred = M.predictions(task, y_score)
        if M.is_multilabel(task):
            yt, pr = y_true.reshape(n, -1), pred.reshape(n, -1)
            for k in range(yt.shape[1]):
                cols[f"label_{k}"], cols[f"prediction_{k}"] = yt[:, k].astype(int), pr[:, k].astype(int)
        else:
            cols["label"], cols["prediction"] = y_true.reshape(n).astype(int), pred.reshape(n).astype(int)
        sc = y_score.reshape(n, -1)
        for k in range(sc.shape[1]):
            cols[f"score_{k}"] = sc[:, k].astype(float)
        if specs and ids is not None:
            table = auditor.attributes(meta, ids)
            for s in specs:
                if table is not None and not isinstance(table, str) and s.column in table.columns:
                    cols[s.column] = groups(table.lookup(s.column, ids.tolist())[0], s)[0]
        frames.append(pd.DataFrame(cols))
    for line in without_ids[:10]:
        print(f"bench: export: no image ids for {line}", file=sys.stderr)
    if len(without_ids) > 10:
        print(f"bench: export: ... and {len(without_ids) - 10} more run(s) without image ids", file=sys.stderr)
    if without_scores:
        print(f"bench: export: {without_scores} run(s) saved no test scores and have no per-image rows",
              file=sys.stderr)
    if not frames:
        from ..errors import UserError

        raise UserError(f"no run in {rs.root} saved test scores; nothing to export per image")
    out = pd.concat(frames, ignore_index=True)
    # columns a run lacks (another task's) stay empty, as integers where they are labels
    for c in out.columns:
        if c.startswith(("label", "prediction")) and out[c].isna().any():
            out[c] = out[c].astype("Int64")
    return out
