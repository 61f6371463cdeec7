"""The HTML report: Pareto scatter with latency error bars, the speed-versus-cost view (latency
frontier and cost frontier), hypervolume history, parallel coordinates and the frontier table, in
one self-contained Plotly page."""

from __future__ import annotations

import datetime
import html
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lepton_search.search._frontier import (
    baseline_summary,
    default_deployment,
    frontier,
    is_feasible,
    objective_names,
    reference_point,
    remeasured,
    shown_speedup,
    speed_cost_frontiers,
    trial_deployment,
)
from lepton_search.search._ties import grouped_entries

SPEED_COST_TITLE = "Speed versus cost"
COST_FRONTIER_TITLE = "Cost frontier"

if TYPE_CHECKING:
    import optuna
    import plotly.graph_objects as go


def _hover(trial: optuna.trial.FrozenTrial) -> str:
    attrs = trial.user_attrs
    ratio = attrs.get("ratio_to_baseline", float("nan"))
    return f"#{trial.number} {attrs.get('label', '')}<br>ratio {ratio:.3f} ({attrs.get('verdict', '?')})"


def _pareto_figure(study: optuna.Study, names: list[str]) -> go.Figure:
    import plotly.graph_objects as go
    from optuna.trial import TrialState

    x_name = "latency_ms" if "latency_ms" in names else names[-1]
    y_name = "accuracy" if "accuracy" in names else names[0]
    xi, yi = names.index(x_name), names.index(y_name)
    best = {t.number for t in study.best_trials}
    groups: dict[str, list[Any]] = {"frontier": [], "dominated": [], "infeasible": [], "slower than baseline": []}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        feasible = is_feasible(t)
        if t.user_attrs.get("slower_than_baseline"):
            groups["slower than baseline"].append(t)
        elif not feasible:
            groups["infeasible"].append(t)
        elif t.number in best:
            groups["frontier"].append(t)
        else:
            groups["dominated"].append(t)
    styles = {
        "frontier": dict(color="#d62728", size=11, symbol="circle"),
        "dominated": dict(color="#1f77b4", size=8, symbol="circle-open"),
        "infeasible": dict(color="#bbbbbb", size=8, symbol="circle"),
        "slower than baseline": dict(color="#000000", size=10, symbol="x"),
    }
    fig = go.Figure()
    for group, trials in groups.items():
        if not trials:
            continue
        xs = [t.values[xi] for t in trials]
        error = None
        if x_name == "latency_ms":
            lo = [
                t.values[xi] - (t.user_attrs.get("latency", {}).get("ci_ms") or [t.values[xi]] * 2)[0] for t in trials
            ]
            hi = [
                (t.user_attrs.get("latency", {}).get("ci_ms") or [t.values[xi]] * 2)[1] - t.values[xi] for t in trials
            ]
            error = dict(type="data", symmetric=False, array=hi, arrayminus=lo, thickness=1)
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=[t.values[yi] for t in trials],
                mode="markers",
                name=group,
                marker=styles[group],
                error_x=error,
                text=[_hover(t) for t in trials],
                hovertemplate="%{text}<br>" + x_name + "=%{x:.4g}<br>" + y_name + "=%{y:.4g}<extra></extra>",
            )
        )
    again = [(t, remeasured(study, t.number)) for t in groups["frontier"]]
    again = [(t, r) for t, r in again if r is not None]
    if again and x_name == "latency_ms":
        fig.add_trace(_remeasured_trace(again, yi))
    base = baseline_summary(study)
    bx = base["latency"]["median_ms"] if x_name == "latency_ms" else None
    by = base["values"].get(y_name)
    if bx is not None and by is not None:
        fig.add_trace(
            go.Scatter(
                x=[bx],
                y=[by],
                mode="markers",
                name="baseline (uncompressed)",
                marker=dict(color="#2ca02c", size=14, symbol="star"),
            )
        )
    fig.update_layout(
        title=f"Pareto frontier: {y_name} vs {x_name} (error bars: 95% CI of latency)",
        # Frontier latencies span 10x and more; on a linear axis the fast points pile up in a corner.
        xaxis=dict(title=f"{x_name} (log scale)", type="log") if x_name == "latency_ms" else dict(title=x_name),
        yaxis_title=y_name,
        height=520,
    )
    return fig


