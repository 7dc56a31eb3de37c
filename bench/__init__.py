"""medfm-bench: which natural-domain foundation model to start from, and how much to fine-tune.

The Python API (bench.api) is importable from here without loading torch until it is used::

    import bench
    result = bench.run(backbone="resnet18", dataset="breastmnist", weights="random")
"""
import sys
import types

__version__ = "0.2.0"

_API = ("run", "sweep", "report", "robust", "load_results", "config", "embed")


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'bench' has no attribute {name!r}")


class _Package(types.ModuleType):
    """`bench.sweep`, `bench.report` and `bench.robust` are subpackages as well as API functions: importing one
    must not put the package where the function was, so the API's names work in any order in one
    process (the subpackages stay importable by name: ``from bench.report import make_report``)."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = list(_API)
