"""The measurement window: a per-node reader-writer lock held by a real Ray actor."""

from __future__ import annotations

import time

import pytest
import ray

from lepton_search.search._executor import MeasurementWindow, describe_failure

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture
def window():
    actor = ray.remote(num_cpus=0)(MeasurementWindow).remote()
    yield actor
    ray.kill(actor)


def _pending(ref, timeout: float = 0.5) -> bool:
    ready, _ = ray.wait([ref], timeout=timeout)
    return not ready


def test_measurement_waits_for_compute_and_blocks_new_compute(window) -> None:
    ray.get(window.acquire.remote("a", False))
    measure = window.acquire.remote("m", True)
    assert _pending(measure), "a measurement must wait while another trial computes"
    late_compute = window.acquire.remote("b", False)
    assert _pending(late_compute), "new compute must queue behind a waiting measurement"

    ray.get(window.release.remote("a", False))
    ray.get(measure, timeout=10)
    assert ray.get(window.state.remote())["exclusive"] == "m"
    assert _pending(late_compute), "nothing computes while a measurement holds the window"

    ray.get(window.release.remote("m", True))
    ray.get(late_compute, timeout=10)
    assert ray.get(window.state.remote())["shared"] == {"b": 1}


def test_compute_is_shared_between_trials(window) -> None:
    ray.get([window.acquire.remote("a", False), window.acquire.remote("b", False)], timeout=10)
    assert ray.get(window.state.remote())["shared"] == {"a": 1, "b": 1}


def test_a_dead_owner_is_released_by_the_driver(window) -> None:
    ray.get(window.acquire.remote("crashed", False))
    measure = window.acquire.remote("m", True)
    assert _pending(measure)
    ray.get(window.release_owner.remote("crashed"))
    ray.get(measure, timeout=10)


def test_time_waiting_for_the_window_is_counted(window) -> None:
    ray.get(window.acquire.remote("holder", True))
    waiter = window.acquire.remote("waiter", False)
    time.sleep(0.6)
    assert ray.get(window.waited_s.remote("waiter")) >= 0.5
    ray.get(window.release.remote("holder", True))
    ray.get(waiter, timeout=10)
    assert ray.get(window.waited_s.remote("holder")) < 0.5


def test_failure_reasons_unwrap_ray_errors() -> None:
    @ray.remote(max_retries=0)
    def boom() -> None:
        raise ValueError("bad value 42")

    with pytest.raises(Exception) as info:
        ray.get(boom.remote())
    assert describe_failure(info.value) == "ValueError: bad value 42"
