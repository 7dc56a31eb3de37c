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

    def selects_on_val(self, cfg) -> bool:
        return False  # k, metric and vote are given: nothing is chosen on val

    def run(self, ctx: RunContext) -> ProtocolOutput:
        from .. import heads
        from ..datasets import SPLITS

        cfg, ds = ctx.cfg, ctx.dataset
        feats = {s: ctx.readout_features(s) for s in SPLITS}
        y_train = ds.splits["train"].labels
        k, why = effective_k(cfg.knn_k, y_train, ds.multilabel, ds.n_outputs, ds.label_names)
        if why:
            ctx.warn("knn_k", why, knn_k=cfg.knn_k, k=k)
        if cfg.knn_vote == "majority":
            ctx.warn("hard_votes", HARD_VOTES)
        with ctx.timings("head"):
            val, test = (heads.knn_scores(feats["train"], y_train, feats[s], ds.task, ds.n_outputs, k,
                                          ctx.device, metric=cfg.knn_metric, vote=cfg.knn_vote)
                         for s in ("val", "test"))
        return ProtocolOutput(val, test, {"head": "knn", "k": k, "metric": cfg.knn_metric, "vote": cfg.knn_vote,
                                          **({"k_asked": cfg.knn_k} if k != cfg.knn_k else {})})


HARD_VOTES = ("--knn-vote majority: the scores are one-hot votes, so AUC measures one threshold, not a ranking: "
              "not meaningful (acc, balanced acc and F1 are); the report marks it")


def effective_k(k: int, y_train, multilabel: bool, n_outputs: int,
                names: dict | None = None) -> tuple[int, str | None]:
    """The k a kNN probe uses, and why it is not the one asked (None: it is). Single-label: k must
    be below the smallest class's train count (classes the split lacks aside), else the vote of that
    class is swamped and, once k reaches every train image, each query gets the same scores (AUC
    0.5 by construction): k is cut to that count minus one, at least 1. Multi-label (a label's
    share is a ranking whatever its positives): k below the number of train images."""
    from ..subsets import per_class

    n_train = len(y_train)
    if multilabel:
        if k < n_train:
            return k, None
        used = max(1, n_train - 1)
        return used, (f"--knn-k {k} is not below the {n_train} train images: every query would get the same "
                      f"neighbours; k = {used} is used (the run id keeps --knn-k {k})") if used != k else None
    counts = per_class(y_train, False, n_outputs)
    present = [(int(n), c) for c, n in enumerate(counts.tolist()) if n > 0]
    if not present:
        return k, None
    smallest, c = min(present)
    if k < smallest:
        return k, None
    used = max(1, smallest - 1)
    if used == k:
        return k, None
    name = (names or {}).get(str(c), str(c))
    return used, (f"--knn-k {k} is not below the smallest class's train count ({name}: {smallest} image"
                  f"{'s' if smallest != 1 else ''}): k = {used} is used (the run id keeps --knn-k {k})")


KNN = KNNProbe()
