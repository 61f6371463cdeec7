"""`lepton-search nightly`: extend each study, re-measure its frontier, and catch drift.

For each study file (a folder such as ``studies/nightly/``, or one file with a ``[nightly]``
section) a night's run:

1. extends the study by ``[nightly].trials`` trials (the target is recorded in the run ledger, so
   a second run on the same date adds nothing and a crashed run resumes to the same target);
2. re-measures the current frontier in fresh processes on today's software and hardware;
3. compares each frontier point's re-measured latency with the last snapshot before today taken on
   the same device class (the CPU's or GPU's kernel-relevant identity, not its name: a job that
   moves to a faster CPU must not hide a regression): a point regressed when the lower end of
   today's 95% interval is above the earlier median times ``1 + tolerance``
   (``[nightly].regression_tolerance``, default 0.25). A point measured on another device class
   than its earlier one, or whose earlier snapshot recorded none (versions before it was
   recorded), is not compared, and the report says so (``not_compared``);
4. stores today's snapshot and manifest, and writes ``<out>/<study>/<date>.json`` and ``.html``.

Exit codes: 0 no regression; 3 a frontier regressed; 4 a study's run failed (4 wins over 3).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from lepton_search.errors import ConfigError, LeptonSearchError
from lepton_search.search._driver import run_study
from lepton_search.search._frontier import frontier
from lepton_search.search._report import write_report
from lepton_search.search._spec import StudySpec, load_study_file
from lepton_search.search._study import Locations, ProgressCallback, counted_trials, open_study
from lepton_search.storage import RunLedger, safe_join, safe_name

EXIT_OK = 0
EXIT_REGRESSION = 3
EXIT_FAILED = 4


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def run_manifest(study_file: Path) -> dict[str, Any]:
    """What tonight's numbers were measured with: library versions, machine, study file hash."""
    from lepton_search.devices._machine import cpu_identity, nvidia_smi

    gpu = nvidia_smi()
    cpu = cpu_identity()
    return {
        "versions": {p: _version(p) for p in ("lepton-search", "torch", "onnxruntime", "optuna", "ray")},
        "python": platform.python_version(),
        "host": platform.node(),
        "cpu": cpu.model_name,
        "device_class": cpu.device_class,
        "device_class_name": cpu.description,
        "gpu_driver": f"{gpu['name']}, {gpu['driver_version']}" if gpu else None,
        "study_file_sha256": hashlib.sha256(study_file.read_bytes()).hexdigest(),
    }


def _pairs(previous: dict[str, Any] | None, current: dict[str, Any]) -> list[tuple[dict, dict, dict]]:
    """(trial, today's re-measurement, the earlier one) for points re-measured both times."""
    if previous is None:
        return []
    before = {t["number"]: t for t in previous["trials"]}
    out = []
    for trial in current["trials"]:
        now = trial["latency"].get("remeasured")
        then = (before.get(trial["number"]) or {}).get("latency", {}).get("remeasured")
        if now and then:
            out.append((trial, now, then))
    return out


def _comparable(now: dict[str, Any], then: dict[str, Any]) -> str | None:
    """Why two re-measurements of a point cannot be compared; None when they can."""
    before, today = then.get("device_class"), now.get("device_class")
    if not before:
        return "the earlier snapshot did not record its device class (taken by an older version)"
    if before != today:
        return (
            f"measured on another device class: {then.get('device_class_name') or before} ({before}) then, "
            f"{now.get('device_class_name') or today} ({today}) now; latency is compared only within one"
        )
    return None


def not_compared(previous: dict[str, Any] | None, current: dict[str, Any]) -> list[dict[str, Any]]:
    """Frontier points re-measured both times whose latencies :func:`compare` skips, and why."""
    return [
        {"number": trial["number"], "label": trial.get("label"), "reason": reason}
        for trial, now, then in _pairs(previous, current)
        if (reason := _comparable(now, then)) is not None
    ]


def compare(previous: dict[str, Any] | None, current: dict[str, Any], tolerance: float) -> list[dict[str, Any]]:
    """Frontier points whose re-measured latency got slower than ``tolerance`` allows, on one
    device class (points measured on different classes are in :func:`not_compared`)."""
    regressions = []
    for trial, now, then in _pairs(previous, current):
        if _comparable(now, then) is not None:
            continue
        limit = then["median_ms"] * (1 + tolerance)
        if now["ci_ms"][0] > limit:
            regressions.append(
                {
                    "number": trial["number"],
                    "label": trial.get("label"),
                    "previous_median_ms": then["median_ms"],
                    "median_ms": now["median_ms"],
                    "ci_ms": now["ci_ms"],
                    "slowdown": now["median_ms"] / then["median_ms"],
                    "tolerance": tolerance,
                }
            )
    return regressions


@dataclass
class NightlyOutcome:
    """One study's night."""

    study: str
    status: str  # "ok", "regressed", "failed", "skipped"
    added_trials: int = 0
    regressions: list[dict[str, Any]] = field(default_factory=list)
    #: Frontier points not compared with their earlier snapshot (another device class), and why.
    not_compared: list[dict[str, Any]] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)
    error: str | None = None
    already_ran: bool = False


