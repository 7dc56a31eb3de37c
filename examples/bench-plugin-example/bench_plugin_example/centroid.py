"""A protocol plugin: nearest class centroid on the cached readout features (``--head centroid``).

The whole integration is this class and one entry point in the ``bench.protocols`` group. It reuses
the suite's cached frozen features (``ctx.readout_features``) and shares them with the linear and
kNN probes of the same backbone x dataset (``shares``), so a sweep extracts them once.
"""
from __future__ import annotations

import numpy as np

from bench.protocols import Protocol, ProtocolOutput
from bench.protocols.probe import probe_shares


class NearestCentroid(Protocol):
    name = "centroid"
    heads = ("centroid",)
    kind = "probe"
    description = "nearest class mean (cosine) on cached features; scores = softmax of similarities"

    def applies(self, cfg) -> bool:
        return cfg.unfreeze == "none"

    def shares(self, cfg) -> tuple:
        return probe_shares(cfg)

    def cost(self, cfg, n, num_blocks) -> float:
        return 0.0

    def run(self, ctx) -> ProtocolOutput:
        ds = ctx.dataset
        if ds.multilabel:
            from bench.errors import UserError

            raise UserError("--head centroid needs one class per image; this dataset is multi-label")
        feats = {s: ctx.readout_features(s) for s in ("train", "val", "test")}

        def unit(x: np.ndarray) -> np.ndarray:
            return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

        y = ds.targets("train")
        centroids = unit(np.stack([feats["train"][y == c].mean(0) if (y == c).any() else
                                   np.zeros(feats["train"].shape[1], np.float32) for c in range(ds.n_outputs)]))

        def scores(x: np.ndarray) -> np.ndarray:
            sim = unit(x) @ centroids.T * 10.0  # temperature: similarities in [-10, 10]
            e = np.exp(sim - sim.max(1, keepdims=True))
            return e / e.sum(1, keepdims=True)

        return ProtocolOutput(scores(feats["val"]), scores(feats["test"]), {"head": "centroid"})


CENTROID = NearestCentroid()
