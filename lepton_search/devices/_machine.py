"""Facts about the device a measurement runs on: what decides its kernels, and process memory.

A device is its ISA, not its name: two CPUs that both call themselves "AMD EPYC" ran the same int8
CNN at 0.53x and 0.32x of its fp32 latency, because one had AVX2 only and the other AVX-512 VNNI.
So the manifest of a CPU records the ISA features that decide which kernels ONNX Runtime and torch
run (:data:`KERNEL_FEATURES`), vendor, family, model and stepping with the microarchitecture they
name, cores, caches, memory and hypervisor, and what the libraries chose where they say it. Its
**device class** is a stable hash of what changes kernel choice (architecture, vendor, family,
model, the kernel features, and environment variables that override a library's dispatch), shown
in words ("Zen 5, AVX-512 VNNI/BF16"). Result-cache keys, nightly comparisons, noise calibrations
and ratio comparisons all key on it.

The CPU is read through a :class:`CpuProbe`. The default one reads ``/proc/cpuinfo`` and sysfs, or
the cpuinfo-format file named by ``$LEPTON_CPUINFO`` (so a subprocess can be told it runs on
another CPU); tests simulate other CPUs with :func:`use_cpu_probe`.

Everything here tolerates absence: a machine without ``nvidia-smi``, a kernel without
``/proc/self/clear_refs``, or a torch build without CUDA yields fewer facts, never an error, because
a manifest with a missing clock is still worth recording and a failing manifest would lose the
measurement it describes.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

_PROC_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")

# Queried together in one call; `nounits` keeps the values numeric ("1980", not "1980 MHz").
_GPU_QUERY = (
    "name",
    "driver_version",
    "clocks.sm",
    "clocks.mem",
    "clocks.max.sm",
    "clocks.max.mem",
    "temperature.gpu",
    "power.draw",
    "pstate",
    "memory.total",
)
_TEXT_FIELDS = ("name", "driver_version", "pstate")


#: x86 ISA features (``/proc/cpuinfo`` flag names) that decide which kernels ONNX Runtime's MLAS,
#: oneDNN and torch pick: vector width and FMA (avx2, fma, avx512f/bw/vl), half-precision
#: conversion (f16c), int8 dot products (avx512_vnni, avx_vnni, amx_int8), bf16 and fp16 arithmetic
#: (avx512_bf16, amx_bf16, avx512_fp16, amx_fp16) and the AMX tile unit.
X86_KERNEL_FEATURES: tuple[str, ...] = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "amx_fp16",
)
#: The same for 64-bit ARM (``Features`` names): NEON, int8 dot products (asimddp, i8mm), fp16 and
#: bf16 arithmetic, SVE.
ARM_KERNEL_FEATURES: tuple[str, ...] = ("asimd", "asimddp", "asimdhp", "i8mm", "bf16", "sve", "sve2")
KERNEL_FEATURES: tuple[str, ...] = X86_KERNEL_FEATURES + ARM_KERNEL_FEATURES

#: Environment variables that override a library's own ISA dispatch: with one of them set, the same
#: CPU runs other kernels, so they are part of the device class.
DISPATCH_OVERRIDES: tuple[str, ...] = (
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_CBWR",
)

#: Names a user reads: ``/proc/cpuinfo`` flag -> ISA name.
FEATURE_NAMES: dict[str, str] = {
    "avx2": "AVX2",
    "fma": "FMA",
    "f16c": "F16C",
    "avx512f": "AVX-512F",
    "avx512bw": "AVX-512BW",
    "avx512vl": "AVX-512VL",
    "avx512_vnni": "AVX-512 VNNI",
    "avx512_bf16": "AVX-512 BF16",
    "avx512_fp16": "AVX-512 FP16",
    "avx_vnni": "AVX-VNNI",
    "amx_tile": "AMX tile",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
    "amx_fp16": "AMX-FP16",
    "asimd": "NEON",
    "asimddp": "dot product",
    "asimdhp": "fp16 arithmetic",
    "i8mm": "I8MM",
    "bf16": "BF16",
    "sve": "SVE",
    "sve2": "SVE2",
}

# Intel family 6 server and client models (Intel SDM, "CPUID Signature Values"; Linux
# arch/x86/include/asm/intel-family.h). Model 0x55 is three generations told apart by stepping.
_INTEL_FAMILY6: dict[int, str] = {
    0x3C: "Haswell",
    0x3F: "Haswell",
    0x45: "Haswell",
    0x46: "Haswell",
    0x3D: "Broadwell",
    0x47: "Broadwell",
    0x4F: "Broadwell",
    0x56: "Broadwell",
    0x4E: "Skylake",
    0x5E: "Skylake",
    0x8E: "Kaby Lake",
    0x9E: "Coffee Lake",
    0xA5: "Comet Lake",
    0xA6: "Comet Lake",
    0x66: "Cannon Lake",
    0x6A: "Ice Lake",
    0x6C: "Ice Lake",
    0x7D: "Ice Lake",
    0x7E: "Ice Lake",
    0x8C: "Tiger Lake",
    0x8D: "Tiger Lake",
    0xA7: "Rocket Lake",
    0x97: "Alder Lake",
    0x9A: "Alder Lake",
    0xB7: "Raptor Lake",
    0xBA: "Raptor Lake",
    0xBF: "Raptor Lake",
    0xAA: "Meteor Lake",
    0xAC: "Meteor Lake",
    0xBD: "Lunar Lake",
    0xC5: "Arrow Lake",
    0xC6: "Arrow Lake",
    0x8F: "Sapphire Rapids",
    0xCF: "Emerald Rapids",
    0xAD: "Granite Rapids",
    0xAE: "Granite Rapids",
    0xAF: "Sierra Forest",
    0xDD: "Clearwater Forest",
}

# AMD (family, first model, last model) -> core: AMD's revision guides and Linux's
# arch/x86/kernel/cpu/amd.c. Family 0x17 is Zen/Zen+/Zen 2, 0x19 Zen 3/Zen 4, 0x1A Zen 5.
_AMD_RANGES: tuple[tuple[int, int, int, str], ...] = (
    (0x17, 0x00, 0x0F, "Zen"),
    (0x17, 0x10, 0x2F, "Zen+"),
    (0x17, 0x30, 0xAF, "Zen 2"),
    (0x19, 0x00, 0x0F, "Zen 3"),
    (0x19, 0x10, 0x1F, "Zen 4"),
    (0x19, 0x20, 0x5F, "Zen 3"),
    (0x19, 0x60, 0xAF, "Zen 4"),
    (0x1A, 0x00, 0xFF, "Zen 5"),
)


# The Intel cores that have AMX tiles; a CPU reporting AMX with any other model number is a
# hypervisor's made-up signature (seen here: AMX with model 0xA7, a Rocket Lake desktop part).
_INTEL_AMX = frozenset({"Sapphire Rapids", "Emerald Rapids", "Granite Rapids"})


def microarchitecture(
    vendor: str,
    family: int | None,
    model: int | None,
    stepping: int | None = None,
    flags: Iterable[str] = (),
) -> str | None:
    """The microarchitecture that a CPU's vendor, family, model (and stepping) name, where known
    and where the kernel's feature ``flags`` do not contradict it (then None: the ISA words name it)."""
    if family is None or model is None:
        return None
    if vendor == "GenuineIntel" and family == 6:
        if model == 0x55:  # Skylake-SP, Cascade Lake and Cooper Lake share the model number
            if stepping is None:
                return "Skylake-SP/Cascade Lake"
            return "Cooper Lake" if stepping >= 10 else "Cascade Lake" if stepping >= 5 else "Skylake-SP"
        name = _INTEL_FAMILY6.get(model)
        if name is not None and "amx_tile" in set(flags) and name not in _INTEL_AMX:
            return None
        return name
    if vendor in ("AuthenticAMD", "HygonGenuine"):
        for fam, low, high, name in _AMD_RANGES:
            if family == fam and low <= model <= high:
                return name
    return None


