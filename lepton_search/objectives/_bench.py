"""Measuring any model file outside a study: ``lepton-search bench``.

The protocol is the study's (:mod:`lepton_search.objectives.latency`): fresh sessions, warm-up,
candidate and baseline interleaved, statistics over sessions, a ratio interval and a verdict under
a noise band that can be calibrated on the spot with A/A runs.

Inputs are synthesized from what the model declares, because a model file is all ``bench`` gets:

* dtype and shape come from the ONNX graph inputs (initializers excluded) or from the
  ``torch.export`` program's user inputs;
* a dynamic dimension is sized by ``dims`` (``--dim NAME=SIZE``), where NAME is the ONNX
  ``dim_param`` (e.g. ``sequence``) or ``INPUT:AXIS`` (e.g. ``input_ids:1``, the only name an
  unnamed ONNX dimension or a torch.export dimension has); otherwise a dynamic first dimension is
  the batch (``batch_size``), and any other is an error that names it. A named dimension shared by
  several inputs gets one size;
* floating-point inputs are standard normal, integer inputs are 1 and booleans True: latency of
  dense models does not depend on the values, 1 is a valid token id, mask value and index into
  any table of two or more rows, and normal values keep activations finite.

Re-run intervals. Before the measurement, ``aa_runs`` separate calibration measurements are taken:
A/A runs of the baseline (which also calibrate the noise band with ``noise_band = "auto"``), or,
without a baseline, repeated runs of the candidate alone. Their medians give ``rerun_ci_ms``, the
interval in which the median of a re-run (``lepton-search bench`` again, in a fresh process)
falls; ``ci_ms`` stays the within-run interval. With a baseline, the A/A runs' ratios also give
``ratio_rerun_ci``, the interval of a re-run's ratio, beside the within-run ``ratio_ci`` that the
verdict is drawn from. ``aa_runs = 0`` skips them (``rerun_ci_ms`` and ``ratio_rerun_ci`` are then
None).
"""

from __future__ import annotations

import dataclasses
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lepton_search.devices._backends import ModelFormat
from lepton_search.devices._machine import describe_device
from lepton_search.errors import MeasurementError
from lepton_search.objectives.latency import (
    LatencyBackend,
    LatencyStats,
    MeasurementSettings,
    NoiseBand,
    PairMeasurement,
    RerunCalibration,
    calibrate_noise_band,
    calibrate_reruns,
    get_backend,
    known_backends,
    measure_model,
    measure_pair,
)

DEFAULT_BACKENDS: dict[ModelFormat, str] = {"onnx": "onnxruntime-cpu", "torch-export": "torch-cpu"}
_FORMAT_HELP = "Pass an ONNX model (.onnx) or a program saved with torch.export.save (.pt2)."


@dataclass(frozen=True)
class InputSpec:
    """One declared model input.

    ``shape`` holds an int for a static dimension, a name (the ONNX ``dim_param``, or the
    ``torch.export`` symbol) for a dynamic one, and None for an unnamed dynamic one.
    """

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]

    def label(self, axis: int) -> str:
        """The name ``--dim`` knows this input's dimension ``axis`` by, besides its dim_param."""
        return f"{self.name}:{axis}"


def model_format(path: Path) -> ModelFormat:
    """``torch-export`` for a ``torch.export.save`` archive (a zip), ``onnx`` otherwise.

    Raises:
        MeasurementError: ``path`` does not exist or is not a file.
    """
    if not path.exists():
        raise MeasurementError(f"Model file {str(path)!r} does not exist. {_FORMAT_HELP}")
    if not path.is_file():
        raise MeasurementError(f"{str(path)!r} is not a file. {_FORMAT_HELP}")
    return "torch-export" if zipfile.is_zipfile(path) else "onnx"


