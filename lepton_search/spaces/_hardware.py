"""The search space's hardware decisions: what the measuring CPU runs fast, decided from its ISA.

Some knobs are worth searching only on some CPUs. Each decision here reads the detected ISA
(``devices/_machine.py``) and carries its reason, which validation messages and ``lepton-search
validate`` print:

- **bf16 on torch-cpu** is offered where the CPU has AVX-512 BF16 or AMX-BF16; elsewhere torch
  emulates bf16 through fp32 conversions and it ran about 10x slower than fp32.
- **fp16 on torch-cpu** is never offered (the config layer refuses it): even with AVX-512 FP16 it
  ran slower than fp32, because oneDNN's fast fp16 path needs AMX-FP16, which no CPU this project
  measured on has.
- **fp16 on onnxruntime-cpu** stays out of the default precisions on x86: ONNX Runtime's CPU
  kernels for convolutions and matrix products are fp32 on x86, so an fp16 graph runs at fp32
  speed between casts; listed explicitly it is kept, because the file is half the size.
- **dynamic int8 convolutions** are never produced: ONNX Runtime's ``ConvInteger`` ran several
  times slower than fp32 on every CPU measured, VNNI and AMX included.
- **reduce_range** (7-bit int8 weights) is searched only on x86 CPUs without VNNI: there the u8 x s8
  products are summed in 16 bits (``VPMADDUBSW``) and can saturate, and 7-bit weights keep the sums
  in range. VNNI (``VPDPBUSD``) and AMX sum in 32 bits, so on them reduce_range only loses a bit.
- **int8 formats**: x86 int8 kernels multiply unsigned activations by signed weights (U8S8), and
  ONNX Runtime rewrites S8S8 QDQ models to U8S8 on x86, so S8S8 is not searched there; 64-bit ARM
  CPUs with only signed dot products (``asimddp`` without ``i8mm``) run S8S8, and with I8MM both.

The figures in the reasons come from ``benchmarks/hardware_exclusions.py`` (README, "Why some
combinations are not offered").

A study keeps the decisions it was created with (they decide Optuna's parameter choices, which
cannot change within a study): the driver records :class:`SpaceHardware` on the study and resumes
with it, and studies created before it was recorded resume with :meth:`SpaceHardware.legacy`, the
decisions of those versions.
"""

from __future__ import annotations

import dataclasses
from typing import Any

#: Flags whose int8 dot products sum in 32 bits (no saturation).
_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")

INT8_FORMATS: tuple[str, ...] = ("u8s8", "s8s8")

BF16_OFFERED = (
    "bf16 is offered on torch-cpu: this CPU ({cpu}) has {flags}, on which oneDNN runs bf16 matrix "
    "products (measured 0.61x the fp32 latency of the digits CNN on Emerald Rapids with AMX-BF16)"
)
BF16_DROPPED = (
    "bf16 is not offered on torch-cpu: this CPU ({cpu}) has neither AVX-512 BF16 nor AMX-BF16, so torch "
    "emulates bf16 through fp32 conversions (measured about 10x slower than fp32 on an AVX2 EPYC)"
)
FP16_TORCH_CPU = (
    "fp16 is not offered on torch-cpu: oneDNN's fast fp16 path needs AMX-FP16, and without it fp16 ran slower "
    "than fp32 even with AVX-512 FP16 (1.34x the fp32 latency of the digits CNN on Emerald Rapids)"
)
FP16_ONNX_X86 = (
    "fp16 on onnxruntime-cpu is not among the default precisions: on x86 CPUs ({cpu} here) ONNX Runtime's "
    "convolution and matrix-product kernels are fp32, so an fp16 graph runs at fp32 speed between casts "
    "(measured 0.97x the fp32 latency on Emerald Rapids, a tie); listed explicitly it is kept, for a model file "
    "half the size"
)
FP16_ONNX_ARM = (
    "fp16 on onnxruntime-cpu is not among the default precisions: ONNX Runtime has some fp16 kernels for ARM "
    "CPUs ({cpu} here), but this project has not measured them; list fp16 to measure it"
)
DYNAMIC_CONV = (
    "dynamic int8 quantizes MatMul/Gemm layers only, never convolutions: ONNX Runtime's ConvInteger ran "
    "0.2-0.27x the speed of fp32 on an AVX2 EPYC and 0.13x on Emerald Rapids with AVX-512 VNNI and AMX-INT8"
)
REDUCE_RANGE_SEARCHED = (
    "reduce_range (7-bit int8 weights) is searched: without VNNI this CPU ({cpu}) sums u8 x s8 products in "
    "16 bits (VPMADDUBSW), which can saturate; 7-bit weights keep the sums in range"
)
REDUCE_RANGE_DROPPED = (
    "reduce_range is not searched: this CPU ({cpu}) sums int8 products in 32 bits ({flags}), which cannot "
    "saturate, so 7-bit weights would only lose precision"
)
REDUCE_RANGE_NOT_X86 = "reduce_range is not searched: it works around a saturation of x86 CPUs without VNNI only"
FORMAT_X86 = (
    "int8 runs as U8S8 (unsigned activations, signed weights): the x86 int8 kernels ({dot}) multiply unsigned "
    "by signed bytes, and ONNX Runtime rewrites S8S8 QDQ models to U8S8 on x86, so S8S8 is not searched"
)
FORMAT_ARM = "int8 formats offered on this CPU ({cpu}): {formats} ({why})"


