"""Quantization-aware distillation: the student is trained through the rounding that ONNX Runtime's
dynamic int8 quantization will apply to it (``DistillConfig.quantization_aware``).

Dynamic int8 rounds two things, and the simulation rounds them the same way:

- each weight matrix of a linear layer, to signed int8, symmetric (zero point 0), one scale per
  output channel (``per_channel``) or per matrix: ``scale = max|w| / 127`` (``/ 64`` with
  ``reduce_range``, ONNX Runtime's 7-bit range), as ``quantize_dynamic`` writes it once;
- each input of a linear layer, to unsigned int8 with a scale and zero point from that input's
  own range at run time (``DynamicQuantizeLinear``: ``scale = (max(x, 0) - min(x, 0)) / 255``).

Gradients pass the rounding unchanged inside the range (the straight-through estimator of
``torch.fake_quantize_*``), so the latent fp32 weights move to where the rounding costs the
embedding least; the quantizer then rounds those weights as the student was trained to expect.
For an embedding encoder whose fp32 copy already equals its teacher, this is the only thing its
distillation does, so it runs even when nothing was pruned.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from lepton_search.spaces import QuantizeConfig

#: Signed weight range of ``quantize_dynamic``'s symmetric int8 weights, full and reduced.
_WEIGHT_RANGE = {False: (-127, 127), True: (-64, 64)}


def _weight_rounding(per_channel: bool, reduce_range: bool) -> Any:
    import torch

    qmin, qmax = _WEIGHT_RANGE[reduce_range]

    class RoundedWeight(torch.nn.Module):
        """The weight as int8 rounding leaves it (a parametrization: the module's weight reads
        through it, the optimiser updates the latent fp32 tensor)."""

        def forward(self, weight: torch.Tensor) -> torch.Tensor:
            w = weight.float()
            if per_channel:
                absmax = w.detach().abs().amax(dim=1).clamp_min(1e-12)
                scale = absmax / qmax
                zero = torch.zeros_like(scale, dtype=torch.int32)
                return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, qmin, qmax).to(weight.dtype)
            scale = float(w.detach().abs().max().clamp_min(1e-12)) / qmax
            return torch.fake_quantize_per_tensor_affine(w, scale, 0, qmin, qmax).to(weight.dtype)

    return RoundedWeight()


def _round_input(_module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    import torch

    x = args[0]
    xf = x.float()
    low = xf.detach().min().clamp_max(0.0)
    high = xf.detach().max().clamp_min(0.0)
    scale = ((high - low) / 255.0).clamp_min(1e-12)
    zero = torch.clamp(torch.round(-low / scale), 0, 255).to(torch.int32)
    rounded = torch.fake_quantize_per_tensor_affine(xf, scale, zero, 0, 255)
    return (rounded.to(x.dtype), *args[1:])


@contextlib.contextmanager
def simulated_dynamic_int8(model: torch.nn.Module, config: QuantizeConfig) -> Iterator[int]:
    """Within the block, every ``torch.nn.Linear`` of ``model`` computes with its weight and its
    input rounded as dynamic int8 with ``config``'s weight granularity and range will round them;
    yields how many layers that is. On exit the layers are plain again and keep the trained latent
    weights."""
    import torch
    from torch.nn.utils import parametrize

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    hooks = []
    try:
        for layer in linears:
            rounding = _weight_rounding(config.per_channel, bool(config.reduce_range))
            parametrize.register_parametrization(layer, "weight", rounding)
            hooks.append(layer.register_forward_pre_hook(_round_input))
        yield len(linears)
    finally:
        for hook in hooks:
            hook.remove()
        for layer in linears:
            if parametrize.is_parametrized(layer, "weight"):
                parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