def _onnx_specs(path: Path) -> list[InputSpec]:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError) as e:
        raise MeasurementError(
            f"{str(path)!r} is not an ONNX model (onnx could not parse it: {e}). {_FORMAT_HELP}"
        ) from e
    if model.ir_version == 0 or not model.graph.node:
        raise MeasurementError(f"{str(path)!r} is not an ONNX model (it holds no graph). {_FORMAT_HELP}")
    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue  # old exporters list weights as inputs too; they are not fed
        if not value.type.HasField("tensor_type"):
            raise MeasurementError(
                f"{path.name}: input {value.name!r} is not a tensor ({value.type.WhichOneof('value')}); "
                f"bench can only synthesize tensor inputs."
            )
        tensor = value.type.tensor_type
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        except (KeyError, TypeError) as e:
            raise MeasurementError(f"{path.name}: input {value.name!r} has an unsupported element type ({e}).") from e
        if not tensor.HasField("shape"):
            raise MeasurementError(
                f"{path.name}: input {value.name!r} declares no shape, so bench cannot synthesize it. Export the "
                f"model with input shapes (torch.onnx.export does by default)."
            )
        shape: list[int | str | None] = []
        for dim in tensor.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value > 0:
                shape.append(int(dim.dim_value))
            elif dim.HasField("dim_param") and dim.dim_param:
                shape.append(dim.dim_param)
            else:
                shape.append(None)
        specs.append(InputSpec(value.name, dtype, tuple(shape)))
    if not specs:
        raise MeasurementError(f"{path.name} declares no inputs to feed; bench needs at least one.")
    return specs


def _torch_specs(path: Path) -> list[InputSpec]:
    import torch

    from lepton_search.objectives.latency import load_exported_program, user_input_names

    program = load_exported_program(path)
    names = user_input_names(program)
    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    specs = []
    for name in names:
        value = nodes[name].meta.get("val") if name in nodes else None
        if not isinstance(value, torch.Tensor):
            raise MeasurementError(
                f"{path.name}: input {name!r} is not a tensor ({type(value).__name__}); bench can only synthesize "
                f"tensor inputs."
            )
        try:
            dtype = torch.empty(0, dtype=value.dtype).numpy().dtype
        except TypeError as e:
            raise MeasurementError(
                f"{path.name}: input {name!r} is {value.dtype}, which numpy cannot hold; export the program with "
                f"float32 (or float16) inputs and cast inside the model."
            ) from e
        shape = tuple(int(d) if isinstance(d, int) else str(d) for d in value.shape)
        specs.append(InputSpec(name, dtype, shape))
    return specs


def read_input_specs(path: Path) -> list[InputSpec]:
    """The inputs ``path`` declares (ONNX or ``torch.export``).

    Raises:
        MeasurementError: the file is missing, is neither format, or declares inputs bench cannot
            synthesize.
    """
    if model_format(path) == "torch-export":
        return _torch_specs(path)
    return _onnx_specs(path)


def resolve_shapes(
    specs: list[InputSpec], *, batch_size: int, dims: dict[str, int] | None = None, model: str = "the model"
) -> dict[str, tuple[int, ...]]:
    """Concrete shapes for ``specs`` (see the module docstring for the rules).

    Raises:
        MeasurementError: a dynamic dimension other than the first has no size in ``dims``.
    """
    dims = dims or {}
    named: dict[str, int] = {}  # one size per dim_param, however many inputs share it
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        shape: list[int] = []
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int):
                shape.append(dim)
                continue
            label = spec.label(axis)
            if dim is not None and dim in dims:
                size = dims[dim]
            elif label in dims:
                size = dims[label]
            elif dim is not None and dim in named:
                size = named[dim]
            elif axis == 0:
                size = batch_size
            else:
                names = ", ".join(dynamic_dimension_names(specs))
                raise MeasurementError(
                    f"{model}: input {spec.name!r} has a dynamic dimension {label!r}"
                    + (f" (named {dim!r})" if dim is not None and dim != label else "")
                    + f" at axis {axis} that --batch-size does not size. Give it a size with --dim {label}=SIZE "
                    f"(dynamic dimensions of this model: {names})."
                )
            if dim is not None:
                named.setdefault(dim, size)
            shape.append(size)
        shapes[spec.name] = tuple(shape)
    return shapes


