"""Scale figures: the driver's own time per trial, and the quickstart with 1 and 2 workers.

    python benchmarks/driver_overhead.py [--json] [--trials 500] [--skip-postgres] [--postgres-url URL]
        [--quickstart-trials N] [--skip-quickstart] [--workdir DIR] [--keep]

Every run below is the real command line, ``lepton-search run STUDY.toml``, in its own process,
with real Ray, real SQLite files or a real PostgreSQL server (a fresh schema per run, dropped
afterwards), real Optuna, the real result cache and artifact store. The process is started as
``python benchmarks/driver_overhead.py --hooked-cli run ...``, which wraps a stopwatch around the
driver's calls (time.perf_counter around the real call, on the driver's own thread, outermost call
only so nothing is counted twice) and then hands its arguments to ``lepton_search.cli.main``.

**1. The driver's own time per trial** (``driver_ms_per_trial``), on SQLite and PostgreSQL, with
one driver and with two drivers on one study. The study is the quickstart's (space, recipes, TPE
sampler, constraint, workers = 2) on the small digits task, with ``--trials`` (500) evaluations,
no frontier re-measurement, and a **no-op task**: each Ray task returns at once a copy of one real
``TrialResult`` (evaluated once, before the runs, with the real pipeline), its accuracy and latency
moved by a deterministic function of the trial's configuration, so that the frontier and the
hypervolume behave as in a study. Only the worker's evaluation is replaced: the driver asks,
suggests, claims, looks the cache up, submits to Ray, collects, writes the attributes, uploads the
model, tells Optuna, puts the result in the cache and extends the hypervolume as it always does.

- The driver's own time is the wall time of its trial loop (``_Run.loop``) minus the time it spends
  blocked in ``RayExecutor.wait`` (waiting for a worker) and in ``time.sleep`` (waiting for another
  driver's trial). It is divided by the trials the loop recorded (one Optuna ``tell`` each:
  evaluations, repeats served from the cache, tie cores).
- Start-up is reported apart (``startup_s``), never per trial: Python and imports,
  ``prepare_study`` (teacher, baseline, registration), and Ray's start (``ray_start_s``: one local
  Ray instance, started by the benchmark, which every driver joins with ``--ray-address`` as on a
  cluster; ``ray_connect`` is each driver's join); so is the executor's shutdown.
- ``categories_ms_per_trial`` splits the own time: ``ask`` (Optuna's ask), ``suggest`` (the space
  drawing its parameters: the sampler's independent draws and their writes), ``attributes`` (user
  and system attributes, constraints), ``tell``, ``artifact`` (the model upload), ``cache``
  (result-cache keys, look-ups and puts), ``hypervolume``, ``budget_check`` (the shared budget's
  slots: reserved, bound to a trial, given back), ``study_reads``, ``coordination`` (claims, heartbeats, other drivers),
  ``ray`` (submit, result, release), ``progress`` (the printed lines); ``other`` is the rest.
  ``first_fifth`` and ``last_fifth`` give the own time per trial early and late in the study.
- Two drivers (``--hooked-cli run`` twice at once on one study, created beforehand; each waits at
  the door of its trial loop until the other is there too, so that their loops overlap even when
  the trials take less time than a driver's start-up): ``two_drivers_duplicates`` counts the
  evaluations of a configuration beyond its first, over every configuration either driver sent to
  a worker (``RayExecutor.submit``, by config hash), so two drivers evaluating one trial count too;
  ``duplicate_trials_in_study`` counts COMPLETE budget trials that share a config hash.
  ``final_trials`` (evaluations in the study) must not exceed the budget (it is below it when the
  space runs out of new configurations first: about 70-140 for the quickstart's), and every driver
  must exit 0.

**2. The quickstart with 1 and 2 workers** (skip with ``--skip-quickstart``).
``studies/quickstart.toml`` is copied into a fresh folder for each (so each trains its teacher and
starts its own Ray, as a newcomer's first run does) and run with ``--workers 1`` and
``--workers 2`` (``--n-trials`` from ``--quickstart-trials``, by default the study's own budget),
one after the other.

- ``workers_speedup_2v1`` = wall(1 worker) / wall(2 workers), the whole ``lepton-search run``
  process as a user waits for it; ``trials_per_hour`` = evaluations / wall.
- ``workers_bound_2v1`` = (c + m) / (m + c/2): c is the mean compute time per trial (prune, distill,
  export, quantize and score, the trials' ``timings_s``) and m the mean measurement time
  (``measure_s``, in the node's exclusive measurement window), from the 1-worker run's evaluations.
  Nothing may compute while a trial is measured, so two workers can at best halve the compute.
  ``workers_bound_2v1_from_2_worker_timings`` uses the 2-worker run's own timings.
- ``phases`` splits each run: start-up (process start to the first trial submitted), the trial
  loop, and the tail after the budget (tie cores, the frontier's re-measurement, the factor
  breakdown, Ray's shutdown, the printed frontier). Per trial: wall (Optuna's start to complete),
  c, m, the time it waited for a measurement window (queried from the window actor just before the
  driver releases the trial, an actor call the driver's own time leaves out) and the rest.
- ``driver_overhead_fraction`` = the driver's own time in the 2-worker quickstart's trial loop /
  that run's wall time (measured as in part 1, on the real trials). On a machine whose cores the
  two workers fill, the driver's code also waits for a core there, so this wall-clock figure
  includes time in which the workers computed; ``driver_cpu_fraction`` = the CPU seconds of the
  driver's process in its trial loop (every thread, Ray's client included) / the same wall time is
  what the driver takes from the machine.

Targets: ``two_drivers_duplicates`` 0; no two-driver study above its budget
(``two_drivers_over_budget`` 0: the drivers hold numbered budget slots, so two that look at the
budget at the same moment cannot both take its last evaluation);
``workers_speedup_2v1`` >= 0.9 x ``workers_bound_2v1``; ``driver_overhead_fraction`` <= 0.01. A
target whose figure was not measured (skipped) is not judged. Exit 1 when a measured target is
missed. Figures depend on the CPU: the output names its device class and ISA flags.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "studies" / "quickstart.toml"
NOOP_TASK = "lepton_search.testing.tasks:small_digits_task"
DEFAULT_POSTGRES_URL = os.environ.get("LEPTON_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
TARGETS = {"two_drivers_duplicates": 0, "speedup_share_of_bound": 0.9, "driver_overhead_fraction": 0.01}
#: Environment of a hooked run: where it writes its timings, and the no-op template (part 1 only).
TIMINGS_ENV = "LEPTON_BENCH_TIMINGS"
TEMPLATE_ENV = "LEPTON_BENCH_NOOP_TEMPLATE"
BARRIER_ENV = "LEPTON_BENCH_BARRIER"
#: Time blocked waiting for workers or other drivers: not the driver's own work.
WAITING = ("wait", "sleep", "instrumentation")
COMPUTE_STAGES = ("prune_s", "distill_s", "export_s", "quantize_s", "score_s")


# --------------------------------------------------------------------------------------------
# Inside a hooked `lepton-search run` process
# --------------------------------------------------------------------------------------------


class _Clock:
    """Stopwatches around the driver's calls, on its main thread only."""

    def __init__(self) -> None:
        import threading

        self.threading = threading
        self.main = threading.get_ident()
        self.depth = 0  # inside an instrumented per-trial call (outermost only is counted)
        self.in_loop = 0
        self.loop_started = 0.0
        self.loop_done_s = 0.0
        # CPU seconds of the driver's main thread, and of its whole process, inside the trial loop.
        self.loop_cpu_started = (0.0, 0.0)
        self.loop_thread_cpu_s = 0.0
        self.loop_process_cpu_s = 0.0
        self.categories: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.phases: dict[str, float] = {}
        self.events: dict[str, float] = {"hooks_installed": time.time()}
        self.loops = 0
        self.tells = 0
        self.series: list[tuple[int, float]] = []
        self.waited: dict[str, float] = {}
        self.submitted: list[str] = []
        self.missing: list[str] = []

    def on_main(self) -> bool:
        return self.threading.get_ident() == self.main

    def add(self, category: str, seconds: float) -> None:
        self.categories[category] = self.categories.get(category, 0.0) + seconds
        self.calls[category] = self.calls.get(category, 0) + 1

    def own_s(self) -> float:
        """The loop's wall time so far minus the time it spent waiting."""
        loop = self.loop_done_s + (time.perf_counter() - self.loop_started if self.in_loop else 0.0)
        return loop - sum(self.categories.get(c, 0.0) for c in WAITING)

    def to_dict(self) -> dict[str, Any]:
        return {
            "phases_s": self.phases,
            "events": self.events,
            "loop_s": self.loop_done_s,
            "loops": self.loops,
            "tells_in_loop": self.tells,
            "categories_s": self.categories,
            "calls": self.calls,
            "own_s": self.own_s(),
            "loop_thread_cpu_s": self.loop_thread_cpu_s,
            "loop_process_cpu_s": self.loop_process_cpu_s,
            "series": self.series,
            "waited_by_owner": self.waited,
            "submitted_configs": self.submitted,
            "missing_hooks": self.missing,
        }


