"""``report.html`` for a run folder: a static, self-contained, offline page.

Summary table (mean and 95% bootstrap CI of each score and metric, time per item), the
failures, and a gallery (thumbnail, overlay, scores) sortable by clicking a column header
or with the select box. CSS and JS are inline; images are referenced by relative paths
(``items/...``) or, with ``embed=True``, embedded as data URIs, so the page works from
``file://``. Every string from the run is HTML-escaped; the data for the sorting script is
JSON inside ``<script type="application/json">`` with ``<``, ``>`` and ``&`` written as
``\\u003c`` ``\\u003e`` ``\\u0026``; the script only reorders existing rows and sets
``textContent``, never ``innerHTML``.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote

from ..errors import InputError
from .merge import FAILURES, RESULTS, read_jsonl
from .._atomic import atomic_write_text

__all__ = ["write_report", "render_report", "check_report_target", "is_mperturb_report", "collect_columns", "safe_json"]

REPORT = "report.html"
#: The mark of a page this module wrote (in its first lines): only such a file is replaced by
#: ``write_report(path=...)``.
GENERATOR = "<meta name=\"generator\" content=\"mperturb report\">"
_OLD_MARK = "<title>mperturb run report: "  # pages of versions before GENERATOR
_SNIFF_BYTES = 16384
#: Suffixes a report may have inside the run folder (the run writes no other ``.html``).
_HTML = (".html", ".htm")


def safe_json(data: Any) -> str:
    """JSON safe to place inside an HTML ``<script>`` element."""
    text = json.dumps(data, ensure_ascii=True, allow_nan=False, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)) and math.isfinite(float(v)):
        return float(v)
    if isinstance(v, list) and v and isinstance(v[0], (int, float)) and not isinstance(v[0], bool):
        return _num(v[0])
    return None


def _row_values(rec: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    scores = rec.get("scores") or {}
    sweep = "sufficient_area" in scores  # extremal-sweep: its readout, not the smallest rung's score
    for key in ("clean", "masked", "perturbed"):
        if key in scores and not (sweep and key == "masked"):
            out[key] = _num(scores[key])
    if sweep:
        out["sufficient_area"] = _num(scores["sufficient_area"])
        curve = [_num(v) for v in scores.get("masked") or []] if isinstance(scores.get("masked"), list) else []
        curve = [v for v in curve if v is not None]
        out["curve_mean"] = sum(curve) / len(curve) if curve else None
    for key, v in sorted((rec.get("metrics") or {}).items()):
        if key.endswith("_px"):
            continue
        out[key] = _num(v)
    out["seconds"] = _num(rec.get("seconds"))
    return out


def collect_columns(results: Iterable[dict[str, Any]]) -> dict[str, list[float | None]]:
    """Numeric column name → one value per result (``None`` where missing)."""
    rows = [_row_values(r) for r in results]
    names: list[str] = []
    for r in rows:
        for k in r:
            if k not in names:
                names.append(k)
    return {k: [r.get(k) for r in rows] for k in names}


_LABELS = {
    "clean": "p(target), clean image",
    "masked": "p(target), masked (learned mask)",
    "perturbed": "p(target), fully perturbed",
    "sufficient_area": "sufficient area (sweep: smallest area keeping keep_fraction of the clean score)",
    "curve_mean": "p(target), mean over the sweep's areas (area-score curve)",
    "pointing_hit": "pointing game hit",
    "energy_box": "energy in box",
    "energy_mask": "energy in mask",
    "seconds": "seconds per item (explain, batch share)",
}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .5em;text-align:left;vertical-align:middle}
th{background:#f3f3f3}
.flag{color:#a40000;font-size:90%}
#gallery th.sortable{cursor:pointer;user-select:none}
#gallery th.sortable:hover{background:#e4e4ff}
#gallery th.asc::after{content:" \\25B2"}#gallery th.desc::after{content:" \\25BC"}
#gallery img{width:120px;height:auto;max-height:160px;object-fit:contain;display:block}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.path{max-width:22em;overflow-wrap:anywhere}
.muted{color:#777}
.controls{margin:.6em 0}
"""

