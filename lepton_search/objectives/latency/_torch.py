"""PyTorch latency backends: eager on the CPU, and eager, ``torch.compile`` and CUDA graphs on a GPU.

They open programs saved with ``torch.export.save`` (``.pt2``), never pickled modules: loading a
pickle runs arbitrary code, and an exported program is what a deployment would run anyway.

GPU runs are timed with CUDA events recorded around the model's work on the current stream and read
after synchronising, so a timed run is the device's time, not the time to launch kernels. Inputs
are copied to the device once per inputs object and outputs stay there.

This module imports torch only when a backend is used, so registering the backends costs nothing.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lepton_search.errors import MeasurementError
from lepton_search.objectives.latency._backends import (
    Availability,
    LatencyBackend,
    MemoryProbe,
    Runner,
    backend_manifest,
    register_backend,
)
from lepton_search.objectives.latency._settings import Inputs

if TYPE_CHECKING:
    import torch

_CUDA_HINT = (
    "Install a CUDA build of torch (https://pytorch.org/get-started/locally/) on a machine with an NVIDIA GPU, "
    "or measure with torch-cpu"
)


def load_exported_program(path: Path) -> Any:
    """The ``torch.export`` program saved at ``path``, loaded only after
    :func:`~lepton_search.objectives._program_check.check_program_archive` found nothing in it that
    would run code (pickles, compiled libraries, executable expressions).

    Raises:
        UnsafeModelError: the archive would run code from itself when loaded or run.
        MeasurementError: ``path`` is not a program saved with ``torch.export.save``.
    """
    import io

    import torch

    from lepton_search.objectives._program_check import check_program_archive

    try:
        data = path.read_bytes()
    except OSError as e:
        raise MeasurementError(f"Cannot read the program {str(path)!r}: {e.strerror or e}.") from e
    # The checked bytes are the ones torch loads: the file cannot be swapped in between.
    check_program_archive(data, path.name)
    try:
        return torch.export.load(io.BytesIO(data))
    except Exception as e:
        raise MeasurementError(
            f"{path.name} is not a torch.export program ({type(e).__name__}: {e}). Save one with "
            f"torch.export.save(torch.export.export(model, example_args), 'model.pt2'); pickled modules "
            f"(torch.save of a module) are not accepted."
        ) from e


def user_input_names(program: Any) -> list[str]:
    """The names of a program's user inputs (its parameters and buffers excluded), in call order."""
    return list(program.graph_signature.user_inputs)


class _TorchRunner(Runner):
    """Calls an exported program's module with tensors made once per inputs object."""

    def __init__(self, fn: Callable[..., Any], names: list[str], device: torch.device) -> None:
        self._fn = fn
        self._names = names
        self._device = device
        self._cached: tuple[Any, list[torch.Tensor]] | None = None

    def _tensors(self, inputs: Inputs) -> list[torch.Tensor]:
        import torch

        # The inputs object is kept with its tensors, so an id cannot be reused while cached.
        if self._cached is not None and self._cached[0] is inputs:
            return self._cached[1]
        if isinstance(inputs, np.ndarray):
            arrays = [inputs]
        else:
            missing = [n for n in self._names if n not in inputs]
            if missing:
                raise MeasurementError(
                    f"The program's inputs are {self._names}; no array was given for {missing} (got {sorted(inputs)})."
                )
            arrays = [inputs[n] for n in self._names]
        tensors = [torch.from_numpy(np.ascontiguousarray(a)).to(self._device) for a in arrays]
        self._cached = (inputs, tensors)
        return tensors

    def _forward(self, tensors: list[torch.Tensor]) -> Any:
        import torch

        with torch.inference_mode():
            return self._fn(*tensors)

    def run(self, inputs: Inputs) -> np.ndarray:
        out = self._forward(self._tensors(inputs))
        first = out[0] if isinstance(out, (tuple, list)) else out
        return first.detach().cpu().numpy()

    def timed_run(self, inputs: Inputs) -> float:
        import time

        tensors = self._tensors(inputs)
        start = time.perf_counter_ns()
        self._forward(tensors)
        return (time.perf_counter_ns() - start) / 1e6

    def close(self) -> None:
        self._fn = None  # type: ignore[assignment]
        self._cached = None