def _patch(clock: _Clock, owner: Any, name: str, make: Any) -> None:
    original = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name, None)
    if original is None:
        clock.missing.append(f"{getattr(owner, '__name__', owner)}.{name}")
        return
    setattr(owner, name, make(original))


def _per_trial(clock: _Clock, category: str) -> Any:
    """A wrapper that adds the call's time to ``category`` when it is an outermost call in the loop."""
    import functools

    def make(fn: Any) -> Any:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if clock.depth or not clock.in_loop or not clock.on_main():
                return fn(*args, **kwargs)
            clock.depth += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                clock.add(category, time.perf_counter() - start)
                clock.depth -= 1

        return timed

    return make


def _phase(clock: _Clock, name: str, *, loop: bool = False) -> Any:
    import functools

    def make(fn: Any) -> Any:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not clock.on_main():
                return fn(*args, **kwargs)
            if loop and not clock.loops:
                _barrier()
            clock.events.setdefault(f"{name}_first_enter", time.time())
            start = time.perf_counter()
            if loop:
                clock.in_loop += 1
                clock.loop_started = start
                clock.loop_cpu_started = (time.thread_time(), time.process_time())
                clock.loops += 1
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                clock.phases[name] = clock.phases.get(name, 0.0) + elapsed
                clock.events.setdefault(f"{name}_first_exit", time.time())
                if loop:
                    clock.in_loop -= 1
                    clock.loop_done_s += elapsed
                    clock.loop_thread_cpu_s += time.thread_time() - clock.loop_cpu_started[0]
                    clock.loop_process_cpu_s += time.process_time() - clock.loop_cpu_started[1]

        return timed

    return make


