"""Small, fast study files for tests and benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

FAST_MEASUREMENT: dict[str, Any] = {
    "threads": 1,
    "batch_size": 32,
    "sessions": 2,
    "warmup_runs": 3,
    "warmup_s": 0.02,
    "min_iterations": 10,
    "min_session_s": 0.05,
    "bootstrap_resamples": 200,
    "remeasure_sessions": 3,
    "calibration_runs": 3,
}

FAST_SPACE: dict[str, Any] = {
    "quantization": {
        "precision": ["fp32", "int8"],
        "int8_mode": ["static"],
        "calibration_method": ["minmax"],
        "calibration_batches": [1, 2],
    },
    "pruning": {"method": ["none", "channel"], "ratio": [0.25, 0.5], "ratio_step": 0.25},
    "distillation": {"method": ["none", "hard"], "epochs": [1, 1]},
}


def study_dict(tmp_path: Path, artifacts: Path, **sections: Any) -> dict[str, Any]:
    """A small, fast study file as a dict; keyword sections replace the defaults."""
    data: dict[str, Any] = {
        "study": {
            "name": "test-study",
            "task": "lepton_search.testing.tasks:small_digits_task",
            "storage": f"sqlite:///{tmp_path / 'study.db'}",
            "artifacts": str(artifacts),
        },
        "sampler": {"name": "random"},
        "budget": {"n_trials": 4, "workers": 2, "trial_timeout_s": 600},
        "space": FAST_SPACE,
        "measurement": FAST_MEASUREMENT,
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    """Writes ``data`` as TOML (tables, arrays of tables, strings, numbers, booleans, lists)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        return repr(v)

    lines: list[str] = []

    def table(prefix: str, d: dict[str, Any]) -> None:
        scalars = {
            k: v
            for k, v in d.items()
            if not isinstance(v, dict) and not (isinstance(v, list) and v and isinstance(v[0], dict))
        }
        lines.append(f"[{prefix}]")
        lines.extend(f"{k} = {value(v)}" for k, v in scalars.items())
        for k, v in d.items():
            if isinstance(v, dict) and k not in scalars:
                table(f"{prefix}.{k}", v)

    for key, section in data.items():
        if isinstance(section, list):
            for item in section:
                lines.append(f"[[{key}]]")
                lines.extend(f"{k} = {value(v)}" for k, v in item.items())
        else:
            table(key, section)
    path.write_text("\n".join(lines) + "\n")
    return path