@dataclasses.dataclass(frozen=True)
class SpaceHardware:
    """The facts about the measuring CPU that the space's decisions read.

    Built from the detected CPU with :meth:`detect`; stored on a study with :meth:`to_dict`.
    """

    architecture: str
    features: frozenset[str]
    description: str
    device_class: str | None = None

    @classmethod
    def detect(cls) -> SpaceHardware:
        """The CPU this process runs on (or the simulated one, see ``devices._machine``)."""
        # Imported here: spaces knows nothing of how a CPU is read; reading it imports no torch.
        from lepton_search.devices._machine import cpu_identity

        cpu = cpu_identity()
        return cls(cpu.architecture, frozenset(cpu.features), cpu.description, cpu.device_class)

    @classmethod
    def legacy(cls) -> SpaceHardware:
        """The decisions of versions before the space was hardware-aware: bf16 offered on
        torch-cpu, int8 as U8S8 without reduce_range. Studies created then resume with these."""
        return cls(
            "x86_64",
            frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}),
            "not recorded (a study created before lepton-search recorded its hardware; decided as then)",
            None,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpaceHardware:
        """The inverse of :meth:`to_dict`."""
        return cls(
            str(data["architecture"]),
            frozenset(str(f) for f in data["features"]),
            str(data["description"]),
            None if data.get("device_class") is None else str(data["device_class"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "features": sorted(self.features),
            "description": self.description,
            "device_class": self.device_class,
        }

    def decisions_equal(self, other: SpaceHardware) -> bool:
        """Whether both make every decision of this module alike (so one study may use either)."""
        return decide(self).key == decide(other).key

    @property
    def is_x86(self) -> bool:
        return self.architecture in ("x86_64", "amd64", "i686", "i386")

    def has(self, *flags: str) -> bool:
        return any(f in self.features for f in flags)


@dataclasses.dataclass(frozen=True)
class HardwareDecisions:
    """What :func:`decide` concluded for one CPU, with a reason for each decision."""

    torch_cpu_bf16: bool
    #: ``reduce_range`` choices searched when the space leaves the knob out; None: not searched.
    reduce_range_default: tuple[bool, ...] | None
    #: Values of ``reduce_range`` this CPU may search (empty: the knob is off here).
    reduce_range_allowed: tuple[bool, ...]
    #: int8 formats searched when the space leaves the knob out; None: not searched (U8S8).
    int8_format_default: tuple[str, ...] | None
    int8_format_allowed: tuple[str, ...]
    #: By knob: the reason of each decision, in words.
    reasons: dict[str, str]

    @property
    def key(self) -> tuple[Any, ...]:
        return (
            self.torch_cpu_bf16,
            self.reduce_range_default,
            self.reduce_range_allowed,
            self.int8_format_default,
            self.int8_format_allowed,
        )


def _present(hardware: SpaceHardware, flags: tuple[str, ...]) -> str:
    from lepton_search.devices._machine import FEATURE_NAMES

    return "/".join(FEATURE_NAMES.get(f, f) for f in flags if f in hardware.features)


def decide(hardware: SpaceHardware) -> HardwareDecisions:
    """The space's hardware decisions on ``hardware`` (see the module docstring)."""
    cpu = hardware.description
    reasons: dict[str, str] = {}
    bf16 = hardware.has(*_BF16_FLAGS) or (not hardware.is_x86 and hardware.has("bf16"))
    reasons["deployment.torch_precision bf16"] = (
        BF16_OFFERED.format(cpu=cpu, flags=_present(hardware, _BF16_FLAGS) or "BF16")
        if bf16
        else BF16_DROPPED.format(cpu=cpu)
    )
    reasons["deployment.torch_precision fp16"] = FP16_TORCH_CPU
    reasons["quantization.precision fp16"] = (FP16_ONNX_X86 if hardware.is_x86 else FP16_ONNX_ARM).format(cpu=cpu)
    reasons["quantization.int8_mode dynamic"] = DYNAMIC_CONV
    if not hardware.is_x86:
        reduce_default, reduce_allowed = None, ()
        reasons["quantization.reduce_range"] = REDUCE_RANGE_NOT_X86
        dot, i8mm = hardware.has("asimddp"), hardware.has("i8mm")
        formats = ("u8s8", "s8s8") if i8mm else ("s8s8",) if dot else ("u8s8",)
        why = (
            "I8MM multiplies unsigned by signed bytes, dot products signed by signed"
            if i8mm
            else "its dot products multiply signed by signed bytes"
            if dot
            else "no int8 dot products: ONNX Runtime's generic kernels"
        )
        format_default = formats if formats != ("u8s8",) else None
        reasons["quantization.int8_format"] = FORMAT_ARM.format(cpu=cpu, formats="/".join(formats).upper(), why=why)
    else:
        vnni = hardware.has(*_VNNI_FLAGS)
        if vnni:
            reduce_default, reduce_allowed = None, ()
            reasons["quantization.reduce_range"] = REDUCE_RANGE_DROPPED.format(
                cpu=cpu, flags=_present(hardware, _VNNI_FLAGS)
            )
        else:
            reduce_default, reduce_allowed = (False, True), (False, True)
            reasons["quantization.reduce_range"] = REDUCE_RANGE_SEARCHED.format(cpu=cpu)
        formats, format_default = ("u8s8",), None
        dot = "AMX TDPBUSD" if hardware.has("amx_int8") else "VPDPBUSD" if vnni else "VPMADDUBSW"
        reasons["quantization.int8_format"] = FORMAT_X86.format(dot=dot)
    return HardwareDecisions(
        torch_cpu_bf16=bf16,
        reduce_range_default=reduce_default,
        reduce_range_allowed=reduce_allowed,
        int8_format_default=format_default,
        int8_format_allowed=formats,
        reasons=reasons,
    )
