"""`bench ls`: datasets, backbones, protocols, options and recipes from their registries (nothing is built)."""
from __future__ import annotations

import textwrap
from pathlib import Path


TERMINAL_WIDTH = 100  # a terminal's columns: `bench ls` wraps its widest cells to fit
WIDTH: int | None = TERMINAL_WIDTH  # None: --wide, no wrapping


def table(rows: list[list[str]], header: list[str], width: int | None = -1) -> str:
    """Columns padded to their widest cell; with ``width``, the widest columns are narrowed (never
    below their header or 10 characters) and their cells wrapped onto more lines until a row fits."""
    width = WIDTH if width == -1 else width
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    # a column narrower than 10 keeps its width, and the first (the name) is never wrapped
    floor = [w if k == 0 or w <= 10 else max(len(h), 10) for k, (w, h) in enumerate(zip(widths, header))]
    while width and sum(widths) + 2 * (len(widths) - 1) > width:
        i = max(range(len(widths)), key=lambda k: widths[k] - floor[k])
        if widths[i] <= floor[i]:
            break  # as narrow as it goes
        widths[i] -= 1
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header).rstrip(), fmt.format(*["-" * w for w in widths]).rstrip()]
    for r in rows:
        cells = [textwrap.wrap(str(c), w, break_on_hyphens=False) or [""] for c, w in zip(r, widths)]
        for k in range(max(map(len, cells))):
            lines.append(fmt.format(*[c[k] if k < len(c) else "" for c in cells]).rstrip())
    return "\n".join(lines)


def fit(text: str) -> str:
    """Free-text lines wrapped to the listing width (indented continuation lines)."""
    if not WIDTH:
        return text
    return "\n".join(textwrap.fill(line, WIDTH, subsequent_indent=" " * 6, break_on_hyphens=False)
                     if len(line) > WIDTH else line for line in text.splitlines())


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
    header = ["backbone", "family", "default", "other variants", "params", "dim", "input", "blocks", "weights",
              "license"]
    also = "\nalso: timm:NAME for any timm model (e.g. timm:convnext_tiny.fb_in22k)"
    if WIDTH:  # weights and licenses are long: --wide shows them, as `bench weights ls` does
        return table([r[:8] for r in rows], header[:8]) + also + "\nweights source and license: bench ls backbones --wide"
    return table(rows, header) + also


def list_protocols() -> str:
    from .protocols import all_protocols

    rows = [[p.name, ",".join(p.heads), p.kind, ",".join(o.replace("_", "-") for o in p.options) or "-",
             p.description] for p in all_protocols()]
    return table(rows, ["protocol", "--head", "kind", "its options", "what"])


def list_recipes() -> str:
    from .docgen import recipe_listing

    return fit(recipe_listing())


def list_options() -> str:
    from .docgen import option_rows

    return table(option_rows(), ["option", "default", "choices / range", "used by", "what"])


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