def _barrier() -> None:
    """Waits until every driver of a two-driver run is ready to enter its trial loop, so that their
    loops overlap even when a few no-op trials take less time than a driver's start-up."""
    spec = os.environ.get(BARRIER_ENV)
    if not spec:
        return
    folder, count = Path(spec.rsplit("|", 1)[0]), int(spec.rsplit("|", 1)[1])
    (folder / f"ready-{os.getpid()}").touch()
    deadline = time.monotonic() + 600
    while len(list(folder.glob("ready-*"))) < count and time.monotonic() < deadline:
        time.sleep(0.01)


def _noop_result(template: Any, config_json: str) -> Any:
    """``template`` with accuracy and latency moved by a deterministic function of the config."""
    import copy
    import hashlib

    digest = hashlib.sha256(config_json.encode()).digest()
    u1, u2 = digest[0] / 255.0, digest[1] / 255.0
    factor = 0.15 + 1.1 * u2  # latency relative to the template's: 0.15x to 1.25x
    result = copy.deepcopy(template)
    result.accuracy = template.accuracy - 0.08 * u1
    result.test_accuracy = template.test_accuracy - 0.08 * u1
    result.cost_usd_per_million = template.cost_usd_per_million * factor
    latency = result.latency
    for key, value in list(latency["candidate"].items()):
        if key.endswith("_ms") and key != "open_ms" and value is not None:
            latency["candidate"][key] = [v * factor for v in value] if isinstance(value, list) else value * factor
    latency["ratio"] = latency["ratio"] * factor
    latency["ratio_ci"] = [v * factor for v in latency["ratio_ci"]]
    if latency.get("ratio_rerun_ci"):
        latency["ratio_rerun_ci"] = [v * factor for v in latency["ratio_rerun_ci"]]
    band = latency["noise_band"]
    low, high = latency["ratio_ci"]
    latency["verdict"] = "faster" if high < 1 - band else "slower" if low > 1 + band else "tie"
    return result


def _install_hooks(clock: _Clock, noop_template: Path | None) -> None:
    import optuna
    import optuna.storages._cached_storage as cached_storage
    from optuna.storages import RDBStorage

    import lepton_search.search as search
    from lepton_search.search import _driver, _recording, _run
    from lepton_search.search._executor import RayExecutor
    from lepton_search.search._progress import ProgressReporter
    from lepton_search.spaces import SearchSpace
    from lepton_search.storage import ResultCache, StudyCoordination

    phases = {
        (search, "run_study"): "run_study",
        (_driver, "prepare_study"): "prepare",
        (RayExecutor, "start"): "ray_start",
        (RayExecutor, "shutdown"): "ray_shutdown",
        (_driver, "evaluate_tie_cores"): "tie_cores",
        (_driver, "remeasure_frontier"): "remeasure",
        (_driver, "record_factors"): "factors",
    }
    for (owner, name), phase in phases.items():
        _patch(clock, owner, name, _phase(clock, phase))
    _patch(clock, _run._Run, "loop", _phase(clock, "loop", loop=True))

    categories = {
        (optuna.study.Study, "ask"): "ask",
        (SearchSpace, "suggest"): "suggest",
        (optuna.trial.Trial, "set_user_attr"): "attributes",
        (optuna.trial.Trial, "set_constraint"): "attributes",
        (optuna.study.Study, "set_user_attr"): "attributes",
        (cached_storage._CachedStorage, "set_trial_system_attr"): "attributes",
        (RDBStorage, "set_trial_system_attr"): "attributes",
        (optuna.study.Study, "enqueue_trial"): "attributes",
        (_recording, "upload_model"): "artifact",
        (_recording, "set_trial_user_attrs"): "attributes",
        (_run._Run, "cache_result"): "cache",
        (_run._Run, "trial_state"): "study_reads",
        (_run, "result_key"): "cache",
        (_run, "cached_result"): "cache",
        (ResultCache, "get"): "cache",
        (ResultCache, "put"): "cache",
        (_run._Run, "record_hypervolume"): "hypervolume",
        (_run._Run, "hold_budget_slot"): "budget_check",
        (_run._Run, "release_budget_slot"): "budget_check",
        (StudyCoordination, "bind_slot"): "budget_check",
        (StudyCoordination, "release_trial_slots"): "budget_check",
        (optuna.study.Study, "get_trials"): "study_reads",
        (cached_storage._CachedStorage, "get_trial"): "study_reads",
        (RDBStorage, "get_trial"): "study_reads",
        (StudyCoordination, "claim"): "coordination",
        (StudyCoordination, "take_over"): "coordination",
        (StudyCoordination, "heartbeat"): "coordination",
        (_run._Run, "requeue_dead_drivers_trials"): "coordination",
        (_run._Run, "settle_foreign"): "coordination",
        (RayExecutor, "submit"): "ray",
        (RayExecutor, "result"): "ray",
        (RayExecutor, "wait"): "wait",
        (ProgressReporter, "__call__"): "progress",
    }
    for (owner, name), category in categories.items():
        _patch(clock, owner, name, _per_trial(clock, category))

    def make_tell(fn: Any) -> Any:
        timed = _per_trial(clock, "tell")(fn)

        def tell(*args: Any, **kwargs: Any) -> Any:
            out = timed(*args, **kwargs)
            if clock.in_loop and clock.on_main():
                clock.tells += 1
                clock.series.append((clock.tells, round(clock.own_s(), 6)))
            return out

        return tell

    _patch(clock, optuna.study.Study, "tell", make_tell)

    sleep = time.sleep

    def timed_sleep(seconds: float) -> None:
        if not clock.in_loop or not clock.on_main():
            return sleep(seconds)
        start = time.perf_counter()
        try:
            sleep(seconds)
        finally:
            clock.add("sleep", time.perf_counter() - start)

    time.sleep = timed_sleep  # the loop's pause while another driver evaluates what it waits for

    def make_release(fn: Any) -> Any:
        timed = _per_trial(clock, "ray")(fn)

        def release(self: Any, owner: str) -> None:
            # How long the trial waited for measurement windows; the window forgets on release.
            if clock.on_main() and not clock.depth and noop_template is None:
                start = time.perf_counter()
                try:
                    clock.waited[owner] = float(self.waited_s(owner))
                finally:
                    if clock.in_loop:
                        clock.add("instrumentation", time.perf_counter() - start)
            return timed(self, owner)

        return release

    _patch(clock, RayExecutor, "release", make_release)

    def make_submit(fn: Any) -> Any:
        def submit(self: Any, request: Any, owner: str) -> Any:
            if clock.on_main():
                clock.submitted.append(request.config_json)  # what the workers are asked to evaluate
            return fn(self, request, owner)

        return submit

    _patch(clock, RayExecutor, "submit", make_submit)

    if noop_template is not None:
        import base64

        from lepton_search.objectives import TrialResult

        fields = json.loads(noop_template.read_text())
        fields["onnx_bytes"] = base64.b64decode(fields["onnx_bytes"])
        template = TrialResult(**fields)
        start_fn = RayExecutor.start

        def start(self: Any) -> None:
            import ray

            start_fn(self)

            def noop_evaluate(request: Any, owner: str, windows: Any) -> Any:
                result = _noop_result(template, request.config_json)
                result.latency["device"]["ray_node_id"] = ray.get_runtime_context().get_node_id()
                return result

            self._remote = ray.remote(num_cpus=1, max_retries=0, retry_exceptions=False)(noop_evaluate)

        RayExecutor.start = start


