"""Backbone adapters: every model as stem -> blocks -> readout (see backbones.base)."""
from .base import Backbone, Spec
from .registry import Adapter, build, get, names, register

__all__ = ["Adapter", "Backbone", "Spec", "build", "get", "names", "register"]
