"""Prompts as data: the class names and templates a zero-shot head reads (`--head zeroshot`,
`--init zeroshot`), one versioned YAML file per dataset in ``bench/prompt_sets/``.

A file holds ``classes`` in label order (single-label: one name per class, as a clinician would
write it; multi-label: a ``{positive, negative}`` pair per label, scored against each other),
``templates`` with ``{c}`` where the class name goes, and ``sources`` (where the templates and names
were taken from). Own data (folder:, csv:) gets its class names from its folders / CSV and the
GENERIC medical templates; ``--prompts FILE.yaml`` replaces a dataset's set (a file without
``classes`` keeps the dataset's names). What the run id carries is the set's content hash
(classes + templates), so an edited prompt file is a new run.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError, did_you_mean

HERE = Path(__file__).resolve().parent / "prompt_sets"
GENERIC_TEMPLATES = ("a medical image showing {c}.", "a medical image of {c}.", "an image of {c}.",
                     "a photo of {c}.", "{c}.")
GENERIC_SOURCE = ("generic medical templates of medfm-bench (CLIP's 'a photo of {c}.' and its medical "
                  "paraphrases); class names from the data's folders / CSV")


@dataclass(frozen=True)
class PromptSet:
    name: str                                  # dataset name, "generic", or the file it was read from
    classes: tuple                             # str per class, or (positive, negative) per label; () = the data's
    templates: tuple[str, ...]
    sources: tuple[str, ...] = ()
    version: int = 1
    multilabel: bool = False

    @property
    def digest(self) -> str:
        """Content hash (classes + templates): the part of the run id that names the prompts."""
        canon = json.dumps({"classes": [list(c) if isinstance(c, tuple) else c for c in self.classes],
                            "templates": list(self.templates)}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:12]

    def with_classes(self, names: list[str], multilabel: bool) -> "PromptSet":
        """The set with the data's class names (own data: folders / CSV columns); multi-label labels
        are scored 'NAME' against 'no NAME'."""
        classes = tuple((n, f"no {n}") for n in names) if multilabel else tuple(names)
        return PromptSet(self.name, classes, self.templates, self.sources, self.version, multilabel)

    def texts(self, name: str) -> list[str]:
        return [t.format(c=name) for t in self.templates]

    def check(self, n_outputs: int, multilabel: bool, dataset: str) -> "PromptSet":
        """The set fits the data: one entry per class / label, pairs exactly for multi-label."""
        if len(self.classes) != n_outputs:
            raise UserError(f"prompts {self.name}: {len(self.classes)} class names for {dataset}'s {n_outputs} "
                            f"{'labels' if multilabel else 'classes'}; give one per class, in label order")
        if multilabel != all(isinstance(c, tuple) for c in self.classes):
            raise UserError(f"prompts {self.name}: {dataset} is {'multi-label' if multilabel else 'single-label'}: "
                            f"{'each label needs a {positive, negative} pair' if multilabel else 'one name per class, not pairs'}")
        return self


def _parse(data: object, where: str) -> PromptSet:
    if not isinstance(data, dict):
        raise UserError(f"prompts {where}: expected a mapping with templates (and classes), got {type(data).__name__}")
    unknown = set(data) - {"dataset", "version", "modality", "task", "classes", "templates", "sources"}
    if unknown:
        raise UserError(f"prompts {where}: unknown key {sorted(unknown)[0]!r}; keys are dataset, version, modality, "
                        f"task, classes, templates, sources")
    templates = data.get("templates")
    if not templates or not isinstance(templates, list) or not all(isinstance(t, str) and "{c}" in t
                                                                    for t in templates):
        raise UserError(f"prompts {where}: 'templates' must be a list of strings, each with {{c}} for the class name")
    classes = []
    for c in data.get("classes") or []:
        if isinstance(c, dict):
            if set(c) != {"positive", "negative"}:
                raise UserError(f"prompts {where}: a multi-label class is {{positive: ..., negative: ...}}, got {c}")
            classes.append((str(c["positive"]), str(c["negative"])))
        elif isinstance(c, (str, int, float)):
            classes.append(str(c))
        else:
            raise UserError(f"prompts {where}: a class is a name or a {{positive, negative}} pair, got {c!r}")
    sources = data.get("sources") or []
    return PromptSet(str(data.get("dataset") or where), tuple(classes), tuple(templates),
                     tuple(str(s) for s in (sources if isinstance(sources, list) else [sources])),
                     int(data.get("version", 1)), bool(classes) and all(isinstance(c, tuple) for c in classes))


def read(path: str | Path) -> PromptSet:
    """A prompt file (YAML)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"--prompts {str(path)!r}: no such file; give a YAML file with templates (and classes)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"--prompts {str(path)!r}: not valid YAML ({str(e).splitlines()[0]})") from None
    return _parse(data, str(path))


def names() -> list[str]:
    """Datasets with a prompt set of their own."""
    return sorted(p.stem for p in HERE.glob("*.yaml"))


def builtin(dataset: str) -> PromptSet | None:
    """The dataset's own prompt set (bare MedMNIST+ / paper dataset names), or None."""
    path = HERE / f"{dataset}.yaml"
    return read(path) if path.is_file() else None


def generic() -> PromptSet:
    return PromptSet("generic", (), GENERIC_TEMPLATES, (GENERIC_SOURCE,))


def find(dataset: str, prompts: str = "") -> PromptSet:
    """The set a run on ``dataset`` reads: ``--prompts FILE`` (its classes, else the dataset's), the
    dataset's own, or the generic templates (classes then come from the data at run time)."""
    own = builtin(dataset) or generic()
    if not prompts:
        return own
    given = read(prompts)
    return given if given.classes else PromptSet(given.name, own.classes, given.templates, given.sources,
                                                 given.version, own.multilabel)


def config_value(dataset: str, prompts: str = "") -> str:
    """What a run's config holds for ``--prompts``: where the set comes from and its content hash
    (NAME#DIGEST; a file by its absolute path)."""
    s = find(dataset, prompts)
    where = str(Path(prompts).resolve()) if prompts else s.name
    return f"{where}#{s.digest}"


def from_config(dataset: str, value: str) -> PromptSet:
    """The set a resolved config names, checked against its hash (a file edited after planning: one line)."""
    where, _, digest = value.rpartition("#")
    s = find(dataset, where if Path(where).is_absolute() else "")
    if s.digest != digest:
        raise UserError(f"prompts {where}: their content changed since this run was resolved (hash {s.digest}, "
                        f"the run id has {digest}); run it again")
    return s


def listing(dataset: str) -> str:
    """`bench ls prompts DATASET`: the class names, templates and sources a zero-shot run reads."""
    s = builtin(dataset)
    if s is None:
        known = names()
        head = (f"{dataset}: no prompt set of its own ({did_you_mean(dataset, known)}); own data uses its folder / "
                f"CSV class names with the generic medical templates:") if dataset not in ("generic", "") else \
            "generic medical templates (own data; class names from folders / CSV):"
        s = generic()
    else:
        head = f"{dataset}: prompt set v{s.version}, hash {s.digest}"
    lines = [head]
    if s.classes:
        lines.append("classes (label order):")
        for i, c in enumerate(s.classes):
            lines.append(f"  {i}: " + (f"{c[0]}  |  against: {c[1]}" if isinstance(c, tuple) else c))
    lines.append("templates:")
    lines += [f"  {t}" for t in s.templates]
    if s.sources:
        lines.append("sources:")
        lines += [f"  {x}" for x in s.sources]
    return "\n".join(lines)