def hooked_cli(argv: list[str]) -> int:
    """``lepton-search ARGV`` with the driver's stopwatches; the timings go to ``$LEPTON_BENCH_TIMINGS``."""
    import atexit

    clock = _Clock()
    start = time.perf_counter()
    template = os.environ.get(TEMPLATE_ENV)
    _install_hooks(clock, Path(template) if template else None)
    clock.phases["imports"] = time.perf_counter() - start
    out = os.environ.get(TIMINGS_ENV)

    def write() -> None:
        clock.events["exit"] = time.time()
        if out:
            Path(out).write_text(json.dumps(clock.to_dict()))

    atexit.register(write)
    from lepton_search.cli import main as cli_main

    return cli_main(argv)


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------


def _hooked(args: list[str], *, cwd: Path, timings: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, str(Path(__file__).resolve()), "--hooked-cli", *args]
    handle = log.open("w")
    return subprocess.Popen(command, cwd=cwd, env={**env, TIMINGS_ENV: str(timings)}, stdout=handle, stderr=handle)


def _quickstart_data() -> dict[str, Any]:
    import tomllib

    return tomllib.loads(QUICKSTART.read_text())


def _noop_study(name: str, storage: str, artifacts: Path, trials: int) -> dict[str, Any]:
    from lepton_search.testing import FAST_MEASUREMENT

    data = _quickstart_data()
    data["study"].update(name=name, task=NOOP_TASK, storage=storage, artifacts=str(artifacts))
    data["budget"].update(n_trials=trials, workers=2)
    data["measurement"] = {**FAST_MEASUREMENT, "backend": "onnxruntime-cpu", "remeasure_sessions": 0}
    return data


def _make_template(workdir: Path, artifacts: Path) -> tuple[Path, float]:
    """One real evaluation (the uncompressed configuration) of the no-op study's task."""
    import base64
    import dataclasses

    from lepton_search.objectives import evaluate, prepare
    from lepton_search.search import Locations, parse_study
    from lepton_search.search._study import base_request
    from lepton_search.spaces import CompressionConfig

    start = time.perf_counter()
    spec = parse_study(_noop_study("template", f"sqlite:///{workdir / 'template.db'}", artifacts, 1))
    request = base_request(spec, Locations.resolve(spec))
    prepare(request)  # trains the small teacher into the shared cache once
    result = evaluate(dataclasses.replace(request, config_json=CompressionConfig().to_json()))
    # JSON, not pickle: the project never unpickles, not even its own files.
    fields = dataclasses.asdict(result)
    fields["onnx_bytes"] = base64.b64encode(result.onnx_bytes).decode("ascii")
    path = workdir / "template.json"
    path.write_text(json.dumps(fields))
    return path, time.perf_counter() - start


def _connect(url: str) -> Any:
    import psycopg

    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), connect_timeout=5, autocommit=True)


