"""Fine-tuning: ``--unfreeze lastN|all`` with a linear or MLP head, or a trained head on a frozen
backbone (``--head mlp``). The loop itself is bench.train; this module says when it applies, what
it shares and what it costs."""
from __future__ import annotations

from .. import options
from ..run_config import parse_unfreeze
from ..context import RunContext, frozen_identity
from ..protocol import Protocol, ProtocolOutput, SplitSizes

DEIT_OPTIONS = ("head_arch", "head_depth", "head_tokens")  # read by the DeiT head only
TRAINED_OPTIONS = tuple(n for n in options.names("run", per_protocol=True)
                        if options.get(n).group == options.TRAINED and n not in DEIT_OPTIONS)


class Finetune(Protocol):
    name = "finetune"
    heads = ("linear", "mlp")
    options = TRAINED_OPTIONS
    kind = "trained"
    description = ("AdamW on blocks[L-N:] + readout + head; epoch chosen on val; frozen prefix cached "
                   "(also --head linear --linear-mode online: the head alone, on images)")

    def head_fraction(self, cfg) -> float:
        """Head cost relative to one backbone pass (cost estimates)."""
        return 0.0

    def applies(self, cfg) -> bool:
        return cfg.head != "linear" or cfg.unfreeze != "none" or cfg.linear_mode == "online"

    def reads(self, cfg) -> tuple[str, ...]:
        from ..adapt import LORA_OPTIONS

        return self.options if cfg.adapt == "lora" else tuple(o for o in self.options if o not in LORA_OPTIONS)

    def selects_on_val(self, cfg) -> bool:
        return cfg.select != "last"  # --select last: the model after the last epoch, nothing chosen on val

    def plan(self, cfg, model):
        """Which blocks train and whether the frozen prefix is cached (bench.train.Plan)."""
        from ..train import plan_for

        return plan_for(cfg, model)

    def build_head(self, cfg, model, n_outputs: int, pretrained: bool | None = None):
        from ..train import build_head

        return build_head(cfg, model, n_outputs, pretrained)

    def shares(self, cfg) -> tuple | None:
        # the frozen prefix stem+blocks[:L-N] is cached once for all seeds, unless augmentation
        # makes the train split's prefix different every epoch
        if _prefix_frozen(cfg) and cfg.augment == "none" and cfg.frozen_mode != "train":
            return ("prefix", cfg.unfreeze) + frozen_identity(cfg)
        return None

    def _fraction(self, cfg, num_blocks: int) -> float:
        n = parse_unfreeze(cfg.unfreeze, None)
        n = num_blocks if n is None else min(n, num_blocks)
        return n / num_blocks

    def shared_cost(self, cfg, n: SplitSizes, num_blocks: int) -> float:
        return n.total * (1 - self._fraction(cfg, num_blocks))

    def cost(self, cfg, n: SplitSizes, num_blocks: int) -> float:
        frac = self._fraction(cfg, num_blocks) + self.head_fraction(cfg)
        # forward + backward on train, forward on val. BitFit skips the weight gradients of every
        # matrix (a backward of about one forward); LoRA skips them too but adds its own layers, which
        # cost about as much (benchmarks/bench_adapt.py: 0.5-1.5x a full step, BitFit 0.35-0.75x)
        train_passes = 2 if cfg.adapt == "bitfit" else 3
        per_epoch = (train_passes * n.train + n.val) * frac
        if self.shares(cfg) is None and _prefix_frozen(cfg):  # augmented: the train prefix runs every epoch
            per_epoch += n.train * (1 - self._fraction(cfg, num_blocks))
            if cfg.frozen_mode == "train":  # and val's, as the frozen statistics move
                per_epoch += n.val * (1 - self._fraction(cfg, num_blocks))
        return cfg.epochs * per_epoch + (n.val + n.test) * frac

    def head_parameters(self, cfg, model, n_outputs: int) -> int:
        from backbones.base import count_params

        return count_params(self.build_head(cfg, model, n_outputs, pretrained=False))  # no download

    def run(self, ctx: RunContext) -> ProtocolOutput:
        import torch

        from ..train import finetune

        plan = self.plan(ctx.cfg, ctx.model)
        torch.manual_seed(ctx.cfg.seed)  # the head's init
        head = self.build_head(ctx.cfg, ctx.model, ctx.dataset.n_outputs)
        return finetune(ctx, plan, head)

    def finished(self, cfg, opts) -> None:
        from ..train import checkpoint_for

        checkpoint_for(opts, cfg).remove()  # a kill before the results were written resumes, not retrains


def _prefix_frozen(cfg) -> bool:
    """Is a frozen prefix there at all (``--unfreeze all`` trains the stem, except under LoRA)?"""
    from ..adapt import trains_stem

    return cfg.unfreeze != "all" or not trains_stem(cfg.adapt)


FINETUNE = Finetune()
