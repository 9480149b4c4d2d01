"""Server-rendered SVG charts: no chart library to ship, nothing executed in the browser.

Colours come from the stylesheet through classes (``s-FAILED``...), never from inline styles
(the Content-Security-Policy forbids them); every text is escaped; each shape has a ``<title>``
(the browser's own tooltip) saying what it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from markupsafe import Markup, escape

from orchd.durations import format_duration
from orchd.models import Strip, TimelineBar

#: Outcomes stacked bottom-up in this order (the good news at the bottom).
OUTCOMES = ("COMPLETED", "FAILED", "TIMED_OUT", "CRASHED", "CANCELLED", "MISSED")


def _svg(width: int, height: int, body: list[str], label: str) -> Markup:
    return Markup(
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" role="img" '
        f'preserveAspectRatio="xMinYMin meet" aria-label="{escape(label)}">' + "".join(body) + "</svg>"
    )


def _hour(start: datetime) -> str:
    """An hour (counted in UTC) on this host's clock: '14', or '05:30' in a zone off by half an hour."""
    here = start.astimezone()
    return f"{here:%H}" if here.minute == 0 else f"{here:%H:%M}"


def hourly(
    hours: Sequence[datetime], outcomes: Mapping[datetime, Mapping[str, int]], zone_label: str
) -> Markup:
    """Stacked bars: runs finished per hour, by final state."""
    width, height, left, bottom, top = 640, 170, 34, 22, 8
    peak = max([sum(outcomes.get(h, {}).values()) for h in hours] + [1])
    slot = (width - left) / max(len(hours), 1)
    plot = height - bottom - top
    body = [
        f'<line class="axis" x1="{left}" y1="{height - bottom}" x2="{width}" y2="{height - bottom}"/>',
        f'<text class="tick" x="{left - 4}" y="{top + 8}" text-anchor="end">{peak}</text>',
        f'<text class="tick" x="{left - 4}" y="{height - bottom}" text-anchor="end">0</text>',
    ]
    for i, hour in enumerate(hours):
        x = left + i * slot + 1
        y = float(height - bottom)
        counts = outcomes.get(hour, {})
        for state in OUTCOMES:
            n = counts.get(state, 0)
            if not n:
                continue
            h = plot * n / peak
            y -= h
            title = f"{_hour(hour)} {zone_label}: {n} {state}"
            body.append(
                f'<rect class="s-{state}" x="{x:.1f}" y="{y:.1f}" width="{slot - 2:.1f}" height="{h:.1f}">'
                f"<title>{escape(title)}</title></rect>"
            )
        if i % 3 == 0:
            body.append(
                f'<text class="tick" x="{x + (slot - 2) / 2:.1f}" y="{height - 6}" '
                f'text-anchor="middle">{_hour(hour)}</text>'
            )
    return _svg(width, height, body, "runs finished per hour by final state")


WINDOWS = (timedelta(minutes=15), timedelta(hours=1), timedelta(hours=3), timedelta(hours=6))


def window_for(bars: Sequence[TimelineBar], now: datetime) -> timedelta:
    """The shortest of WINDOWS that shows every bar: a quiet system's runs are not slivers."""
    earliest = min((b.start for b in bars), default=now)
    return next((w for w in WINDOWS if now - w <= earliest), WINDOWS[-1])


def timeline(bars: Sequence[TimelineBar], now: datetime, window: timedelta, ids: Mapping[int, str]) -> Markup:
    """Gantt-style: a row per deployment, a bar per run from start to end (now while active);
    ``ids`` gives each run's link."""
    names = sorted({b.deployment for b in bars})
    row, left, width, axis = 20, 170, 1300, 20
    height = axis + row * max(len(names), 1) + 4
    start = now - window
    scale = (width - left) / window.total_seconds()
    body = []
    for i in range(5):
        at = start + window * i / 4
        x = left + (at - start).total_seconds() * scale
        body.append(f'<line class="grid" x1="{x:.1f}" y1="{axis - 4}" x2="{x:.1f}" y2="{height}"/>')
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        label = f"{at.astimezone():%H:%M}"
        body.append(f'<text class="tick" x="{x:.1f}" y="{axis - 8}" text-anchor="{anchor}">{label}</text>')
    position = {name: axis + i * row for i, name in enumerate(names)}
    for name, y in position.items():
        label = name if len(name) <= 22 else name[:21] + "…"
        body.append(
            f'<text class="label" x="{left - 6}" y="{y + 14}" text-anchor="end">{escape(label)}</text>'
        )
    for bar in bars:
        begin = max(bar.start, start)
        end = bar.end or now
        if end < start:
            continue
        x = left + (begin - start).total_seconds() * scale
        w = max(2.0, (end - begin).total_seconds() * scale)
        took = format_duration((end - bar.start).total_seconds())
        began = f"{bar.start.astimezone():%H:%M:%S}"
        title = f"run {bar.id} · {bar.deployment} · {bar.state} · from {began} · {took}"
        body.append(
            f'<a href="{escape(ids[bar.id])}"><rect class="s-{escape(bar.state)}" x="{x:.1f}" '
            f'y="{position[bar.deployment] + 3}" width="{w:.1f}" height="{row - 6}" rx="2">'
            f"<title>{escape(title)}</title></rect></a>"
        )
    if not bars:
        body.append(f'<text class="empty" x="{left}" y="{axis + 14}">no runs in this window</text>')
    return _svg(width, height, body, "timeline of runs per deployment")


def sparkline(durations: Sequence[float]) -> Markup:
    """Durations of the last runs, oldest left; empty when there are fewer than two."""
    if len(durations) < 2:
        return Markup("")
    width, height = 120, 24
    peak = max(durations) or 1.0
    step = width / (len(durations) - 1)
    points = " ".join(
        f"{i * step:.1f},{height - 2 - (height - 4) * d / peak:.1f}" for i, d in enumerate(durations)
    )
    title = f"durations of the last {len(durations)} runs, longest {format_duration(peak)}"
    return Markup(
        f'<svg class="spark" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>'
        f'<polyline points="{points}"/></svg>'
    )


def squares(strip: Strip, base: str) -> Markup:
    """A deployment's last runs as coloured squares, oldest first, each a link to its run (built
    here, not in a template: the deployments page shows hundreds)."""
    runs = escape(base) + "runs/"
    links = "".join(
        f'<a class="sq s-{r.state.value}" href="{runs}{r.id}" title="run {r.id}: {r.state.value}"></a>'
        for r in reversed(strip.runs)
    )
    return Markup(f'<span class="strip" aria-label="last runs, oldest first">{links}</span>')