def _postgres_base(url: str) -> str:
    """``url``, or the same server as ``root`` when user ``postgres`` is refused; raises when unreachable."""
    try:
        _connect(url).close()
        return url
    except Exception:
        other = url.replace("//postgres@", "//root@")
        if other == url:
            raise
        _connect(other).close()
        return other


class _Schema:
    """A fresh PostgreSQL schema for one run, dropped afterwards."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.name = f"lepton_bench_{uuid.uuid4().hex[:12]}"

    def __enter__(self) -> str:
        with _connect(self.base) as conn:
            conn.execute(f'CREATE SCHEMA "{self.name}"')
        return f"{self.base}?options=-csearch_path%3D{self.name}"

    def __exit__(self, *exc: object) -> None:
        with _connect(self.base) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE')


def _per_trial_ms(timings: list[dict[str, Any]]) -> dict[str, Any]:
    """The drivers' own time per recorded trial, in all and by category, early and late."""
    tells = sum(t["tells_in_loop"] for t in timings)
    own = sum(t["own_s"] for t in timings)
    categories: dict[str, float] = {}
    for t in timings:
        for name, seconds in t["categories_s"].items():
            if name not in WAITING:
                categories[name] = categories.get(name, 0.0) + seconds
    categories["other"] = own - sum(categories.values())

    def slope(t: dict[str, Any], lo: float, hi: float) -> float | None:
        series = t["series"]
        if len(series) < 5:
            return None
        a, b = series[int(lo * (len(series) - 1))], series[int(hi * (len(series) - 1))]
        return (b[1] - a[1]) / (b[0] - a[0]) * 1000 if b[0] > a[0] else None

    def mean(values: list[float | None]) -> float | None:
        kept = [v for v in values if v is not None]
        return round(sum(kept) / len(kept), 2) if kept else None

    return {
        "ms_per_trial": round(own / tells * 1000, 2) if tells else None,
        "trials_recorded": tells,
        "categories_ms_per_trial": {k: round(v / tells * 1000, 2) for k, v in sorted(categories.items())}
        if tells
        else {},
        "first_fifth_ms_per_trial": mean([slope(t, 0.0, 0.2) for t in timings]),
        "last_fifth_ms_per_trial": mean([slope(t, 0.8, 1.0) for t in timings]),
        "loop_wall_ms_per_trial": round(max(t["loop_s"] for t in timings) / tells * 1000, 2) if tells else None,
        "waiting_ms_per_trial": round(
            sum(t["categories_s"].get(c, 0.0) for t in timings for c in ("wait", "sleep")) / tells * 1000, 2
        )
        if tells
        else None,
    }


def run_noop(
    label: str,
    storage: str,
    drivers: int,
    trials: int,
    *,
    workdir: Path,
    artifacts: Path,
    ray_address: str,
    env: dict[str, str],
) -> dict[str, Any]:
    """``drivers`` hooked `lepton-search run` processes at once on one no-op study of ``trials``."""
    import optuna
    from optuna.trial import TrialState

    from lepton_search.search import Locations, parse_study
    from lepton_search.search._study import counts_toward_budget, open_study
    from lepton_search.spaces import CompressionConfig
    from lepton_search.storage import get_storage
    from lepton_search.testing import write_toml

    directory = workdir / f"noop-{label}-{drivers}"
    directory.mkdir(parents=True, exist_ok=True)
    name = f"driver-overhead-{label}-{drivers}-{uuid.uuid4().hex[:8]}"
    data = _noop_study(name, storage, artifacts, trials)
    study_file = write_toml(directory / "study.toml", data)
    spec = parse_study(data)
    created = open_study(spec, Locations.resolve(spec))  # exists before the drivers start on it together
    barrier = directory / "barrier"
    barrier.mkdir()
    env = {**env, BARRIER_ENV: f"{barrier}|{drivers}"}
    started = time.time()
    processes = [
        _hooked(
            ["run", str(study_file), "--no-progress", "--ray-address", ray_address],
            cwd=directory,
            timings=directory / f"timings-{i}.json",
            env=env,
            log=directory / f"driver-{i}.log",
        )
        for i in range(drivers)
    ]
    codes = [p.wait(timeout=3600) for p in processes]
    wall_s = time.time() - started
    errors = [_last_error((directory / f"driver-{i}.log").read_text()) for i, code in enumerate(codes) if code]
    paths = [directory / f"timings-{i}.json" for i in range(drivers)]
    timings = [json.loads(path.read_text()) for path in paths if path.is_file()]
    if not timings:
        raise SystemExit(f"no-op run {label} x{drivers}: exit codes {codes}, no timings: {errors}")
    # Every configuration the drivers sent to a worker, by config hash: one evaluated twice, by
    # one driver or by both, is a duplicate whether or not the study kept both trials.
    sent = [CompressionConfig.from_json(c).config_hash for t in timings for c in t["submitted_configs"]]

    study = optuna.load_study(study_name=name, storage=get_storage(storage, create=False))
    trials_all = study.get_trials(deepcopy=False)
    counted = [t for t in trials_all if t.state.is_finished() and counts_toward_budget(t)]
    hashes = [t.user_attrs.get("config_hash") for t in counted if t.state == TrialState.COMPLETE]
    out = {
        "drivers": drivers,
        **_per_trial_ms(timings),
        "wall_s": round(wall_s, 1),
        "study_trials_per_s": round(len(trials_all) / max(t["loop_s"] for t in timings), 1),
        "startup_s": {
            "imports": [round(t["phases_s"].get("imports", 0.0), 2) for t in timings],
            "prepare": [round(t["phases_s"].get("prepare", 0.0), 2) for t in timings],
            "ray_connect": [round(t["phases_s"].get("ray_start", 0.0), 2) for t in timings],
            "ray_shutdown": [round(t["phases_s"].get("ray_shutdown", 0.0), 2) for t in timings],
        },
        "exit_codes": codes,
        "errors": errors,
        "budget": trials,
        "final_trials": len(counted),
        "evaluations_sent": len(sent),
        "duplicates": len(sent) - len(set(sent)),
        "duplicate_trials_in_study": len(hashes) - len(set(hashes)),
        "failed": sum(1 for t in counted if t.state == TrialState.FAIL),
        "served_from_cache": sum(1 for t in trials_all if "duplicate_of" in t.user_attrs),
        "tie_cores": sum(1 for t in trials_all if "tie_core_of" in t.user_attrs),
        "requeued": sum(1 for t in trials_all if t.user_attrs.get("requeued")),
        "trials_per_driver": [sum(1 for t in counted if t.user_attrs.get("driver") == d) for d in _drivers(counted)],
        "missing_hooks": sorted({m for t in timings for m in t["missing_hooks"]}),
    }
    _dispose(study)
    _dispose(created)
    return out


