"""kNN probe on cached readout features: the k nearest train images (cosine or euclidean) vote
(shares per class, or the majority class as MedMNIST+)."""
from __future__ import annotations

from ..context import RunContext
from ..protocol import Protocol, ProtocolOutput, SplitSizes
from .probe import probe_shares


class KNNProbe(Protocol):
    name = "knn"
    heads = ("knn",)
    options = ("knn_k", "knn_metric", "knn_vote")
    kind = "probe"
    description = "k nearest train neighbours (cosine | euclidean) on cached features; scores = vote shares | majority"

    def applies(self, cfg) -> bool:
        return cfg.unfreeze == "none"

    def mismatch(self, cfg) -> str:
        return (f"--head knn has nothing to train; use it with --unfreeze none, or pick --head linear|mlp|deit "
                f"for --unfreeze {cfg.unfreeze}")

    def shares(self, cfg) -> tuple:
        return probe_shares(cfg)

    def cost(self, cfg, n: SplitSizes, num_blocks: int) -> float:
        return 0.0

    def run(self, ctx: RunContext) -> ProtocolOutput:
        from .. import heads
        from ..datasets import SPLITS

        cfg, ds = ctx.cfg, ctx.dataset
        feats = {s: ctx.readout_features(s) for s in SPLITS}
        y_train = ds.splits["train"].labels
        with ctx.timings("head"):
            val, test = (heads.knn_scores(feats["train"], y_train, feats[s], ds.task, ds.n_outputs, cfg.knn_k,
                                          ctx.device, metric=cfg.knn_metric, vote=cfg.knn_vote)
                         for s in ("val", "test"))
        return ProtocolOutput(val, test, {"head": "knn", "k": cfg.knn_k, "metric": cfg.knn_metric,
                                          "vote": cfg.knn_vote})


KNN = KNNProbe()
