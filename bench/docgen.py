"""The generated parts of the documentation: the option table, the recipes' fidelity tables and
`bench ls recipes`, and the layer table of the import contract. Each is rendered from what it
documents (bench.options, bench.recipes, pyproject.toml), never written by hand; tests compare the
docs pages with these, and ``python -m bench.docgen`` prints them.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from . import options, recipes
from .protocol import all_protocols

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def option_rows() -> list[list[str]]:
    """Each option: flag, default, choices or range, the protocols that read it, what it does."""
    used: dict[str, list[str]] = {}
    for p in all_protocols():
        for name in p.options:
            used.setdefault(name, []).append(p.name)
    rows = []
    for o in options.OPTIONS:
        default = "" if o.default in (None, "", 0) and o.type is not bool else ("off" if o.type is bool else o.default)
        rng = " | ".join(o.choices) if o.choices else (o.range_text().replace("must be a finite number", "")
                                                        .strip() if o.type in (int, float) else "")
        who = ", ".join(used.get(o.name, [])) if o.per_protocol else ("all" if o.scope == "run" else "execution")
        rows.append([o.flag, str(default), rng, who, o.help])
    return rows


def option_table() -> str:
    """The option table of docs/cli.md, generated from OPTIONS (and the protocols that read them)."""
    lines = ["| option | default | choices / range | used by | what |", "|---|---|---|---|---|"]
    for flag, default, rng, who, what in option_rows():
        lines.append(f"| `{flag}` | {default} | {_cell(rng)} | {who} | {_cell(what)} |")
    return "\n".join(lines)


def check_recipes() -> None:
    """Every recipe value passes its option's declaration (tests call this)."""
    for r in recipes.RECIPES.values():
        for k, s in r.sets.items():
            o = options.get(k)
            assert not o.required and o.scope == "run" and o.name != "recipe", (r.name, k)
            o.check(o.coerce(s.value))


def _cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def recipe_table(name: str) -> str:
    """One recipe's fidelity table: each setting, its value, its source and where we differ."""
    r = recipes.get(name)
    lines = [f"**`{r.name}`**: {r.title}. Code read: {r.code}.", ""]
    if not r.sets:
        return "\n".join(lines[:1])
    lines += ["| setting | value | source | where we differ, and why |", "|---|---|---|---|"]
    for k, s in r.sets.items():
        default = options.get(k).default
        ours = "" if s.value == default else f" (ours: {default})"
        lines.append(f"| `{options.get(k).flag}` | {_cell(s.value)}{_cell(ours)} | {_cell(s.source)} | {_cell(s.note)} |")
    for n in r.notes:
        lines.append(f"| {_cell(n.setting)} | theirs: {_cell(n.theirs)} | {_cell(n.source)} | ours: {_cell(n.ours)} |")
    return "\n".join(lines)


def recipe_tables() -> str:
    """The tables of docs/recipes.md (tests compare that page with this)."""
    return "\n\n".join(recipe_table(n) for n in recipes.RECIPE_NAMES)


def recipe_listing() -> str:
    """`bench ls recipes`: every recipe with every value it sets and where it comes from."""
    out = []
    for r in recipes.RECIPES.values():
        out.append(f"{r.name}: {r.title}\n  code: {r.code}")
        if not r.sets:
            out.append("  (sets nothing: every option keeps its default)")
        for k, s in r.sets.items():
            out.append(f"  {options.get(k).flag} {s.value}    [{s.source}]" + (f"  {s.note}" if s.note else ""))
        for n in r.notes:
            out.append(f"  * {n.setting}: theirs {n.theirs}; ours {n.ours}    [{n.source}]")
    return "\n".join(out)


PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
# what each layer of the contract is for, top to bottom (a test holds this against the contract)
LAYER_ROLES = (
    ("front doors", "the CLI and the Python API: the same names, the same options"),
    ("many runs", "sweeps (plans, executors), reports (tables, statistics, figures), explanations, listings, weight files, these docs"),
    ("one run", "user choices -> RunConfig (resolve) -> its parts assembled (assemble) -> protocol and scores (runner) -> the results store"),
    ("protocols", "what is trained and how it is scored: the built-in protocols, registered into bench.protocol"),
    ("training", "what one run carries (context), the frozen pass and its kernels, train subsets, heads, the fine-tune loop, LoRA/BitFit, augmentation, zero-shot classifiers"),
    ("resources", "data sources and backbones (each a registry), the feature cache, device-side preprocessing and feeding, zero-shot prompts"),
    ("declarations", "every option once, the publications' recipes, the run's identity (RunConfig), the protocol interface and registry"),
    ("foundations", "errors, atomic files, the environment, progress, the generic registry, metrics, the cores a run may use: nothing of ours above them"),
)


def contract_layers(pyproject: Path = PYPROJECT) -> list[list[str]]:
    """The modules of each layer of the import-linter `layers` contract, top to bottom."""
    conf = tomllib.loads(pyproject.read_text())["tool"]["importlinter"]
    layers = next(c for c in conf["contracts"] if c["id"] == "layers")["layers"]
    return [[m.strip() for m in layer.replace("|", ":").split(":")] for layer in layers]


def layers_table(pyproject: Path = PYPROJECT) -> str:
    """docs/how-it-works.md's layer table: each layer's modules, from the contract itself."""
    layers = contract_layers(pyproject)
    if len(layers) != len(LAYER_ROLES):
        raise ValueError(f"the contract has {len(layers)} layers, LAYER_ROLES describes {len(LAYER_ROLES)}")
    lines = ["| layer | modules | what it holds | may import |", "|---|---|---|---|"]
    for i, ((name, what), mods) in enumerate(zip(LAYER_ROLES, layers)):
        below = "its own layer and the ones below" if i < len(layers) - 1 else "its own layer only"
        lines.append(f"| {len(layers) - i}. {name} | {', '.join(f'`{m}`' for m in mods)} | {what} | {below} |")
    return "\n".join(lines)


def backbone_table() -> str:
    from backbones.catalog import markdown_table

    return markdown_table()


DOCS = PYPROJECT.parent / "docs"
# each generated block: its generator and the page that holds it between
# "<!-- generated: NAME ... -->" and "<!-- /generated: NAME -->"
GENERATED = {"options": (option_table, "cli.md"), "recipes": (recipe_tables, "recipes.md"),
             "layers": (layers_table, "how-it-works.md"), "backbones": (backbone_table, "backbones.md")}


def _span(text: str, name: str) -> tuple[int, int]:
    begin = re.search(rf"<!-- generated: {name}\b[^\n]*-->\n", text)
    end = text.find(f"\n<!-- /generated: {name} -->", begin.end() if begin else 0)
    if begin is None or end < 0:
        raise ValueError(f"docs/{GENERATED[name][1]} has no generated block {name!r}")
    return begin.end(), end


def block(name: str, docs: Path = DOCS) -> str:
    """The generated block ``name`` as its docs page holds it now."""
    text = (docs / GENERATED[name][1]).read_text()
    a, b = _span(text, name)
    return text[a:b]


def write(docs: Path = DOCS) -> list[str]:
    """Rewrite every stale generated block in place; returns the pages changed."""
    changed = []
    for name, (make, page) in GENERATED.items():
        path = docs / page
        text = path.read_text()
        a, b = _span(text, name)
        new = text[:a] + make() + text[b:]
        if new != text:
            path.write_text(new)
            changed.append(page)
    return changed


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        print("\n".join(f"rewrote docs/{p}" for p in write()) or "docs are current")
    else:
        print(GENERATED[sys.argv[1]][0]() if len(sys.argv) > 1 else "\n\n".join(f() for f, _ in GENERATED.values()))