_JS = """
(function () {
  "use strict";
  var dataEl = document.getElementById("mp-data");
  var data = JSON.parse(dataEl.textContent);
  var table = document.getElementById("gallery");
  var tbody = table.tBodies[0];
  var rows = Array.prototype.slice.call(tbody.rows);
  var select = document.getElementById("sort-key");
  var orderBtn = document.getElementById("sort-order");
  var state = {key: "index", asc: true};
  function value(i, key) {
    var v = data.rows[i][key];
    return (v === null || v === undefined) ? null : v;
  }
  function compare(a, b) {
    var ia = Number(a.getAttribute("data-index")), ib = Number(b.getAttribute("data-index"));
    var va = value(ia, state.key), vb = value(ib, state.key);
    if (va === null && vb === null) { return ia - ib; }
    if (va === null) { return 1; }
    if (vb === null) { return -1; }
    var c = (typeof va === "number" && typeof vb === "number") ? va - vb : String(va).localeCompare(String(vb));
    if (c === 0) { c = ia - ib; }
    return state.asc ? c : -c;
  }
  function apply() {
    rows.sort(compare);
    rows.forEach(function (r) { tbody.appendChild(r); });
    var ths = table.querySelectorAll("th.sortable");
    Array.prototype.forEach.call(ths, function (th) {
      th.classList.remove("asc", "desc");
      if (th.getAttribute("data-key") === state.key) { th.classList.add(state.asc ? "asc" : "desc"); }
    });
    select.value = state.key;
    orderBtn.textContent = state.asc ? "ascending" : "descending";
  }
  Array.prototype.forEach.call(table.querySelectorAll("th.sortable"), function (th) {
    th.addEventListener("click", function () {
      var key = th.getAttribute("data-key");
      if (state.key === key) { state.asc = !state.asc; } else { state.key = key; state.asc = true; }
      apply();
    });
  });
  select.addEventListener("change", function () { state.key = select.value; apply(); });
  orderBtn.addEventListener("click", function () { state.asc = !state.asc; apply(); });
  // Initial order from the address: report.html#sort=clean (ascending) or #sort=-clean.
  var m = /^#sort=(-?)([A-Za-z0-9_]+)$/.exec(window.location.hash || "");
  var known = Array.prototype.map.call(select.options, function (o) { return o.value; });
  if (m && known.indexOf(m[2]) >= 0) { state.key = m[2]; state.asc = m[1] !== "-"; }
  document.getElementById("js-status").textContent = "sorting enabled (" + rows.length + " items)";
  apply();
})();
"""


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "–"
        return f"{v:.{digits}f}"
    return str(v)


