"""Per-image attributes for subgroup audits (``--subgroups COL[,COL]``), and how a column becomes
groups.

Where attributes come from (each source's ``attributes``): a ``csv:`` dataset's own columns (any
column but the path), the CheXpert layout's ``Sex``, ``Age``, ``Frontal/Lateral``, ``AP/PA``,
ISIC 2019's metadata (``age_approx``, ``sex``, ``anatom_site_general``), and for DICOM files the
tags ``PatientSex``, ``PatientAge`` (in years) and ``Manufacturer``. Images are named by the ids
saved with every run's scores (their path as the manifest names it), so groups are joined at
report time and adding a column never reruns a model. MedMNIST files carry no attributes.

Groups of a column: its values as they are, an empty value as ``(missing)``. A numeric column is
binned: with the edges given (``age:0,40,60,120`` -> [0, 40), [40, 60), [60, 120), and ``<0`` /
``≥120`` for values outside), else by default: a column named like an age (``age``, ``PatientAge``,
``age_approx``...) by ``AGE_EDGES``; any other numeric column with more than ``MAX_LEVELS``
distinct values into quartiles of the audited images' values (fewer distinct values stay as they
are: a 0/1 or site code is a category).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import UserError

AGE_EDGES = (0.0, 40.0, 60.0, 80.0, math.inf)   # years: <40, 40-59, 60-79, 80 and over
MAX_LEVELS = 10                                 # a numeric column with more distinct values is binned
MISSING = "(missing)"
DICOM_TAGS = ("PatientSex", "PatientAge", "Manufacturer")
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?inf"
SYNTAX = "COL[,COL...], a numeric column's bins as COL:EDGE,EDGE,... (e.g. sex,age:0,40,60,120)"


@dataclass(frozen=True)
class Subgroup:
    """One ``--subgroups`` entry: a column, and the bin edges given for it (None: the default)."""

    column: str
    edges: tuple[float, ...] | None = None

    def __str__(self) -> str:
        return self.column + (":" + ",".join(f"{e:g}" for e in self.edges) if self.edges else "")


def _is_number(text: str) -> bool:
    return re.fullmatch(_NUMBER, text.strip()) is not None


def parse(text: str | Sequence[str] | None) -> list[Subgroup]:
    """``sex,age:0,40,60,120`` -> [sex, age with edges 0,40,60,120]. A number right after a
    ``COL:EDGE`` entry continues its edges; anything else starts a new column. Each column once."""
    if not text:
        return []
    parts = [p.strip() for chunk in ([text] if isinstance(text, str) else text) for p in str(chunk).split(",")]
    out: list[tuple[str, list[float] | None]] = []
    for p in parts:
        if not p:
            continue
        if out and out[-1][1] is not None and _is_number(p):
            out[-1][1].append(float(p))
            continue
        col, sep, first = p.rpartition(":")
        if sep and col.strip() and _is_number(first):
            out.append((col.strip(), [float(first)]))
        else:
            out.append((p, None))
    got: dict[str, Subgroup] = {}
    for col, edges in out:
        if edges is not None and (len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:]))):
            raise UserError(f"--subgroups {col}:{','.join(f'{e:g}' for e in edges)}: bin edges are at least two "
                            f"increasing numbers, e.g. {col}:0,40,60,120")
        if col in got:
            raise UserError(f"--subgroups names {col!r} twice; use {SYNTAX}")
        got[col] = Subgroup(col, tuple(edges) if edges is not None else None)
    return list(got.values())


def is_age(column: str) -> bool:
    """``age``, ``Age``, ``PatientAge``, ``age_approx``, ``age_years``: binned by AGE_EDGES."""
    return re.search(r"(^|[^a-z])age($|[^a-z])", re.sub(r"([a-z])([A-Z])", r"\1 \2", column).lower()) is not None


def _fmt(x: float) -> str:
    return "∞" if math.isinf(x) else f"{x:g}"


def bin_labels(edges: Sequence[float]) -> list[str]:
    """Labels of the bins between ``edges``: [a, b) as ``a–b`` (b excluded), the last open one as ``≥a``."""
    return [f"≥{_fmt(a)}" if math.isinf(b) else f"{_fmt(a)}–{_fmt(b)}" for a, b in zip(edges, edges[1:])]


def _missing(v: object) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or str(v).strip() in ("", "nan", "NaN")


def groups(values: Sequence[object], sg: Subgroup, where: str = "") -> tuple[np.ndarray, list[str], str]:
    """Each value's group, the groups in display order, and how they were formed (one phrase)."""
    present = [str(v).strip() for v in values if not _missing(v)]
    numeric = bool(present) and all(_is_number(v) for v in present)
    edges = sg.edges
    how = "values as they are"
    if edges is not None and not numeric:
        bad = next((v for v in present if not _is_number(v)), "")
        raise UserError(f"--subgroups {sg}: column {sg.column!r}{where} holds {bad!r}, not a number; bins are for "
                        f"numeric columns (drop the edges to group by value)")
    if edges is None and numeric and is_age(sg.column):
        edges, how = AGE_EDGES, "age bins (default)"
    elif edges is None and numeric and len(set(map(float, present))) > MAX_LEVELS:
        x = np.array([float(v) for v in present])
        qs = np.unique(np.quantile(x, [0.25, 0.5, 0.75]))
        edges, how = (float(x.min()), *map(float, qs), math.inf), "quartiles of the audited images (default)"
        edges = tuple(sorted(set(edges)))
    elif edges is not None:
        how = "bins " + ",".join(_fmt(e) for e in edges)
    if edges is None:
        if numeric:  # a numeric code (0/1, a site number): by value, in numeric order
            order = sorted(set(present), key=float)
        else:
            order = sorted(set(present))
        labels = np.array([MISSING if _missing(v) else str(v).strip() for v in values], dtype=object)
    else:
        names = bin_labels(edges)
        below, above = f"<{_fmt(edges[0])}", f"≥{_fmt(edges[-1])}"
        out = []
        for v in values:
            if _missing(v):
                out.append(MISSING)
                continue
            x = float(str(v).strip())
            k = int(np.searchsorted(edges, x, side="right")) - 1
            out.append(below if k < 0 else above if k >= len(names) else names[k])
        labels = np.array(out, dtype=object)
        order = [below] + names + [above]
    seen = set(labels.tolist())
    order = [g for g in order if g in seen] + ([MISSING] if MISSING in seen else [])
    return labels.astype(str), order, how


