"""`bench report`: comparison tables, gains over a baseline, bootstrap intervals, paired tests,
figures and provenance from a results folder.

Modules: ``load`` (read results), ``stats`` (bootstrap, Wilcoxon, Holm), ``tables`` (pandas
tables), ``figures`` (seaborn), ``render`` (Markdown/HTML/LaTeX), ``reference`` (published
numbers), ``build`` (orchestration).
"""
from .build import FORMATS, make_report

__all__ = ["FORMATS", "make_report"]
