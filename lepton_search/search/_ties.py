"""Tie groups: frontier points a user cannot tell apart, shown once, led by the simplest.

Two non-dominated points are a tie when their speed intervals overlap (the ratio to the
interleaved baseline, which compares across measurement windows), their cost intervals overlap,
and their accuracies differ by at most the task's resolution (one validation example). Ties are
not transitive, so groups form around leaders: points are taken simplest first (fewest active
techniques, then the smallest change to the model), and each joins the first group whose leader it
ties with. Every member of a group therefore ties with its leader, and the leader is the simplest of them.

A group's simplest *possible* member may be one that no trial evaluated: int8 + 15% unstructured
and int8 + 60% unstructured + distillation tie, and both hold int8 alone. :func:`core_config`
names it, so the driver can evaluate it before the run ends.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lepton_search.spaces import CompressionConfig, DistillConfig, GraphConfig, PruneConfig, QuantizeConfig

#: How far each precision moves the weights from the trained fp32 model, for ranking simplicity.
_PRECISION_CHANGE = {"fp32": 0, "bf16": 1, "fp16": 1, "int8": 2, "int4": 3}


@dataclasses.dataclass(frozen=True)
class FrontierPoint:
    """What tie grouping reads of one frontier trial."""

    number: int
    config: CompressionConfig
    accuracy: float
    #: Latency ratio to the baseline and its interval (lower is faster).
    ratio: float
    ratio_ci: tuple[float, float]
    #: The cost objective, if the study has one (its interval scales with the ratio's).
    cost: float | None = None


@dataclasses.dataclass(frozen=True)
class TieGroup:
    """One group: its leader (the simplest member) and the others, simplest first."""

    leader: FrontierPoint
    equivalents: tuple[FrontierPoint, ...] = ()

    @property
    def members(self) -> tuple[FrontierPoint, ...]:
        return (self.leader, *self.equivalents)


def active_techniques(config: CompressionConfig) -> tuple[str, ...]:
    """The techniques ``config`` applies, in pipeline order."""
    active = []
    if config.pruning.method != "none":
        active.append("pruning")
    if config.distillation.method != "none":
        active.append("distillation")
    if not config.graph.is_default:
        active.append("graph")
    if config.quantization.precision != "fp32":
        active.append("quantization")
    return tuple(active)


def complexity(config: CompressionConfig) -> tuple[float, ...]:
    """A sort key: fewer techniques first, then less removed, less retraining, fewer bits lost."""
    distillation = config.distillation
    retraining = float(distillation.steps or 0) + 1000.0 * distillation.epochs if distillation.method != "none" else 0.0
    pruned = config.pruning.ratio + (config.pruning.head_ratio or 0.0) if config.pruning.method != "none" else 0.0
    return (
        float(len(active_techniques(config))),
        pruned,
        retraining,
        float(_PRECISION_CHANGE.get(config.quantization.precision, 4)),
        float(len(config.graph.to_knobs())),
    )


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def _cost_interval(point: FrontierPoint) -> tuple[float, float] | None:
    # Cost is latency times a price, so its relative interval is the ratio's.
    if point.cost is None or point.ratio <= 0:
        return None
    return (point.cost * point.ratio_ci[0] / point.ratio, point.cost * point.ratio_ci[1] / point.ratio)


def ties(a: FrontierPoint, b: FrontierPoint, *, accuracy_resolution: float) -> bool:
    """True when a user could not tell ``a`` from ``b``: overlapping speed and cost intervals and
    accuracies at most ``accuracy_resolution`` apart."""
    if abs(a.accuracy - b.accuracy) > accuracy_resolution * (1 + 1e-9):
        return False
    if not _overlap(a.ratio_ci, b.ratio_ci):
        return False
    cost_a, cost_b = _cost_interval(a), _cost_interval(b)
    return cost_a is None or cost_b is None or _overlap(cost_a, cost_b)


def tie_groups(
    points: Iterable[FrontierPoint],
    *,
    accuracy_resolution: float,
    alternatives: Iterable[FrontierPoint] = (),
) -> list[TieGroup]:
    """Groups the frontier ``points`` around their simplest members; fastest leader first.

    ``alternatives`` are evaluated configurations off the frontier (dominated, but perhaps only by
    noise). One may lead a group, when it ties with frontier points and is simpler than they are;
    it never joins a group as an equivalent, and a group with no frontier point is dropped.
    """
    points = list(points)
    on_frontier = {p.number for p in points}
    candidates = [*points, *(a for a in alternatives if a.number not in on_frontier)]
    leaders: list[FrontierPoint] = []
    members: dict[int, list[FrontierPoint]] = {}
    # Equally simple, a frontier point leads before an alternative: the alternative is dominated.
    ranked = sorted(candidates, key=lambda p: (complexity(p.config), p.number not in on_frontier, p.ratio, p.number))
    for point in ranked:
        home = next((lead for lead in leaders if ties(lead, point, accuracy_resolution=accuracy_resolution)), None)
        if home is None:
            leaders.append(point)
            members[point.number] = []
        elif point.number in on_frontier:
            members[home.number].append(point)
    groups = [
        TieGroup(leader, tuple(members[leader.number]))
        for leader in leaders
        if leader.number in on_frontier or members[leader.number]
    ]
    return sorted(groups, key=lambda g: (g.leader.ratio, g.leader.number))


def _section(config: CompressionConfig, technique: str) -> object:
    return {
        "pruning": config.pruning,
        "distillation": config.distillation,
        "graph": config.graph,
        "quantization": config.quantization,
    }[technique]


def core_config(group: TieGroup) -> CompressionConfig | None:
    """The configuration of what every member of ``group`` applies identically, when it is simpler
    than the leader; ``None`` for a group of one, or when the members share nothing.

    A technique whose settings vary across a tie group (15% and 60% unstructured pruning, with and
    without distillation) changes nothing a user can see, so it is not what makes the group fast;
    the techniques all members apply with the same settings are. Distillation stays only with
    pruning (it retrains what pruning removed); members that share nothing have no core, since it
    would be the baseline itself.
    """
    if not group.equivalents:
        return None
    leader = group.leader.config
    shared = {
        technique
        for technique in active_techniques(leader)
        if all(_section(m.config, technique) == _section(leader, technique) for m in group.equivalents)
    }
    if "pruning" not in shared:
        shared.discard("distillation")
    if not shared:
        return None
    core = CompressionConfig(
        quantization=leader.quantization if "quantization" in shared else QuantizeConfig(),
        pruning=leader.pruning if "pruning" in shared else PruneConfig(),
        distillation=leader.distillation if "distillation" in shared else DistillConfig(),
        graph=leader.graph if "graph" in shared else GraphConfig(),
        deployment=leader.deployment,
    )
    return core if complexity(core) < complexity(leader) else None


def leaders_to_evaluate(groups: Sequence[TieGroup], evaluated: set[str]) -> list[CompressionConfig]:
    """The core configurations of ``groups`` that no trial evaluated yet (by config hash), once each."""
    wanted: dict[str, CompressionConfig] = {}
    for group in groups:
        core = core_config(group)
        if core is not None and core.config_hash not in evaluated:
            wanted.setdefault(core.config_hash, core)
    return list(wanted.values())


def points_from_frontier(data: Mapping[str, Any]) -> list[FrontierPoint]:
    """The frontier JSON's trials as tie-grouping points, at their re-measured ratio when the run
    re-measured the frontier (that is the ratio the table shows)."""
    names = [o["name"] for o in data["objectives"]]
    metric = names[0]
    points = []
    for entry in data["trials"]:
        latency = entry["latency"].get("remeasured") or entry["latency"]
        ratio, ratio_ci = latency.get("ratio_to_baseline"), latency.get("ratio_ci")
        if ratio is None or not ratio_ci:
            continue
        points.append(
            FrontierPoint(
                number=entry["number"],
                config=CompressionConfig.from_dict(entry["config"]),
                accuracy=entry["values"][metric],
                ratio=ratio,
                ratio_ci=(ratio_ci[0], ratio_ci[1]),
                cost=entry["values"].get("cost_usd_per_million"),
            )
        )
    return points


def groups_json(
    data: Mapping[str, Any],
    *,
    accuracy_resolution: float,
    alternatives: Sequence[Mapping[str, Any]] = (),
) -> list[dict[str, Any]]:
    """The frontier JSON's ``groups``, fastest first: ``{"leader": n, "equivalents": [n, ...],
    "core": config or null}``. ``alternatives`` are the off-frontier completed trials, as frontier
    entries; one that leads a group is its ``leader_entry``. ``core`` is the simpler configuration
    all members share, when no trial of ``data`` or ``alternatives`` evaluated it."""
    others = {entry["number"]: entry for entry in alternatives}
    evaluated = {CompressionConfig.from_dict(e["config"]).config_hash for e in [*data["trials"], *others.values()]}
    groups = []
    alternative_points = points_from_frontier({"objectives": data["objectives"], "trials": list(others.values())})
    for group in tie_groups(
        points_from_frontier(data), accuracy_resolution=accuracy_resolution, alternatives=alternative_points
    ):
        core = core_config(group)
        entry: dict[str, Any] = {
            "leader": group.leader.number,
            "equivalents": [p.number for p in group.equivalents],
            "core": core.to_dict() if core is not None and core.config_hash not in evaluated else None,
        }
        if group.leader.number in others:
            entry["leader_entry"] = others[group.leader.number]
        groups.append(entry)
    return groups


def grouped_entries(data: Mapping[str, Any]) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """The frontier JSON's points as ``(leader entry, equivalent entries)``, one per tie group in
    ``data["groups"]`` order (fastest first), then the points no group holds (those without a
    speed measurement), by trial number. What the table and the report show, one row per group."""
    by_number = {entry["number"]: entry for entry in data["trials"]}
    rows: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    shown: set[int] = set()
    for group in data.get("groups") or []:
        leader = group.get("leader_entry") or by_number.get(group["leader"])
        if leader is None:
            continue
        equivalents = [by_number[n] for n in group["equivalents"] if n in by_number]
        rows.append((leader, equivalents))
        shown.update([group["leader"], *group["equivalents"]])
    rows.extend((entry, []) for number, entry in sorted(by_number.items()) if number not in shown)
    return rows