@dataclass
class Attributes:
    """Per-image attribute values: ``columns[name][i]`` is the value of image ``ids[i]``."""

    ids: list[str]
    columns: dict[str, list[str]]

    def lookup(self, column: str, ids: Sequence[str]) -> tuple[list[str | None], int]:
        """The column's value for each of ``ids`` (None where the image is not in the table), and
        how many were not found."""
        index = {i: k for k, i in enumerate(self.ids)}
        col = self.columns[column]
        got = [col[index[i]] if i in index else None for i in ids]
        return got, sum(v is None for v in got)


def from_rows(ids: list[str], rows: list[dict], skip: Sequence[str] = (), wanted: set[str] | None = None
              ) -> Attributes:
    """Attributes of CSV rows (``ids[i]`` names ``rows[i]``); ``wanted``: only these ids."""
    keep = [k for k, i in enumerate(ids) if wanted is None or i in wanted]
    cols = [c for c in (rows[0] if rows else {}) if c not in skip and c is not None]
    return Attributes([ids[k] for k in keep], {c: [(rows[k].get(c) or "").strip() for k in keep] for c in cols})


def dicom_age(value: str) -> str:
    """DICOM's AS value ("045Y", "006M", "010W", "003D") in years, as text ("" when unreadable)."""
    m = re.fullmatch(r"\s*(\d{1,3})\s*([DWMY]?)\s*", str(value or ""))
    if not m:
        return ""
    n = int(m.group(1))
    years = {"D": n / 365.25, "W": n * 7 / 365.25, "M": n / 12, "Y": float(n), "": float(n)}[m.group(2)]
    return f"{years:.4g}"


def dicom_tags(paths: list[Path]) -> dict[str, list[str]]:
    """PatientSex, PatientAge (years) and Manufacturer of DICOM files, headers only (an unreadable
    file or a missing tag gives "")."""
    try:
        import pydicom
    except ImportError:
        raise UserError("reading DICOM tags for --subgroups needs pydicom: pip install pydicom") from None
    out: dict[str, list[str]] = {t: [] for t in DICOM_TAGS}
    for p in paths:
        try:
            ds = pydicom.dcmread(str(p), stop_before_pixels=True, specific_tags=list(DICOM_TAGS))
        except Exception:  # a file the run read may have moved: its groups are "(missing)"
            ds = None
        for t in DICOM_TAGS:
            v = str(getattr(ds, t, "") or "") if ds is not None else ""
            out[t].append(dicom_age(v) if t == "PatientAge" else v.strip())
    return out


def with_dicom(table: Attributes | None, ids: list[str], paths: list[Path]) -> Attributes | None:
    """``table`` plus the DICOM tags of the ``.dcm`` files among ``paths`` (``ids[i]`` names
    ``paths[i]``); a column the table already has wins."""
    dcm = [(i, p) for i, p in zip(ids, paths) if p.suffix.lower() == ".dcm"]
    if not dcm:
        return table
    tags = dicom_tags([p for _, p in dcm])
    table = table or Attributes([i for i, _ in dcm], {})
    where = {i: k for k, (i, _) in enumerate(dcm)}
    for t in DICOM_TAGS:
        if t not in table.columns:
            table.columns[t] = [tags[t][where[i]] if i in where else "" for i in table.ids]
    return table
