"""The documentation: README.md is the front door (short, every relative link resolves), docs/ is
the manual, an mkdocs site whose strict build fails on a broken link or anchor (mkdocs.yml)."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# the two commands CI and other tests rely on, verbatim
MAIN = ("bash setup.sh && .venv/bin/bench sweep configs/smoke.yaml && "
        ".venv/bin/bench report --results-dir results/smoke --out reports/smoke")
TESTS = "bash setup.sh && .venv/bin/python -m pytest -q"


def _links(text: str) -> list[str]:
    """Targets of the Markdown links and images of `text` (inline, reference-style, HTML), code left out."""
    text = re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.S | re.M)  # fenced blocks
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans
    found = re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)
    found += re.findall(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", text, flags=re.M)
    found += re.findall(r"""(?:href|src)\s*=\s*["']([^"']+)["']""", text)
    return found


def test_readme_is_the_front_door():
    text = README.read_text()
    assert len(text.splitlines()) < 250, "README.md is the front door: move detail to docs/"
    assert MAIN in text and TESTS in text


def test_every_relative_link_of_the_readme_exists():
    links = _links(README.read_text())
    assert any(t.startswith("docs/") for t in links)  # the parser sees the links at all
    missing = []
    for target in links:
        if re.match(r"[a-z][a-z0-9+.-]*:", target, flags=re.I) or target.startswith("#"):
            continue  # URLs (https:, mailto:) and anchors within the README
        path = unquote(target.split("#", 1)[0].split("?", 1)[0])
        if path.startswith("/") or not (README.parent / path).exists():
            missing.append(target)
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_link_parser_sees_links_and_skips_code():
    text = ('[a](docs/a.md) ![b](img/b.png "t") `[c](c.md)` <img src="d.png">\n'
            "```\n[e](e.md)\n```\n[f]: docs/f.md\n")
    assert _links(text) == ["docs/a.md", "img/b.png", "docs/f.md", "d.png"]


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed")
def test_docs_build_strict(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (site / "index.html").is_file() and (site / "recipes" / "index.html").is_file()


def test_every_generated_block_is_current():
    """Tables the docs derive (options, recipes, layers, backbones, grid sizes and costs from the
    planner, measured figures from benchmarks/results.csv) equal what their generators give now."""
    from bench import docgen

    stale = [name for name, (make, _) in docgen.GENERATED.items() if docgen.block(name) != make()]
    assert not stale, f"stale generated docs blocks {stale}: run python -m bench.docgen --write"


def test_the_smoke_grid_size_quoted_in_the_readme_is_the_planned_one():
    import re

    from bench import docgen

    runs = docgen.grid_plan(ROOT / "configs" / "smoke.yaml")["runs"]
    for page in (ROOT / "README.md", ROOT / "docs" / "index.md", ROOT / "docs" / "getting-started.md"):
        quoted = re.findall(r"(\d+) runs", page.read_text())
        assert quoted and all(int(n) == runs for n in quoted), (page, quoted, runs)


def test_a_changed_config_makes_the_grid_table_stale(tmp_path):
    """The check can fail: one more seed in a copy of the smoke grid changes its row."""
    import shutil

    from bench import docgen

    shutil.copy(ROOT / "configs" / "smoke.yaml", tmp_path / "smoke.yaml")
    before = docgen.grid_table(tmp_path)
    path = tmp_path / "smoke.yaml"
    path.write_text(path.read_text().replace("seeds: [0, 1]", "seeds: [0, 1, 2]"))
    after = docgen.grid_table(tmp_path)
    assert "| 16 |" in before and "| 24 |" in after
