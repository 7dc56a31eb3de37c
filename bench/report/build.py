"""`bench report`: read the results folder, compute tables and figures, write the report files."""
from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import pandas as pd

from ..errors import UserError, did_you_mean
from . import ranking as R
from . import render
from ..labels import RANDOM_INIT_NOTE
from . import tables as T
from .doc import Cell, Report, Section, Table
from .load import RunSet, load_results

FORMATS = ("md", "html", "png", "latex")
_ALIASES = {"markdown": "md", "tex": "latex", "htm": "html"}




def make_report(results_dir: Path, out: Path, *, baseline: str | None = None, filters: list[str] | tuple[str, ...] = (),
                formats: tuple[str, ...] | list[str] = ("md", "html", "png"), with_reference: bool = False,
                metric: str = "auc", n_boot: int = 1000, seed: int = 0, subgroups: str | None = None,
                data_root: Path | None = None) -> Path:
    """Aggregate every completed run under ``results_dir`` and write the report into ``out``.

    Writes ``report.md`` / ``report.html`` / ``report.tex`` (per ``formats``), ``figures/*.png``
    (``png``) and, always, ``tables/*.csv`` with the numbers behind every table. Returns the
    main document (HTML if written, else Markdown, else LaTeX, else the output folder).
    ``baseline`` None means the first ImageNet reference with runs (resnet50, resnet152, deit,
    resnet18 with their default weights); with none, the report says there is nothing to compare.
    ``subgroups`` (``--subgroups COL[,COL]``; default: what the runs recorded) adds the "Subgroups"
    section (bench.report.subgroups); ``data_root``: where the runs' data lies now, when moved.
    Raises UserError for an empty or missing results folder, an unknown baseline, metric,
    filter key or format.
    """
    fmts = _check_formats(formats)
    if n_boot < 10:
        raise UserError(f"--n-boot {n_boot}: use at least 10 resamples (1000 or more for a paper)")
    rs = load_results(Path(results_dir), list(filters or ()))
    # an explicitly named baseline must exist; the default one is the first reference that ran
    if baseline is not None:
        why = "chosen with --baseline"
    else:
        baseline = T.default_baseline(rs)
        refs = ", ".join(T.DEFAULT_BASELINES)
        why = (f"the first ImageNet reference with runs, of {refs}" if baseline else
               f"none of the ImageNet references ({refs}, with their default weights) has runs; pass "
               f"--baseline MODEL to compare against one of yours")
    a = T.Analysis(rs, metric, baseline, n_boot=n_boot, seed=seed, baseline_why=why)
    draw = "png" in fmts or "html" in fmts
    from .subgroups import audit_of

    report = build(a, with_reference=with_reference, figures=draw, audit=audit_of(a, subgroups, data_root))
    if draw:  # the sheets of `bench explain`, where it ran for runs in this report
        from .explain import explanations_section

        sec = explanations_section(Path(results_dir), set(rs.runs.run_id))
        report.sections += [sec] if sec else []
    try:
        return write(report, Path(out), fmts)
    except OSError as e:  # e.g. --out under /sys, or a disk that filled up: one line, not a traceback
        from ..fsio import disk_error

        raise disk_error(e, "report", Path(e.filename or out)) from None


def _check_formats(formats) -> list[str]:
    out = []
    for f in formats or ():
        for part in str(f).split(","):  # accept "md,html" as well as repeated --format
            p = _ALIASES.get(part.strip().lower(), part.strip().lower())
            if not p:
                continue
            if p not in FORMATS:
                raise UserError(f"unknown --format {part!r}; {did_you_mean(part, FORMATS)}")
            out.append(p)
    if not out:
        raise UserError(f"no --format given; choose from {', '.join(FORMATS)}")
    return list(dict.fromkeys(out))


