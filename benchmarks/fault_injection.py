"""Kill the driver with SIGKILL at random points of a study and rerun it; nothing may be lost.

    python benchmarks/fault_injection.py [--trials 40] [--kills 5] [--seed 0] [--json] [--workdir DIR]

Runs `lepton-search run` on a small digits study (real Ray, real SQLite, real ONNX Runtime) as a
subprocess, SIGKILLs it after a random number of newly completed trials, reruns it, and repeats.
At the end it checks that the study holds exactly the budgeted number of trials (each completed, or
failed with a reason), and that every trial completed before each kill is still there unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from lepton_search.search._study import counts_toward_budget
from lepton_search.testing import FAST_SPACE, study_dict, write_toml


def _completed(storage: str) -> dict[int, list[float]]:
    try:
        study = optuna.load_study(study_name="test-study", storage=storage)
    except KeyError:
        return {}
    return {t.number: list(t.values) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}


def _run_command(study_file: Path) -> list[str]:
    return [sys.executable, "-m", "lepton_search", "run", str(study_file), "--no-progress"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = random.Random(args.seed)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lepton-faults-"))
    workdir.mkdir(parents=True, exist_ok=True)
    # Repeated proposals are served from the cache and not counted, so the space must hold more
    # distinct configurations than the budget: 3 quantizations x (unpruned, or channel pruning at
    # 11 ratios with and without distillation) = 69.
    space = {**FAST_SPACE, "pruning": {"method": ["none", "channel"], "ratio": [0.1, 0.6], "ratio_step": 0.05}}
    data = study_dict(workdir, workdir / "artifacts", budget={"n_trials": args.trials, "workers": 2}, space=space)
    study_file = write_toml(workdir / "study.toml", data)
    storage = f"sqlite:///{workdir / 'study.db'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = (workdir / "runs.log").open("w")
    started = time.monotonic()

    seen: dict[int, list[float]] = {}
    lost = 0
    kills = 0
    while kills < args.kills:
        target = len(_completed(storage)) + rng.randint(1, max(1, args.trials // (args.kills + 2)))
        process = subprocess.Popen(_run_command(study_file), cwd=workdir, env=env, stdout=log, stderr=log)
        while process.poll() is None and len(_completed(storage)) < target:
            time.sleep(0.2)
        if process.poll() is not None:
            break  # the study finished before this kill point
        time.sleep(rng.uniform(0.0, 2.0))  # land the kill anywhere: mid-trial, mid-write, mid-measurement
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        now = _completed(storage)
        lost += sum(1 for number, values in seen.items() if now.get(number) != values)
        seen.update(now)
        print(f"kill {kills}: {len(now)} trials completed so far", file=sys.stderr, flush=True)

    final = subprocess.run(_run_command(study_file), cwd=workdir, env=env, stdout=log, stderr=log)
    study = optuna.load_study(study_name="test-study", storage=storage)
    now = _completed(storage)
    lost += sum(1 for number, values in seen.items() if now.get(number) != values)
    # The driver's own rule: re-queued orphans, repeats served from the cache and tie-group cores
    # evaluated after the budget are not evaluations of the budget.
    counted = [t for t in study.trials if t.state.is_finished() and counts_toward_budget(t)]
    unexplained = [t.number for t in counted if t.state == TrialState.FAIL and not t.user_attrs.get("fail_reason")] + [
        t.number for t in study.trials if not t.state.is_finished()
    ]
    result = {
        "budget": args.trials,
        "final_trials": len(counted),
        "completed": sum(1 for t in counted if t.state == TrialState.COMPLETE),
        "failed_with_reason": sum(1 for t in counted if t.state == TrialState.FAIL),
        "orphans_requeued": sum(1 for t in study.trials if t.user_attrs.get("requeued")),
        "served_from_cache": sum(1 for t in study.trials if "duplicate_of" in t.user_attrs),
        "tie_cores": sum(1 for t in study.trials if "tie_core_of" in t.user_attrs),
        "lost_completed": lost,
        "unexplained": len(unexplained),
        "kills": kills,
        "final_exit_code": final.returncode,
        "elapsed_s": round(time.monotonic() - started, 1),
        "workdir": str(workdir),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>20}: {value}")
    ok = (
        result["final_trials"] == args.trials
        and lost == 0
        and not unexplained
        and final.returncode == 0
        and kills == args.kills
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
