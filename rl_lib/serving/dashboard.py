"""The monitoring page of the dispatch service (``GET /dashboard``): one self-contained HTML page.

It shows the figures of ``GET /v1/stats`` (:meth:`DispatchService.stats`): the live model (version,
registry version, backend, whether it decides, swaps and failed updates) and the experiment;
decisions in the last minute by arm and by deciding policy; decision latency p50 / p95 / p99; per
arm the completion rate, on-time rate and deadhead km of the outcomes reported, each with its 95 %
bootstrap interval; the decision and outcome stream lengths, the spool backlog and the log counters;
and, when the service is given the feedback loop's settings, the loop (:func:`_loop_section`).
Each section draws its figures as inline SVG, rendered here on the server, next to a table of the
same numbers.

Nothing is loaded from elsewhere (no CDN, no font, no image): the service runs on machines without
internet. A small inline script fetches ``/dashboard`` every 2 s and swaps the ``#content`` element
for the fresh one, so the page updates without a reload or a flash; ``body[data-refreshes]`` counts
the swaps.

Every figure shown carries ``data-stat`` (its key path in the stats, joined with dots, e.g.
``arms.agent.completion_rate.mean``) and ``data-value`` (its exact value as JSON, ``null`` when
there is no data yet), so a test or a scraper reads the numbers exactly; the visible text is rounded
and shows "–" for no data. Everything that comes from the data (arm, policy and model names) is
HTML-escaped.

A section is a function ``stats -> HTML`` in :data:`SECTIONS`; a new one is one more function.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable

REFRESH_MS = 2000
NO_DATA = "–"

KPIS = (  # key in the stats, name shown, format
    ("assignment_rate", "assignment rate", "rate"),
    ("completion_rate", "completion rate", "rate"),
    ("on_time_rate", "on-time rate", "rate"),
    ("deadhead_km", "deadhead km", "km"),
)

# SVG geometry (user units; the charts scale to their container).
CHART_W, LABEL_W, VALUE_W, ROW_H = 430, 130, 70, 24
PLOT_W = CHART_W - LABEL_W - VALUE_W
LABEL_CHARS = 18  # longer names are cut in the charts


def render_dashboard(stats: dict) -> str:
    """The full HTML page for ``stats`` (the dict of :meth:`DispatchService.stats`)."""
    content = "\n".join(section(stats) for section in SECTIONS)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>rl_lib dispatch service</title>\n<style>{STYLE}</style>\n</head>\n"
        '<body data-refreshes="0">\n<header><h1>rl_lib dispatch service</h1>'
        f'<span id="refresh-status">live: refreshes every {REFRESH_MS / 1000:g} s</span></header>\n'
        f'<main id="content">\n{content}\n</main>\n<script>{SCRIPT}</script>\n</body>\n</html>\n'
    )


# ------------------------------------------------------------------ figures
def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _text(value: object, kind: str) -> str:
    """The visible, rounded text of a figure."""
    if value is None:
        return NO_DATA
    if kind == "flag":
        return "yes" if value else "no"
    if kind == "count":
        return f"{value:,}"
    if kind == "rate":
        return f"{value:.1%}"
    if kind in ("km", "ms"):
        return f"{value:.2f}"
    if kind == "signed":
        return f"{value:+.2f}"
    if kind == "seconds":
        return f"{value:.1f} s"
    return _esc(value)


def _stat_attrs(path: str, value: object) -> str:
    return f'data-stat="{_esc(path)}" data-value="{_esc(json.dumps(value))}"'


def _stat(path: str, value: object, kind: str) -> str:
    """A figure in HTML: ``<span data-stat data-value>`` with its rounded text."""
    return f'<span class="stat" {_stat_attrs(path, value)}>{_text(value, kind)}</span>'


def _section(title: str, *parts: str) -> str:
    return f'<section><h2>{_esc(title)}</h2><div class="row">{"".join(parts)}</div></section>'


def _table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A table: ``head`` is plain text, ``rows`` hold ready HTML cells."""
    th = "".join(f"<th>{_esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if not rows:
        body = f'<tr><td colspan="{len(head)}" class="empty">no data yet</td></tr>'
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


# ------------------------------------------------------------------- charts
def _svg(title: str, n_rows: int, body: str) -> str:
    height = ROW_H * max(n_rows, 1) + 8
    svg = f'<svg viewBox="0 0 {CHART_W} {height}" width="{CHART_W}" role="img" aria-label="{_esc(title)}">'
    return f"<figure><figcaption>{_esc(title)}</figcaption>{svg}{body}</svg></figure>"


def _svg_text(i: int, x: float, css: str, content: str, attrs: str = "") -> str:
    """A text in row ``i`` (labels end at ``x``; values start there)."""
    anchor = "end" if css == "label" else "start"
    return f'<text class="{css}" x="{x}" y="{ROW_H * i + 16}" text-anchor="{anchor}" {attrs}>{content}</text>'


def _svg_row(i: int, label: str, path: str, value: object, kind: str) -> str:
    """A row's label on the left and its figure on the right."""
    short = label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "…"  # the table has it whole
    label_text = _svg_text(i, LABEL_W - 6, "label", _esc(short))
    value_text = _svg_text(i, CHART_W - VALUE_W + 12, "value", _text(value, kind), _stat_attrs(path, value))
    return label_text + value_text


def _scale(value: float | None, upper: float) -> float:
    """x of ``value`` on a [0, upper] axis (clipped to the plot)."""
    return LABEL_W + PLOT_W * min(max((value or 0.0) / upper, 0.0), 1.0)


def _bar_chart(title: str, rows: list[tuple[str, str, float | None]], kind: str) -> str:
    """Horizontal bars, one per ``(label, stat path, value)``, on a shared scale from 0."""
    if not rows:
        return _svg(title, 1, _svg_text(0, LABEL_W, "empty", "no data yet"))
    upper = max((v for _, _, v in rows if v is not None), default=0.0) or 1.0
    parts = []
    for i, (label, path, value) in enumerate(rows):
        width, y = _scale(value, upper) - LABEL_W, ROW_H * i + 4
        bar = f'<rect class="bar" x="{LABEL_W}" y="{y}" width="{width:.1f}" height="{ROW_H - 8}"/>'
        parts.append(bar + _svg_row(i, label, path, value, kind))
    return _svg(title, len(rows), "".join(parts))


def _interval_chart(title: str, rows: list[tuple[str, str, dict]], kind: str, upper: float) -> str:
    """Per ``(label, stat path, {mean, ci_low, ci_high})``: a dot at the mean, whiskers to the interval."""
    y_axis = ROW_H * len(rows) + 4
    parts = [f'<line class="axis" x1="{LABEL_W}" x2="{LABEL_W + PLOT_W}" y1="{y_axis}" y2="{y_axis}"/>']
    for i, (label, path, kpi) in enumerate(rows):
        parts.append(_svg_row(i, label, f"{path}.mean", kpi["mean"], kind))
        if kpi["mean"] is not None:
            y = ROW_H * i + 12
            low, mean, high = (_scale(kpi[k], upper) for k in ("ci_low", "mean", "ci_high"))
            parts.append(f'<line class="whisker" x1="{low:.1f}" x2="{high:.1f}" y1="{y}" y2="{y}"/>')
            parts.append(f'<circle class="dot" cx="{mean:.1f}" cy="{y}" r="4"/>')
    return _svg(title, len(rows), "".join(parts))


# ----------------------------------------------------------------- sections
MODEL_FIGURES = (  # name shown, key in the stats, format
    ("model version", "model_version", "text"),
    ("registry version", "model_registry_version", "text"),
    ("model decides", "model_ready", "flag"),
    ("backend", "model_backend", "text"),
    ("model swaps", "model_swaps", "count"),
    ("failed model updates", "model_load_failures", "count"),
    ("last update error", "model_update_error", "text"),
    ("experiment", "experiment", "text"),
)


def _model_section(stats: dict) -> str:
    cards = [
        f'<div class="card"><div class="name">{name}</div>{_stat(key, stats[key], kind)}</div>'
        for name, key, kind in MODEL_FIGURES
    ]
    return _section("Model and experiment", *cards)


def _traffic_section(stats: dict) -> str:
    per_minute = stats["decisions_last_minute"]
    charts, rows = [], []
    for group in ("by_arm", "by_policy"):
        by, prefix = group.removeprefix("by_"), f"decisions_last_minute.{group}"
        counts = [(name, f"{prefix}.{name}", n) for name, n in sorted(per_minute[group].items())]
        charts.append(_bar_chart(f"decisions in the last minute, by {by}", counts, "count"))
        rows += [(by, _esc(name), _stat(path, n, "count")) for name, path, n in counts]
    window = _stat("decisions_in_window", stats["decisions_in_window"], "count")
    table = _table(("by", "name", "decisions / min"), rows)
    return _section("Decisions", *charts, f'{table}<p class="note">in the monitor\'s window: {window}</p>')


def _latency_section(stats: dict) -> str:
    rows = [(q, f"latency_ms.{q}", stats["latency_ms"][q]) for q in ("p50", "p95", "p99")]
    chart = _bar_chart("decision latency in the service (ms)", rows, "ms")
    table = _table(("percentile", "ms"), [(q, _stat(path, v, "ms")) for q, path, v in rows])
    return _section("Latency", chart, table)


def _kpi_row(arm: str, name: str, path: str, kpi: dict, kind: str) -> tuple[str, ...]:
    figures = (_stat(f"{path}.{f}", kpi[f], kind) for f in ("mean", "ci_low", "ci_high"))
    return (_esc(arm), name, *figures, _stat(f"{path}.n", kpi["n"], "count"))


def _outcomes_section(stats: dict) -> str:
    arms = stats["arms"]
    if not arms:
        return _section("Outcomes per arm", '<p class="empty">no outcomes reported yet</p>')
    charts, rows = [], []
    for key, name, kind in KPIS:
        kpis = [(arm, f"arms.{arm}.{key}", figures[key]) for arm, figures in arms.items()]
        highs = [k["ci_high"] for _, _, k in kpis if k["ci_high"] is not None]
        upper = 1.0 if kind == "rate" else max(highs, default=0.0) or 1.0
        charts.append(_interval_chart(f"{name}: mean and 95 % interval", kpis, kind, upper))
        rows += [_kpi_row(arm, name, path, kpi, kind) for arm, path, kpi in kpis]
    table = _table(("arm", "KPI", "mean", "95 % low", "95 % high", "n"), rows)
    return _section("Outcomes per arm", *charts, table)


def _log_section(stats: dict) -> str:
    lengths = stats["stream_length"]
    rows = [(f"{name} stream", _stat(f"stream_length.{name}", n, "count")) for name, n in lengths.items()]
    rows.append(("spool backlog", _stat("spool_backlog", stats["spool_backlog"], "count")))
    rows += [(_esc(name), _stat(f"log.{name}", n, "count")) for name, n in stats["log"].items()]
    return _section("Decision log", _table(("what", "records"), rows))


LOOP_FIGURES = (  # name shown, key in stats["feedback"], format
    ("production", "production", "text"),
    ("consumer group", "group", "text"),
    ("lag: decisions", "lag.decisions", "count"),
    ("lag: outcomes", "lag.outcomes", "count"),
    ("pending: decisions", "pending.decisions", "count"),
    ("pending: outcomes", "pending.outcomes", "count"),
    ("dead letters", "dead_letters", "count"),
    ("collect runs", "collect_runs", "count"),
    ("retrain runs", "retrain_runs", "count"),
    ("gate decisions", "gates", "count"),
    ("promotions", "promotions", "count"),
    ("Redis error", "redis_error", "text"),
)
LAST_RUN_FIELDS = {  # field of the last collect / retrain -> (name shown, format); others: counts
    "time": ("ended", "text"), "status": ("status", "text"), "version": ("version", "text"),
    "wall_s": ("wall time", "seconds"), "retrain_wall_s": ("training time", "seconds"),
}  # fmt: skip
GATE_COLUMNS = (  # head, field, format
    ("time", "time", "text"), ("version", "version", "text"), ("parent", "parent", "text"),
    ("verdict", "verdict", "text"), ("days", "n_days", "count"), ("reward diff", "reward_diff", "signed"),
    ("95 % low", "reward_ci_low", "signed"), ("95 % high", "reward_ci_high", "signed"),
)  # fmt: skip
LINEAGE_COLUMNS = (("created", "created"), ("parent", "parent"), ("first day", "first_day"),
                   ("last day", "last_day"))  # fmt: skip


def _loop_section(stats: dict) -> str:
    """The feedback loop (when the service is given its settings: ``stats["feedback"]``, from
    :class:`rl_lib.feedback.status.LoopFigures`): stream lag and pending entries of the collector's
    group, dead letters, transitions collected per hour, the last collect and retrain runs, the gate
    decisions and the production model's lineage."""
    loop = stats.get("feedback")
    if loop is None:
        return ""

    def stat(path: str, kind: str) -> str:
        value = loop
        for part in path.split("."):
            value = value[part]
        return _stat(f"feedback.{path}", value, kind)

    cards = [f'<div class="card"><div class="name">{name}</div>{stat(key, kind)}</div>'
             for name, key, kind in LOOP_FIGURES]  # fmt: skip
    hourly = [(f"{hour[-2:]}:00", f"feedback.collected_per_hour.{hour}", n)
              for hour, n in loop["collected_per_hour"].items()]  # fmt: skip
    chart = _bar_chart("transitions collected per hour (UTC)", hourly, "count")
    hours = _table(("hour (UTC)", "transitions"), [(_esc(h), _stat(p, n, "count")) for h, p, n in hourly])
    runs = []
    for kind in ("collect", "retrain"):
        shown = [(f, *LAST_RUN_FIELDS.get(f, (f, "count"))) for f in loop[f"last_{kind}"]]
        rows = [(_esc(name), stat(f"last_{kind}.{f}", fmt)) for f, name, fmt in shown]
        runs.append(_table((f"last {kind}", ""), rows))
    gates = [(_esc(seq), *(stat(f"gate_decisions.{seq}.{f}", kind) for _, f, kind in GATE_COLUMNS))
             for seq in loop["gate_decisions"]]  # fmt: skip
    gate_table = _table(("decision", *(head for head, _, _ in GATE_COLUMNS)), gates)
    lineage = [(_esc(v), *(stat(f"lineage.{v}.{f}", "text") for _, f in LINEAGE_COLUMNS))
               for v in loop["lineage"]]  # fmt: skip
    lineage_table = _table(("version", *(head for head, _ in LINEAGE_COLUMNS)), lineage)
    return _section("Feedback loop", *cards, chart, hours, *runs,
                    f'<div><h3>gate decisions (newest first)</h3>{gate_table}</div>',
                    f'<div><h3>lineage of the production model</h3>{lineage_table}</div>')  # fmt: skip


SECTIONS: tuple[Callable[[dict], str], ...] = (
    _model_section,
    _traffic_section,
    _latency_section,
    _outcomes_section,
    _log_section,
    _loop_section,
)

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1d2330; background: #f4f5f7; }
header { display: flex; align-items: baseline; gap: 1em; padding: 0.6em 1.2em; }
header { background: #1d2330; color: #fff; }
header h1 { font-size: 1.2em; margin: 0; }
#refresh-status { font-size: 0.85em; opacity: 0.8; }
#refresh-status.stale { color: #ffb4a8; opacity: 1; }
main { padding: 0.5em 1.2em; }
section { background: #fff; border-radius: 6px; margin: 0.8em 0; padding: 0.6em 1em; }
h2 { font-size: 1em; margin: 0.2em 0 0.6em; } h3 { font-size: 0.9em; margin: 0 0 0.3em; }
.row { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
.card { min-width: 10em; } .card .name { font-size: 0.8em; color: #667; } .card .stat { font-size: 1.2em; }
figure { margin: 0; } figcaption { font-size: 0.85em; color: #445; }
svg { max-width: 100%; height: auto; font-size: 12px; }
svg .bar { fill: #4a78c2; } svg .dot { fill: #c2554a; } svg .whisker { stroke: #c2554a; stroke-width: 2; }
svg .axis { stroke: #bbb; } svg .empty, .empty { fill: #889; color: #889; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { padding: 0.15em 0.7em; border-bottom: 1px solid #e4e6ea; text-align: left; }
td .stat { font-variant-numeric: tabular-nums; }
.note { font-size: 0.85em; color: #445; }
"""

SCRIPT = f"""
(() => {{
  const status = document.getElementById("refresh-status");
  let refreshes = 0;
  async function refresh() {{
    try {{
      const response = await fetch(location.pathname, {{cache: "no-store"}});
      if (!response.ok) throw new Error("HTTP " + response.status);
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.getElementById("content");
      if (!fresh) throw new Error("the answer has no #content");
      document.getElementById("content").replaceWith(document.adoptNode(fresh));
      document.body.dataset.refreshes = String(++refreshes);
      status.textContent = "live: updated " + new Date().toLocaleTimeString();
      status.className = "";
    }} catch (error) {{
      status.textContent = "stale: " + error.message;
      status.className = "stale";
    }} finally {{
      setTimeout(refresh, {REFRESH_MS});
    }}
  }}
  setTimeout(refresh, {REFRESH_MS});
}})();
"""
