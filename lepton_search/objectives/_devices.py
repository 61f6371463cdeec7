"""Facts about the device a measurement runs on: CPU model, GPU name and clocks, process memory.

Everything here tolerates absence: a machine without ``nvidia-smi``, a kernel without
``/proc/self/clear_refs``, or a torch build without CUDA yields fewer facts, never an error, because
a manifest with a missing clock is still worth recording and a failing manifest would lose the
measurement it describes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import shutil
import subprocess
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


def cpu_model() -> str:
    """The CPU's model name, from ``/proc/cpuinfo`` where it exists."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
    """What is known about CUDA GPU ``index``: name, compute capability, clocks (MHz), driver.

    Uses torch where it sees the GPU and ``nvidia-smi`` for clocks; returns what either could read.
    """
    info: dict[str, Any] = {"device_class": "gpu"}
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(index)
            info["device"] = props.name
            info["compute_capability"] = f"{props.major}.{props.minor}"
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


def device_manifest(device_class: str, gpu_index: int = 0) -> dict[str, Any]:
    """The device part of a measurement's manifest: the CPU model and core count, or what
    :func:`gpu_manifest` reads of GPU ``gpu_index``; and the host."""
    if device_class == "cpu":
        device: dict[str, Any] = {"device_class": "cpu", "device": cpu_model(), "cpu_count": os.cpu_count()}
    else:
        device = gpu_manifest(gpu_index)
    return {**device, "host": platform.node()}
