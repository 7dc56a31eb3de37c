"""medfm-bench: which natural-domain foundation model to start from, and how much to fine-tune.

The Python API (bench.api) is importable from here without loading torch until it is used::

    import bench
    result = bench.run(backbone="resnet18", dataset="breastmnist", weights="random")
"""
__version__ = "0.2.0"

_API = ("run", "sweep", "report", "load_results", "config")


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'bench' has no attribute {name!r}")


__all__ = list(_API)
