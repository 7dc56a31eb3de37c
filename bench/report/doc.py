"""The report as data: sections of tables, figures and notes. Renderers turn it into Markdown,
HTML or LaTeX, so every output format shows exactly the same numbers."""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

MISSING = "—"  # a cell with no run; never rendered as zero


@dataclass
class Cell:
    text: str
    bold: bool = False      # best in its column
    flag: bool = False      # incomplete seeds / datasets; explained in the table's legend
    missing: bool = False

    @classmethod
    def empty(cls) -> "Cell":
        return cls(MISSING, missing=True)


@dataclass
class Table:
    name: str                       # file stem for the CSV export
    title: str
    columns: list[str]              # header, first entry names the row labels
    rows: list[list[Cell]]          # first cell of each row is the row label
    caption: str = ""
    legend: list[str] = field(default_factory=list)
    data: pd.DataFrame | None = None  # the numbers behind the cells, exported as CSV
    text_cols: tuple[int, ...] = ()   # columns always left-aligned (e.g. class names)

    @property
    def empty(self) -> bool:
        return not self.rows

    def numeric(self) -> list[bool]:
        """Per column: right-align (numbers) or left-align (names, words)."""
        out = []
        for j in range(len(self.columns)):
            texts = [r[j].text for r in self.rows if j < len(r) and not r[j].missing and r[j].text != MISSING]
            out.append(j > 0 and j not in self.text_cols and all(t[:1].isdigit() or t[:1] in "+-<[" for t in texts))
        return out


@dataclass
class Figure:
    name: str
    title: str
    png: bytes                      # raster for the HTML and Markdown (200 dpi)
    caption: str = ""
    svg: bytes = b""                # the same figure as vector graphics, for papers


@dataclass
class Section:
    title: str
    intro: str = ""
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    level: int = 2


@dataclass
class Report:
    title: str
    summary: list[str]
    sections: list[Section]
    provenance: Table

    def tables(self) -> list[Table]:
        return [t for s in self.sections for t in s.tables] + [self.provenance]

    def figures(self) -> list[Figure]:
        return [f for s in self.sections for f in s.figures]