def dynamic_dimension_names(specs: list[InputSpec]) -> list[str]:
    """Every name ``--dim`` accepts for ``specs``: dim_params and ``INPUT:AXIS`` labels."""
    names: list[str] = []
    for spec in specs:
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int):
                continue
            for name in (dim, spec.label(axis)):
                if name is not None and name not in names:
                    names.append(name)
    return names


def synthesize_inputs(
    specs: list[InputSpec],
    *,
    batch_size: int,
    dims: dict[str, int] | None = None,
    seed: int = 0,
    model: str = "the model",
) -> dict[str, np.ndarray]:
    """Arrays for ``specs``: standard normal floats, integers 1, booleans True."""
    rng = np.random.default_rng(seed)
    shapes = resolve_shapes(specs, batch_size=batch_size, dims=dims, model=model)
    arrays: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = shapes[spec.name]
        if np.issubdtype(spec.dtype, np.floating):
            arrays[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype == np.bool_:
            arrays[spec.name] = np.ones(shape, dtype=np.bool_)
        else:
            arrays[spec.name] = np.ones(shape, dtype=spec.dtype)
    return arrays


@dataclass
class BenchResult:
    """What ``lepton-search bench`` measured."""

    candidate: LatencyStats
    device: dict[str, Any]
    pair: PairMeasurement | None = None
    noise: NoiseBand | None = None
    notes: list[str] = field(default_factory=list)
    rerun: RerunCalibration | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``bench --json``: verdict, ratio and baseline only when there was a baseline."""
        if self.pair is None:
            return {"candidate": self.candidate.to_dict(), "device": self.device}
        return {
            "verdict": self.pair.verdict,
            "ratio": self.pair.ratio,
            "ratio_ci": list(self.pair.ratio_ci),
            "ratio_rerun_ci": None if self.pair.ratio_rerun_ci is None else list(self.pair.ratio_rerun_ci),
            "candidate": self.pair.candidate.to_dict(),
            "baseline": self.pair.baseline.to_dict(),
            "device": self.device,
        }


def _check_unused_dims(dims: dict[str, int], specs: list[list[InputSpec]]) -> None:
    known = [n for group in specs for n in dynamic_dimension_names(group)]
    unused = [name for name in dims if name not in known]
    if unused:
        raise MeasurementError(
            f"--dim {', '.join(unused)} names no dynamic dimension of the model(s); dynamic dimensions: "
            f"{', '.join(dict.fromkeys(known)) or '(none: every dimension is static)'}."
        )


def _smoke_run(backend: LatencyBackend, path: Path, inputs: dict[str, np.ndarray], threads: int) -> None:
    """One run before timing, so a model that cannot run on these inputs fails with a clear error."""
    runner = backend.open(path, threads)
    try:
        runner.run(inputs)
    except MeasurementError:
        raise
    except Exception as e:
        shapes = {name: list(a.shape) for name, a in inputs.items()}
        raise MeasurementError(
            f"{path.name} failed on the synthesized inputs {shapes} ({type(e).__name__}: {e}). Set the sizes "
            f"of its dynamic dimensions with --batch-size and --dim NAME=SIZE."
        ) from e
    finally:
        runner.close()


def bench(
    candidate: Path,
    baseline: Path | None = None,
    *,
    settings: MeasurementSettings,
    backend: str | None = None,
    dims: dict[str, int] | None = None,
    noise_band: float | Literal["auto"] | None = None,
    aa_runs: int = 5,
) -> BenchResult:
    """Measures ``candidate`` (against ``baseline``, interleaved, when given) on this machine.

    Args:
        candidate: An ONNX model or a ``torch.export`` program.
        baseline: The model to compare with, of the same format and inputs.
        settings: The protocol; its ``backend`` is replaced by ``backend``.
        backend: A backend name; by default ``onnxruntime-cpu`` for ONNX and ``torch-cpu`` for
            ``torch.export`` programs.
        dims: Sizes of dynamic dimensions by name (see the module docstring).
        noise_band: δ of the verdict, ``"auto"`` to calibrate it with the ``aa_runs`` A/A runs of
            the baseline, or None for ``settings.noise_band``.
        aa_runs: Separate calibration measurements before the measurement (module docstring): A/A
            runs of the baseline, or runs of the candidate alone. They give the re-run interval;
            0 skips them (no re-run interval, and no ``"auto"`` noise band).

    Raises:
        MeasurementError: a file is missing or not a model, the formats or inputs of the two models
            differ, a dynamic dimension has no size, or a model cannot run; ``noise_band = "auto"``
            with fewer than 2 ``aa_runs``.
        UnknownNameError: ``backend`` is not registered.
    """
    if noise_band == "auto" and aa_runs < 2:
        raise MeasurementError(
            f"noise_band = 'auto' calibrates on the A/A runs, but aa_runs = {aa_runs}; give at least 2 "
            "(5 is the default), or a fixed noise band such as 0.05."
        )
    dims = dict(dims or {})
    fmt = model_format(candidate)
    if baseline is not None and model_format(baseline) != fmt:
        raise MeasurementError(
            f"The candidate {candidate.name} is {fmt} and the baseline {baseline.name} is "
            f"{model_format(baseline)}; compare models of one format on one backend."
        )
    runtime = _backend_for(backend or DEFAULT_BACKENDS[fmt], fmt, candidate)
    settings = dataclasses.replace(settings, backend=runtime.name)
    specs, inputs = _inputs_for(candidate, baseline, settings.batch_size, dims)
    notes = _batch_notes(specs, settings.batch_size)
    if baseline is None and noise_band is not None:
        notes.append("a noise band only matters for a verdict against a baseline; it was not used")

    for path in [candidate] if baseline is None else [candidate, baseline]:
        _smoke_run(runtime, path, inputs, settings.threads)

    noise: NoiseBand | None = None
    pair: PairMeasurement | None = None
    rerun: RerunCalibration | None = None
    if baseline is None:
        if aa_runs > 0:
            rerun = calibrate_reruns(candidate, inputs, settings, runs=aa_runs, backend=runtime)
        stats = measure_model(candidate, inputs, settings, runtime, rerun=rerun)
        band = None
    else:
        aa: NoiseBand | None = None
        if aa_runs > 0:
            aa = calibrate_noise_band(baseline, inputs, settings, runs=aa_runs, backend=runtime)
            rerun = aa.rerun_calibration()
        if noise_band == "auto":
            noise = aa
        band = (
            noise.delta
            if noise is not None
            else settings.noise_band
            if noise_band is None or noise_band == "auto"
            else float(noise_band)
        )
        pair = measure_pair(candidate, baseline, inputs, settings, runtime, noise_band=band, rerun=rerun)
        stats = pair.candidate
    if rerun is None:
        notes.append("no re-run interval (rerun_ci_ms): it needs calibration runs (--aa-runs 0 skipped them)")
    notes.extend(_busy_notes([stats] if pair is None else [pair.candidate, pair.baseline]))
    manifest = pair.device if pair is not None else runtime.manifest(settings.threads)
    protocol: dict[str, Any] = {
        "batch_size": settings.batch_size,
        "inputs": {s.name: {"shape": list(inputs[s.name].shape), "dtype": str(s.dtype)} for s in specs},
        "sessions": settings.sessions,
        "warmup_runs": settings.warmup_runs,
        "warmup_s": settings.warmup_s,
        "min_iterations": settings.min_iterations,
        "min_session_s": settings.min_session_s,
        "block_s": settings.block_s,
        "interval": "95%, union of paired hierarchical bootstrap and paired t over rounds",
        "ci_ms": "95% within-run interval of the median (hierarchical bootstrap over sessions, then runs)",
        "rerun_ci_ms": (
            "95% interval of a re-run's median: prediction interval from the medians of separate calibration "
            "runs (" + ("A/A runs of the baseline" if baseline is not None else "runs of the model alone") + ")"
        ),
    }
    if baseline is not None:
        protocol["ratio_rerun_ci"] = (
            "95% interval of a re-run's ratio: this run's ratio widened by the A/A runs' root mean square log "
            "ratio (t quantile, two measurements' errors), and containing ratio_ci"
        )
    if rerun is not None:
        protocol["rerun_calibration"] = {"runs": len(rerun.medians_ms), **rerun.to_dict()}
    if baseline is not None:
        protocol["noise_band"] = band
        protocol["noise_band_source"] = "auto (A/A calibration)" if noise is not None else "fixed"
        if noise is not None:
            protocol["aa_calibration"] = noise.to_dict()
    if notes:
        protocol["notes"] = notes
    device = {**manifest, "protocol": protocol}
    return BenchResult(candidate=stats, device=device, pair=pair, noise=noise, notes=notes, rerun=rerun)


def _backend_for(name: str, fmt: ModelFormat, candidate: Path) -> LatencyBackend:
    """The backend ``name``, refused when it opens the other model format."""
    runtime = get_backend(name)
    if runtime.model_format != fmt:
        fitting = [b for b in known_backends() if get_backend(b, require_usable=False).model_format == fmt]
        raise MeasurementError(
            f"Backend {name!r} opens {runtime.model_format} models, but {candidate.name} is {fmt}. Use a {fmt} "
            f"backend ({', '.join(fitting)}), or pass the model as "
            f"{'a .pt2 torch.export program' if runtime.model_format == 'torch-export' else 'an .onnx file'}."
        )
    return runtime


def _inputs_for(
    candidate: Path, baseline: Path | None, batch_size: int, dims: dict[str, int]
) -> tuple[list[InputSpec], dict[str, np.ndarray]]:
    """The candidate's input specs and synthesized inputs, checked to fit the baseline too."""
    specs = read_input_specs(candidate)
    groups = [specs]
    shapes = resolve_shapes(specs, batch_size=batch_size, dims=dims, model=candidate.name)
    if baseline is not None:
        base_specs = read_input_specs(baseline)
        groups.append(base_specs)
        base_shapes = resolve_shapes(base_specs, batch_size=batch_size, dims=dims, model=baseline.name)
        cand_sig = {s.name: (str(s.dtype), shapes[s.name]) for s in specs}
        base_sig = {s.name: (str(s.dtype), base_shapes[s.name]) for s in base_specs}
        if cand_sig != base_sig:
            raise MeasurementError(
                f"The candidate and the baseline take different inputs (name: (dtype, shape)): {candidate.name} "
                f"{cand_sig}, {baseline.name} {base_sig}. A latency ratio needs both fed the same inputs."
            )
    _check_unused_dims(dims, groups)
    return specs, synthesize_inputs(specs, batch_size=batch_size, dims=dims, model=candidate.name)


#: Below this share of wall time on a core, bench says the machine was busy.
BUSY_CPU_SHARE = 0.9


def _busy_notes(stats: list[LatencyStats]) -> list[str]:
    shares = [s.cpu_share for s in stats if s.cpu_share is not None]
    if not shares or min(shares) >= BUSY_CPU_SHARE:
        return []
    return [
        f"the machine was busy: the measuring thread had a core for only {min(shares):.0%} of the timed runs, so "
        f"absolute latencies are inflated (CPU time per run: "
        + ", ".join(f"{s.cpu_median_ms:.4g} ms" for s in stats if s.cpu_median_ms is not None)
        + "); interleaved ratios are not"
    ]


def _batch_notes(specs: list[InputSpec], batch_size: int) -> list[str]:
    leading = [s.shape[0] for s in specs if s.shape]
    if leading and all(isinstance(d, int) for d in leading) and batch_size not in leading:
        return [f"the model's first dimension is fixed at {leading[0]}; batch size {batch_size} was not applied"]
    return []


def parse_dims(values: list[str] | tuple[str, ...]) -> dict[str, int]:
    """``["seq=128", "input_ids:1=128"]`` -> ``{"seq": 128, "input_ids:1": 128}``.

    Raises:
        ValueError: an entry is not NAME=SIZE with a positive integer SIZE, or a NAME repeats.
    """
    dims: dict[str, int] = {}
    for value in values:
        name, sep, size = value.rpartition("=")
        if not sep or not name or not size.strip().isdigit() or int(size) < 1:
            raise ValueError(f"{value!r} is not NAME=SIZE with a positive integer SIZE (e.g. sequence=128).")
        if name in dims:
            raise ValueError(f"{name!r} is given twice ({dims[name]} and {int(size)}); give each dimension once.")
        dims[name] = int(size)
    return dims


def bench_table(result: BenchResult) -> list[Any]:
    """Rich renderables for the human output: a table of the models, the verdict, the device."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title="lepton-search bench", title_justify="left")
    for column in ("model", "median ms", "95% CI ms", "p95 ms", "CV", "sessions", "peak MiB"):
        table.add_column(column, justify="left" if column == "model" else "right")
    rows = [("candidate", result.candidate)]
    if result.pair is not None:
        rows.append(("baseline", result.pair.baseline))
    for label, s in rows:
        table.add_row(
            label,
            f"{s.median_ms:.4g}",
            f"{s.ci_ms[0]:.4g}-{s.ci_ms[1]:.4g}",
            f"{s.p95_ms:.4g}",
            f"{s.cv:.1%}",
            str(s.sessions),
            "-" if s.peak_memory_mb is None else f"{s.peak_memory_mb:.1f}",
        )
    out: list[Any] = [table]
    reruns = [(label, s.rerun_ci_ms) for label, s in rows if s.rerun_ci_ms is not None]
    if reruns:
        out.append(
            Text(
                "a re-run's median (95%): "
                + ", ".join(f"{label} {low:.4g}-{high:.4g} ms" for label, (low, high) in reruns)
                + " (the CI above is this run's only)"
            )
        )
    if result.pair is not None:
        p = result.pair
        style = {"faster": "green", "slower": "red", "tie": "yellow"}[p.verdict]
        source = "calibrated A/A" if result.noise is not None else "fixed"
        line = Text.assemble(
            "candidate/baseline ",
            (f"{p.ratio:.3f}", "bold"),
            f" (95% CI {p.ratio_ci[0]:.3f}-{p.ratio_ci[1]:.3f}): ",
            (p.verdict, f"bold {style}"),
            f" within a noise band of ±{p.noise_band:.1%} ({source})",
        )
        out.append(line)
        if p.ratio_rerun_ci is not None:
            low, high = p.ratio_rerun_ci
            out.append(Text(f"a re-run's ratio (95%): {low:.3f}-{high:.3f} (the CI above is this run's only)"))
    d = result.device
    protocol = d.get("protocol", {})
    shapes = ", ".join(f"{n} {v['dtype']}{v['shape']}" for n, v in protocol.get("inputs", {}).items())
    library = f"onnxruntime {d['onnxruntime']}" if "onnxruntime" in d else f"torch {d.get('torch', '?')}"
    out.append(
        Text(
            f"{d.get('backend')} ({d.get('execution_provider')}, {library}), {d.get('threads')} thread(s), "
            f"{describe_device(d)}; inputs {shapes}",
            style="dim",
        )
    )
    out.extend(Text(f"note: {n}", style="yellow") for n in result.notes)
    return out