def build(a: T.Analysis, *, with_reference: bool = False, figures: bool = True, audit=None) -> Report:
    from . import figures as F  # matplotlib only when figures are drawn

    secs = a.sections()
    sections: list[Section] = []

    overview = Section("Average over datasets", intro="The MedMNIST+ layout: one row per model, one column "
                       "per image size, the mean over datasets of each model's seed means.")
    overview.tables += T.average_tables(a)
    if (a.model_info.weights == "random").any():  # said up front: these are not pretrained models
        overview.notes.append(RANDOM_INIT_NOTE)
    sections.append(overview)

    comparable = a.baseline is not None and any(a.baseline_model(s) for s in secs)
    if a.baseline is None:
        sections.append(Section("Gain over a baseline", notes=[f"Nothing to compare against: {a.baseline_why}."]))
    elif not comparable:
        sections.append(Section(f"Gain over {a.baseline_label}", notes=[
            f"Nothing to compare: the baseline {a.baseline_label} has no runs in any section of this report."]))
    else:
        gain = Section(f"Gain over {a.baseline_label}", intro="Relative change of the seed means against the baseline, "
                       "averaged over datasets. Read it together with the paired comparisons of each section: "
                       "a gain inside the noise is not a ranking.")
        if figures:
            fig, note = F.gain_figure(a)
            gain.figures += [fig] if fig else []
            gain.notes += [note] if note else []
        sections.append(gain)

    for sec in secs:
        s = Section(T.section_title(sec), level=2)
        s.tables.append(T.seed_table(a, sec))
        if a.baseline_model(sec) is not None:
            gt, notes = T.gain_table(a, sec)
            s.tables += [gt] if not gt.empty else []
            s.notes += notes
        elif comparable:  # one sentence instead of empty comparison tables
            s.notes.append(f"No comparison in this section: the baseline {a.baseline_label} has no runs here.")
        ct, notes = T.ci_table(a, sec)
        s.tables += [ct] if not ct.empty else []
        s.notes += notes
        for t in (T.paired_table(a, sec), R.wilcoxon_table(a, sec)):
            if t is not None and not t.empty:
                s.tables.append(t)
        rank_tables, notes, rk = R.ranking_tables(a, sec)
        s.tables += rank_tables
        s.notes += notes
        if figures and rk is not None:
            s.figures.append(F.cd_figure(a, rk))
        cal, notes = T.calibration_table(a, sec)
        s.tables += [cal] if cal is not None and not cal.empty else []
        s.notes += notes
        rt, n_checked = T.recall_table(a, sec)
        if rt is not None:
            s.tables += [rt] if not rt.empty else []
            if rt.empty:
                s.notes.append(f"No class recall falls below {T.LOW_RECALL} or {T.RECALL_GAP} under the balanced "
                               f"accuracy ({n_checked} class recalls checked).")
        if figures:
            fig, note = F.heatmap_figure(a, sec)
            s.figures += [fig] if fig else []
            s.notes += [note] if note else []
        sections.append(s)

    if figures:
        trends = Section("Trends", intro="Averages over the datasets each model covers at every plotted level.")
        for make in (F.unfreeze_figure, F.resolution_figure):
            fig, note = make(a)
            trends.figures += [fig] if fig else []
            trends.notes += [note] if note else []
        sections.append(trends)

    if figures:
        how = Section("How much adaptation", intro="Per dataset, the test metric against the number of parameters "
                      "each way of adapting a backbone trains: where the frontier flattens, more adaptation buys "
                      "little.")
        fig, note = F.adaptation_figure(a)
        how.figures += [fig] if fig else []
        how.notes += [note] if note else []
        sections.append(how)

    from . import transfer  # the depth and label-budget studies: only where such runs exist

    from .zeroshot import zeroshot_section  # zero-shot runs: the prompt ensemble against each template

    from .robustness import robustness_section  # runs scored under shift by `bench robust`

    for make in (transfer.depth_section, transfer.labels_section, lambda a, _figures: zeroshot_section(a),
                 robustness_section):
        study = make(a, figures)
        sections += [study] if study is not None else []

    if audit is not None:  # --subgroups: per-group numbers joined through the saved image ids
        from .subgroups import subgroups_sections

        sections += subgroups_sections(a, audit.specs, figures, au=audit)

    if with_reference:
        from .reference import load_reference

        ref = Section("Published reference numbers")
        t, notes = T.reference_table(a, load_reference())
        ref.tables.append(t)
        ref.notes += notes
        sections.append(ref)
        from .reproduce import reproduction_table

        t, notes = reproduction_table(a, load_reference())
        if t is not None:  # runs here that reproduce a published number (the reference's `ours`)
            sections.append(Section("Reproductions: published numbers beside ours", tables=[t], notes=notes))

    # every table's CSV names each model's backbone, variant, weights and recipe
    for sec in sections:
        for t in sec.tables:
            if t.data is not None:
                t.data = T.with_model_columns(t.data, a.model_info)

    summary = _summary(a, secs)
    return Report(f"medfm-bench report — test {a.metric.upper()}", summary, sections, provenance(a))


