"""Protocols in a registry. Built-ins: ``layers`` (``--layers``: a probe per block), ``probe`` (linear
head grid on cached features), ``knn``,
``finetune`` (``--unfreeze lastN|all`` and trained linear/MLP heads) and ``deit`` (the paper's DeiT
head). A third-party protocol is one :class:`Protocol` subclass, registered with
``register_protocol`` or through the entry-point group ``bench.protocols``; its ``heads`` become
valid ``--head`` values.
"""
from __future__ import annotations

# the interface and registry live in bench.protocol (below the options and config that read them);
# this package holds the built-ins and keeps the names plugins import
from ..protocol import (PROTOCOLS, Protocol, ProtocolOutput, SplitSizes, all_protocols, get, heads,
                        protocol_for, register_protocol)

__all__ = ["Protocol", "ProtocolOutput", "SplitSizes", "PROTOCOLS", "register_protocol", "all_protocols",
           "heads", "protocol_for", "get"]
