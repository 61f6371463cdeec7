"""The Ray executor: one remote task per trial, and one measurement window per node.

The measurement window is a reader-writer lock held by a small async actor per node. Compute stages
(compress, score) hold it shared; a latency measurement holds it exclusively and new compute waits
behind a waiting measurement, so while one trial is measured, no other lepton-search trial on that
node computes. A lock held by a trial that crashed or was cancelled is released by the driver, which
knows each trial's owner id.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from lepton_search.errors import LeptonSearchError
from lepton_search.objectives import TrialRequest, TrialResult, evaluate

WINDOW_ACTOR_PREFIX = "lepton-measurement-window"


class MeasurementWindow:
    """Reader-writer lock with writer priority, keyed by owner so a dead owner can be released."""

    def __init__(self) -> None:
        self._shared: dict[str, int] = {}
        self._exclusive: str | None = None
        self._waiting_exclusive = 0
        self._condition: Any = None
        self._waited_s: dict[str, float] = {}
        self._waiting_since: dict[str, float] = {}
        self.measurements = 0

    def _cond(self) -> Any:
        import asyncio

        if self._condition is None:
            self._condition = asyncio.Condition()
        return self._condition

    async def acquire(self, owner: str, exclusive: bool) -> None:
        import time

        cond = self._cond()
        self._waiting_since[owner] = time.monotonic()
        try:
            await self._acquire(cond, owner, exclusive)
        finally:
            waited = time.monotonic() - self._waiting_since.pop(owner)
            self._waited_s[owner] = self._waited_s.get(owner, 0.0) + waited

    async def waited_s(self, owner: str) -> float:
        """Seconds ``owner`` has spent waiting for this window, including a wait in progress."""
        import time

        since = self._waiting_since.get(owner)
        return self._waited_s.get(owner, 0.0) + (time.monotonic() - since if since is not None else 0.0)

    async def _acquire(self, cond: Any, owner: str, exclusive: bool) -> None:
        async with cond:
            if exclusive:
                self._waiting_exclusive += 1
                try:
                    await cond.wait_for(lambda: self._exclusive is None and not self._shared)
                finally:
                    self._waiting_exclusive -= 1
                self._exclusive = owner
                self.measurements += 1
            else:
                await cond.wait_for(lambda: self._exclusive is None and self._waiting_exclusive == 0)
                self._shared[owner] = self._shared.get(owner, 0) + 1

    async def release(self, owner: str, exclusive: bool) -> None:
        cond = self._cond()
        async with cond:
            if exclusive and self._exclusive == owner:
                self._exclusive = None
            elif not exclusive and owner in self._shared:
                self._shared[owner] -= 1
                if self._shared[owner] <= 0:
                    del self._shared[owner]
            cond.notify_all()

    async def release_owner(self, owner: str) -> None:
        cond = self._cond()
        async with cond:
            self._shared.pop(owner, None)
            self._waited_s.pop(owner, None)
            if self._exclusive == owner:
                self._exclusive = None
            cond.notify_all()

    async def state(self) -> dict[str, Any]:
        return {"shared": dict(self._shared), "exclusive": self._exclusive, "measurements": self.measurements}


class RayGate:
    """A :class:`~lepton_search.objectives.DeviceGate` backed by a node's window actor."""

    def __init__(self, window: Any, owner: str) -> None:
        self._window = window
        self._owner = owner

    @contextlib.contextmanager
    def _hold(self, exclusive: bool) -> Iterator[None]:
        import ray

        ray.get(self._window.acquire.remote(self._owner, exclusive))
        try:
            yield
        finally:
            ray.get(self._window.release.remote(self._owner, exclusive))

    def compute(self) -> contextlib.AbstractContextManager[None]:
        return self._hold(False)

    def measure(self) -> contextlib.AbstractContextManager[None]:
        return self._hold(True)


def _window_name(node_id: str) -> str:
    return f"{WINDOW_ACTOR_PREFIX}-{node_id}"


