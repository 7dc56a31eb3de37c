"""`bench ls`: datasets from medmnist.INFO, backbones from the registry (nothing is built)."""
from __future__ import annotations

from pathlib import Path

from . import data


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*["-" * w for w in widths])]
                     + [fmt.format(*map(str, r)) for r in rows])


def list_datasets(root: Path | None = None) -> str:
    root = Path(root or data.default_root())
    rows = []
    for flag in data.flags():
        i = data.info(flag)
        n = i["n_samples"]
        local = [str(s) for s in data.SIZES if (root / data.file_name(flag, s)).exists()]
        rows.append([flag, i["task"], len(i["label"]), i["n_channels"], n["train"], n["val"], n["test"],
                     ",".join(local) or "-"])
    return table(rows, ["dataset", "task", "classes", "channels", "train", "val", "test",
                        f"local sizes ({root})"]) + f"\nsizes: {', '.join(map(str, data.SIZES))}"


def list_backbones() -> str:
    from backbones import registry

    rows = []
    for name in registry.names():
        try:
            spec = registry.get(name).spec
        except Exception as e:  # a broken plugin must not hide the others
            rows.append([name, "?", f"unavailable: {e}", "", "", "", "", "", "", ""])
            continue
        f = spec.facts
        others = [v for v in spec.variants if v != spec.default_variant]
        shown = ",".join(others[:4]) + (f",+{len(others) - 4}" if len(others) > 4 else "")
        rows.append([name, spec.family, spec.default_variant, shown or "-",
                     f.get("params", "?"), f.get("embed_dim", "?"), spec.input_size, f.get("blocks", "?"),
                     spec.weights_source, spec.license])
    return table(rows, ["backbone", "family", "default", "other variants", "params", "dim", "input",
                        "blocks", "weights", "license"]) + "\nalso: timm:NAME for any timm model (e.g. timm:convnext_tiny.fb_in22k)"
