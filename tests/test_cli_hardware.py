"""``lepton-search validate`` states the space's hardware decisions and their reasons; on a CPU
where a listed knob cannot run, it refuses with the reason. CPUs are simulated with $LEPTON_CPUINFO."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lepton_search.testing import SIMULATED_CPUS, study_dict, write_toml

ROOT = Path(__file__).resolve().parents[1]


def _validate(study: Path, cpu: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lepton_search", "validate", str(study)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LEPTON_CPUINFO": str(SIMULATED_CPUS[cpu])},
        check=False,
    )


def test_validate_states_the_decisions_for_the_cpu() -> None:
    deploy = ROOT / "studies" / "digits-deploy.toml"  # lists bf16 for torch-cpu
    avx2 = _validate(deploy, "epyc-avx2")
    assert avx2.returncode == 0, avx2.stderr
    assert "Decided for this CPU (Zen 2, AVX2, no VNNI):" in avx2.stdout
    assert (
        "bf16 is not offered on torch-cpu" in avx2.stdout
        and "reduce_range (7-bit int8 weights) is searched" in avx2.stdout
    )
    zen5 = _validate(deploy, "epyc-zen5")
    assert zen5.returncode == 0, zen5.stderr
    assert "Decided for this CPU (Zen 5, AVX-512 VNNI/BF16):" in zen5.stdout
    assert "bf16 is offered on torch-cpu" in zen5.stdout and "reduce_range is not searched" in zen5.stdout


def test_validate_refuses_a_space_left_empty_on_this_cpu(tmp_path: Path) -> None:
    data = study_dict(tmp_path, tmp_path, space={"deployment": {"backend": ["torch-cpu"], "torch_precision": ["bf16"]}})
    study = write_toml(tmp_path / "bf16.toml", data)
    refused = _validate(study, "epyc-avx2")
    assert refused.returncode == 1
    assert refused.stderr.startswith("Error: ") and "neither AVX-512 BF16 nor AMX-BF16" in refused.stderr
    assert "Add fp32 to torch_precision" in refused.stderr
    assert _validate(study, "xeon-emerald-rapids").returncode == 0
