"""The backbone table of docs/backbones.md, generated from the built-in Specs:
``python -m backbones.catalog``.

tests/test_adapters_medical.py checks that docs/backbones.md holds exactly this table.
"""
from __future__ import annotations

from . import registry

HEADER = ("backbone", "family", "weights (default variant)", "training data", "license", "input", "readout",
          "the paper used")


def rows() -> list[tuple[str, ...]]:
    out = []
    for name in sorted(registry.BUILTINS):
        s = registry.get(name).spec
        readout = s.readouts[0] + (f" (also {', '.join(s.readouts[1:])})" if len(s.readouts) > 1 else "")
        out.append((f"`{name}`", s.family, f"`{s.default_variant}`", s.training_data or "-",
                    s.license or "-", str(s.input_size), readout, s.paper_use or "-"))
    out.append(("`timm:NAME`", "any timm model", "its pretrained tag", "see the tag's card", "see the tag's card",
                "the tag's", "default (timm's pooling)", "-"))
    return out


def markdown_table() -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
