"""CPUs to simulate: ``/proc/cpuinfo`` of the three CPUs this project has run on.

Kernels differ between CPUs with one model name, so tests and tools that must show what happens on
another CPU override the probe (``devices._machine``) with one of these files. Only the CPU is
simulated (its vendor, family, model and ISA flags): the measurements still run on this machine.

- ``epyc-avx2``: an AMD EPYC reporting AVX2 and FMA but no AVX-512 and no VNNI (Zen 2, family 23
  model 49), the CPU the README's first figures came from;
- ``epyc-zen5``: an AMD EPYC with AVX-512 F/BW/VL/VNNI/BF16 and AVX-VNNI (Zen 5, family 26);
- ``xeon-emerald-rapids``: this project's development machine on the day the hardware-aware space
  was written (Intel family 6 model 207: AVX-512 VNNI/BF16/FP16, AMX-INT8/BF16).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lepton_search.devices._machine import FileCpuProbe

CPUINFO_DIR = Path(__file__).parent / "cpuinfo"

SIMULATED_CPUS: dict[str, Path] = {
    "epyc-avx2": CPUINFO_DIR / "amd-epyc-zen2-avx2.txt",
    "epyc-zen5": CPUINFO_DIR / "amd-epyc-zen5-avx512.txt",
    "xeon-emerald-rapids": CPUINFO_DIR / "intel-xeon-emerald-rapids-amx.txt",
}


def cpu_probe(name: str) -> FileCpuProbe:
    """A probe that reads the simulated CPU ``name`` (a key of :data:`SIMULATED_CPUS`).

    Raises:
        KeyError: ``name`` is not a simulated CPU; the message lists those that are.
    """
    from lepton_search.devices._machine import FileCpuProbe

    if name not in SIMULATED_CPUS:
        raise KeyError(f"No simulated CPU {name!r}; simulated CPUs: {sorted(SIMULATED_CPUS)}.")
    return FileCpuProbe(SIMULATED_CPUS[name])


@contextlib.contextmanager
def simulated_cpu(name: str) -> Iterator[FileCpuProbe]:
    """Within the block, manifests, device classes and the space's hardware decisions describe
    the simulated CPU ``name``."""
    from lepton_search.devices._machine import use_cpu_probe

    with use_cpu_probe(cpu_probe(name)) as probe:
        yield probe