def _remeasured_trace(again: list[tuple[Any, dict[str, Any]]], yi: int) -> go.Scatter:
    """The Pareto scatter's points for the frontier trials in ``again``, each with its
    re-measurement, at their re-measured latency."""
    import plotly.graph_objects as go

    return go.Scatter(
        x=[r["median_ms"] for _, r in again],
        y=[t.values[yi] for t, _ in again],
        mode="markers",
        name="frontier, re-measured",
        marker=dict(color="#ff7f0e", size=11, symbol="diamond"),
        error_x=dict(
            type="data",
            symmetric=False,
            thickness=1,
            array=[r["ci_ms"][1] - r["median_ms"] for _, r in again],
            arrayminus=[r["median_ms"] - r["ci_ms"][0] for _, r in again],
        ),
        text=[
            f"#{t.number} re-measured: {r['ratio_to_baseline']:.3f}x ({r['verdict']}, {r['sessions']} sessions)"
            for t, r in again
        ],
        hovertemplate="%{text}<extra></extra>",
    )


def _deployment_label(deployment: dict[str, Any]) -> str:
    return f"{deployment['backend']}, batch {deployment['batch_size']}, {deployment['threads']} thr"


def _speed_cost_figures(study: optuna.Study) -> list[go.Figure]:
    """Latency versus cost of every feasible trial, with the latency frontier and the cost frontier
    marked; and accuracy versus cost with the cost frontier (the counterpart of the Pareto scatter).

    Both frontiers are over accuracy as well: the latency frontier is non-dominated in (accuracy,
    latency), the cost frontier in (accuracy, cost). They differ when deployment knobs are searched.

    It is long because the two figures share their trial groups, marker styles and hover texts;
    most of its lines are Plotly keyword arguments.
    """
    import plotly.graph_objects as go

    data = speed_cost_frontiers(study)
    rows = data["trials"]
    if not rows:
        return []
    trials = {t.number: t for t in study.get_trials(deepcopy=False) if t.number in rows}
    default = default_deployment(study)
    latency_front, cost_front = set(data["latency_frontier"]), set(data["cost_frontier"])
    groups = {
        "on both frontiers": sorted(latency_front & cost_front),
        "latency frontier": sorted(latency_front - cost_front),
        "cost frontier": sorted(cost_front - latency_front),
        "other trials": sorted(set(rows) - latency_front - cost_front),
    }
    styles = {
        "on both frontiers": dict(color="#9467bd", size=13, symbol="star-diamond"),
        "latency frontier": dict(color="#d62728", size=11, symbol="circle"),
        "cost frontier": dict(color="#1f77b4", size=11, symbol="square"),
        "other trials": dict(color="#bbbbbb", size=7, symbol="circle-open"),
    }

    def text(n: int) -> str:
        t = trials[n]
        return (
            f"#{n} {t.user_attrs.get('label', '')}<br>{_deployment_label(trial_deployment(t, default))}"
            f"<br>accuracy {rows[n]['accuracy']:.4g}"
        )

    speed = go.Figure()
    for group, numbers in groups.items():
        if numbers:
            speed.add_trace(
                go.Scatter(
                    x=[rows[n]["latency_ms"] for n in numbers],
                    y=[rows[n]["cost_usd_per_million"] for n in numbers],
                    mode="markers",
                    name=group,
                    marker=styles[group],
                    text=[text(n) for n in numbers],
                    hovertemplate="%{text}<br>latency_ms=%{x:.4g}<br>USD per million=%{y:.4g}<extra></extra>",
                )
            )
    base = baseline_summary(study)
    if base["latency"]["median_ms"] and base["cost_usd_per_million"]:
        speed.add_trace(
            go.Scatter(
                x=[base["latency"]["median_ms"]],
                y=[base["cost_usd_per_million"]],
                mode="markers",
                name=f"baseline ({_deployment_label(default)})",
                marker=dict(color="#2ca02c", size=14, symbol="star"),
            )
        )
    speed.update_layout(
        title=f"{SPEED_COST_TITLE}: latency_ms vs cost_usd_per_million "
        f"(latency frontier: {len(latency_front)} trials, cost frontier: {len(cost_front)} trials)",
        xaxis=dict(title="latency_ms (per request batch)", type="log"),
        yaxis=dict(title="cost_usd_per_million (inferences)", type="log"),
        height=520,
    )
    cost = go.Figure()
    for name, numbers, style in (
        ("cost frontier", sorted(cost_front, key=lambda n: rows[n]["cost_usd_per_million"]), styles["cost frontier"]),
        ("other trials", sorted(set(rows) - cost_front), styles["other trials"]),
    ):
        if numbers:
            cost.add_trace(
                go.Scatter(
                    x=[rows[n]["cost_usd_per_million"] for n in numbers],
                    y=[rows[n]["accuracy"] for n in numbers],
                    mode="lines+markers" if name == "cost frontier" else "markers",
                    line=dict(shape="hv", dash="dot", color="#1f77b4"),
                    name=name,
                    marker=style,
                    text=[text(n) for n in numbers],
                    hovertemplate="%{text}<br>USD per million=%{x:.4g}<extra></extra>",
                )
            )
    cost.update_layout(
        title=f"{COST_FRONTIER_TITLE}: accuracy vs cost_usd_per_million",
        xaxis=dict(title="cost_usd_per_million", type="log"),
        yaxis_title="accuracy",
        height=460,
    )
    return [speed, cost]