class _CudaEventRunner(_TorchRunner):
    """Times the model's work on the GPU with CUDA events, after synchronising."""

    def __init__(self, fn: Callable[..., Any], names: list[str], device: torch.device) -> None:
        import torch

        super().__init__(fn, names, device)
        with torch.cuda.device(device):
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)

    def timed_run(self, inputs: Inputs) -> float:
        import torch

        tensors = self._tensors(inputs)
        stream = torch.cuda.current_stream(self._device)
        torch.cuda.synchronize(self._device)  # nothing queued earlier may land inside the window
        self._start.record(stream)
        self._forward(tensors)
        self._end.record(stream)
        self._end.synchronize()
        return float(self._start.elapsed_time(self._end))

    def close(self) -> None:
        import torch

        super().close()
        torch.cuda.synchronize(self._device)
        torch.cuda.empty_cache()


class _CudaGraphRunner(_CudaEventRunner):
    """Captures the model once into a CUDA graph, then replays it: no per-kernel launch cost.

    The graph is captured on the first run with that run's inputs as its static input buffers;
    a run with another inputs object copies the new values into them (same shapes required).
    """

    def __init__(self, fn: Callable[..., Any], names: list[str], device: torch.device) -> None:
        super().__init__(fn, names, device)
        self._graph: Any = None
        self._static_in: list[torch.Tensor] = []
        self._static_out: Any = None
        self._source: Any = None

    def _capture(self, tensors: list[torch.Tensor]) -> None:
        import torch

        # Kernels pick algorithms and allocate workspaces on their first runs; capture after that,
        # on a side stream as CUDA graphs require.
        stream = torch.cuda.Stream(self._device)
        stream.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(3):
                self._fn(*tensors)
        torch.cuda.current_stream(self._device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.inference_mode(), torch.cuda.graph(graph):
                self._static_out = self._fn(*tensors)
        except Exception as e:
            raise MeasurementError(
                f"The program cannot be captured as a CUDA graph ({type(e).__name__}: {e}); it probably "
                f"synchronises with the host or has data-dependent shapes. Measure it with torch-cuda or "
                f"torch-cuda-compile."
            ) from e
        self._graph = graph
        self._static_in = tensors

    def _replay_inputs(self, inputs: Inputs) -> None:
        tensors = self._tensors(inputs)
        if self._graph is None:
            self._capture(tensors)
        elif self._source is not inputs:
            for static, new in zip(self._static_in, tensors):
                static.copy_(new)
        self._source = inputs

    def _forward(self, tensors: list[torch.Tensor]) -> Any:
        self._graph.replay()
        return self._static_out

    def run(self, inputs: Inputs) -> np.ndarray:
        self._replay_inputs(inputs)
        return super().run(inputs)

    def timed_run(self, inputs: Inputs) -> float:
        self._replay_inputs(inputs)
        return super().timed_run(inputs)

    def close(self) -> None:
        self._graph = None
        self._static_in = []
        self._static_out = None
        self._source = None
        super().close()


class DeviceMemoryProbe(MemoryProbe):
    """Peak GPU memory one session adds.

    torch's own allocations are read exactly: ``max_memory_allocated`` after a reset, minus what was
    allocated before. With ``device_used`` (for ONNX Runtime, whose CUDA arena torch cannot see) the
    rise in the device's used memory counts too, and the larger of the two is reported; the arena
    keeps its peak, so its size after the runs is its peak.
    """

    def __init__(self, device_id: int = 0, *, device_used: bool = False) -> None:
        self._device_id = device_id
        self._device_used = device_used
        self._allocated = 0
        self._used = 0
        self._ok = False

    def start(self) -> None:
        try:
            import torch

            if not torch.cuda.is_available():
                return
            torch.cuda.synchronize(self._device_id)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self._device_id)
            self._allocated = torch.cuda.memory_allocated(self._device_id)
            free, total = torch.cuda.mem_get_info(self._device_id)
            self._used = total - free
            self._ok = True
        except Exception:  # no CUDA-enabled torch here: the peak is unknown, not an error
            self._ok = False

    def peak_mb(self) -> float | None:
        if not self._ok:
            return None
        import torch

        torch.cuda.synchronize(self._device_id)
        allocated = torch.cuda.max_memory_allocated(self._device_id) - self._allocated
        used = 0
        if self._device_used:
            free, total = torch.cuda.mem_get_info(self._device_id)
            used = (total - free) - self._used
        return max(0, allocated, used) / 2**20


