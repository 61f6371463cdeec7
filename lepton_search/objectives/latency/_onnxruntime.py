"""ONNX Runtime latency backends: the CPU execution provider, and CUDA and TensorRT on a GPU.

GPU sessions are fed through I/O binding, so a timed run is the model's work rather than
host-device copies.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

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

SLOWDOWN_ENV = "LEPTON_TEST_SLOWDOWN_MS"


class _OrtRunner(Runner):
    def __init__(self, session: Any) -> None:
        self._session = session
        # Test hook (documented in the README): adds this many milliseconds to every run, so that
        # tests can check that nightly drift detection rings. Never set it in production.
        self._slowdown_s = float(os.environ.get(SLOWDOWN_ENV, "0") or 0) / 1000.0
        self._inputs = [i.name for i in session.get_inputs()]
        self._outputs = [o.name for o in session.get_outputs()]

    def _feed(self, inputs: Inputs) -> dict[str, np.ndarray]:
        if isinstance(inputs, np.ndarray):
            return {self._inputs[0]: inputs}
        return dict(inputs)

    def run(self, inputs: Inputs) -> np.ndarray:
        if self._slowdown_s:
            time.sleep(self._slowdown_s)
        return self._session.run(None, self._feed(inputs))[0]

    def close(self) -> None:
        self._session = None


class _OrtDeviceRunner(_OrtRunner):
    """A session on a GPU execution provider, fed through I/O binding.

    Inputs are copied to the device once per inputs object and outputs stay there, so a timed run
    is the model's work rather than host-device copies. ONNX Runtime runs on its own CUDA stream,
    which torch's events cannot see; the run is timed by the wall clock around the run and a
    synchronisation of its outputs.
    """

    def __init__(self, session: Any, device_id: int) -> None:
        super().__init__(session)
        self._device_id = device_id
        self._bound: tuple[Any, Any, list[Any]] | None = None

    def _binding(self, inputs: Inputs) -> Any:
        import onnxruntime as ort

        if self._bound is not None and self._bound[0] is inputs:
            return self._bound[1]
        binding = self._session.io_binding()
        values = []
        for name, array in self._feed(inputs).items():
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), "cuda", self._device_id)
            binding.bind_ortvalue_input(name, value)
            values.append(value)  # the binding does not keep the device buffers alive
        for name in self._outputs:
            binding.bind_output(name, "cuda", self._device_id)
        self._bound = (inputs, binding, values)
        return binding

    def run(self, inputs: Inputs) -> np.ndarray:
        binding = self._binding(inputs)
        self._session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def timed_run(self, inputs: Inputs) -> float:
        binding = self._binding(inputs)
        start = time.perf_counter_ns()
        self._session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return (time.perf_counter_ns() - start) / 1e6

    def close(self) -> None:
        self._bound = None
        super().close()


_GPU_ORT_HINT = (
    "Install the GPU build of ONNX Runtime in place of the CPU one (`pip uninstall onnxruntime && "
    "pip install onnxruntime-gpu`) on a machine with an NVIDIA GPU, CUDA 12 and cuDNN 9"
)


@register_backend
class OnnxRuntimeCPUBackend(LatencyBackend):
    """ONNX Runtime's CPU execution provider, sequential execution, full graph optimisation."""

    name = "onnxruntime-cpu"
    provider = "CPUExecutionProvider"

    def _session_options(self, threads: int) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        return options

    def _providers(self) -> list[Any]:
        return [self.provider]

    def _session(self, model_path: Path, threads: int) -> Any:
        import onnxruntime as ort

        from lepton_search.objectives._graph import model_session_level

        options = self._session_options(threads)
        # A model tuned for another session optimisation level (graph.optimization_level) records it.
        options.graph_optimization_level = model_session_level(model_path)
        try:
            session = ort.InferenceSession(str(model_path), options, providers=self._providers())
        except Exception as e:
            raise MeasurementError(f"ONNX Runtime could not open {model_path.name} on {self.provider}: {e}") from e
        if self.provider not in session.get_providers():
            # ONNX Runtime falls back to the CPU silently when a GPU provider cannot start.
            raise MeasurementError(
                f"ONNX Runtime opened {model_path.name} on {session.get_providers()}, not {self.provider}: the "
                f"provider is installed but could not start (no GPU visible, or a CUDA/cuDNN/TensorRT library "
                f"missing). Check `nvidia-smi` and ONNX Runtime's GPU requirements, or measure with onnxruntime-cpu."
            )
        return session

    def open(self, model_path: Path, threads: int) -> Runner:
        return _OrtRunner(self._session(model_path, threads))

    def manifest(self, threads: int) -> dict[str, Any]:
        import onnxruntime as ort

        return backend_manifest(self, self.provider, "onnxruntime", ort.__version__, threads)


def _ort_provider_availability(provider: str) -> Availability:
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - onnxruntime is a dependency
        return Availability(False, f"onnxruntime cannot be imported ({e})", _GPU_ORT_HINT)
    offered = ort.get_available_providers()
    if provider in offered:
        return Availability(True)
    return Availability(
        False,
        f"ONNX Runtime {ort.__version__} offers {', '.join(offered)}, not {provider}",
        _GPU_ORT_HINT + ("; TensorRT also needs the TensorRT 10 libraries" if "Tensorrt" in provider else ""),
    )


@register_backend
class OnnxRuntimeCUDABackend(OnnxRuntimeCPUBackend):
    """ONNX Runtime's CUDA execution provider on GPU ``device_id``, inputs and outputs on the GPU."""

    name = "onnxruntime-cuda"
    provider = "CUDAExecutionProvider"
    device_kind = "gpu"

    def __init__(self, device_id: int = 0) -> None:
        self.device_id = device_id

    @classmethod
    def availability(cls) -> Availability:
        return _ort_provider_availability(cls.provider)

    def _providers(self) -> list[Any]:
        return [(self.provider, {"device_id": self.device_id}), "CPUExecutionProvider"]

    def open(self, model_path: Path, threads: int) -> Runner:
        return _OrtDeviceRunner(self._session(model_path, threads), self.device_id)

    def manifest(self, threads: int) -> dict[str, Any]:
        import onnxruntime as ort

        return backend_manifest(self, self.provider, "onnxruntime", ort.__version__, threads, self.device_id)

    def memory_probe(self) -> MemoryProbe:
        from lepton_search.objectives.latency._torch import DeviceMemoryProbe

        return DeviceMemoryProbe(self.device_id, device_used=True)


def _tensorrt_cache_dir() -> Path:
    root = os.environ.get("LEPTON_TENSORRT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lepton-search", "tensorrt"
    )
    return Path(root)


@register_backend
class OnnxRuntimeTensorRTBackend(OnnxRuntimeCUDABackend):
    """ONNX Runtime's TensorRT execution provider (CUDA for what TensorRT does not take).

    Engines and timing caches are kept in ``$LEPTON_TENSORRT_CACHE`` (default
    ``~/.cache/lepton-search/tensorrt``): an engine build can take minutes, and it happens while
    the session opens, so it is never part of a timed run (the session's ``open_ms`` shows it).
    """

    name = "onnxruntime-tensorrt"
    provider = "TensorrtExecutionProvider"

    def _providers(self) -> list[Any]:
        cache = _tensorrt_cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        options = {
            "device_id": self.device_id,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache),
        }
        return [(self.provider, options), ("CUDAExecutionProvider", {"device_id": self.device_id})]