def _last_error(log: str) -> str:
    """The last line of a driver's log that names an error (its traceback's last line)."""
    lines = [line for line in log.splitlines() if re.search(r"(Error|Exception)\b", line)]
    return lines[-1].strip()[:500] if lines else log.strip().splitlines()[-1][:500] if log.strip() else ""


def _dispose(study: Any) -> None:
    """Closes the connections of ``study``'s storage (a PostgreSQL schema is dropped after a run)."""
    backend = getattr(study._storage, "_backend", study._storage)
    engine = getattr(backend, "engine", None)
    if engine is not None:
        engine.dispose()


def _drivers(trials: list[Any]) -> list[str]:
    return sorted({t.user_attrs.get("driver") for t in trials if t.user_attrs.get("driver")})


def _quickstart_trials(storage: str, waited: dict[str, float]) -> list[dict[str, Any]]:
    import optuna
    from optuna.trial import TrialState

    from lepton_search.search._study import counts_toward_budget
    from lepton_search.storage import get_storage

    name = _quickstart_data()["study"]["name"]
    study = optuna.load_study(study_name=name, storage=get_storage(storage, create=False))
    by_number: dict[int, float] = {}
    for owner, seconds in waited.items():
        parts = owner.rsplit("/", 2)
        if len(parts) == 3 and not owner.startswith(("remeasure/", "factors/")) and parts[1].isdigit():
            by_number[int(parts[1])] = seconds
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if "duplicate_of" in t.user_attrs or "cached_from" in t.user_attrs or t.user_attrs.get("requeued"):
            continue  # served, not evaluated here
        timings = t.user_attrs.get("timings_s") or {}
        c = sum(float(timings.get(k) or 0.0) for k in COMPUTE_STAGES)
        m = float(timings.get("measure_s") or 0.0)
        wall = (t.datetime_complete - t.datetime_start).total_seconds()
        w = by_number.get(t.number)
        rows.append(
            {
                "number": t.number,
                "counted": counts_toward_budget(t),
                "wall_s": round(wall, 2),
                "compute_s": round(c, 2),
                "measure_s": round(m, 2),
                "waited_s": None if w is None else round(w, 2),
                "rest_s": None if w is None else round(wall - c - m - w, 2),
            }
        )
    _dispose(study)
    return rows