def _evaluate_task(request: TrialRequest, owner: str, namespace_windows: dict[str, Any]) -> TrialResult:
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    window = namespace_windows.get(node_id)
    gate = RayGate(window, owner) if window is not None else None
    result = evaluate(request, gate)
    # Which node measured it: latency is only comparable within one device class, and the
    # baseline it is paired with ran in the same window on the same node.
    result.latency["device"]["ray_node_id"] = node_id
    result.latency["device"]["ray_node_ip"] = ray.util.get_node_ip_address()
    return result


def _remeasure_task(
    request: TrialRequest, onnx_bytes: bytes, sessions: int, owner: str, namespace_windows: dict[str, Any]
) -> dict[str, Any]:
    import ray

    from lepton_search.objectives._remeasure import remeasure

    window = namespace_windows.get(ray.get_runtime_context().get_node_id())
    gate = RayGate(window, owner) if window is not None else None
    return remeasure(request, onnx_bytes, sessions=sessions, gate=gate)


def _factors_task(
    request: TrialRequest, configs: dict[str, str], sessions: int, owner: str, namespace_windows: dict[str, Any]
) -> dict[str, Any]:
    import ray

    from lepton_search.objectives._factors import measure_factors
    from lepton_search.spaces import CompressionConfig

    window = namespace_windows.get(ray.get_runtime_context().get_node_id())
    gate = RayGate(window, owner) if window is not None else None
    parsed = {name: CompressionConfig.from_json(text) for name, text in configs.items()}
    return measure_factors(request, parsed, sessions=sessions, gate=gate)


