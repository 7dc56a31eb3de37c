"""Published reference numbers shipped with the package (``bench/reference/medmnist_reference.csv``).

One row per (method, dataset, metric), test split, from any publication (the MedMNIST v2 table,
the SimpleCNN primer's single number), each with its ``source``. ``value`` is empty where the
number could not be verified against the publication; ``note`` then says why, so a blank is a
documented gap, not a zero. ``runs``: how many runs the published number is (1: a single run,
compared as one; empty: not stated). ``ours``: the runs of this benchmark that reproduce it, as
``key=value`` pairs of the run config (``backbone=simplecnn recipe=primer unfreeze=all``), matched
on the row's dataset and resolution (bench.report.reproduce); empty: nothing here reproduces it.
"""
from __future__ import annotations

from importlib import resources

import pandas as pd

COLUMNS = ("method", "resolution", "dataset", "split", "metric", "value", "source", "note", "runs", "ours")


def load_reference() -> pd.DataFrame:
    text = resources.files("bench").joinpath("reference/medmnist_reference.csv").read_text()
    from io import StringIO

    df = pd.read_csv(StringIO(text), dtype=str, keep_default_na=False)
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    return df[list(COLUMNS)]
