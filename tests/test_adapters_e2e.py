"""Every adapter runs `bench run ... --limit 32` end to end (linear probe and kNN), offline,
with tiny random-initialised configs of the same classes."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from bench.cli import main

FAMILIES = {
    "dummy": ["--backbone", "dummy"],
    "resnet18": ["--backbone", "resnet18", "--weights", "random", "--input-size", "32"],
    "resnet18_28": ["--backbone", "resnet18_28"],
    "deit": ["--backbone", "deit", "--variant", "tiny_distilled"],
    "dino": ["--backbone", "dino", "--variant", "tiny"],
    "dinov2": ["--backbone", "dinov2", "--variant", "tiny_reg", "--readout", "cls+mean", "--input-size", "56"],
    "clip": ["--backbone", "clip", "--variant", "tiny", "--readout", "proj"],
    "sam": ["--backbone", "sam", "--variant", "tiny", "--input-size", "32"],
    "blip": ["--backbone", "blip", "--variant", "tiny"],
    "timm:convnext_atto": ["--backbone", "timm:convnext_atto", "--weights", "random", "--input-size", "32"],
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_adapter_runs_end_to_end(family, capsys, data_root, tmp_path):
    results = tmp_path / "r"
    common = ["--dataset", "retinamnist", "--data-root", str(data_root), "--skip-md5", "--limit", "32",
              "--results-dir", str(results), "--head-epochs", "5", "-q"]
    for head in ("linear", "knn"):
        code = main(["run", *FAMILIES[family], "--head", head, *common])
        assert code == 0, capsys.readouterr().err
    csvs = list((results / "runs").glob("*.csv"))  # only result CSVs live in runs/
    assert len(csvs) == 2
    for csv in csvs:
        df = pd.read_csv(csv)
        assert set(df.split) == {"val", "test"} and df.value.notna().all()
        meta = json.loads((results / "meta" / f"{csv.stem}.json").read_text())
        assert meta["backbone"]["blocks"] >= 1 and meta["dataset"]["n"]["test"] == 32
