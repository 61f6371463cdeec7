"""Terminal output: the run's progress bar and the frontier table (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lepton_search.search._frontier import speedup_of


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


def frontier_table(data: dict[str, Any]) -> Table:
    """The frontier JSON as a rich table, slower-than-baseline rows flagged."""
    names = [o["name"] for o in data["objectives"]]
    base = data["baseline"]
    title = f"Pareto frontier of {data['study']} ({len(data['trials'])} configurations)"
    if base["latency"]["median_ms"]:
        title += f"; baseline: {', '.join(f'{k} {v:.4g}' for k, v in base['values'].items() if v is not None)}"
    table = Table(title=title, caption="* re-measured in fresh processes where available")
    for column in ["trial", "configuration", *names, "speedup [95% CI]*", "x baseline*", "verdict*"]:
        table.add_column(column, overflow="fold")
    for t in data["trials"]:
        lat = t["latency"].get("remeasured") or t["latency"]
        speedup, speedup_ci = speedup_of(lat.get("ratio_to_baseline"), lat.get("ratio_ci"))
        speedup_ci = speedup_ci or [float("nan")] * 2
        verdict = lat.get("verdict") or "-"
        if t["slower_than_baseline"]:
            verdict = "[bold red]SLOWER[/]"
        table.add_row(
            str(t["number"]),
            t.get("label") or "",
            *[f"{t['values'][n]:.4g}" for n in names],
            f"{speedup:.2f}x faster [{speedup_ci[0]:.2f}, {speedup_ci[1]:.2f}]" if speedup else "-",
            f"{lat['ratio_to_baseline']:.3f}" if lat.get("ratio_to_baseline") else "-",
            verdict,
        )
    return table
