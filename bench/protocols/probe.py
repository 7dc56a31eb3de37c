"""Linear probe: a grid of linear heads on cached readout features, trained in one pass, the
best chosen on val, only that one scored on test (DINOv2's eval/linear.py)."""
from __future__ import annotations

from ..context import RunContext, frozen_identity
from ..protocol import Protocol, ProtocolOutput, SplitSizes


def probe_shares(cfg) -> tuple:
    """Probes of one backbone x dataset (linear and kNN, every seed) read the same features."""
    return ("features",) + frozen_identity(cfg)


class LinearProbe(Protocol):
    name = "probe"
    heads = ("linear",)
    options = ("head_epochs", "head_batch_size")
    kind = "probe"
    description = "linear head grid (8 lr x 2 weight decay) on cached features of a frozen backbone"

    def applies(self, cfg) -> bool:
        return cfg.head == "linear" and cfg.unfreeze == "none" and cfg.linear_mode == "cached"

    def shares(self, cfg) -> tuple:
        return probe_shares(cfg)

    def cost(self, cfg, n: SplitSizes, num_blocks: int) -> float:
        return 0.0  # heads on cached features; the shared frozen pass is counted once per group

    def head_parameters(self, cfg, model, n_outputs: int) -> int:
        return model.embed_dim * n_outputs + n_outputs

    def run(self, ctx: RunContext) -> ProtocolOutput:
        from .. import heads
        from ..datasets import SPLITS

        cfg, ds = ctx.cfg, ctx.dataset
        feats = {s: ctx.readout_features(s) for s in SPLITS}
        with ctx.timings("head"):
            res = heads.train_linear_grid(feats["train"], ds.splits["train"].labels, feats["val"],
                                          ds.splits["val"].labels, ds.task, ds.n_outputs, epochs=cfg.head_epochs,
                                          batch_size=cfg.head_batch_size, select=cfg.select, seed=cfg.seed,
                                          device=ctx.device, quiet=ctx.opts.quiet)
            val = res.scores(ds.task, feats["val"], ctx.device)
            test = res.scores(ds.task, feats["test"], ctx.device)  # the selected head only, scored once
        selected = {"head": "linear", "lr": res.lr, "weight_decay": res.wd, "epoch": res.epoch,
                    f"val_{cfg.select}": res.val_value, "grid_size": len({(g['lr'], g['wd']) for g in res.grid})}
        curves = [{"lr": g["lr"], "wd": g["wd"], "epoch": g["epoch"], "split": "val", "metric": k[4:], "value": g[k]}
                  for g in res.grid for k in g if k.startswith("val_")]
        extra = {}
        if res.diverged:  # grid members whose loss diverged: left out of selection, and said so
            from ..progress import log

            d = res.diverged[0]
            selected["diverged"] = len(res.diverged)
            extra["diverged"] = res.diverged
            log(f"warning: {len(res.diverged)} of {selected['grid_size']} linear heads diverged and were left out of "
                f"selection (e.g. lr {d['lr']:g}, weight decay {d['wd']:g}: {d['why']} at epoch {d['epoch']})")
        return ProtocolOutput(val, test, selected, curves, extra=extra,
                              files={"head": (res.head_state(), {"format": "medfm-bench-head", "head": "probe"})})


PROBE = LinearProbe()