#: How many earlier snapshots a night looks back through for one taken on its own device class.
SNAPSHOT_LOOKBACK = 60


def last_snapshot_on(ledger: RunLedger, study: str, before: str, device_class: str) -> dict[str, Any] | None:
    """The newest snapshot of ``study`` before ``before`` taken on ``device_class``; else the newest
    one at all (its points then show up in :func:`not_compared`), or None."""
    newest = candidate = ledger.last_snapshot(study, before=before)
    for _ in range(SNAPSHOT_LOOKBACK):
        if candidate is None:
            break
        if candidate["manifest"].get("device_class") == device_class:
            return candidate
        candidate = ledger.last_snapshot(study, before=candidate["run_date"])
    return newest


def study_files(path: Path) -> list[Path]:
    """The study files a nightly run covers: every ``*.toml`` in a folder, or the one file."""
    if path.is_dir():
        files = sorted(path.glob("*.toml"))
        if not files:
            raise ConfigError(f"{path} holds no *.toml study files.")
        return files
    if path.is_file():
        return [path]
    raise ConfigError(f"{path} is neither a study file nor a folder of them. Check the path.")


def run_nightly_study(
    spec: StudySpec,
    study_file: Path,
    *,
    locations: Locations,
    run_date: str,
    out_dir: Path,
    ray_address: str | None = None,
    on_event: ProgressCallback | None = None,
) -> NightlyOutcome:
    """One study's nightly run (see the module docstring)."""
    nightly = spec.nightly
    if nightly is None:
        raise ConfigError(f"{study_file} has no [nightly] section; add one (e.g. `[nightly]\\ntrials = 10`).")
    name = spec.study.name
    ledger = RunLedger(locations.storage_url)
    manifest = run_manifest(study_file)
    outcome = NightlyOutcome(study=name, status="ok")
    try:
        existing = ledger.get_run(name, run_date)
        outcome.already_ran = existing is not None and existing["status"] != "running"
        study = open_study(spec, locations)
        before = counted_trials(study)
        target = existing["target_trials"] if existing else before + nightly.trials
        ledger.begin_run(name, run_date, target_trials=target, manifest=manifest)
        if not outcome.already_ran:
            run_study(
                spec.model_copy(update={"budget": spec.budget.model_copy(update={"timeout_s": nightly.timeout_s})}),
                locations=locations,
                n_trials=target,
                ray_address=ray_address,
                on_event=on_event,
                always_remeasure=True,
            )
        study = open_study(spec, locations)
        outcome.added_trials = counted_trials(study) - before
        current = frontier(study)
        previous = last_snapshot_on(ledger, name, run_date, manifest["device_class"])
        tolerance = nightly.regression_tolerance
        outcome.regressions = compare(previous["frontier"] if previous else None, current, tolerance)
        skipped = outcome.not_compared = not_compared(previous["frontier"] if previous else None, current)
        outcome.status = "regressed" if outcome.regressions else "ok"
        ledger.save_snapshot(name, run_date, current, manifest)
        folder = safe_join(out_dir, name)
        folder.mkdir(parents=True, exist_ok=True)
        report = {
            "study": name,
            "date": run_date,
            "status": outcome.status,
            "added_trials": outcome.added_trials,
            "previous_snapshot": previous["run_date"] if previous else None,
            "device_class": manifest["device_class"],
            "device_class_name": manifest["device_class_name"],
            "tolerance": tolerance,
            "regressions": outcome.regressions,
            "not_compared": skipped,
            "manifest": manifest,
            "frontier": current,
        }
        json_path = folder / f"{safe_name(run_date)}.json"
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        html_path = write_report(study, folder / f"{safe_name(run_date)}.html")
        outcome.reports = [str(json_path), str(html_path)]
        ledger.finish_run(name, run_date, outcome.status)
    except LeptonSearchError as e:
        outcome.status, outcome.error = "failed", str(e)
        ledger.finish_run(name, run_date, "failed")
    finally:
        ledger.dispose()
    return outcome


def run_nightly(
    path: Path,
    *,
    run_date: str | None = None,
    out_dir: Path = Path("nightly-reports"),
    storage: str | None = None,
    artifacts: str | None = None,
    ray_address: str | None = None,
    on_event: ProgressCallback | None = None,
) -> tuple[int, list[NightlyOutcome]]:
    """Runs every study under ``path``; returns the exit code and each study's outcome."""
    run_date = run_date or dt.date.today().isoformat()
    outcomes = []
    for study_file in study_files(path):
        try:
            spec = load_study_file(study_file)
        except LeptonSearchError as e:
            outcomes.append(NightlyOutcome(study=str(study_file), status="failed", error=str(e)))
            continue
        locations = Locations.resolve(spec, storage, artifacts)
        outcomes.append(
            run_nightly_study(
                spec,
                study_file,
                locations=locations,
                run_date=run_date,
                out_dir=out_dir,
                ray_address=ray_address,
                on_event=on_event,
            )
        )
    if any(o.status == "failed" for o in outcomes):
        return EXIT_FAILED, outcomes
    if any(o.status == "regressed" for o in outcomes):
        return EXIT_REGRESSION, outcomes
    return EXIT_OK, outcomes
