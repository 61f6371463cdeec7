"""Terminal output: the run's progress bar and the frontier table (rich)."""

from __future__ import annotations

import io
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from lepton_search.search._frontier import shown_speedup
from lepton_search.search._ties import grouped_entries
from lepton_search.spaces import CompressionConfig


class ProgressReporter:
    """Receives the driver's events and shows them as a progress bar (or plain lines)."""

    def __init__(self, console: Console, *, total: int | None, plain: bool = False) -> None:
        self.console = console
        self.plain = plain or not console.is_terminal
        self.total = total
        self.completed = 0
        self.failed = 0
        self.best_ratio: float | None = None
        self.hypervolume = 0.0
        self.cached = 0
        self._progress: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> ProgressReporter:
        if not self.plain:
            self._progress = Progress(
                TextColumn("[bold]trials"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def _status(self) -> str:
        best = f" · fastest {self.best_ratio:.2f}x of baseline" if self.best_ratio else ""
        cached = f" · cached {self.cached}" if self.cached else ""
        return f"done {self.completed} · failed {self.failed}{cached} · hypervolume {self.hypervolume:.4g}{best}"

    def __call__(self, kind: str, info: dict[str, Any]) -> None:
        if kind == "start":
            self.total = info["total"]
            done = info["done_before"]
            base = info["baseline"]
            self.console.print(
                f"Study [bold]{info['study']}[/]: {done} trials already done, "
                f"{info['remaining'] if info['remaining'] is not None else 'until timeout'} to run; "
                f"baseline accuracy {base['accuracy']:.4f}"
                + (f"; re-queued {info['orphans']} orphaned trials" if info["orphans"] else "")
            )
            if self._progress is not None:
                self._task = self._progress.add_task(self._status(), total=info["total"], completed=done)
            return
        if kind == "remeasure-start":
            self.console.print(f"Re-measuring the frontier in fresh processes ({info['sessions']} sessions each)")
            return
        if kind == "tie-cores":
            self.console.print(
                f"Evaluating {info['queued']} simpler configuration(s) that tied frontier points share", markup=False
            )
            return
        if kind == "promote":
            self.console.print(
                f"Screening round: {info['screened']} screened, {info['promoted']} promoted to full fidelity",
                markup=False,
            )
            return
        if kind == "remeasure":
            if "error" in info:
                self.console.print(f"  trial {info['number']}: re-measurement failed: {info['error']}", markup=False)
            else:
                self.console.print(
                    f"  trial {info['number']}: {info['ratio']:.3f}x baseline ({info['verdict']})", markup=False
                )
            return
        if kind == "factors":
            if "error" in info:
                self.console.print(f"  trial {info['number']}: factor breakdown failed: {info['error']}", markup=False)
            else:
                parts = ", ".join(f"{name} {speedup:.2f}x" for name, speedup in info["factors"].items())
                self.console.print(f"  trial {info['number']}: each factor alone: {parts}", markup=False)
            return
        if kind != "trial":
            return
        if info.get("fidelity") == "screen":
            detail = (
                f"acc {info['accuracy']:.4f} ratio {info['ratio']:.3f}"
                if info["state"] == "COMPLETE"
                else info.get("reason", "")
            )
            self.console.print(
                f"  screen {info['number']:>4} {info['label']:<45} {detail}", markup=False, highlight=False
            )
            return
        if info["state"] == "COMPLETE":
            self.completed += 1
            self.cached += int(bool(info.get("cached")))
            self.hypervolume = info.get("hypervolume", self.hypervolume)
            if info.get("verdict") == "faster":
                ratio = info["ratio"]
                self.best_ratio = ratio if self.best_ratio is None else min(self.best_ratio, ratio)
        else:
            self.failed += 1
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=1, description=self._status())
        if self.plain or info["state"] != "COMPLETE":
            if info["state"] == "COMPLETE":
                line = (
                    f"trial {info['number']:>4} {info['label']:<45} acc {info['accuracy']:.4f} "
                    f"latency {info['latency_ms']:.3f} ms ratio {info['ratio']:.3f} ({info['verdict']})"
                    f"{' [cached]' if info.get('cached') else ''} hv {info.get('hypervolume', 0):.4g}"
                )
            else:
                line = f"trial {info['number']:>4} {info['label']:<45} {info['state']}: {info.get('reason', '')}"
            self.console.print(line, highlight=False, markup=False)


#: Column headings of the objectives the 80-column table knows; others show their own names.
_SHORT_OBJECTIVE = {"accuracy": "acc", "latency_ms": "ms", "cost_usd_per_million": "$/1M"}


def _speedup_text(entry: dict[str, Any]) -> str:
    speedup, ci = shown_speedup(entry)
    if not speedup:
        return "-"
    text = f"{speedup:.3g}x" + (f" [{ci[0]:.3g}-{ci[1]:.3g}]" if ci else "")
    return f"[bold red]SLOWER[/] {text}" if entry["slower_than_baseline"] else text


def _label(entry: dict[str, Any]) -> str:
    if entry.get("config"):
        return CompressionConfig.from_dict(entry["config"]).short_label()
    return entry.get("label") or ""


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}" if abs(value) >= 1e-3 else f"{value:.3g}"


