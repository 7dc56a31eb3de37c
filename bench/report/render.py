"""Markdown, self-contained HTML and LaTeX renderings of a Report."""
from __future__ import annotations

import base64
import html

from .doc import Cell, Figure, Report, Section, Table

FLAG = "†"


# -- Markdown ---------------------------------------------------------------------------------

def _md_cell(c: Cell) -> str:
    t = c.text.replace("|", "\\|")
    if c.bold and not c.missing:
        t = f"**{t}**"
    return t + (f" {FLAG}" if c.flag else "")


def md_table(t: Table) -> str:
    lines = [f"**{t.title}**", ""]
    if t.caption:
        lines += [t.caption, ""]
    if t.empty:
        return "\n".join(lines + ["_(no rows)_", ""])
    lines.append("| " + " | ".join(c.replace("|", "\\|") for c in t.columns) + " |")
    lines.append("|" + "|".join(" ---: " if num else " --- " for num in t.numeric()) + "|")
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    if t.legend:
        lines += ["", "_" + "; ".join(t.legend) + "_"]
    return "\n".join(lines + [""])


def to_markdown(r: Report, figure_dir: str | None = "figures") -> str:
    out = [f"# {r.title}", ""] + [f"- {s}" for s in r.summary] + [""]
    for s in r.sections:
        out += [f"{'#' * s.level} {s.title}", ""]
        if s.intro:
            out += [s.intro, ""]
        for t in s.tables:
            out.append(md_table(t))
        for f in s.figures:
            if figure_dir:
                vector = f" ([SVG]({figure_dir}/{f.name}.svg))" if f.svg else ""
                out += [f"![{f.title}]({figure_dir}/{f.name}.png)", "", f"_{f.caption}_{vector}", ""]
            else:
                out += [f"_Figure “{f.title}” is in report.html._", ""]
        out += [f"> {n}" for n in s.notes] + ([""] if s.notes else [])
    out += ["## Provenance", "", md_table(r.provenance)]
    return "\n".join(out)


# -- HTML -------------------------------------------------------------------------------------

CSS = """
body{font-family:-apple-system,'Segoe UI',Roboto,'Helvetica Neue',Arial,sans-serif;margin:2rem auto;
max-width:1200px;padding:0 1rem;color:#1f2328;line-height:1.45}
h1{font-size:1.7rem;border-bottom:2px solid #d0d7de;padding-bottom:.3rem}
h2{font-size:1.35rem;margin-top:2.2rem;border-bottom:1px solid #d0d7de;padding-bottom:.2rem}
h3{font-size:1.1rem;margin-top:1.6rem}
.tbl{overflow-x:auto;margin:1rem 0 1.6rem}
table{border-collapse:collapse;font-size:.86rem;font-variant-numeric:tabular-nums}
caption{caption-side:top;text-align:left;font-weight:600;padding-bottom:.3rem;white-space:nowrap}
th,td{border-bottom:1px solid #e5e7eb;padding:.3rem .6rem;text-align:right;white-space:nowrap}
th{background:#f6f8fa;border-bottom:2px solid #d0d7de}
td.txt,th.txt{text-align:left}
tr:hover td{background:#fafbfc}
td.missing{color:#8c959f}
td.best{font-weight:700;background:#eef6ee}
.flag{color:#bc4c00;font-weight:700;margin-left:.15rem}
p.cap{color:#57606a;font-size:.85rem;margin:.2rem 0}
p.legend{color:#57606a;font-size:.78rem;margin:.3rem 0}
figure{margin:1.2rem 0}
figure img{max-width:100%;border:1px solid #e5e7eb}
figcaption{color:#57606a;font-size:.85rem}
.note{background:#fff8c5;border-left:4px solid #d4a72c;padding:.4rem .7rem;margin:.5rem 0;font-size:.88rem}
ul.summary li{margin:.15rem 0}
"""


def _h(s: str) -> str:
    return html.escape(s, quote=True)