def _parallel_figure(study: optuna.Study, names: list[str]) -> go.Figure | None:
    import plotly.graph_objects as go
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not trials:
        return None
    dims = []
    for key in [
        "deploy_backend",
        "deploy_batch_size",
        "deploy_threads",
        "precision",
        "torch_cpu_precision",
        "torch_gpu_precision",
        "prune_method",
        "prune_ratio",
        "distill_method",
        "distill_epochs",
    ]:
        values = [t.params.get(key) for t in trials]
        if all(v is None for v in values):
            continue
        if all(isinstance(v, (int, float)) or v is None for v in values):
            dims.append(dict(label=key, values=[v if v is not None else 0 for v in values]))
        else:
            cats = sorted({str(v) for v in values})
            dims.append(
                dict(
                    label=key,
                    values=[cats.index(str(v)) for v in values],
                    tickvals=list(range(len(cats))),
                    ticktext=cats,
                )
            )
    for i, name in enumerate(names):
        dims.append(dict(label=name, values=[t.values[i] for t in trials]))
    color = [t.values[names.index("latency_ms")] if "latency_ms" in names else t.values[0] for t in trials]
    fig = go.Figure(go.Parcoords(line=dict(color=color, colorscale="Viridis", showscale=True), dimensions=dims))
    fig.update_layout(title="Parameters and objectives of completed trials", height=480)
    return fig


def _factors_figure(factors: dict[str, Any] | None) -> go.Figure | None:
    """Each technique of the best frontier configuration alone, and all together: speedup over the
    baseline with its 95% interval, measured in one window (``lepton:factors``)."""
    if not factors or not factors.get("factors"):
        return None
    import plotly.graph_objects as go

    entries = list(factors["factors"].items())
    names = [f"{name}: {entry['label']}" for name, entry in entries]
    speedups = [entry["speedup"] for _, entry in entries]
    low = [entry["speedup"] - entry["speedup_ci"][0] for _, entry in entries]
    high = [entry["speedup_ci"][1] - entry["speedup"] for _, entry in entries]
    fig = go.Figure(
        go.Bar(
            x=speedups,
            y=names,
            orientation="h",
            error_x={"type": "data", "symmetric": False, "array": high, "arrayminus": low},
            text=[f"{s:.2f}x (accuracy {e['accuracy']:.4f})" for s, (_, e) in zip(speedups, entries)],
            textposition="auto",
        )
    )
    fig.update_layout(
        title=f"Where the speed of trial {factors['trial']} comes from: each technique alone, measured in one window",
        xaxis_title="speedup over the baseline (x, 95% CI)",
        height=140 + 60 * len(entries),
        margin={"l": 420},
    )
    return fig


def _values_text(values: dict[str, Any]) -> str:
    """``{"accuracy": 0.96100278, ...}`` as ``accuracy 0.961, latency_ms 0.1573``: rounded for reading."""
    return ", ".join(f"{name} {value:.4g}" for name, value in values.items() if value is not None)


