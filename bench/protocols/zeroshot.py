"""Zero labels: ``--head zeroshot`` scores cached image embeddings against the text tower's class
embeddings of a prompt set; ``--head linear --init zeroshot`` starts a linear probe there.

Both read the backbone's projected readout (``Spec.text_readout``: the image side of the image-text
space), from the feature cache like every probe, so a zero-shot run on already extracted features
costs only the text tower. The text tower is built only here (``Backbone.text_tower``).
"""
from __future__ import annotations

from ..context import RunContext
from ..errors import UserError
from ..protocol import Protocol, ProtocolOutput, SplitSizes
from .probe import probe_shares


def _complete(cfg, explicit: frozenset, what: str):
    """The text readout and the prompt set's hash, written into the config (hence the run id)."""
    import backbones

    from .. import prompts

    spec = backbones.get(cfg.backbone).spec
    why = spec.text_refusal(cfg.variant)
    if why:
        raise UserError(f"{what} needs a text tower: {why}; use a vision-language backbone (clip, biomedclip, blip) "
                        f"or --head linear|knn")
    if "readout" in explicit and cfg.readout != spec.text_readout:
        raise UserError(f"{what} reads the image embedding of the image-text space, --readout {spec.text_readout}, "
                        f"not --readout {cfg.readout}")
    return cfg.replace(readout=spec.text_readout, prompts=prompts.config_value(cfg.dataset, cfg.prompts or ""))


def zero_shot_classifier(ctx: RunContext):
    """(classifier, prompt set, text tower) of a run: its prompts (the data's class names where the set
    has none), encoded by the backbone's text tower."""
    from .. import prompts, zeroshot

    cfg, ds = ctx.cfg, ctx.source or ctx.dataset
    pset = prompts.from_config(cfg.dataset, cfg.prompts)
    if not pset.classes:
        pset = pset.with_classes([ds.label_names.get(str(i), str(i)) for i in range(ds.n_outputs)], ds.multilabel)
    pset.check(ds.n_outputs, ds.multilabel, cfg.dataset)
    with ctx.timings("text"):
        tower = ctx.model.text_tower()
        clf = zeroshot.build_classifier(tower.encode, pset.classes, pset.templates, tower.logit_scale)
    ctx.log(f"zero-shot classifier: {len(pset.classes)} {'labels' if pset.multilabel else 'classes'} x "
            f"{len(pset.templates)} templates ({pset.name}, hash {pset.digest}), logit scale {tower.logit_scale:g}")
    return clf, pset, tower


def _record(pset, tower, clf) -> dict:
    return {"prompts": pset.name, "prompts_hash": pset.digest, "templates": list(pset.templates),
            "classes": [list(c) if isinstance(c, tuple) else c for c in pset.classes],
            "text_tower": tower.name, "logit_scale": clf.logit_scale,
            "ensemble": "mean of L2-normalised text embeddings per class, renormalised (CLIP)"}


class ZeroShot(Protocol):
    name = "zeroshot"
    heads = ("zeroshot",)
    options = ("prompts",)
    kind = "probe"
    description = ("zero labels: cosine of cached projected image embeddings with the text tower's prompt "
                   "ensembles x the model's logit scale, softmax (vision-language backbones)")

    def applies(self, cfg) -> bool:
        return cfg.unfreeze == "none"

    def mismatch(self, cfg) -> str:
        return f"--head zeroshot trains nothing; use it with --unfreeze none, not --unfreeze {cfg.unfreeze}"

    def complete(self, cfg, explicit=frozenset()):
        return _complete(cfg, explicit, "--head zeroshot")

    def validate(self, cfg) -> None:
        if cfg.shots or cfg.train_fraction != 1.0:
            raise UserError("--head zeroshot uses no train image: --shots / --train-fraction do not apply (it is "
                            "the 0-label point of a label-efficiency curve as it is)")

    def selects_on_val(self, cfg) -> bool:
        return False  # nothing is chosen: the prompts are given

    def shares(self, cfg) -> tuple:
        return probe_shares(cfg)

    def cost(self, cfg, n: SplitSizes, num_blocks: int) -> float:
        return 0.0

    def head_parameters(self, cfg, model, n_outputs: int) -> int:
        return 0

    def run(self, ctx: RunContext) -> ProtocolOutput:
        from .. import zeroshot

        ds = ctx.source or ctx.dataset
        feats = {s: ctx.readout_features(s) for s in ("val", "test")}  # no train image is read
        clf, pset, tower = zero_shot_classifier(ctx)
        with ctx.timings("head"):
            val, test = clf.scores(feats["val"]), clf.scores(feats["test"])
            per = zeroshot.template_spread(clf, pset.templates, ds.task,
                                           {s: ds.targets(s) for s in feats}, feats)
        selected = {"head": "zeroshot", "prompts_hash": pset.digest, "templates": len(pset.templates),
                    "logit_scale": clf.logit_scale}
        extra = {"zeroshot": {**_record(pset, tower, clf), "per_template": per,
                              "template_spread": {f"{s}_{m}": zeroshot.spread(per, s, m)
                                                  for s in ("val", "test") for m in ("acc", "auc")}}}
        return ProtocolOutput(val, test, selected, extra=extra)


