"""Compression handlers by config selector: every name the space allows has exactly one handler."""

from __future__ import annotations

import pytest

from lepton_search.errors import CompressionError
from lepton_search.objectives._handlers import HandlerRegistry
from lepton_search.objectives._prune import PRUNERS
from lepton_search.objectives._quantize import QUANTIZERS, quantization_mode
from lepton_search.spaces import QuantizeConfig
from lepton_search.spaces._config import INT8_MODES, PRUNE_METHODS, QUANTIZED_PRECISIONS


def test_every_pruning_method_the_space_allows_has_a_handler_and_no_other() -> None:
    assert set(PRUNERS) == set(PRUNE_METHODS)


def test_every_quantization_mode_the_space_allows_has_a_quantizer_and_no_other() -> None:
    modes = {f"int8-{m}" for m in INT8_MODES} | {p for p in QUANTIZED_PRECISIONS if p != "int8"}
    assert set(QUANTIZERS) == modes
    assert (
        quantization_mode(
            QuantizeConfig(precision="int8", int8_mode="static", calibration_method="minmax", calibration_batches=1)
        )
        == "int8-static"
    )
    assert quantization_mode(QuantizeConfig(precision="int4", int4_block_size=32, int4_symmetric=True)) == "int4"


def test_a_registry_refuses_a_second_handler_for_one_name_and_names_what_it_has() -> None:
    registry: HandlerRegistry = HandlerRegistry("pruning.method")

    @registry.register("rows", "columns")
    def prune_rows() -> str:
        return "rows"

    assert registry.get("columns") is prune_rows and "rows" in registry
    with pytest.raises(ValueError, match=r"'rows' already has the handler .*prune_rows"):
        registry.register("rows")(lambda: "again")
    with pytest.raises(
        CompressionError,
        match=r"pruning.method = 'blocks' has no compression handler; registered: \['columns', 'rows'\]",
    ):
        registry.get("blocks")
