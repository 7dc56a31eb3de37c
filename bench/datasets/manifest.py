"""``--dataset csv:PATH``: a manifest, one row per image.

Columns (names set by options, else found by their usual names):
  ``--path-col``   the image file, relative to the CSV's folder (default: path, image, file, filename)
  ``--label-col``  the class (any values: names or integers), or several comma-separated columns of
                   0/1 (multi-label; -1 is uncertain, mapped by ``--uncertain``; blank is 0)
  ``--split-col``  given splits train|val|test (default: a column named split, if any)
  ``--group-col``  patient/lesion: a group never spans two splits (default: none)
The named paper sources (bench.datasets.paper) are thin subclasses that build the same rows from
their official files. Decoding, caching and splits: bench.datasets.images.
"""
from __future__ import annotations

import csv
from pathlib import Path

from ..errors import UserError, did_you_mean
from .base import LoadOptions
from .images import Entry, ImageSource, Manifest, infer_task, sorted_values, split_name, under

PATH_COLUMNS = ("path", "image", "file", "filename")


def read_rows(path: Path, where: str) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise UserError(f"{where}: {path.name} not found (expected at {path})")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{where}: {path} is not a readable CSV ({e})") from None


def column(cols: list[str], given: str, defaults: tuple[str, ...], what: str, where: str,
           required: bool = True) -> str | None:
    if given:
        if given not in cols:
            raise UserError(f"{where}: no column {given!r} ({what}); {did_you_mean(given, cols)}")
        return given
    for d in defaults:
        for c in cols:
            if c.lower() == d:
                return c
    if required:
        raise UserError(f"{where}: no {what} column ({' / '.join(defaults)}); name it with --"
                        f"{what.replace(' ', '-')}-col (columns: {', '.join(cols)})")
    return None


def multilabel_value(v: str, policy: str, where: str) -> int:
    """0/1 of one label; -1 (unknown: left out of losses and metrics) for --uncertain ignore on a -1."""
    v = (v or "").strip()
    if v == "":
        return 0
    try:
        x = float(v)
    except ValueError:
        raise UserError(f"{where}: label value {v!r} is not 0, 1 or -1 (uncertain)") from None
    if x == -1:
        return {"ones": 1, "zeros": 0, "ignore": -1}[policy]
    if x not in (0, 1):
        raise UserError(f"{where}: label value {v!r} is not 0, 1 or -1 (uncertain)")
    return int(x)


def _is_uncertain(v: str) -> bool:
    try:
        return float(v) == -1
    except (TypeError, ValueError):
        return False


class CSVSource(ImageSource):
    name = "csv"
    version = 2  # 2: named in run ids by the CSV's name and content, not its absolute path
    description = "a CSV manifest (path and label columns; --label-col A,B for multi-label; split, group)"

    def _path(self, dataset: str) -> Path:
        path = Path(dataset.partition(":")[2]).expanduser()
        if not path.is_file():
            raise UserError(f"{dataset}: no such file {path}")
        return path

    def check(self, dataset: str, size: int) -> None:
        if dataset.startswith(f"{self.name}:"):
            self._path(dataset)

    def rows_manifest(self, dataset: str, csv_path: Path, base: Path, cols: list[str], rows: list[dict],
                      opts: LoadOptions, *, path_col: str, label_cols: list[str], split_col: str | None,
                      group_col: str | None, modality: str = "", task: str | None = None,
                      files: list[Path] | None = None, suffix: str = "", extra: dict | None = None) -> Manifest:
        """The manifest of already-read rows: what csv: and the paper sources share."""
        for c in label_cols:
            if c not in cols:
                raise UserError(f"{dataset}: no label column {c!r} in {csv_path.name}; {did_you_mean(c, cols)}")
        multilabel = len(label_cols) > 1
        policy = opts.get("uncertain")
        entries: list[Entry] = []
        if multilabel:
            names = list(label_cols)
            n_uncertain = 0
            for n, r in enumerate(rows, 2):
                lab = [multilabel_value(r[c], policy, f"{csv_path.name} line {n}, {c}") for c in label_cols]
                n_uncertain += sum(_is_uncertain(r[c]) for c in label_cols)
                entries.append(self._entry(r, base, path_col, tuple(lab), split_col, group_col, suffix, csv_path, n))
            extra = {**(extra or {}), "uncertain": policy, "uncertain_labels": n_uncertain}
        else:
            col = label_cols[0]
            values = [(r[col] or "").strip() for r in rows]
            if "" in values:
                raise UserError(f"{dataset}: {csv_path.name} line {values.index('') + 2} has no {col!r} label")
            names = sorted_values(values)
            index = {v: i for i, v in enumerate(names)}
            entries = [self._entry(r, base, path_col, (index[v],), split_col, group_col, suffix, csv_path, n)
                       for n, (r, v) in enumerate(zip(rows, values), 2)]
        stated = opts.get("task")
        task = task if (task and stated == "auto") else infer_task(len(names), multilabel, stated, dataset)
        return Manifest(dataset, self.name, csv_path, entries, {str(i): n for i, n in enumerate(names)}, task,
                        modality=modality, files=files if files is not None else [csv_path], extra=extra or {})

    @staticmethod
    def _entry(r: dict, base: Path, path_col: str, label: tuple, split_col: str | None, group_col: str | None,
               suffix: str, csv_path: Path, line: int) -> Entry:
        rel = (r[path_col] or "").strip()
        if not rel:
            raise UserError(f"{csv_path.name} line {line}: empty {path_col!r}")
        rel += suffix
        split = split_name(r[split_col], f"{csv_path.name} line {line}") if split_col else None
        group = (r[group_col] or "").strip() or None if group_col else None
        return Entry(under(base, rel), rel, label, split, group)

    def manifest(self, dataset: str, opts: LoadOptions) -> Manifest:
        path = self._path(dataset)
        cols, rows = read_rows(path, dataset)
        path_col = column(cols, opts.get("path_col"), PATH_COLUMNS, "path", dataset)
        label_given = [c.strip() for c in opts.get("label_col").split(",") if c.strip()]
        label_cols = label_given or [column(cols, "", ("label",), "label", dataset)]
        split_col = column(cols, opts.get("split_col"), ("split",), "split", dataset, required=False)
        group_col = column(cols, opts.get("group_col"), (), "group", dataset, required=False)
        return self.rows_manifest(dataset, path, path.parent, cols, rows, opts, path_col=path_col,
                                  label_cols=label_cols, split_col=split_col, group_col=group_col)

    def attributes(self, dataset: str, opts: LoadOptions, ids: "set[str] | None" = None):
        """Every column of the CSV but the path, per image (and DICOM tags of .dcm images)."""
        from .attributes import from_rows, with_dicom

        path = self._path(dataset)
        cols, rows = read_rows(path, dataset)
        path_col = column(cols, opts.get("path_col"), PATH_COLUMNS, "path", dataset)
        table = from_rows([(r[path_col] or "").strip() for r in rows], rows, skip=(path_col,), wanted=ids)
        return with_dicom(table, table.ids, [under(path.parent, i) for i in table.ids])

    def missing(self, dataset: str, size: int, opts: LoadOptions) -> list[str]:
        p = dataset.partition(":")[2]
        return [] if Path(p).expanduser().is_file() else [p]


SOURCE = CSVSource()
