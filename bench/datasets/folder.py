"""``--dataset folder:PATH``: torchvision's ImageFolder layout, one sub-folder per class
(``PATH/<class>/<images>``, any depth below the class folder), optionally with given splits above
them (``PATH/train/<class>/``, ``PATH/val/`` or ``valid/``, ``PATH/test/``; a split that is missing
is carved out of train). Class names are the folder names (numeric order when all are integers).
Decoding, caching and splits: bench.datasets.images.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .base import LoadOptions
from .images import IMAGE_SUFFIXES, SPLIT_NAMES, Entry, ImageSource, Manifest, infer_task, sorted_values


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _classes(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


class FolderSource(ImageSource):
    name = "folder"
    version = 2  # 2: named in run ids by the folder's name and content, not its absolute path
    description = "an image folder (PATH/<class>/*.png|jpg|bmp|tif|dcm, optionally PATH/train|val|test/<class>/)"

    @staticmethod
    def _root(dataset: str) -> Path:
        root = Path(dataset.partition(":")[2]).expanduser()
        if not root.is_dir():
            raise UserError(f"{dataset}: no such folder {root}")
        return root

    def check(self, dataset: str, size: int) -> None:
        self._root(dataset)

    def _layout(self, root: Path) -> dict[str | None, list[Path]]:
        """{split or None: class folders}."""
        subs = _classes(root)
        split_dirs = {p: SPLIT_NAMES[p.name.lower()] for p in subs if p.name.lower() in SPLIT_NAMES}
        if split_dirs and len(split_dirs) == len(subs):
            return {s: _classes(p) for p, s in split_dirs.items()}
        return {None: subs}

    def manifest(self, dataset: str, opts: LoadOptions) -> Manifest:
        root = self._root(dataset)
        layout = self._layout(root)
        names = sorted_values(c.name for cls in layout.values() for c in cls)
        if len(names) < 2:
            raise UserError(f"{dataset}: {len(names)} class folder(s) in {root}; the layout is "
                            f"PATH/<class>/<images> (or PATH/train/<class>/...) with at least 2 classes")
        index = {n: i for i, n in enumerate(names)}
        entries = [Entry(p, p.relative_to(root).as_posix(), (index[c.name],), split)
                   for split, cls in layout.items() for c in cls for p in _images(c)]
        found = {e.label[0] for e in entries}
        empty = [n for n in names if index[n] not in found]
        if empty:  # an empty folder is not a class: it would be an output no image has (NaN AUC)
            raise UserError(f"{dataset}: class folder(s) {', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''} "
                            f"hold no images ({', '.join(IMAGE_SUFFIXES)}) in {root}; add images or remove the folder")
        task = infer_task(len(names), False, opts.get("task"), dataset)
        return Manifest(dataset, self.name, root, entries, {str(i): n for i, n in enumerate(names)}, task)

    def n_classes(self, dataset: str) -> int | None:
        try:
            return len({c.name for cls in self._layout(self._root(dataset)).values() for c in cls})
        except (UserError, OSError):
            return None

    def missing(self, dataset: str, size: int, opts: LoadOptions) -> list[str]:
        return [] if Path(dataset.partition(":")[2]).expanduser().is_dir() else [dataset.partition(":")[2]]


SOURCE = FolderSource()