def display_path(path: Path) -> str:
    """A folder as the report shows it: relative to the working folder when inside it, else its
    name only, so no report carries a machine's absolute paths."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve())) or "."
    except ValueError:
        return p.resolve().name


def _summary(a: T.Analysis, secs) -> list[str]:
    rs = a.rs
    n_runs = rs.runs.shape[0]
    base = f"baseline: {a.baseline_label} ({a.baseline_why})" if a.baseline else f"no baseline: {a.baseline_why}"
    out = [f"{n_runs} run(s) of {rs.runs.model.nunique()} model(s) on {rs.runs.dataset.nunique()} dataset(s), "
           f"{len(secs)} protocol/setting section(s); metric: test {a.metric} ({T.direction(a)}).",
           base[0].upper() + base[1:] + ".",
           f"Seeds: {', '.join(map(str, sorted(set(int(s) for s in rs.runs.seed.dropna()))))}; they are averaged "
           f"within a dataset before any test across datasets."]
    info = a.model_info
    shown = [m for m in info.index if info.loc[m, "weights"] != "default"]
    if shown:
        out.append(f"Not ImageNet/default weights: {', '.join(shown)} (the weights are in brackets).")
    if rs.filters:
        out.append(f"Filters: {'; '.join(rs.filters)} ({n_runs} of {rs.n_total_runs} runs kept).")
    if rs.failures:
        out.append(f"{len(rs.failures)} failed run(s) in {display_path(rs.root)}/failures are not in the tables.")
    if rs.skipped:
        listed = "; ".join(f"{Path(s['file']).name}: {s['reason']}" for s in rs.skipped[:10])
        more = f" (and {len(rs.skipped) - 10} more)" if len(rs.skipped) > 10 else ""
        out.append(f"{len(rs.skipped)} run(s) skipped because their files are invalid: {listed}{more}.")
    partial = a.summary[a.summary.n < a.summary.expected_n]
    if len(partial):
        out.append(f"{len(partial)} cell(s) have fewer seeds than their section (marked †).")
    ids = list(dict.fromkeys(rs.all_rows.run_id)) if not rs.all_rows.empty else list(rs.runs.run_id)
    marks = Counter(t for rid in ids for t in rs.caveats(rid, a.metric))
    if marks:
        n = sum(1 for rid in ids if rs.caveats(rid, a.metric))
        out.append(f"{n} run(s) carry a caveat, marked in brackets beside their numbers and explained under each "
                   f"table: {', '.join(f'{t} ({k})' for t, k in marks.items())}.")
    return out


def _counts(values) -> str:
    c = Counter(values)
    if not c:
        return "—"
    return ", ".join(f"{k} ({n} run{'s' if n > 1 else ''})" for k, n in sorted(c.items(), key=lambda kv: str(kv[0])))


def provenance(a: T.Analysis) -> Table:
    """What the report was made from: runs, seeds, versions, git revisions, dates."""
    rs: RunSet = a.rs
    metas = [rs.meta.get(r, {}) for r in rs.runs.run_id]
    rows = [("results folder", display_path(rs.root)),
            ("runs in report", f"{len(rs.runs)} (of {rs.n_total_runs} completed; {len(rs.failures)} failed)"),
            ("filters", "; ".join(rs.filters) or "none"),
            ("models", ", ".join(sorted(set(rs.runs.model)))),
            ("datasets", ", ".join(T.dataset_order(set(rs.runs.dataset)))),
            ("seeds", ", ".join(map(str, sorted(set(int(s) for s in rs.runs.seed.dropna()))))),
            ("runs without provenance JSON", str(sum(1 for m in metas if not m)))]
    keys = sorted({k for m in metas for k in (m.get("versions") or {})}, key=lambda k: (k != "python", k))
    for k in keys:
        rows.append((f"version: {k}", _counts((m.get("versions") or {}).get(k, "unknown") for m in metas)))
    rows.append(("git revision", _counts(m.get("git") or "unknown" for m in metas)))
    rows.append(("device", _counts(m.get("device") or "unknown" for m in metas)))
    created = sorted(c for c in (m.get("created") for m in metas) if c)
    rows.append(("runs created", f"{created[0]} to {created[-1]}" if created else "unknown"))
    rows.append(("bootstrap", f"{a.n_boot} resamples, seed {a.seed}"))
    try:
        mine = metadata.version("medfm-bench")
    except metadata.PackageNotFoundError:
        mine = "unknown"
    rows.append(("report made", f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} "
                                f"with medfm-bench {mine}"))
    data = pd.DataFrame(rows, columns=["item", "value"])
    return Table("provenance", "What this report was made from", ["item", "value"],
                 [[Cell(k), Cell(v)] for k, v in rows], data=data)


def write(report: Report, out: Path, fmts: list[str]) -> Path:
    from ..fsio import check_creatable

    check_creatable(out, "report folder", "--out")  # a file in the way, or read-only: one line
    out.mkdir(parents=True, exist_ok=True)
    fig_dir, tab_dir = out / "figures", out / "tables"
    # files from an earlier report in the same folder would otherwise linger as stale results
    for d, pattern in ((fig_dir, "*.png"), (fig_dir, "*.svg"), (tab_dir, "*.csv")):
        for old in d.glob(pattern) if d.is_dir() else []:
            old.unlink()
    tab_dir.mkdir(exist_ok=True)
    for t in report.tables():
        if t.data is not None and not t.data.empty:
            t.data.to_csv(tab_dir / f"{t.name}.csv", index=False)
    if "png" in fmts:
        fig_dir.mkdir(exist_ok=True)
        for f in report.figures():
            (fig_dir / f"{f.name}.png").write_bytes(f.png)
            if f.svg:
                (fig_dir / f"{f.name}.svg").write_bytes(f.svg)
    written = {}
    if "md" in fmts:
        written["md"] = out / "report.md"
        written["md"].write_text(render.to_markdown(report, "figures" if "png" in fmts else None))
    if "html" in fmts:
        written["html"] = out / "report.html"
        written["html"].write_text(render.to_html(report))
    if "latex" in fmts:
        written["latex"] = out / "report.tex"
        written["latex"].write_text(render.to_latex(report))
    for k in ("html", "md", "latex"):
        if k in written:
            return written[k]
    return out
