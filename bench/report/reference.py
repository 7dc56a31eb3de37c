"""Published reference numbers shipped with the package (``bench/reference/medmnist_reference.csv``).

One row per (method, dataset, metric), test split. ``value`` is empty where the number could not
be verified against the published MedMNIST v2 table; ``note`` then says why, so a blank is a
documented gap, not a zero.
"""
from __future__ import annotations

from importlib import resources

import pandas as pd

COLUMNS = ("method", "resolution", "dataset", "split", "metric", "value", "source", "note")


def load_reference() -> pd.DataFrame:
    text = resources.files("bench").joinpath("reference/medmnist_reference.csv").read_text()
    from io import StringIO

    df = pd.read_csv(StringIO(text), dtype=str, keep_default_na=False)
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    return df[list(COLUMNS)]