class TorchCPUBackend(LatencyBackend):
    """A ``torch.export`` program run eagerly on the CPU with ``threads`` intra-op threads."""

    name = "torch-cpu"
    model_format = "torch-export"
    execution_provider = "torch eager (cpu)"

    def _load(self, model_path: Path, device: str) -> tuple[Any, list[str]]:
        program = load_exported_program(model_path)
        names = user_input_names(program)
        if device != "cpu":
            from torch.export.passes import move_to_device_pass

            try:
                program = move_to_device_pass(program, device)
            except Exception as e:
                raise MeasurementError(
                    f"{model_path.name} could not be moved to {device} ({type(e).__name__}: {e}); export it "
                    f"without device-specific constants."
                ) from e
        return program.module(), names

    def open(self, model_path: Path, threads: int) -> Runner:
        import torch

        torch.set_num_threads(threads)
        module, names = self._load(model_path, "cpu")
        return _TorchRunner(module, names, torch.device("cpu"))

    def manifest(self, threads: int) -> dict[str, Any]:
        import torch

        return backend_manifest(self, self.execution_provider, "torch", torch.__version__, threads)


def _cuda_availability() -> Availability:
    try:
        import torch
    except ImportError as e:  # pragma: no cover - torch is a dependency
        return Availability(False, f"torch cannot be imported ({e})", _CUDA_HINT)
    if not torch.cuda.is_available():
        build = f"torch {torch.__version__} " + (
            f"(CUDA {torch.version.cuda}) sees no GPU" if torch.version.cuda else "is a CPU-only build"
        )
        return Availability(False, build, _CUDA_HINT)
    return Availability(True)


class TorchCUDABackend(TorchCPUBackend):
    """A ``torch.export`` program run eagerly on CUDA GPU ``device_id``."""

    name = "torch-cuda"
    device_kind = "gpu"
    execution_provider = "torch eager (cuda)"
    runner_class: type[_TorchRunner] = _CudaEventRunner

    def __init__(self, device_id: int = 0) -> None:
        self.device_id = device_id

    @classmethod
    def availability(cls) -> Availability:
        return _cuda_availability()

    def _callable(self, module: Any) -> Callable[..., Any]:
        return module

    def open(self, model_path: Path, threads: int) -> Runner:
        import torch

        torch.set_num_threads(threads)
        device = torch.device("cuda", self.device_id)
        module, names = self._load(model_path, str(device))
        return self.runner_class(self._callable(module), names, device)

    def manifest(self, threads: int) -> dict[str, Any]:
        import torch

        return backend_manifest(self, self.execution_provider, "torch", torch.__version__, threads, self.device_id)

    def memory_probe(self) -> MemoryProbe:
        return DeviceMemoryProbe(self.device_id)


class TorchCUDACompileBackend(TorchCUDABackend):
    """``torch.compile`` (Inductor, default mode) of the program on a CUDA GPU.

    Compilation happens on the first runs, inside the warm-up; Inductor's on-disk cache makes
    later sessions of the same program compile quickly.
    """

    name = "torch-cuda-compile"
    execution_provider = "torch.compile inductor (cuda)"

    @classmethod
    def availability(cls) -> Availability:
        status = _cuda_availability()
        if status.usable and importlib.util.find_spec("triton") is None:
            return Availability(
                False, "torch.compile needs Triton on CUDA and it is not installed", "pip install triton"
            )
        return status

    def _callable(self, module: Any) -> Callable[..., Any]:
        import torch

        return torch.compile(module)


class TorchCUDAGraphsBackend(TorchCUDABackend):
    """The program captured once as a CUDA graph and replayed for every run."""

    name = "torch-cuda-graphs"
    execution_provider = "torch CUDA graph replay"
    runner_class = _CudaGraphRunner


for _backend in (TorchCPUBackend, TorchCUDABackend, TorchCUDACompileBackend, TorchCUDAGraphsBackend):
    register_backend(_backend)