class ZeroShotInit(Protocol):
    name = "zeroshot-init"
    heads = ("linear",)
    options = ("prompts", "head_epochs", "head_batch_size")
    kind = "probe"
    description = ("--head linear --init zeroshot: linear heads on L2-normalised projected features, started at "
                   "the zero-shot classifier (logit scale x class embeddings), chosen on val")

    def applies(self, cfg) -> bool:
        return cfg.head == "linear" and getattr(cfg, "init", "none") == "zeroshot"

    def complete(self, cfg, explicit=frozenset()):
        return _complete(cfg, explicit, "--init zeroshot")

    def validate(self, cfg) -> None:
        if cfg.unfreeze != "none" or cfg.linear_mode != "cached" or cfg.layers:
            raise UserError("--init zeroshot starts a linear probe on cached features at the zero-shot classifier: "
                            "use it with --unfreeze none, --linear-mode cached and no --layers")

    def shares(self, cfg) -> tuple:
        return probe_shares(cfg)

    def cost(self, cfg, n: SplitSizes, num_blocks: int) -> float:
        return 0.0

    def head_parameters(self, cfg, model, n_outputs: int) -> int:
        return model.embed_dim * n_outputs + n_outputs

    def run(self, ctx: RunContext) -> ProtocolOutput:
        from .. import zeroshot
        from ..datasets import SPLITS

        cfg, ds = ctx.cfg, ctx.dataset
        feats = {s: ctx.readout_features(s) for s in SPLITS}
        clf, pset, tower = zero_shot_classifier(ctx)
        with ctx.timings("head"):
            res = zeroshot.train_from_zeroshot(clf, feats["train"], ds.splits["train"].labels, feats["val"],
                                               ds.targets("val"), ds.task, epochs=cfg.head_epochs,
                                               batch_size=cfg.head_batch_size, select=cfg.select, seed=cfg.seed)
            val, test = res.scores(feats["val"]), res.scores(feats["test"])
        selected = {"head": "linear", "init": "zeroshot", "lr": res.lr, "weight_decay": res.wd, "epoch": res.epoch,
                    f"val_{cfg.select}": res.val_value, "grid_size": len({(g["lr"], g["wd"]) for g in res.grid}),
                    "prompts_hash": pset.digest}
        curves = [{"lr": g["lr"], "wd": g["wd"], "epoch": g["epoch"], "split": "val", "metric": k[4:], "value": g[k]}
                  for g in res.grid for k in g if k.startswith("val_")]
        state = {"weight": res.weight.contiguous(), "bias": res.bias.contiguous()}
        return ProtocolOutput(val, test, selected, curves, extra={"zeroshot": _record(pset, tower, clf)},
                              files={"head": (state, {"format": "medfm-bench-head", "head": "zeroshot-init",
                                                      "features": "l2-normalised"})})


ZEROSHOT = ZeroShot()
ZEROSHOT_INIT = ZeroShotInit()
