"""The HTML report: Pareto scatter with latency error bars, hypervolume history, parallel
coordinates and the frontier table, in one self-contained Plotly page."""

from __future__ import annotations

import html
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lepton_search.search._frontier import baseline_summary, frontier, objective_names, reference_point, remeasured

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
        feasible = all(v <= 0 for v in (t.constraints or {}).values()) if hasattr(t, "constraints") else True
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
        fig.add_trace(
            go.Scatter(
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
        )
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
        xaxis_title=x_name,
        yaxis_title=y_name,
        height=520,
    )
    return fig


def _parallel_figure(study: optuna.Study, names: list[str]) -> go.Figure | None:
    import plotly.graph_objects as go
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not trials:
        return None
    dims = []
    for key in ["precision", "prune_method", "prune_ratio", "distill_method", "distill_epochs"]:
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


def _table(data: dict[str, Any]) -> str:
    names = [o["name"] for o in data["objectives"]]
    head = "".join(
        f"<th>{html.escape(h)}</th>"
        for h in ["#", "configuration", *names, "ratio to baseline [95% CI]*", "verdict*", "notes"]
    )
    rows = []
    for t in data["trials"]:
        lat = t["latency"].get("remeasured") or t["latency"]
        ci = lat.get("ratio_ci") or [None, None]
        ratio = f"{lat['ratio_to_baseline']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if lat.get("ratio_to_baseline") else "-"
        verdict = lat.get("verdict") or "-"
        if t["slower_than_baseline"]:
            verdict = "<b style='color:#b00'>SLOWER than baseline</b>"
        cells = [
            str(t["number"]),
            html.escape(t.get("label") or ""),
            *[f"{t['values'][n]:.4g}" for n in names],
            ratio,
            verdict,
            html.escape("; ".join(t.get("notes") or [])),
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def write_report(study: optuna.Study, path: Path) -> Path:
    """Writes the HTML report of ``study`` to ``path`` and returns it."""
    import optuna

    names = objective_names(study)
    data = frontier(study)
    figures = [_pareto_figure(study, names)]
    ref = reference_point(study)
    if ref is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            hv = optuna.visualization.plot_hypervolume_history(study, ref)
        hv.update_layout(
            title=f"Hypervolume history (reference point {dict(zip(names, [round(r, 4) for r in ref]))})", height=420
        )
        figures.append(hv)
    parallel = _parallel_figure(study, names)
    if parallel is not None:
        figures.append(parallel)
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)]
    base = data["baseline"]
    base_latency = base["latency"]["median_ms"]
    summary = (
        f"<p>Baseline (uncompressed): {html.escape(str(base['values']))}, median latency "
        f"{base_latency:.4g} ms over {base['latency']['windows']} measurement windows.</p>"
        if base_latency
        else "<p>No completed trials yet.</p>"
    )
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>lepton-search: {html.escape(study.study_name)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}}</style></head>
<body><h1>Study {html.escape(study.study_name)}</h1>{summary}
<h2>Frontier ({len(data["trials"])} configurations)</h2>{_table(data)}
{"".join(parts)}
</body></html>"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