def html_table(t: Table) -> str:
    parts = ['<div class="tbl">', f"<table><caption>{_h(t.title)}</caption>"]
    numeric = t.numeric()
    # a header sits over its column's alignment: text columns left, numbers right
    parts.append("<thead><tr>" + "".join(f'<th class="{"num" if num else "txt"}">{_h(c)}</th>'
                                         for c, num in zip(t.columns, numeric)) + "</tr></thead><tbody>")
    for row in t.rows:
        cells = []
        for c, num in zip(row, numeric):
            cls = " ".join(x for x in ("missing" if c.missing else "", "best" if c.bold and not c.missing else "",
                                       "" if num else "txt") if x)
            flag = f'<span class="flag" title="see legend">{FLAG}</span>' if c.flag else ""
            attr = f' class="{cls}"' if cls else ""
            cells.append(f"<td{attr}>{_h(c.text)}{flag}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    if t.empty:
        parts.append(f'<tr><td colspan="{len(t.columns)}" class="missing">no rows</td></tr>')
    parts.append("</tbody></table>")
    if t.caption:
        parts.append(f'<p class="cap">{_h(t.caption)}</p>')
    if t.legend:
        parts.append(f'<p class="legend">{_h("; ".join(t.legend))}</p>')
    parts.append("</div>")
    return "\n".join(parts)


def html_figure(f: Figure) -> str:
    data = base64.b64encode(f.png).decode()
    return (f'<figure><img alt="{_h(f.title)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_h(f.caption)}</figcaption></figure>")


def _html_section(s: Section) -> str:
    out = [f"<h{s.level}>{_h(s.title)}</h{s.level}>"]
    if s.intro:
        out.append(f"<p>{_h(s.intro)}</p>")
    out += [html_table(t) for t in s.tables]
    out += [html_figure(f) for f in s.figures]
    out += [f'<div class="note">{_h(n)}</div>' for n in s.notes]
    return "\n".join(out)


def to_html(r: Report) -> str:
    """One file, no external resources: CSS inline, figures as base64 data URIs."""
    body = [f"<h1>{_h(r.title)}</h1>", '<ul class="summary">' + "".join(f"<li>{_h(s)}</li>" for s in r.summary)
            + "</ul>"]
    body += [_html_section(s) for s in r.sections]
    body += ["<h2>Provenance</h2>", html_table(r.provenance)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_h(r.title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


# -- LaTeX ------------------------------------------------------------------------------------

_TEX_ESCAPE = [("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
               ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\textasciicircum{}")]
_TEX_UNICODE = [("±", r"$\pm$"), ("—", "--"), ("–", "--"), ("−", "-"), ("Δ", r"$\Delta$"), ("×", r"$\times$"),
                ("†", r"$^{\dagger}$"), ("·", r"\textperiodcentered{}"), ("“", "``"), ("”", "''"),
                ("≥", r"$\geq$"), ("χ", r"$\chi$"), ("α", r"$\alpha$"), ("²", r"\textsuperscript{2}"),
                ("√", r"$\surd$"),
                ("<", r"\textless{}"), (">", r"\textgreater{}")]


def tex(s: str) -> str:
    # escape specials first, then map unicode to commands (which contain backslashes themselves)
    s = s.replace("\\", "\x00")
    for a, b in _TEX_ESCAPE[1:]:
        s = s.replace(a, b)
    s = s.replace("\x00", r"\textbackslash{}")
    for a, b in _TEX_UNICODE:
        s = s.replace(a, b)
    return s


def _tex_cell(c: Cell) -> str:
    t = tex(c.text)
    if c.bold and not c.missing:
        t = rf"\textbf{{{t}}}"
    return t + (r"$^{\dagger}$" if c.flag else "")


def latex_table(t: Table) -> str:
    if t.empty:
        return f"% {tex(t.title)}: no rows\n"
    spec = "".join("r" if num else "l" for num in t.numeric())
    lines = [r"\begin{table}[htbp]", r"\centering", r"\small", rf"\caption{{{tex(t.title)}. {tex(t.caption)}}}",
             rf"\label{{tab:{t.name}}}",
             # shrink tables wider than the text, never enlarge narrow ones
             r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(tex(c) for c in t.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(_tex_cell(c) for c in row) + r" \\" for row in t.rows]
    lines += [r"\bottomrule", r"\end{tabular}}"]
    if t.legend:
        lines.append(rf"\par\smallskip{{\footnotesize {tex('; '.join(t.legend))}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def to_latex(r: Report) -> str:
    """A compilable document of the tables (booktabs); copy the table environments into a paper."""
    out = [r"\documentclass{article}", r"\usepackage[margin=2cm]{geometry}", r"\usepackage{booktabs}",
           r"\usepackage{graphicx}", r"\usepackage[T1]{fontenc}", r"\usepackage[utf8]{inputenc}",
           r"\begin{document}", rf"\section*{{{tex(r.title)}}}", r"\begin{itemize}"]
    out += [rf"\item {tex(s)}" for s in r.summary] + [r"\end{itemize}"]
    for s in r.sections:
        if not s.tables:
            continue
        out.append(rf"\subsection*{{{tex(s.title)}}}")
        out += [latex_table(t) for t in s.tables]
        out.append(r"\clearpage")
    out += [r"\subsection*{Provenance}", latex_table(r.provenance), r"\end{document}"]
    return "\n".join(out) + "\n"
