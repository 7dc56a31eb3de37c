"""`bench ls`: datasets, backbones, protocols, options and recipes from their registries (nothing is built)."""
from __future__ import annotations

from pathlib import Path


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*["-" * w for w in widths])]
                     + [fmt.format(*map(str, r)) for r in rows])


def list_datasets(root: Path | None = None) -> str:
    from .datasets import SOURCES

    rows, forms = [], []
    for src in SOURCES.all():
        rows += src.list_rows(root)
        if not src.names():
            forms.append(f"{src.name}:...  {src.description}")
    out = table(rows, ["dataset", "task", "classes", "channels", "train", "val", "test", "local sizes",
                       "source (data root)"])
    return out + "".join(f"\nalso: {f}" for f in forms)


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
        others = [v for v in spec.listed_variants() if v != spec.default_variant]
        shown = ",".join(others[:4]) + (f",+{len(others) - 4}" if len(others) > 4 else "")
        family = spec.family + (" (test model)" if spec.is_test_model(spec.default_variant) else "")
        rows.append([name, family, spec.default_variant, shown or "-",
                     f.get("params", "?"), f.get("embed_dim", "?"), spec.input_size, f.get("blocks", "?"),
                     spec.weights_source, spec.license])
    return table(rows, ["backbone", "family", "default", "other variants", "params", "dim", "input",
                        "blocks", "weights", "license"]) + "\nalso: timm:NAME for any timm model (e.g. timm:convnext_tiny.fb_in22k)"


def list_protocols() -> str:
    from .protocols import all_protocols

    rows = [[p.name, ",".join(p.heads), p.kind, ",".join(o.replace("_", "-") for o in p.options) or "-",
             p.description] for p in all_protocols()]
    return table(rows, ["protocol", "--head", "kind", "its options", "what"])


def list_recipes() -> str:
    from .docgen import recipe_listing

    return recipe_listing()


def list_options() -> str:
    from .docgen import option_table

    return option_table()


def list_prompts(dataset: str = "") -> str:
    """`bench ls prompts [DATASET]`: a dataset's zero-shot class names, templates and their sources."""
    from . import prompts

    if not dataset:
        rows = [[n, str(len(s.classes)), str(len(s.templates)), f"v{s.version}", s.digest]
                for n in prompts.names() for s in [prompts.builtin(n)]]
        return (table(rows, ["dataset", "classes", "templates", "version", "hash"])
                + "\nalso: own data (folder:, csv:) gets its class names with the generic templates; "
                  "bench ls prompts DATASET shows one set")
    return prompts.listing(dataset)