def _truncated(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def frontier_table(data: dict[str, Any], *, grouped: bool = True, width: int = 80) -> Table:
    """The frontier JSON as a rich table of one line per configuration, ``width`` columns wide at
    most: one row per tie group, led by its simplest member, with the trials that tie with it;
    ``grouped=False`` lists every non-dominated point instead. Only the configuration column gives
    way to a narrow terminal (its label is cut short; ``--format json`` and the report give it whole)."""
    names = [o["name"] for o in data["objectives"]]
    base = data["baseline"]
    rows = grouped_entries(data) if grouped else [(entry, []) for entry in data["trials"]]
    noun = "tie group" if grouped else "configuration"
    title = f"Pareto frontier of {data['study']}: {len(rows)} {noun}{'s' if len(rows) != 1 else ''}"
    caption = ""
    if base["latency"]["median_ms"]:
        values = ", ".join(
            f"{_SHORT_OBJECTIVE.get(k, k)} {_number(v)}" for k, v in base["values"].items() if v is not None
        )
        caption = f"baseline: {values}. "
    caption += "Speedup re-measured in fresh processes where available."
    if grouped:
        caption += " Ties: trials a user cannot tell from the row's; frontier --all lists each."
    headers = ["#", "configuration", *[_SHORT_OBJECTIVE.get(n, n) for n in names], "speedup [95% CI]"]
    headers += ["ties"] if grouped else []
    body = []
    for entry, equivalents in rows:
        cells = [
            str(entry["number"]),
            _label(entry),
            *[_number(entry["values"].get(n)) for n in names],
            _speedup_text(entry),
        ]
        if grouped:
            cells.append(_truncated(", ".join(str(e["number"]) for e in equivalents), 12))
        body.append(cells)
    widths = [max(len(Text.from_markup(row[i]).plain) for row in [headers, *body]) for i in range(len(headers))]

    def table_with(label_width: int) -> Table:
        table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
        for i, header in enumerate(headers):
            table.add_column(
                header,
                justify="left" if header in ("configuration", "speedup [95% CI]", "ties") else "right",
                no_wrap=True,
                width=min(widths[i], label_width) if i == 1 else widths[i],
            )
        for cells in body:
            table.add_row(cells[0], _truncated(cells[1], label_width), *cells[2:])
        return table

    # The widest the table needs, measured by rich itself; only the label gives up the excess.
    console = Console(file=io.StringIO(), width=10_000)
    needed = console.measure(table_with(widths[1])).maximum
    return table_with(max(widths[1] - max(needed - width, 0), 12))
