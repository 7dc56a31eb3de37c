"""Protocols in a registry. Built-ins: ``layers`` (``--layers``: a probe per block), ``probe`` (linear
head grid on cached features), ``knn``,
``finetune`` (``--unfreeze lastN|all`` and trained linear/MLP heads) and ``deit`` (the paper's DeiT
head). A third-party protocol is one :class:`Protocol` subclass, registered with
``register_protocol`` or through the entry-point group ``bench.protocols``; its ``heads`` become
valid ``--head`` values.
"""
from __future__ import annotations

from ..errors import UserError, did_you_mean
from ..registry import Registry
from .base import Protocol, ProtocolOutput, SplitSizes

# the order is the matching order: the first protocol that applies runs a config
BUILTINS = {"layers": "bench.protocols.layers:LAYERS", "probe": "bench.protocols.probe:PROBE",
            "knn": "bench.protocols.knn:KNN", "finetune": "bench.protocols.finetune:FINETUNE", "deit": "bench.protocols.deit:DEIT"}
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


__all__ = ["Protocol", "ProtocolOutput", "SplitSizes", "PROTOCOLS", "register_protocol", "all_protocols",
           "heads", "protocol_for", "get"]