class CpuProbe:
    """Where the CPU's facts come from. The default reads this machine; tests and tools that
    describe another CPU override :meth:`cpuinfo` (see :class:`FileCpuProbe`).

    Methods return what they can read and None (or empty) where they cannot.
    """

    #: Shown in the manifest (``cpu.source``), so a simulated CPU is never mistaken for the real one.
    source: str = "/proc/cpuinfo"

    def cpuinfo(self) -> str:
        """The text of ``/proc/cpuinfo`` (empty where there is none)."""
        try:
            return Path("/proc/cpuinfo").read_text()
        except OSError:
            return ""

    def caches_kib(self) -> dict[str, int]:
        """Cache sizes of the first CPU, KiB, by name (``L1d``, ``L1i``, ``L2``, ``L3``)."""
        caches: dict[str, int] = {}
        for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
            try:
                level = (index / "level").read_text().strip()
                kind = (index / "type").read_text().strip()
                size = (index / "size").read_text().strip()
            except OSError:
                continue
            name = f"L{level}" + {"Data": "d", "Instruction": "i"}.get(kind, "")
            match = re.fullmatch(r"(\d+)([KMG]?)", size)
            if match:
                caches[name] = int(match.group(1)) * {"": 1, "K": 1, "M": 1024, "G": 1024**2}[match.group(2)]
        return caches

    def memory_mib(self) -> int | None:
        """Total memory (``MemTotal``), MiB."""
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
        except (OSError, ValueError, IndexError):
            pass
        return None

    def hypervisor_vendor(self) -> str | None:
        """The hypervisor's vendor as ``lscpu`` reads it from CPUID (None on bare metal or unknown)."""
        exe = shutil.which("lscpu")
        if exe is None:
            return None
        try:
            done = subprocess.run([exe], capture_output=True, text=True, timeout=5, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        for line in done.stdout.splitlines():
            if line.startswith("Hypervisor vendor:"):
                return line.split(":", 1)[1].strip() or None
        return None

    def usable_cpus(self) -> int | None:
        """CPUs this process may run on (its affinity mask)."""
        try:
            return len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            return os.cpu_count()


class FileCpuProbe(CpuProbe):
    """A CPU described by a cpuinfo-format file (``/proc/cpuinfo`` of another machine).

    Only the CPU itself is simulated: caches, memory and the hypervisor are read from this machine
    unless given here, and ``cpu.source`` names the file.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        caches_kib: Mapping[str, int] | None = None,
        memory_mib: int | None = None,
        hypervisor_vendor: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.source = str(path)
        self._caches, self._memory, self._hypervisor = caches_kib, memory_mib, hypervisor_vendor

    def cpuinfo(self) -> str:
        try:
            return self.path.read_text()
        except OSError:
            return ""

    def caches_kib(self) -> dict[str, int]:
        return dict(self._caches) if self._caches is not None else super().caches_kib()

    def memory_mib(self) -> int | None:
        return self._memory if self._memory is not None else super().memory_mib()

    def hypervisor_vendor(self) -> str | None:
        return self._hypervisor if self._hypervisor is not None else super().hypervisor_vendor()


#: Names a cpuinfo-format file that describes the CPU instead of ``/proc/cpuinfo`` (for processes
#: started to simulate another CPU, such as a test's ``lepton-search bench``).
CPUINFO_ENV = "LEPTON_CPUINFO"

_PROBE_OVERRIDE: CpuProbe | None = None


def current_cpu_probe() -> CpuProbe:
    """The probe in use: an override (:func:`use_cpu_probe`), ``$LEPTON_CPUINFO``, or this machine."""
    if _PROBE_OVERRIDE is not None:
        return _PROBE_OVERRIDE
    path = os.environ.get(CPUINFO_ENV)
    return FileCpuProbe(path) if path else CpuProbe()


@contextlib.contextmanager
def use_cpu_probe(probe: CpuProbe) -> Iterator[CpuProbe]:
    """Within the block, every manifest, device class and hardware decision describes ``probe``'s CPU."""
    global _PROBE_OVERRIDE
    previous = _PROBE_OVERRIDE
    _PROBE_OVERRIDE = probe
    try:
        yield probe
    finally:
        _PROBE_OVERRIDE = previous


def _first_block(cpuinfo: str) -> dict[str, str]:
    """The key/value pairs of the first processor in ``cpuinfo`` (where x86 and ARM agree)."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text, 0)
    except ValueError:
        return None


def _physical_cores(cpuinfo: str) -> int | None:
    pairs, cores = set(), None
    physical = core = None
    for line in [*cpuinfo.splitlines(), ""]:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            physical = value.strip()
        elif key == "core id":
            core = value.strip()
        elif key == "cpu cores":
            cores = _int(value.strip())
        elif not line.strip():
            if physical is not None and core is not None:
                pairs.add((physical, core))
            physical = core = None
    if pairs:
        return len(pairs)
    return cores


@dataclasses.dataclass(frozen=True)
class CpuIdentity:
    """What a CPU is, as far as kernels are concerned; :attr:`device_class` keys comparisons.

    ``features`` holds the :data:`KERNEL_FEATURES` this CPU has (sorted); ``dispatch_overrides`` the
    :data:`DISPATCH_OVERRIDES` set in the environment.
    """

    architecture: str
    vendor: str
    family: int | None
    model: int | None
    stepping: int | None
    model_name: str
    microarchitecture: str | None
    features: tuple[str, ...]
    logical_cpus: int | None = None
    physical_cores: int | None = None
    usable_cpus: int | None = None
    caches_kib: dict[str, int] = dataclasses.field(default_factory=dict)
    memory_mib: int | None = None
    hypervisor: bool = False
    hypervisor_vendor: str | None = None
    dispatch_overrides: dict[str, str] = dataclasses.field(default_factory=dict)
    source: str = "/proc/cpuinfo"

    def has(self, *features: str) -> bool:
        """Whether the CPU has any of ``features``."""
        return any(f in self.features for f in features)

    @property
    def class_key(self) -> dict[str, Any]:
        """What the device class hashes: what changes the kernels a library runs on this CPU.

        Cores, caches, memory and the hypervisor are recorded but not hashed: the kernels are the
        same on a 2-vCPU and a 64-vCPU machine of one CPU model (threads are part of every
        measurement's setup on their own).
        """
        return {
            "kind": "cpu",
            "architecture": self.architecture,
            "vendor": self.vendor,
            "family": self.family,
            "model": self.model,
            "features": list(self.features),
            "dispatch_overrides": dict(sorted(self.dispatch_overrides.items())),
        }

    @property
    def device_class(self) -> str:
        """``cpu-`` and 12 hex digits of the sha256 of :attr:`class_key`; stable across processes."""
        return "cpu-" + _digest(self.class_key)

    @property
    def isa_summary(self) -> str:
        """The kernel-relevant ISA in a few words: ``AVX-512 VNNI/BF16``, ``AVX2``, ``NEON, dot product``."""
        if self.architecture in ("aarch64", "arm64"):
            words = [FEATURE_NAMES[f] for f in ARM_KERNEL_FEATURES if f in self.features]
            return ", ".join(words) or "no NEON"
        parts: list[str] = []
        if self.has("avx512f"):
            extras = [
                name
                for flag, name in (("avx512_vnni", "VNNI"), ("avx512_bf16", "BF16"), ("avx512_fp16", "FP16"))
                if flag in self.features
            ]
            parts.append("AVX-512" + (" " + "/".join(extras) if extras else ""))
        elif self.has("avx2"):
            parts.append("AVX2" + (", AVX-VNNI" if self.has("avx_vnni") else ", no VNNI"))
        else:
            parts.append("no AVX2")
        amx = [
            name
            for flag, name in (("amx_int8", "INT8"), ("amx_bf16", "BF16"), ("amx_fp16", "FP16"))
            if flag in self.features
        ]
        if amx:
            parts.append("AMX-" + "/".join(amx))
        return ", ".join(parts)

    @property
    def description(self) -> str:
        """The device class in words: microarchitecture (or vendor, family and model) and ISA."""
        if self.microarchitecture:
            name = self.microarchitecture
        elif self.family is not None:
            name = f"{self.vendor or 'CPU'} family {self.family} model {self.model}"
        else:
            name = self.model_name or self.architecture
        text = f"{name}, {self.isa_summary}"
        if self.dispatch_overrides:
            text += " (" + ", ".join(f"{k}={v}" for k, v in sorted(self.dispatch_overrides.items())) + ")"
        return text

    def to_dict(self) -> dict[str, Any]:
        """The ``cpu`` part of a device manifest."""
        return {
            "vendor": self.vendor,
            "family": self.family,
            "model": self.model,
            "stepping": self.stepping,
            "model_name": self.model_name,
            "microarchitecture": self.microarchitecture,
            "architecture": self.architecture,
            "isa": list(self.features),
            "isa_names": [FEATURE_NAMES[f] for f in self.features],
            "logical_cpus": self.logical_cpus,
            "physical_cores": self.physical_cores,
            "usable_cpus": self.usable_cpus,
            "caches_kib": dict(self.caches_kib),
            "memory_mib": self.memory_mib,
            "hypervisor": self.hypervisor,
            "hypervisor_vendor": self.hypervisor_vendor,
            "dispatch_overrides": dict(self.dispatch_overrides),
            "source": self.source,
        }


def _digest(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def cpu_identity_from(probe: CpuProbe, environ: Mapping[str, str] | None = None) -> CpuIdentity:
    """Reads :class:`CpuIdentity` through ``probe`` (an unreadable cpuinfo gives a bare identity)."""
    environ = os.environ if environ is None else environ
    text = probe.cpuinfo()
    first = _first_block(text)
    flags = set((first.get("flags") or first.get("Features") or "").split())
    is_arm = "Features" in first and "flags" not in first
    architecture = ("aarch64" if is_arm else "x86_64") if first else platform.machine() or "unknown"
    vendor = first.get("vendor_id") or (f"ARM implementer {first.get('CPU implementer')}" if is_arm else "")
    if is_arm:
        family, model, stepping = _int(first.get("CPU architecture")), _int(first.get("CPU part")), None
    else:
        family, model, stepping = _int(first.get("cpu family")), _int(first.get("model")), _int(first.get("stepping"))
    processors = sum(1 for line in text.splitlines() if line.split(":", 1)[0].strip() == "processor")
    return CpuIdentity(
        architecture=architecture,
        vendor=vendor,
        family=family,
        model=model,
        stepping=stepping,
        model_name=first.get("model name") or platform.processor() or architecture,
        microarchitecture=None if is_arm else microarchitecture(vendor, family, model, stepping, flags),
        features=tuple(sorted(f for f in KERNEL_FEATURES if f in flags)),
        logical_cpus=processors or None,
        physical_cores=_physical_cores(text),
        usable_cpus=probe.usable_cpus(),
        caches_kib=probe.caches_kib(),
        memory_mib=probe.memory_mib(),
        hypervisor="hypervisor" in flags,
        hypervisor_vendor=probe.hypervisor_vendor() if "hypervisor" in flags else None,
        dispatch_overrides={k: environ[k] for k in DISPATCH_OVERRIDES if environ.get(k)},
        source=probe.source,
    )


_IDENTITIES: dict[tuple[str, tuple[tuple[str, str], ...]], CpuIdentity] = {}


def cpu_identity() -> CpuIdentity:
    """The identity of the CPU this process runs on (as :func:`current_cpu_probe` reads it).

    Read once per probe and process: the lscpu call and sysfs reads cost milliseconds, and the
    result-cache key asks for it on every proposal.
    """
    overrides = tuple((k, os.environ[k]) for k in DISPATCH_OVERRIDES if os.environ.get(k))
    if _PROBE_OVERRIDE is not None:
        memo: dict[Any, CpuIdentity] = _PROBE_OVERRIDE.__dict__.setdefault("_identities", {})
        if overrides not in memo:
            memo[overrides] = cpu_identity_from(_PROBE_OVERRIDE, dict(overrides))
        return memo[overrides]
    probe = current_cpu_probe()
    key = (probe.source, overrides)
    if key not in _IDENTITIES:
        _IDENTITIES[key] = cpu_identity_from(probe, dict(overrides))
    return _IDENTITIES[key]


def cpu_model() -> str:
    """The CPU's model name, from ``/proc/cpuinfo`` where it exists."""
    return cpu_identity().model_name


def library_capabilities(*, torch_loaded: bool | None = None, onnxruntime_loaded: bool | None = None) -> dict[str, Any]:
    """What the libraries chose on this CPU, where they say it, without importing one just to ask.

    ``torch_cpu_capability`` is ``torch.backends.cpu.get_cpu_capability()`` (the ATen kernel set:
    "AVX2", "AVX512", ...). ONNX Runtime does not expose which MLAS kernels it dispatched to; its
    ``onnxruntime_cpu_device`` is the CPU device its execution-provider API reports (vendor and
    ids). The flags say whether to look (default: only if the library is imported already).
    """
    out: dict[str, Any] = {}
    if torch_loaded if torch_loaded is not None else "torch" in sys.modules:
        try:
            import torch

            out["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        except Exception:  # a broken torch install must not lose the measurement this describes
            pass
    if onnxruntime_loaded if onnxruntime_loaded is not None else "onnxruntime" in sys.modules:
        try:
            import onnxruntime as ort

            for ep_device in ort.get_ep_devices():
                if ep_device.ep_name == "CPUExecutionProvider":
                    hw = ep_device.device
                    out["onnxruntime_cpu_device"] = {
                        "vendor": hw.vendor,
                        "vendor_id": hw.vendor_id,
                        "device_id": hw.device_id,
                        "metadata": dict(hw.metadata),
                    }
                    break
            out["onnxruntime_kernel_isa"] = None  # not exposed by ONNX Runtime: MLAS picks from CPUID
        except Exception:  # older ONNX Runtime without the EP-device API, or a broken install
            pass
    return out


def _number(text: str) -> float | str | None:
    text = text.strip()
    if not text or text.startswith("[") or text in ("N/A", "Not Supported"):
        return None
    try:
        return float(text)
    except ValueError:
        return text


def parse_nvidia_smi_csv(output: str) -> list[dict[str, Any]]:
    """Rows of ``nvidia-smi --query-gpu=<_GPU_QUERY> --format=csv,noheader,nounits`` as dicts.

    Unreadable values ("[N/A]", "Not Supported") become None; numeric ones become floats.
    """
    rows = []
    for line in output.strip().splitlines():
        values = [v.strip() for v in line.split(",")]
        if len(values) != len(_GPU_QUERY):
            continue
        row: dict[str, Any] = {}
        for key, value in zip(_GPU_QUERY, values):
            number = _number(value)
            # Names and versions stay text even when they look numeric ("550.54" is a driver).
            row[key] = value if number is not None and key in _TEXT_FIELDS else number
        rows.append(row)
    return rows


def nvidia_smi(index: int = 0, timeout_s: float = 10.0) -> dict[str, Any]:
    """Name, driver, current and maximum clocks (MHz), temperature and power of GPU ``index``.

    Empty when ``nvidia-smi`` is absent or fails: clocks are recorded where they can be read.
    """
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {}
    try:
        done = subprocess.run(
            [exe, f"--query-gpu={','.join(_GPU_QUERY)}", "--format=csv,noheader,nounits", f"--id={index}"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    rows = parse_nvidia_smi_csv(done.stdout) if done.returncode == 0 else []
    return rows[0] if rows else {}


def gpu_manifest(index: int = 0) -> dict[str, Any]:
    """What is known about CUDA GPU ``index``: name, compute capability, clocks (MHz), driver, and
    its device class (a hash of name, compute capability and multiprocessor count, which decide
    the kernels cuBLAS, cuDNN and TensorRT pick; clocks and driver are recorded, not hashed).

    Uses torch where it sees the GPU and ``nvidia-smi`` for clocks; returns what either could read.
    """
    info: dict[str, Any] = {"device_kind": "gpu"}
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(index)
            info["device"] = props.name
            info["compute_capability"] = f"{props.major}.{props.minor}"
            info["multiprocessors"] = props.multi_processor_count
            info["gpu_memory_mb"] = round(props.total_memory / 2**20)
            info["cuda"] = torch.version.cuda
    except Exception:  # a broken CUDA install must not lose the measurement this describes
        pass
    smi = nvidia_smi(index)
    if smi:
        info.setdefault("device", smi.get("name"))
        info["driver"] = smi.get("driver_version")
        info["clocks_mhz"] = {
            "sm": smi.get("clocks.sm"),
            "mem": smi.get("clocks.mem"),
            "max_sm": smi.get("clocks.max.sm"),
            "max_mem": smi.get("clocks.max.mem"),
        }
        info["temperature_c"] = smi.get("temperature.gpu")
        info["power_w"] = smi.get("power.draw")
        info["pstate"] = smi.get("pstate")
    else:
        info["clocks_mhz"] = None  # not readable here: no nvidia-smi
    info.setdefault("device", "unknown GPU")
    key = {
        "kind": "gpu",
        "name": info["device"],
        "compute_capability": info.get("compute_capability"),
        "multiprocessors": info.get("multiprocessors"),
    }
    info["device_class"] = "gpu-" + _digest(key)
    words = [str(info["device"])]
    if info.get("compute_capability"):
        words.append(f"compute capability {info['compute_capability']}")
    if info.get("multiprocessors"):
        words.append(f"{info['multiprocessors']} SMs")
    info["device_class_name"] = ", ".join(words)
    return info


def _status_kb(field: str) -> int | None:
    try:
        for line in _PROC_STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def resident_mb() -> float | None:
    """The process's resident memory now (VmRSS), in MiB; None where /proc is absent."""
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024.0


def high_water_mb() -> float | None:
    """The process's peak resident memory (VmHWM) since start or the last reset, in MiB."""
    kb = _status_kb("VmHWM")
    return None if kb is None else kb / 1024.0


def reset_high_water() -> bool:
    """Resets VmHWM to the current VmRSS (Linux >= 4.0); False where the kernel does not allow it."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


_LIBC: Any = None


def release_freed_memory() -> None:
    """Returns freed heap pages to the OS (glibc's ``malloc_trim``).

    Without this, a session opened after another one was closed reuses the freed pages and its
    resident-memory increase reads too low. Sessions are freed by reference counting when their
    runner closes; a full garbage collection would cost a quarter of a second per session with
    torch loaded, for cycles that inference sessions do not form.
    """
    global _LIBC
    if _LIBC is None:
        name = ctypes.util.find_library("c")
        try:
            _LIBC = ctypes.CDLL(name) if name else False
        except OSError:
            _LIBC = False
    if _LIBC and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


def device_manifest(device_kind: str, gpu_index: int = 0) -> dict[str, Any]:
    """The device part of a measurement's manifest.

    For ``device_kind = "cpu"``: the CPU's identity (``cpu``, see :class:`CpuIdentity`), its
    ``device_class`` and ``device_class_name`` (in words), the model name (``device``), what the
    loaded libraries chose (``libraries``) and the host. For ``"gpu"``: :func:`gpu_manifest` of GPU
    ``gpu_index``, with the host CPU's identity beside it (not part of the GPU's class).

    ``device_kind`` replaces the ``device_class: "cpu" | "gpu"`` of manifests written before the
    device class was a hash; :func:`device_kind_of` reads both.
    """
    cpu = cpu_identity()
    if device_kind == "cpu":
        device: dict[str, Any] = {
            "device_kind": "cpu",
            "device": cpu.model_name,
            "device_class": cpu.device_class,
            "device_class_name": cpu.description,
            "cpu_count": os.cpu_count(),
        }
    else:
        device = gpu_manifest(gpu_index)
    return {**device, "cpu": cpu.to_dict(), "libraries": library_capabilities(), "host": platform.node()}


def device_kind_of(manifest: Mapping[str, Any]) -> str:
    """``"cpu"`` or ``"gpu"`` of a manifest, old or new (old ones kept it in ``device_class``)."""
    kind = manifest.get("device_kind")
    if kind in ("cpu", "gpu"):
        return str(kind)
    return "gpu" if manifest.get("device_class") == "gpu" else "cpu"


def device_class_of(manifest: Mapping[str, Any] | None) -> str | None:
    """The device class hash of a manifest; None for manifests written before it existed."""
    if not manifest:
        return None
    value = manifest.get("device_class")
    return None if value in (None, "cpu", "gpu") else str(value)


def describe_device(manifest: Mapping[str, Any] | None) -> str:
    """A manifest's device class in words, e.g. ``Zen 5, AVX-512 VNNI/BF16 (cpu-1a2b3c4d5e6f)``."""
    if not manifest:
        return "an unrecorded device"
    name = manifest.get("device_class_name") or manifest.get("device") or "an unrecorded device"
    klass = device_class_of(manifest)
    return f"{name} ({klass})" if klass else f"{name} (device class not recorded)"


def same_device_class(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Whether two measurements' manifests name one device class, so that their latencies (and
    ratios) may be compared. Manifests without a class (older versions) match nothing."""
    first, second = device_class_of(a), device_class_of(b)
    return first is not None and first == second