def _src(out: Path, rel: str | None, embed: bool, base: str = "") -> str | None:
    if not rel or os.path.isabs(rel) or ".." in Path(rel).parts:
        return None
    p = out / rel
    if not p.is_file():
        return None
    if embed:
        return "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii")
    return quote(f"{base}{rel}", safe="/")


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def render_report(out: str | os.PathLike[str], *, embed: bool = False, n_boot: int = 1000, base: str = "") -> str:
    """The HTML text of the report of run folder ``out`` (links prefixed with ``base``)."""
    from ..metrics import bootstrap_ci

    out = Path(out)
    results = read_jsonl(out / RESULTS)
    failures = read_jsonl(out / FAILURES)
    try:
        settings = json.loads((out / "settings.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        settings = {}
    # A tampered settings.json: any part that is not an object reads as missing.
    compared = _mapping(_mapping(settings).get("compared"))
    s = _mapping(compared.get("settings"))
    columns = collect_columns(results)

    parts: list[str] = []
    add = parts.append
    add("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">")
    add(GENERATOR)
    add("<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">")
    add("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src 'self' data: file:; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">")
    add(f"<title>mperturb run report: {_e(out.name)}</title><style>{_CSS}</style></head><body>")
    add(f"<h1>mperturb run report: <span class=\"path\">{_e(out.name)}</span></h1>")
    add("<p>")
    add(f"method <b>{_e(s.get('method'))}</b>, model <b>{_e(s.get('model'))}</b>, "
        f"steps {_e(_mapping(compared.get('config')).get('steps', '–'))}, seed {_e(s.get('seed'))}, "
        f"target {_e(s.get('target') if s.get('target') is not None else 'source label / method default')}; "
        f"source <span class=\"path\">{_e(compared.get('source'))}</span> ({_e(compared.get('source_type'))}).")
    add("</p>")

    # Summary.
    add("<h2>Summary</h2><table id=\"summary\"><thead><tr><th>quantity</th><th>n</th><th>mean</th>"
        "<th>95% bootstrap CI</th></tr></thead><tbody>")
    add(f"<tr><td>items done</td><td class=\"num\">{len(results)}</td><td></td><td></td></tr>")
    add(f"<tr><td>failures</td><td class=\"num\">{len(failures)}</td><td></td><td></td></tr>")
    for key, what in (("low_confidence", "low-confidence predictions (p clean < 0.5)"),
                      ("degenerate", "degenerate explanations (no region found that changes the score)")):
        k = sum(1 for r in results if r.get(key))
        if k:
            add(f"<tr><td>{_e(what)}</td><td class=\"num\">{k}</td><td></td><td></td></tr>")
    for name, values in columns.items():
        vals = [v for v in values if v is not None]
        if vals:
            mean, lo, hi = bootstrap_ci(vals, n_boot=n_boot)
            ci = f"[{_fmt(lo)}, {_fmt(hi)}]"
        else:
            mean, ci = None, "–"
        digits = 4 if name == "seconds" else 3
        add(f"<tr><td>{_e(_LABELS.get(name, name))}</td><td class=\"num\">{len(vals)}</td>"
            f"<td class=\"num\">{_e(_fmt(mean, digits))}</td><td class=\"num\">{_e(ci)}</td></tr>")
    add("</tbody></table>")

    if failures:
        add("<h2>Failures</h2><table id=\"failures\"><thead><tr><th>path</th><th>stage</th><th>error</th>"
            "</tr></thead><tbody>")
        for f in failures:
            add(f"<tr><td class=\"path\">{_e(f.get('path'))}</td><td>{_e(f.get('stage'))}</td>"
                f"<td>{_e(f.get('error'))}</td></tr>")
        add("</tbody></table>")

    # Gallery.
    num_keys = list(columns)
    sort_keys = ["index", "id", "path", "class_name"] + num_keys
    add("<h2>Gallery</h2><div class=\"controls\"><label>sort by <select id=\"sort-key\">")
    for k in sort_keys:
        add(f"<option value=\"{_e(k)}\">{_e(_LABELS.get(k, k))}</option>")
    add("</select></label> <button type=\"button\" id=\"sort-order\">ascending</button> "
        "<span id=\"js-status\" class=\"muted\">(sorting needs JavaScript)</span></div>")
    add("<table id=\"gallery\"><thead><tr><th class=\"sortable\" data-key=\"index\">#</th>"
        "<th>original</th><th>overlay</th>"
        "<th class=\"sortable\" data-key=\"id\">id</th><th class=\"sortable\" data-key=\"path\">path</th>"
        "<th class=\"sortable\" data-key=\"class_name\">target</th>")
    for k in num_keys:
        add(f"<th class=\"sortable\" data-key=\"{_e(k)}\">{_e(k)}</th>")
    add("<th>files</th></tr></thead><tbody>")
    js_rows = []
    for i, rec in enumerate(results):
        vals = _row_values(rec)
        files = rec.get("files") or {}
        js_rows.append({"index": i, "id": rec.get("id"), "path": rec.get("path"),
                        "class_name": rec.get("class_name"), **vals})
        thumb = _src(out, files.get("thumb"), embed, base)
        overlay = _src(out, files.get("overlay"), embed, base)
        overlay_link = _src(out, files.get("overlay"), False, base)
        npz_link = _src(out, files.get("npz"), False, base)
        label = rec.get("label_name")
        add(f"<tr class=\"item\" data-index=\"{i}\" data-id=\"{_e(rec.get('id'))}\"><td class=\"num\">{i + 1}</td>")
        add("<td>" + (f"<img src=\"{_e(thumb)}\" alt=\"original {_e(rec.get('path'))}\" loading=\"lazy\">"
                      if thumb else "<span class=\"muted\">–</span>") + "</td>")
        if overlay:
            add(f"<td><a href=\"{_e(overlay_link or overlay)}\"><img src=\"{_e(overlay)}\" "
                f"alt=\"overlay {_e(rec.get('path'))}\" loading=\"lazy\"></a></td>")
        else:
            add("<td><span class=\"muted\">–</span></td>")
        add(f"<td class=\"path\">{_e(rec.get('id'))}</td><td class=\"path\">{_e(rec.get('path'))}</td>")
        flags = ""
        if rec.get("low_confidence"):
            flags += "<br><span class=\"flag\">low confidence (p clean &lt; 0.5)</span>"
        if rec.get("degenerate"):
            flags += f"<br><span class=\"flag\">{_e(rec.get('degenerate_reason') or 'degenerate explanation')}</span>"
        add(f"<td>{_e(rec.get('class_name'))}" + (f"<br><span class=\"muted\">label {_e(label)}</span>"
                                                   if label is not None else "") + flags + "</td>")
        for k in num_keys:
            add(f"<td class=\"num\">{_e(_fmt(vals.get(k), 4 if k == 'seconds' else 3))}</td>")
        links = []
        if overlay_link:
            links.append(f"<a href=\"{_e(overlay_link)}\">overlay</a>")
        if npz_link:
            links.append(f"<a href=\"{_e(npz_link)}\">npz</a>")
        add(f"<td>{' '.join(links)}</td></tr>")
    add("</tbody></table>")
    add(f"<script type=\"application/json\" id=\"mp-data\">{safe_json({'rows': js_rows})}</script>")
    add(f"<script>{_JS}</script>")
    add("</body></html>\n")
    return "".join(parts)


def is_mperturb_report(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a regular file (not a link) whose first 16 KB are a page written by
    :func:`write_report` (``<!DOCTYPE html>`` and the ``mperturb report`` generator mark).
    Never blocks on pipes or devices and never raises."""
    import stat

    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            return False
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return False
    return head.startswith("<!DOCTYPE html>") and (GENERATOR in head or _OLD_MARK in head)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def check_report_target(out: str | os.PathLike[str], path: str | os.PathLike[str] | None = None) -> Path:
    """Where the report of run folder ``out`` may be written: ``path``, or ``out/report.html``
    when ``path`` is ``None``. Writes nothing.

    The rule: a report never replaces a file mperturb did not write. An existing ``path`` must
    be a report written by :func:`write_report` (a regular file, not a link); inside the run
    folder it must also end in ``.html``/``.htm``, lie directly in ``out`` (``items/`` and
    ``.mperturb/`` hold the run's own files) and, if it exists, be recorded as the run's
    (``report.html`` written by ``mperturb run --report`` or ``mperturb report``).

    Returns:
        The target path (as given, not resolved).

    Raises:
        InputError: naming ``--output`` (or ``DIR`` for the default), the file and the reason:
            a folder, a symbolic link, a pipe or device, an existing file that is not an
            mperturb report, a file of the run (``settings.json``, ``results.jsonl``,
            ``items/...``), or a path inside the run folder's sub-folders.
    """
    from .owner import CONTROL

    out = Path(out)
    target = Path(path) if path is not None else out / REPORT
    name = "--output" if path is not None else "DIR"
    shown = repr(str(target))
    if target.is_symlink():
        raise InputError(f"{name}: {shown} is a symbolic link; a report is never written through a link "
                         "(it could replace the file it points to): give another --output FILE")
    if target.is_dir():
        raise InputError(f"{name}: {shown} is a folder; give the report's file name, "
                         f"e.g. {str(target / REPORT)!r}")
    if target.exists() and not target.is_file():
        raise InputError(f"{name}: {shown} is not a regular file (a pipe, socket or device); "
                         "give a new file name ending in .html")
    real_out = out.resolve()
    real = target.resolve()
    if _inside(real, real_out):
        rel = real.relative_to(real_out)
        if len(rel.parts) != 1:
            where = ("the run's control folder" if rel.parts[0] == CONTROL else
                     "the run's items/ folder" if rel.parts[0] == "items" else "a sub-folder of the run folder")
            raise InputError(f"{name}: {shown} is inside {where}, which holds the run's own files; write the "
                             f"report directly in DIR (default {str(out / REPORT)!r}) or outside it")
        if rel.suffix.lower() not in _HTML:
            raise InputError(f"{name}: {shown} is inside the run folder and does not end in .html; the run's own "
                             f"files ({RESULTS}, settings.json, ...) are never replaced by a report: give a name "
                             "ending in .html")
        if target.exists():
            from .owner import inspect_out

            try:
                own = inspect_out(out)
            except InputError:
                own = None
            recorded = own is not None and (own.kind == "legacy-run" or rel.name in own.files)
            if not (recorded and is_mperturb_report(target)):
                raise InputError(f"{name}: {shown} exists and was not written by mperturb; "
                                 "move it away or pass --output FILE")
    elif target.exists() and not is_mperturb_report(target):
        raise InputError(f"{name}: {shown} exists and is not a report written by mperturb (it would be "
                         "replaced and lost); move it away or give a new --output FILE")
    return target


def write_report(out: str | os.PathLike[str], *, path: str | os.PathLike[str] | None = None,
                 embed: bool = False) -> Path:
    """Write ``report.html`` (or ``path``) for run folder ``out`` atomically; returns its path.

    Only a new file or a report mperturb wrote is replaced (:func:`check_report_target`); a
    report written inside the run folder is recorded as the run's own
    (``.mperturb/run.json``).

    Raises:
        InputError: ``out`` is not a run folder, or ``path`` is refused by
            :func:`check_report_target`.
        OSError: the write failed (nothing partial is left).
    """
    out = Path(out)
    if not out.is_dir():
        raise InputError(f"DIR: {str(out)!r} is not a folder")
    if not (out / RESULTS).exists() and not (out / "settings.json").exists():
        raise InputError(f"DIR: {str(out)!r} is not a `mperturb run` output folder (no {RESULTS} or settings.json)")
    target = check_report_target(out, path)
    rel = os.path.relpath(out.resolve(), target.resolve().parent).replace(os.sep, "/")
    text = render_report(out, embed=embed, base="" if rel == "." else rel + "/")
    from .owner import inspect_out

    try:
        own = inspect_out(out)
    except InputError:
        own = None
    if own is not None and own.kind == "run" and target.resolve().parent == out.resolve():
        own.add_files([target.name])  # recorded as the run's own before it is written
        from .owner import write_owned_text

        write_owned_text(target, text, own.tag)
        return target
    atomic_write_text(target, text)
    return target
