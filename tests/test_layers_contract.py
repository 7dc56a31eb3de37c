"""The import layers (pyproject.toml [tool.importlinter], docs/how-it-works.md#layers): the contract
holds, no module of ours reaches another in a circle (imports inside functions counted), an upward
import in a scratch copy breaks the contract, and the docs show the contract as it is."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from bench import docgen

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "backbones")


def _lint(root: Path) -> subprocess.CompletedProcess:
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")
    return subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def _knots(graph: grimp.ImportGraph, unit) -> list[set[str]]:
    """Strongly connected components of more than one unit (Tarjan, iterative)."""
    edges: dict[str, set[str]] = {}
    for m in graph.modules:
        if m.split(".")[0] not in PACKAGES:
            continue
        a = unit(m)
        edges.setdefault(a, set())
        for b in graph.find_modules_directly_imported_by(m):
            if b.split(".")[0] in PACKAGES and unit(b) != a:
                edges[a].add(unit(b))
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]; counter[0] += 1; stack.append(root); on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]; counter[0] += 1; stack.append(w); on.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = set()
                    while True:
                        w = stack.pop(); on.discard(w); comp.add(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(comp)
    return out


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    # every runtime import counts, the ones inside functions too; only `if TYPE_CHECKING:` is left out
    return grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True, cache_dir=None)


def test_the_contract_holds():
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]


def test_no_module_reaches_itself_in_a_circle(graph):
    assert _knots(graph, lambda m: m) == []
    # nor a package as a whole (bench.report, bench.protocols, backbones ...) through another
    def package(m: str) -> str:
        parts = m.split(".")
        if parts[0] == "backbones":
            return "backbones"
        return ".".join(parts[:2]) if len(parts) > 2 or (ROOT / "bench" / parts[-1]).is_dir() else m
    assert _knots(graph, package) == []


def test_every_module_is_in_a_layer():
    placed = {m for layer in docgen.contract_layers() for m in layer}
    for p in (ROOT / "bench").iterdir():
        if p.name.startswith("_") or p.name in ("samples", "reference", "prompt_sets") or (p.is_file() and p.suffix != ".py"):
            continue
        assert f"bench.{p.stem}" in placed, f"bench.{p.stem} is in no layer of pyproject.toml's contract"


def test_backbones_import_only_the_foundations():
    """The forbidden contract names every bench module above the foundations (derived, not hand-kept)."""
    import tomllib

    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    forbidden = next(c for c in conf["contracts"] if c["id"] == "backbones-below-bench")["forbidden_modules"]
    layers = docgen.contract_layers()
    above_foundations = {m for layer in layers[:-1] for m in layer if m.startswith("bench")}
    assert set(forbidden) == above_foundations


def test_an_upward_import_breaks_the_contract(tmp_path):
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "samples"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    assert _lint(tmp_path).returncode == 0  # the copy as it is holds
    errors = tmp_path / "bench" / "errors.py"
    # hidden inside a function, where the earlier knots were
    errors.write_text(errors.read_text() + "\n\ndef _late():\n    from . import runner\n\n    return runner\n")
    r = _lint(tmp_path)
    assert r.returncode != 0 and "bench.errors -> bench.runner" in r.stdout, r.stdout[-2000:]


def test_docs_show_the_contract():
    assert docgen.block("layers") == docgen.layers_table(), \
        "docs/how-it-works.md: regenerate with python -m bench.docgen --write"
