"""The generated parts of the documentation: the option table, the recipes' fidelity tables and
`bench ls recipes`, and the layer table of the import contract. Each is rendered from what it
documents (bench.options, bench.recipes, pyproject.toml), never written by hand; tests compare the
docs pages with these, and ``python -m bench.docgen`` prints them.
"""
from __future__ import annotations

import argparse
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
    ("one run", "user choices -> RunConfig (resolve) -> its parts assembled (assemble) -> protocol and scores (runner) -> the results store; a finished run's image ids and attributes (audit), features out (embed)"),
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


CONFIGS = PYPROJECT.parent / "configs"


def grid_plan(config: Path) -> dict:
    """What `bench sweep CONFIG --dry-run --json` reports, computed the same way (nothing is run)."""
    import contextlib
    import io
    import json

    from .sweep import add_sweep_arguments, main

    parser = argparse.ArgumentParser(prog="bench sweep", allow_abbrev=False)
    add_sweep_arguments(parser)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        main(parser.parse_args([str(config), "--dry-run", "--json"]))
    return json.loads(out.getvalue())


def grid_table(configs: Path = CONFIGS) -> str:
    """docs/performance.md's table of the shipped grids: runs and backbone image passes, as the
    dry run plans them (grids that take `datasets: present` depend on the data root, and grids on
    data that needs a registration or is the user's own, e.g. configs/subgroups.yaml on CheXpert,
    cannot be planned without it: their run ids name the data's content; both left out)."""
    lines = ["| grid | runs | probe runs | trained runs | backbone image passes |", "|---|---|---|---|---|"]
    for path in sorted(configs.glob("*.yaml")):
        if "present" in path.read_text() or _needs_own_data(path):
            continue
        d = grid_plan(path)
        passes = sum(d["image_passes"].values())
        lines.append(f"| `configs/{path.name}` | {d['runs']} | {d['probe_runs']} | {d['trained_runs']} | "
                     f"{passes / 1e6:,.2f} M |")
    return "\n".join(lines)


def _needs_own_data(path: Path) -> bool:
    """Does a grid name a dataset of image files (bench.datasets.images: CheXpert, ISIC, csv:...)?"""
    import yaml

    from . import datasets
    from .datasets.images import ImageSource

    doc = yaml.safe_load(path.read_text()) or {}
    names = doc.get("datasets") or doc.get("dataset") or []
    names = [names] if isinstance(names, str) else names
    return any(isinstance(n, str) and n not in ("all", "present")
               and isinstance(datasets.source_for(n), ImageSource) for n in names)


BENCH_RESULTS = PYPROJECT.parent / "benchmarks" / "results.csv"


def _latest(benchmark: str, results: Path = BENCH_RESULTS) -> dict[str, dict[str, float]]:
    """context -> metric -> value of a benchmark's latest row per (context, metric) in results.csv."""
    import csv

    out: dict[str, dict[str, float]] = {}
    with open(results, newline="") as f:
        for row in csv.DictReader(f):
            if row["benchmark"] == benchmark:
                out.setdefault(row["context"], {})[row["metric"]] = float(row["value"])
    return out


def throughput_table(results: Path = BENCH_RESULTS) -> str:
    """docs/performance.md's extraction throughput table, from bench_throughput.py's latest rows."""
    lines = ["| backbone (variant, input) | images/s | one BreastMNIST probe's extraction |", "|---|---|---|"]
    for context, m in _latest("throughput", results).items():
        if "images_per_s" not in m:
            continue
        model = context.split(",")[0]
        extract = m.get("breastmnist_probe_extract_s")
        lines.append(f"| {model} | {m['images_per_s']:.1f} | " + (f"{extract:.0f} s |" if extract else "— |"))
    return "\n".join(lines)


def probe_table(results: Path = BENCH_RESULTS) -> str:
    """docs/performance.md's linear probe against extraction, from bench_probe.py's latest rows."""
    context, m = list(_latest("probe", results).items())[-1]
    return "\n".join([
        f"| {context} | seconds |", "|---|---|",
        f"| extraction pass alone (train+val+test) | {m['extraction_s']:.1f} |",
        f"| whole `bench run --head linear` (load, extract, 16-head grid x 100 epochs, select, evaluate, write) "
        f"| {m['probe_s']:.1f} |",
        f"| naive probe, backbone run every epoch: one epoch | {m['naive_epoch_s']:.1f} |",
        f"| naive probe, 100 epochs (projected from 2 measured epochs) | {m['naive_100_epochs_projected_s']:.0f} |",
        "",
        f"probe / extraction = **{m['probe_over_extraction']:.2f}**; the naive probe would take "
        f"{m['naive_over_probe']:.0f}x longer."])


DOCS = PYPROJECT.parent / "docs"
# each generated block: its generator and the page that holds it between
# "<!-- generated: NAME ... -->" and "<!-- /generated: NAME -->"
GENERATED = {"options": (option_table, "cli.md"), "recipes": (recipe_tables, "recipes.md"),
             "layers": (layers_table, "how-it-works.md"), "backbones": (backbone_table, "backbones.md"),
             "grids": (grid_table, "performance.md"), "throughput": (throughput_table, "performance.md"),
             "probe": (probe_table, "performance.md")}


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
