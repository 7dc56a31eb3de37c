"""`bench report`: comparison tables, gains over a baseline, bootstrap intervals, paired tests,
figures and provenance from a results folder.

Modules: ``load`` (read results, model labels), ``stats`` (bootstrap, exact signed-rank, Friedman,
Nemenyi, Holm), ``tables`` (per-dataset tables, gains, calibration), ``ranking`` (tests and ranks
across datasets), ``figures`` (seaborn/matplotlib), ``render`` (Markdown/HTML/LaTeX),
``reference`` (published numbers), ``export`` (`bench results export/ls`), ``build``
(orchestration).
"""
from .build import FORMATS, make_report

__all__ = ["FORMATS", "make_report"]
