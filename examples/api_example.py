"""The Python API end to end, offline: two runs, one with a backbone built here, a sweep, the
merged results as a DataFrame, and a report. Run from the project root:

    .venv/bin/python examples/api_example.py
"""
from __future__ import annotations

from pathlib import Path

import backbones
import bench

ROOT = Path(__file__).resolve().parents[1]
common = dict(data_root=ROOT / "bench" / "samples" / "medmnist", results_dir=ROOT / "results" / "api-example", quiet=True)

# 1. a registered backbone, by name (random weights: no download)
knn = bench.run("resnet18_28", "breastmnist", weights="random", head="knn", **common)
print(knn, "| selected:", knn.selected)

# 2. a backbone instance built in this script: its run id and feature cache follow its parameters
model = backbones.build("dummy", weights="random")
probe = bench.run(model, "breastmnist", head="linear", head_epochs=20, **common)
print(probe.table().round(4))

# 3. a small grid (lists make axes) and everything merged into one tidy frame
bench.sweep(backbone="dummy", dataset="breastmnist", weights="random", head=["linear", "knn"], seed=[0, 1],
            head_epochs=20, data_root=common["data_root"], results_dir=common["results_dir"])
df = bench.load_results(common["results_dir"])
test_auc = df[(df.split == "test") & (df.metric == "auc")]
print(test_auc.groupby(["backbone", "weights", "head"]).value.agg(["mean", "std", "count"]).round(4))

# 4. the report
print("report:", bench.report(common["results_dir"], out=ROOT / "reports" / "api-example"))