def run_quickstart(workers: int, n_trials: int, directory: Path) -> dict[str, Any]:
    directory.mkdir(parents=True, exist_ok=True)
    study_file = directory / QUICKSTART.name
    shutil.copyfile(QUICKSTART, study_file)
    timings_path = directory / "timings.json"
    args = ["run", str(study_file), "--no-progress", "--workers", str(workers), "--n-trials", str(n_trials)]
    started = time.time()
    process = _hooked(args, cwd=directory, timings=timings_path, env=dict(os.environ), log=directory / "run.log")
    code = process.wait(timeout=3600)
    wall_s = time.time() - started
    text = (directory / "run.log").read_text()
    if code != 0:
        raise SystemExit(f"quickstart --workers {workers}: exit code {code}\n{text[-3000:]}")
    timings = json.loads(timings_path.read_text())
    finished = re.search(r"Run finished in (\d+) s: (\d+) completed, (\d+) failed", text)
    trials = _quickstart_trials(f"sqlite:///{directory / 'lepton-search.db'}", timings["waited_by_owner"])
    counted = [t for t in trials if t["counted"]]
    events, phases = timings["events"], timings["phases_s"]
    loop_enter = events.get("loop_first_enter", started)
    loop_exit = events.get("loop_first_exit", events["exit"])
    c = sum(t["compute_s"] for t in counted) / len(counted) if counted else None
    m = sum(t["measure_s"] for t in counted) / len(counted) if counted else None
    waited = [t["waited_s"] for t in counted if t["waited_s"] is not None]
    rest = [t["rest_s"] for t in counted if t["rest_s"] is not None]
    own = _per_trial_ms([timings])
    return {
        "workers": workers,
        "wall_s": round(wall_s, 1),
        "run_s": int(finished.group(1)) if finished else None,
        "evaluations": len(counted),
        "trials_per_hour": round(len(counted) / wall_s * 3600, 1),
        "mean_compute_s": round(c, 2) if c is not None else None,
        "mean_measure_s": round(m, 2) if m is not None else None,
        "median_compute_s": _median([t["compute_s"] for t in counted]),
        "median_measure_s": _median([t["measure_s"] for t in counted]),
        # The run's first measurement also makes the host's A/A noise calibration.
        "first_measure_s": min(counted, key=lambda t: t["number"])["measure_s"] if counted else None,
        "phases_s": {
            "startup": round(loop_enter - started, 1),
            "startup_python_imports": round(events["hooks_installed"] - started + phases.get("imports", 0.0), 1),
            "startup_prepare": round(phases.get("prepare", 0.0), 1),
            "startup_ray_start": round(phases.get("ray_start", 0.0), 1),
            "trial_loop": round(loop_exit - loop_enter, 1),
            "tail": round(events["exit"] - loop_exit, 1),
            "tail_tie_cores": round(phases.get("tie_cores", 0.0), 1),
            "tail_remeasure": round(phases.get("remeasure", 0.0), 1),
            "tail_factors": round(phases.get("factors", 0.0), 1),
            "tail_ray_shutdown": round(phases.get("ray_shutdown", 0.0), 1),
        },
        "trial_loop_at_bound_s": round(
            sum(t["measure_s"] for t in counted) + sum(t["compute_s"] for t in counted) / workers, 1
        ),
        "sum_waited_for_window_s": round(sum(waited), 1),
        "mean_trial_wall_s": round(sum(t["wall_s"] for t in counted) / len(counted), 2) if counted else None,
        "mean_trial_rest_s": round(sum(rest) / len(rest), 2) if rest else None,
        "driver_own_s": round(timings["own_s"], 2),
        "driver_cpu_s": round(timings["loop_process_cpu_s"], 2),
        "driver_main_thread_cpu_s": round(timings["loop_thread_cpu_s"], 2),
        "driver_ms_per_trial": own["ms_per_trial"],
        "driver_categories_ms_per_trial": own["categories_ms_per_trial"],
        "trials": trials,
    }


def _median(values: list[float]) -> float | None:
    import statistics

    return round(statistics.median(values), 2) if values else None


