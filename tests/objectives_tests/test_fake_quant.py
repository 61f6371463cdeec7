"""Quantization-aware distillation's simulation of dynamic int8: it rounds as ONNX Runtime's
quantized model computes, it trains, and it leaves plain layers behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.utils import parametrize

from lepton_search.errors import ConfigError
from lepton_search.objectives._export import export_onnx
from lepton_search.objectives._fake_quant import simulated_dynamic_int8
from lepton_search.spaces import CompressionConfig, DistillConfig, QuantizeConfig


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(24, 48), torch.nn.GELU(), torch.nn.Linear(48, 16))
    with torch.no_grad():
        model[0].weight[3] *= 8  # one channel with a much larger range, as real layers have
    return model.eval()


def _onnx_int8(model: torch.nn.Module, x: torch.Tensor, tmp_path: Path, *, per_channel: bool) -> np.ndarray:
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = export_onnx(model, x.numpy(), tmp_path / "model.onnx")
    int8 = tmp_path / "model-int8.onnx"
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=per_channel)
    session = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("granularity", ["per_channel", "per_tensor"])
def test_the_simulation_computes_what_onnx_runtime_dynamic_int8_computes(tmp_path: Path, granularity: str) -> None:
    model = _model()
    x = torch.randn(2, 10, 24) * 3
    config = QuantizeConfig("int8", "dynamic", granularity=granularity)
    with torch.no_grad():
        fp32 = model(x).numpy()
        with simulated_dynamic_int8(model, config) as layers:
            simulated = model(x).numpy()
    ort_int8 = _onnx_int8(model, x, tmp_path, per_channel=granularity == "per_channel")

    assert layers == 2
    quantization_error = np.abs(ort_int8 - fp32).max()
    assert quantization_error > 1e-3  # int8 really rounds here
    # The simulation reproduces ONNX Runtime's rounding far more closely than int8 differs from fp32.
    assert np.abs(simulated - ort_int8).max() < quantization_error / 1000  # 1e-6 against 0.1 here


def test_training_through_the_simulation_moves_the_latent_weights_and_leaves_plain_layers(tmp_path: Path) -> None:
    model = _model().train()
    before = [layer.weight.detach().clone() for layer in (model[0], model[2])]
    x = torch.randn(4, 24)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with simulated_dynamic_int8(model, QuantizeConfig("int8", "dynamic")):
        assert parametrize.is_parametrized(model[0], "weight")
        loss = model(x).pow(2).mean()
        loss.backward()
        optimizer.step()
    for layer, old in zip((model[0], model[2]), before):
        assert not parametrize.is_parametrized(layer, "weight")
        assert not layer._forward_pre_hooks
        assert isinstance(layer.weight, torch.nn.Parameter)
        assert not torch.equal(layer.weight, old)  # the straight-through gradient reached the weights
    # The weights stay full precision: the quantizer rounds them later, not the simulation.
    assert len(torch.unique(model[0].weight[0])) == model[0].weight.shape[1]


def test_quantization_aware_distillation_is_a_config_of_dynamic_int8_only() -> None:
    aware = DistillConfig(method="soft", temperature=1.0, alpha=0.0, steps=10, quantization_aware=True)
    config = CompressionConfig(quantization=QuantizeConfig("int8", "dynamic"), distillation=aware)
    assert "int8-aware" in config.describe()
    assert CompressionConfig.from_dict(config.to_dict()) == config
    off = DistillConfig(method="soft", temperature=1.0, alpha=0.0, steps=10, quantization_aware=False)
    assert off == DistillConfig(method="soft", temperature=1.0, alpha=0.0, steps=10)  # one config, one hash
    with pytest.raises(ConfigError, match=r"precision = 'fp16'.*int8_mode 'dynamic'"):
        CompressionConfig(quantization=QuantizeConfig("fp16"), distillation=aware)
    assert CompressionConfig(distillation=aware).distillation == aware  # the student alone, in fp32
    with pytest.raises(ConfigError, match=r"int8_mode = 'static'"):
        CompressionConfig(quantization=QuantizeConfig("int8", "static", "minmax", 2), distillation=aware)
    with pytest.raises(ConfigError, match=r"must be true or false"):
        DistillConfig(method="soft", temperature=1.0, alpha=0.0, steps=10, quantization_aware="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"method = 'none' takes no quantization_aware"):
        DistillConfig(quantization_aware=True)
