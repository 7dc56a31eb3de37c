"""`bench weights ls|fetch`: which files `--weights default` needs, whether they are cached,
and downloading them on a connected machine before going offline."""
from __future__ import annotations

from .errors import UserError
from .listing import table


def _status(kind: str, location: str, filename: str) -> tuple[str, str]:
    from backbones import hub

    if kind == "hf":
        from huggingface_hub import constants

        found = hub.hf_cached(location, filename)
        return (f"{location}/{filename}", found or f"missing (HF cache {constants.HF_HUB_CACHE})")
    target = hub.torch_hub_dir() / filename
    return (location, str(target) if target.exists() else f"missing ({target.parent})")


def status_table(names: list[str] | None = None) -> str:
    from backbones import registry

    rows = []
    for name in names or registry.names():
        try:
            adapter = registry.get(name)
        except Exception as e:
            rows.append([name, "", f"unavailable: {e}", ""])
            continue
        variant = adapter.spec.default_variant
        files = adapter.weight_files(variant) if adapter.weight_files else None
        if files is None:
            rows.append([name, variant, "(not declared by the adapter)", ""])
        elif not files:
            rows.append([name, variant, "(no download: random or built-in init)", "ok"])
        for f in files or []:
            what, where = _status(f.kind, f.location, f.filename)
            rows.append([name, variant, what, where])
    return table(rows, ["backbone", "variant", "file", "local copy"])


def fetch(names: list[str]) -> int:
    """Download default weights by building each backbone once through its library's cache."""
    import backbones

    if not names:
        raise UserError("bench weights fetch needs backbone names, e.g. `bench weights fetch resnet50 dinov2`")
    for name in names:
        variant = None
        if "@" in name:  # name@variant
            name, variant = name.split("@", 1)
        backbones.build(name, variant, "default")
        print(f"{name}: weights in cache")
    return 0