def _bound(c: float | None, m: float | None) -> float | None:
    return round((c + m) / (m + c / 2), 3) if c is not None and m is not None and (m + c / 2) > 0 else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--hooked-cli"]:
        return hooked_cli(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--trials", type=int, default=500, help="evaluations of each no-op study (default 500)")
    parser.add_argument("--skip-postgres", action="store_true", help="no-op studies on SQLite only")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL, help=f"default {DEFAULT_POSTGRES_URL}")
    parser.add_argument(
        "--quickstart-trials", type=int, default=None, help="--n-trials of the quickstart runs (default: its budget)"
    )
    parser.add_argument("--skip-quickstart", action="store_true", help="leave out the 1- vs 2-worker quickstart")
    parser.add_argument("--workdir", type=Path, default=None, help="where the runs go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (its path is printed)")
    args = parser.parse_args(argv)

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from lepton_search.devices._machine import cpu_identity

    identity = cpu_identity()
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="driver-overhead-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"trials": args.trials}
    try:
        artifacts = workdir / "noop-artifacts"
        template, template_s = _make_template(workdir, artifacts)
        out["template_evaluation_s"] = round(template_s, 1)

        import ray

        started = time.perf_counter()
        ray.init(
            address="local",
            num_cpus=4,  # two drivers with two workers each
            include_dashboard=False,
            object_store_memory=256 * 1024 * 1024,
            log_to_driver=False,
        )
        out["ray_start_s"] = round(time.perf_counter() - started, 1)
        address = ray.get_runtime_context().gcs_address
        # After Ray's start: its token authentication is switched on in this environment, which the
        # drivers that join this instance need too.
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), TEMPLATE_ENV: str(template)}
        noop: dict[str, dict[str, Any]] = {}
        try:
            storages: dict[str, Any] = {"sqlite": None}
            if not args.skip_postgres:
                try:
                    storages["postgresql"] = _postgres_base(args.postgres_url)
                except Exception as e:
                    out["postgres_error"] = f"{type(e).__name__}: {e}"
            for label, base in storages.items():
                for drivers in (1, 2):
                    print(f"no-op study: {label}, {drivers} driver(s), {args.trials} trials", file=sys.stderr)
                    kwargs = {"workdir": workdir, "artifacts": artifacts, "ray_address": address, "env": env}
                    if base is None:
                        url = f"sqlite:///{workdir / f'noop-{label}-{drivers}.db'}"
                        noop[f"{label}/{drivers}"] = run_noop(label, url, drivers, args.trials, **kwargs)
                    else:
                        with _Schema(base) as url:
                            noop[f"{label}/{drivers}"] = run_noop(label, url, drivers, args.trials, **kwargs)
        finally:
            ray.shutdown()

        out["driver_ms_per_trial"] = {
            label: noop[f"{label}/1"]["ms_per_trial"] if f"{label}/1" in noop else None
            for label in ("sqlite", "postgresql")
        }
        out["driver_ms_per_trial_two_drivers"] = {
            label: noop[f"{label}/2"]["ms_per_trial"] if f"{label}/2" in noop else None
            for label in ("sqlite", "postgresql")
        }
        two = [noop[k] for k in noop if k.endswith("/2")]
        out["two_drivers_over_budget"] = sum(max(0, r["final_trials"] - r["budget"]) for r in two)
        out["two_drivers_duplicates"] = sum(r["duplicates"] for r in two)
        out["two_drivers_final_trials"] = {k.split("/")[0]: noop[k]["final_trials"] for k in noop if k.endswith("/2")}
        out["noop"] = noop

        out["workers_speedup_2v1"] = out["workers_bound_2v1"] = None
        if not args.skip_quickstart:
            n_trials = args.quickstart_trials or int(_quickstart_data()["budget"]["n_trials"])
            runs = {}
            for workers in (1, 2):
                print(f"quickstart: --workers {workers} --n-trials {n_trials}", file=sys.stderr)
                runs[workers] = run_quickstart(workers, n_trials, workdir / f"quickstart-{workers}")
            one, two_w = runs[1], runs[2]
            out["quickstart_trials"] = n_trials
            out["workers_speedup_2v1"] = round(one["wall_s"] / two_w["wall_s"], 3)
            out["workers_bound_2v1"] = _bound(one["mean_compute_s"], one["mean_measure_s"])
            out["workers_bound_2v1_from_2_worker_timings"] = _bound(two_w["mean_compute_s"], two_w["mean_measure_s"])
            out["workers_bound_2v1_from_medians"] = _bound(one["median_compute_s"], one["median_measure_s"])
            out["trials_per_hour"] = {"1": one["trials_per_hour"], "2": two_w["trials_per_hour"]}
            out["trial_loop_speedup_2v1"] = round(
                one["phases_s"]["trial_loop"] / max(two_w["phases_s"]["trial_loop"], 1e-9), 3
            )
            out["driver_overhead_fraction"] = round(two_w["driver_own_s"] / two_w["wall_s"], 5)
            out["driver_cpu_fraction"] = round(two_w["driver_cpu_s"] / two_w["wall_s"], 5)
            sqlite_ms = out["driver_ms_per_trial"]["sqlite"]
            out["driver_overhead_fraction_from_noop"] = (
                round(sqlite_ms / 1000 * two_w["evaluations"] / two_w["wall_s"], 5) if sqlite_ms else None
            )
            out["quickstart"] = {"1": one, "2": two_w}
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            out["workdir"] = str(workdir)

    judged: dict[str, bool] = {
        "two_drivers_duplicates": out["two_drivers_duplicates"] == TARGETS["two_drivers_duplicates"],
        # At most the budget: with 500 no-op trials the quickstart's space runs out of new
        # configurations first (the driver stops after its repeats in a row), which is no fault.
        # Above it, two drivers took one budget slot each for the last evaluation.
        "two_drivers_within_budget": out.get("two_drivers_over_budget", 0) == 0,
        # A driver that crashed (or could not finish) leaves figures that mean nothing.
        "noop_drivers_exited_0": all(not any(r["exit_codes"]) for r in noop.values()),
        "postgresql_measured": "postgres_error" not in out,
    }
    if out["workers_speedup_2v1"] is not None and out["workers_bound_2v1"] is not None:
        judged["workers_speedup_2v1"] = (
            out["workers_speedup_2v1"] >= TARGETS["speedup_share_of_bound"] * out["workers_bound_2v1"]
        )
        judged["driver_overhead_fraction"] = out["driver_overhead_fraction"] <= TARGETS["driver_overhead_fraction"]
    out.update(
        targets=TARGETS,
        targets_judged=judged,
        targets_met=all(judged.values()),
        cpu=identity.description,
        isa=list(identity.features),
        device_class=identity.device_class,
    )
    if args.json:
        print(json.dumps(out))
    else:
        _print_text(out)
    return 0 if out["targets_met"] else 1


def _print_text(out: dict[str, Any]) -> None:
    print(f"CPU: {out['cpu']} ({out['device_class']}); ISA {', '.join(out['isa'])}")
    for key, run in out.get("noop", {}).items():
        print(
            f"no-op {key}: {run['ms_per_trial']} ms/trial own time over {run['trials_recorded']} trials "
            f"(first fifth {run['first_fifth_ms_per_trial']}, last fifth {run['last_fifth_ms_per_trial']}); "
            f"{run['final_trials']}/{run['budget']} evaluations, {run['duplicates']} duplicates"
        )
        print("    " + ", ".join(f"{k} {v}" for k, v in run["categories_ms_per_trial"].items()))
    if out.get("postgres_error"):
        print(f"PostgreSQL not measured: {out['postgres_error']}")
    for workers, run in out.get("quickstart", {}).items():
        print(
            f"quickstart, {workers} worker(s): wall {run['wall_s']} s, {run['trials_per_hour']} trials/h, "
            f"c {run['mean_compute_s']} s, m {run['mean_measure_s']} s; phases {run['phases_s']}"
        )
    print(
        f"speedup 2v1 {out['workers_speedup_2v1']} (bound {out['workers_bound_2v1']}); "
        f"driver overhead {out.get('driver_overhead_fraction')} of the quickstart's wall"
    )
    print(f"targets: {out['targets_judged']} -> met: {out['targets_met']}")


if __name__ == "__main__":
    sys.exit(main())
