"""The protocol interface and its registry: what is trained on a backbone, and how.

A protocol says which configs it runs (``heads`` x ``applies``), which per-protocol options it
reads (``options``: the others are None in its configs, so they never change a run id), what
frozen work it shares with other runs (``shares``: the sweep bundles runs with equal keys on one
worker so the frozen part is computed once), what it costs (``cost``, in backbone image passes),
and ``run(ctx)``: scores for val and test of the model selected on val.

The registry lives here, below the options and the config that ask it for head names and a
config's protocol; the built-in protocols (bench/protocols/) and plugins register into it, so
nothing down here imports them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .errors import UserError, did_you_mean
from .registry import Registry

if TYPE_CHECKING:
    from .run_config import RunConfig
    from .context import RunContext


@dataclass
class ProtocolOutput:
    val_scores: np.ndarray        # (N, C) class probabilities / label scores of the selected model
    test_scores: np.ndarray       # the same model, test split, computed once
    selected: dict                # what was chosen on val (hyper-parameters, epoch, criterion)
    curves: list[dict] | None = None   # per-epoch / per-head validation records
    extra: dict = field(default_factory=dict)  # protocol-specific provenance for the run's JSON
    # what rebuilds the trained model (bench explain): name -> (state dict, metadata), written with
    # the run as models/<run_id>/<name>.safetensors ("head"; "backbone" when it trained and --save-model)
    files: dict = field(default_factory=dict)
    # layer-wise probes: the output of each block's head (block number 1..L -> output); the run's
    # rows then carry a ``layer`` column, and val_scores/test_scores are of the layer chosen on val
    layers: "dict[int, ProtocolOutput] | None" = None


@dataclass(frozen=True)
class SplitSizes:
    train: int        # images a run trains on (a --train-fraction / --shots subset)
    val: int
    test: int
    full_train: int = 0   # the whole train split, which frozen passes cover (0: the same as train)

    @property
    def total(self) -> int:
        """Images of a frozen pass over every split."""
        return (self.full_train or self.train) + self.val + self.test


class Protocol:
    name: str = ""
    heads: tuple[str, ...] = ()     # --head values it serves
    options: tuple[str, ...] = ()   # per-protocol options it reads (bench.options)
    kind: str = "trained"           # probe (heads on cached readout features) | trained
    description: str = ""
    # bumped when what it computes changes: above 1 the version enters the run id (bench.resolve)
    version: int = 1

    def applies(self, cfg: "RunConfig") -> bool:
        """Does this protocol run ``cfg``? (Only head and unfreeze are asked; the default serves
        every --unfreeze.)"""
        return cfg.head in self.heads

    def mismatch(self, cfg: "RunConfig") -> str:
        """Why it does not apply, for the error when no protocol takes a config."""
        return f"--head {cfg.head} does not run with --unfreeze {cfg.unfreeze}"

    def reads(self, cfg: "RunConfig") -> tuple[str, ...]:
        """The per-protocol options this config reads (a subset of ``options``: e.g. LoRA's rank only
        under --adapt lora); the others stay None, so they never change its run id."""
        return self.options

    def selects_on_val(self, cfg: "RunConfig") -> bool:
        """Does this config choose anything on the val split (hyper-parameters, an epoch, a layer)?
        A val split too small to select on is then warned about and marked in the report."""
        return True

    def complete(self, cfg: "RunConfig", explicit: frozenset = frozenset()) -> "RunConfig":
        """Fields this protocol derives once its own options are filled (e.g. zero-shot's readout and
        prompt hash); ``explicit``: the options the user gave. Default: the config as it is."""
        return cfg

    def validate(self, cfg: "RunConfig") -> None:
        """Checks across options, once every option is resolved (UserError)."""

    def check(self, cfg: "RunConfig", model) -> None:
        """Checks against the built backbone (e.g. its block count), made before the run reads its
        data or writes anything, so a refused run leaves nothing behind (UserError)."""

    def shares(self, cfg: "RunConfig") -> tuple | None:
        """Key of the frozen computation this run shares with others (None: nothing shared)."""
        return None

    def shared_cost(self, cfg: "RunConfig", n: SplitSizes, num_blocks: int) -> float:
        """Image passes of the frozen work shared by every run with the same ``shares`` key,
        counted once per group."""
        return float(n.total) if self.shares(cfg) is not None else 0.0

    def cost(self, cfg: "RunConfig", n: SplitSizes, num_blocks: int) -> float:
        """This run's own backbone image passes beyond the shared frozen part (a forward = 1,
        a backward = 2). Used to balance shards and by benchmarks/estimate_cost.py."""
        return float(n.total)

    def describe(self, cfg: "RunConfig") -> dict:
        """What the head is, for dry runs (e.g. the DeiT head's depth)."""
        return {"head": cfg.head}

    def head_parameters(self, cfg: "RunConfig", model, n_outputs: int) -> int:
        """Trainable parameters of the head (dry runs report them; nothing is downloaded)."""
        return 0

    def run(self, ctx: "RunContext") -> ProtocolOutput:
        raise NotImplementedError

    def finished(self, cfg: "RunConfig", opts) -> None:
        """Called once the run's results are written (e.g. to drop resume state)."""


# the order is the matching order: the first protocol that applies runs a config
BUILTINS = {"zeroshot-init": "bench.protocols.zeroshot:ZEROSHOT_INIT", "layers": "bench.protocols.layers:LAYERS", "probe": "bench.protocols.probe:PROBE",
            "knn": "bench.protocols.knn:KNN", "finetune": "bench.protocols.finetune:FINETUNE", "deit": "bench.protocols.deit:DEIT",
            "zeroshot": "bench.protocols.zeroshot:ZEROSHOT"}
PROTOCOLS: Registry[Protocol] = Registry("protocol", "bench.protocols", BUILTINS, Protocol)


def register_protocol(protocol: Protocol) -> Protocol:
    return PROTOCOLS.register(protocol)


def all_protocols() -> list[Protocol]:
    return PROTOCOLS.all()


def _working(plugins: bool = True) -> tuple[list[Protocol], list[str]]:
    """Protocols that load, and the one-line errors of plugins that do not: a broken plugin
    must not stop runs of the others."""
    ok, broken = [], []
    for name in PROTOCOLS.names(plugins):
        try:
            ok.append(PROTOCOLS.get(name))
        except UserError as e:
            broken.append(str(e))
    return ok, broken


def heads(plugins: bool = True) -> list[str]:
    """Every valid --head value (``plugins=False``: the built-in and run-time ones, importing no
    plugin: what `--help` shows without paying for a plugin's imports)."""
    out: list[str] = []
    for p in _working(plugins)[0]:
        out += [h for h in p.heads if h not in out]
    return out


def protocol_for(cfg) -> Protocol:
    """The protocol that runs a config: the first that serves its head and applies."""
    working, broken = _working()
    serving = [p for p in working if cfg.head in p.heads]
    if not serving:
        if broken:  # perhaps the head belongs to the plugin that failed
            raise UserError(f"unknown head {cfg.head!r}; {did_you_mean(cfg.head, heads())} ({broken[0]})")
        raise UserError(f"unknown head {cfg.head!r}; {did_you_mean(cfg.head, heads())}")
    for p in serving:
        if p.applies(cfg):
            return p
    raise UserError(serving[0].mismatch(cfg))


def get(name: str) -> Protocol:
    return PROTOCOLS.get(name)
