"""Tie groups on constructed frontier points: the simplest member leads, its core is proposed."""

from __future__ import annotations

import dataclasses

from lepton_search.search._ties import FrontierPoint, core_config, groups_json, leaders_to_evaluate, tie_groups
from lepton_search.spaces import CompressionConfig, DistillConfig, PruneConfig, QuantizeConfig

INT8 = QuantizeConfig("int8", int8_mode="static", calibration_method="minmax", calibration_batches=2)
INT8_ALONE = CompressionConfig(quantization=INT8)
INT8_UNSTRUCTURED = CompressionConfig(quantization=INT8, pruning=PruneConfig("unstructured", 0.15))
INT8_UNSTRUCTURED_KD = CompressionConfig(
    quantization=INT8, pruning=PruneConfig("unstructured", 0.6), distillation=DistillConfig("hard", epochs=4)
)
CHANNEL_KD = CompressionConfig(pruning=PruneConfig("channel", 0.5), distillation=DistillConfig("hard", epochs=5))


def _point(number: int, config: CompressionConfig, accuracy: float, ratio: float, half_width: float = 0.01):
    return FrontierPoint(number, config, accuracy, ratio, (ratio - half_width, ratio + half_width), cost=ratio * 2.0)


def test_the_issue_pair_is_one_group_led_by_the_simpler_and_int8_alone_is_proposed() -> None:
    # Trials 7 and 22 of the issue: 1.357 ms against 1.354 ms, the same accuracy to one example.
    seven = _point(7, INT8_UNSTRUCTURED, 0.9550, 0.3230)
    twenty_two = _point(22, INT8_UNSTRUCTURED_KD, 0.9556, 0.3222)
    fast = _point(3, CHANNEL_KD, 0.9500, 0.0900)
    groups = tie_groups([twenty_two, fast, seven], accuracy_resolution=1 / 360)

    assert [g.leader.number for g in groups] == [3, 7]  # fastest group first
    assert [p.number for p in groups[1].equivalents] == [22]
    assert core_config(groups[1]) == INT8_ALONE
    assert core_config(groups[0]) is None  # a group of one
    assert leaders_to_evaluate(groups, evaluated={seven.config.config_hash}) == [INT8_ALONE]
    assert leaders_to_evaluate(groups, evaluated={INT8_ALONE.config_hash}) == []


def test_an_evaluated_core_leads_its_group() -> None:
    points = [
        _point(7, INT8_UNSTRUCTURED, 0.9550, 0.3230),
        _point(22, INT8_UNSTRUCTURED_KD, 0.9556, 0.3222),
        _point(30, INT8_ALONE, 0.9553, 0.3240),
    ]
    (group,) = tie_groups(points, accuracy_resolution=1 / 360)
    assert group.leader.number == 30
    assert {p.number for p in group.equivalents} == {7, 22}
    assert core_config(group) is None


def test_points_apart_in_speed_or_accuracy_are_not_grouped() -> None:
    base = _point(1, INT8_ALONE, 0.9550, 0.3200)
    slower = _point(2, INT8_UNSTRUCTURED, 0.9550, 0.3600)  # intervals [0.31, 0.33] and [0.35, 0.37]
    less_accurate = _point(3, INT8_UNSTRUCTURED_KD, 0.9450, 0.3210)  # 3.6 examples of 360 worse
    groups = tie_groups([base, slower, less_accurate], accuracy_resolution=1 / 360)
    assert sorted(g.leader.number for g in groups) == [1, 2, 3]
    assert all(not g.equivalents for g in groups)


def test_a_chain_of_ties_splits_around_the_simplest_leader() -> None:
    # 1 ties 2 and 2 ties 3, but 1 does not tie 3: 3 may not hide behind leader 1.
    one = _point(1, INT8_ALONE, 0.95, 0.300, half_width=0.011)
    two = _point(2, INT8_UNSTRUCTURED, 0.95, 0.320, half_width=0.011)
    three = _point(3, INT8_UNSTRUCTURED_KD, 0.95, 0.340, half_width=0.011)
    groups = tie_groups([three, two, one], accuracy_resolution=0.01)
    by_leader = {g.leader.number: [p.number for p in g.equivalents] for g in groups}
    assert by_leader == {1: [2], 3: []}


def test_members_that_share_no_technique_have_no_core() -> None:
    (group,) = tie_groups(
        [_point(1, INT8_ALONE, 0.95, 0.3), _point(2, CHANNEL_KD, 0.95, 0.3)], accuracy_resolution=0.01
    )
    assert group.leader.number == 1 and core_config(group) is None


def test_a_dominated_but_tied_simpler_trial_leads_and_a_lone_alternative_is_dropped() -> None:
    seven = _point(7, INT8_UNSTRUCTURED, 0.9556, 0.3222)
    int8_alone = _point(30, INT8_ALONE, 0.9553, 0.3240)  # dominated by 7, by less than the noise
    far = _point(31, CHANNEL_KD, 0.90, 0.9)  # ties with nothing on the frontier
    groups = tie_groups([seven], accuracy_resolution=1 / 360, alternatives=[int8_alone, far])
    assert [(g.leader.number, [p.number for p in g.equivalents]) for g in groups] == [(30, [7])]


def _entry(point: FrontierPoint) -> dict:
    return {
        "number": point.number,
        "config": point.config.to_dict(),
        "values": {"accuracy": point.accuracy, "latency_ms": point.ratio * 4, "cost_usd_per_million": point.cost},
        "latency": {
            "ratio_to_baseline": 0.9,
            "ratio_ci": [0.5, 1.5],
            "remeasured": {"ratio_to_baseline": point.ratio, "ratio_ci": list(point.ratio_ci)},
        },
    }


def test_the_frontier_json_groups_name_the_leader_and_the_core_to_evaluate() -> None:
    objectives = [{"name": "accuracy"}, {"name": "latency_ms"}, {"name": "cost_usd_per_million"}]
    seven, twenty_two = _point(7, INT8_UNSTRUCTURED, 0.9550, 0.3230), _point(22, INT8_UNSTRUCTURED_KD, 0.9556, 0.3222)
    data = {"objectives": objectives, "trials": [_entry(seven), _entry(twenty_two)]}
    (group,) = groups_json(data, accuracy_resolution=1 / 360)
    assert group == {"leader": 7, "equivalents": [22], "core": INT8_ALONE.to_dict()}

    alone = _entry(_point(30, INT8_ALONE, 0.9549, 0.3240))
    (group,) = groups_json(data, accuracy_resolution=1 / 360, alternatives=[alone])
    assert (group["leader"], group["equivalents"], group["core"]) == (30, [7, 22], None)
    assert group["leader_entry"] == alone


def test_an_equally_simple_alternative_does_not_lead_over_a_frontier_point() -> None:
    # Two int8-alone trials with different calibration: the faster is off the frontier (dominated
    # in accuracy); the frontier point leads, the alternative adds nothing.
    percentile = CompressionConfig(quantization=dataclasses.replace(INT8, calibration_method="percentile"))
    on_frontier = _point(0, percentile, 0.9972, 0.330)
    alternative = _point(6, INT8_ALONE, 0.9950, 0.327)
    (group,) = tie_groups([on_frontier], accuracy_resolution=1 / 360, alternatives=[alternative])
    assert group.leader.number == 0 and group.equivalents == ()