class RayExecutor:
    """Submits trials to Ray with at most ``workers`` in flight; the driver owns everything else.

    Args:
        workers: Trials evaluated at once.
        address: An existing cluster to join (``ray://`` or ``HOST:PORT``); None starts a local one.
        object_store_mb: Object store size for a local instance; results are small.
    """

    def __init__(
        self, *, workers: int, address: str | None = None, object_store_mb: int = 512, gpus_per_trial: float = 0
    ) -> None:
        self.workers = workers
        self.address = address
        self.gpus_per_trial = gpus_per_trial
        self.object_store_mb = object_store_mb
        self._started_ray = False
        self._windows: dict[str, Any] = {}
        self._remote: Any = None

    def start(self) -> None:
        import ray

        if not ray.is_initialized():
            kwargs: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "logging_level": logging.ERROR,
                "configure_logging": True,
            }
            if self.address:
                kwargs["address"] = self.address
            else:
                # "local" starts a new instance even if another local cluster is running.
                kwargs["address"] = "local"
                kwargs["num_cpus"] = max(self.workers, 1)
                kwargs["object_store_memory"] = self.object_store_mb * 1024 * 1024
            try:
                ray.init(**kwargs)
            except Exception as e:
                raise LeptonSearchError(
                    f"Cannot start or join Ray ({self.address or 'local'}): {type(e).__name__}: {e}"
                ) from e
            self._started_ray = True
        self._check_gpus(ray.cluster_resources().get("GPU", 0.0))
        window_cls = ray.remote(num_cpus=0, max_restarts=-1)(MeasurementWindow)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        for node in ray.nodes():
            if not node.get("Alive"):
                continue
            node_id = node["NodeID"]
            # On a cluster this driver joined, other drivers share the node's window: it must
            # outlive the driver that happened to create it, so it is detached and left running
            # at shutdown (one idle zero-CPU actor per node, until the cluster stops).
            self._windows[node_id] = window_cls.options(
                name=_window_name(node_id),
                namespace="lepton-search",
                get_if_exists=True,
                lifetime="detached" if self.address else None,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            ).remote()
        # Crashes are almost always deterministic for a given config; retrying would only double
        # the cost before the same failure. The driver's timeout bounds hangs and OOM loops.
        # A GPU task gets a fresh worker process per trial by default (max_calls=1), which frees
        # CUDA memory between trials at the cost of CUDA start-up each time; that is what we want.
        self._remote = ray.remote(num_cpus=1, num_gpus=self.gpus_per_trial, max_retries=0, retry_exceptions=False)(
            _evaluate_task
        )

    def _check_gpus(self, available: float) -> None:
        # A task that asks for a GPU the cluster lacks stays pending forever; refuse up front.
        if self.gpus_per_trial > available:
            self.shutdown()
            raise LeptonSearchError(
                f"The measurement backend needs {self.gpus_per_trial:g} GPU per trial, but the Ray "
                f"cluster has {available:g} GPUs. Use a CPU backend (measurement.backend = "
                "'onnxruntime-cpu'), or join a cluster with GPUs using --ray-address."
            )

    def submit(self, request: TrialRequest, owner: str) -> Any:
        return self._remote.remote(request, owner, self._windows)

    def submit_remeasure(self, request: TrialRequest, onnx_bytes: bytes, sessions: int, owner: str) -> Any:
        """Re-measures a model in a fresh worker process (``max_calls=1``: the process exits after)."""
        import ray

        remote = ray.remote(num_cpus=1, num_gpus=self.gpus_per_trial, max_calls=1, max_retries=0)(_remeasure_task)
        return remote.remote(request, onnx_bytes, sessions, owner, self._windows)

    def submit_factors(self, request: TrialRequest, configs: dict[str, str], sessions: int, owner: str) -> Any:
        """Builds and measures a configuration's techniques one at a time (``objectives/_factors.py``)
        in a fresh worker process."""
        import ray

        remote = ray.remote(num_cpus=1, num_gpus=self.gpus_per_trial, max_calls=1, max_retries=0)(_factors_task)
        return remote.remote(request, configs, sessions, owner, self._windows)

    def wait(self, refs: list[Any], timeout: float) -> list[Any]:
        import ray

        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        return ready

    def result(self, ref: Any) -> TrialResult:
        import ray

        return ray.get(ref)

    def cancel(self, ref: Any, owner: str) -> None:
        import ray

        with contextlib.suppress(Exception):
            ray.cancel(ref, force=True)
        self.release(owner)

    def release(self, owner: str) -> None:
        import ray

        for window in self._windows.values():
            with contextlib.suppress(Exception):
                ray.get(window.release_owner.remote(owner), timeout=10)

    def waited_s(self, owner: str) -> float:
        """Seconds the trial ``owner`` spent waiting for measurement windows (not its own work)."""
        import ray

        total = 0.0
        for window in self._windows.values():
            with contextlib.suppress(Exception):
                total += ray.get(window.waited_s.remote(owner), timeout=10)
        return total

    def window_states(self) -> list[dict[str, Any]]:
        import ray

        return [ray.get(w.state.remote()) for w in self._windows.values()]

    def shutdown(self) -> None:
        import ray

        if not self.address:
            for window in self._windows.values():
                with contextlib.suppress(Exception):
                    ray.kill(window)
        self._windows.clear()
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False


def describe_failure(error: BaseException) -> str:
    """A one-line reason for a failed trial, unwrapping Ray's task error to the user's error."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        error = cause
    name = type(error).__name__
    text = str(error).strip().splitlines()
    first = text[-1] if name.startswith("Ray") and text else (text[0] if text else "")
    if name == "WorkerCrashedError" or "WorkerCrashed" in name:
        first = "the worker process died (crash, os._exit or killed by the OS)"
    elif name == "TaskCancelledError":
        first = "the trial was cancelled"
    elif name == "OutOfMemoryError":
        first = "the worker ran out of memory and was killed by Ray's memory monitor"
    return f"{name}: {first}"[:1000]


GPU_BACKEND_MARKERS = ("cuda", "tensorrt")


def gpus_per_trial(backend: str) -> float:
    """One GPU per trial for backends that measure on a GPU, none otherwise."""
    return 1.0 if any(marker in backend for marker in GPU_BACKEND_MARKERS) else 0.0