def _speedup_cell(entry: dict[str, Any]) -> str:
    speedup, ci = shown_speedup(entry)
    if not speedup:
        return "-"
    text = f"{speedup:.2f}x faster" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
    if entry["slower_than_baseline"]:
        text += " <b style='color:#b00'>SLOWER than baseline</b>"
    return text


def _table(data: dict[str, Any], *, grouped: bool) -> str:
    """The frontier as an HTML table: one row per tie group (its leader, the trials that tie with
    it beside), or, ungrouped, one row per non-dominated trial."""
    names = [o["name"] for o in data["objectives"]]
    head = ["#", "configuration", "deployment", *names, "speedup [95% CI]*", "ratio to baseline*", "verdict*"]
    head += ["ties with (indistinguishable, not simpler)"] if grouped else []
    head += ["notes"]
    rows = []
    entries = grouped_entries(data) if grouped else [(entry, []) for entry in data["trials"]]
    for t, equivalents in entries:
        lat = t["latency"].get("remeasured") or t["latency"]
        cells = [
            str(t["number"]),
            html.escape(t.get("label") or ""),
            html.escape(_deployment_label(t["deployment"])) if t.get("deployment") else "-",
            *[f"{t['values'][n]:.4g}" if t["values"].get(n) is not None else "-" for n in names],
            _speedup_cell(t),
            f"{lat['ratio_to_baseline']:.3f}" if lat.get("ratio_to_baseline") else "-",
            html.escape(lat.get("verdict") or "-"),
        ]
        if grouped:
            cells.append("<br>".join(f"#{e['number']} {html.escape(e.get('label') or '')}" for e in equivalents) or "-")
        cells.append(html.escape("; ".join(t.get("notes") or [])))
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    heading = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f"<table><thead><tr>{heading}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _when_text(study: optuna.Study) -> str:
    """When the report was written (UTC) and when the study's trials completed (Optuna records local time)."""
    finished = [t.datetime_complete for t in study.get_trials(deepcopy=False) if t.datetime_complete]
    written = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if not finished:
        return f"Report written {written}."
    first, last = min(finished), max(finished)
    return f"Report written {written}; trials completed {first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} (local time)."


def write_report(study: optuna.Study, path: Path) -> Path:
    """Writes the HTML report of ``study`` to ``path`` and returns it."""
    import optuna

    names = objective_names(study)
    data = frontier(study)
    figures = [_pareto_figure(study, names), *_speed_cost_figures(study)]
    ref = reference_point(study)
    if ref is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            hv = optuna.visualization.plot_hypervolume_history(study, ref)
        hv.update_layout(
            title=f"Hypervolume history (reference point: {_values_text(dict(zip(names, ref)))})", height=420
        )
        figures.append(hv)
    parallel = _parallel_figure(study, names)
    if parallel is not None:
        figures.append(parallel)
    factors = _factors_figure(data.get("factors"))
    if factors is not None:
        figures.insert(1, factors)
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)]
    base = data["baseline"]
    base_latency = base["latency"]["median_ms"]
    summary = (
        f"<p>Baseline (uncompressed): {html.escape(_values_text(base['values']))}; median latency "
        f"{base_latency:.4g} ms over {base['latency']['windows']} measurement windows.</p>"
        if base_latency
        else "<p>No completed trials yet.</p>"
    )
    devices = sorted(
        {
            (t["latency"].get("device_class_name") or "device class not recorded", t["latency"].get("device_class"))
            for t in data["trials"]
        },
        key=str,
    )
    if devices:
        words = "; ".join(f"{name} ({klass})" if klass else name for name, klass in devices)
        summary += (
            f"<p>Frontier measured on: {html.escape(words)}. Latency is compared only within one device class.</p>"
        )
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>lepton-search: {html.escape(study.study_name)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}}</style></head>
<body><h1>Study {html.escape(study.study_name)}</h1>{summary}<p>{html.escape(_when_text(study))}</p>
<h2>Frontier: {len(grouped_entries(data))} tie groups, simplest configuration first</h2>
<p>Configurations in one row cannot be told apart: their speed (and cost) intervals overlap and their
accuracies differ by at most {data["accuracy_resolution"]:.3g}. Deploy the row's configuration.</p>
{_table(data, grouped=True)}
<details><summary>All {len(data["trials"])} non-dominated trials</summary>{_table(data, grouped=False)}</details>
{"".join(parts)}
</body></html>"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
