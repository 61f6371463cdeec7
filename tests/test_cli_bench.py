"""``lepton-search bench``: JSON and table output, a baseline run, and errors, through ``main`` and
once as a real subprocess. The models are small hand-built ONNX MLPs far apart in cost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lepton_search.cli import EXIT_ERROR, main

STAT_KEYS = {"median_ms", "p95_ms", "cv", "sessions", "ci_ms", "peak_memory_mb"}


def mlp(path: Path, width: int, depth: int = 2) -> Path:
    """An ONNX MLP on inputs [batch, 256]: ``depth`` MatMul+Relu layers of ``width`` units."""
    rng = np.random.default_rng(width)
    nodes, inits, prev, fan_in = [], [], "x", 256
    for i in range(depth):
        w = (rng.standard_normal((fan_in, width)) / np.sqrt(fan_in)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [
            helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]),
            helper.make_node("Relu", [f"m{i}"], [f"r{i}"]),
        ]
        prev, fan_in = f"r{i}", width
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bench-models")
    return {"wide": mlp(root / "wide.onnx", 1024, depth=3), "narrow": mlp(root / "narrow.onnx", 16)}


def bench(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    # No calibration runs: these tests are about the output, not re-run intervals (test_rerun_interval.py).
    code = main(["bench", *args, "--aa-runs", "0"])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_of_one_model(capsys: pytest.CaptureFixture[str], models: dict[str, Path]) -> None:
    code, out, err = bench(capsys, str(models["narrow"]), "--sessions", "2", "--batch-size", "8", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert set(d) == {"candidate", "device"}
    assert STAT_KEYS <= set(d["candidate"])
    assert d["candidate"]["sessions"] == 2
    assert d["device"]["backend"] == "onnxruntime-cpu"
    assert d["device"]["threads"] == 1
    assert d["device"]["onnxruntime"] == ort.__version__
    assert d["device"]["protocol"]["inputs"] == {"x": {"shape": [8, 256], "dtype": "float32"}}


def test_json_against_a_baseline(capsys: pytest.CaptureFixture[str], models: dict[str, Path]) -> None:
    code, out, err = bench(
        capsys,
        str(models["narrow"]),
        "--baseline",
        str(models["wide"]),
        "--sessions",
        "3",
        "--batch-size",
        "16",
        "--noise-band",
        "0.1",
        "--json",
    )
    assert code == 0, err
    d = json.loads(out)
    assert set(d) == {"verdict", "ratio", "ratio_ci", "ratio_rerun_ci", "candidate", "baseline", "device"}
    # About 100 times fewer multiply-accumulates: faster however busy the machine is (with three
    # rounds the interval can still be wide: its t quantile is 4.3).
    assert d["verdict"] == "faster"
    low, high = d["ratio_ci"]
    assert low <= d["ratio"] <= high < 0.9
    assert d["ratio"] < 0.2
    assert d["ratio"] == pytest.approx(d["candidate"]["median_ms"] / d["baseline"]["median_ms"])
    assert STAT_KEYS <= set(d["baseline"]) and d["baseline"]["sessions"] == 3
    assert d["device"]["protocol"]["noise_band"] == 0.1


def test_table_output(capsys: pytest.CaptureFixture[str], models: dict[str, Path]) -> None:
    code, out, err = bench(capsys, str(models["narrow"]), "--baseline", str(models["wide"]), "--sessions", "2")
    assert code == 0, err
    for text in ("median ms", "p95 ms", "peak MiB", "candidate", "baseline", "noise band", "onnxruntime-cpu"):
        assert text in out, text
    assert any(verdict in out for verdict in ("faster", "tie", "slower"))
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.onnx"], "Model file 'missing.onnx' does not exist"),
        (["{garbage}"], "is not an ONNX model"),
        (["{narrow}", "--backend", "tvm"], "Unknown latency backend 'tvm'. Known latency backends: onnxruntime-cpu"),
        (["{narrow}", "--baseline", "missing.onnx"], "Model file 'missing.onnx' does not exist"),
        (["{narrow}", "--dim", "seq=3"], "--dim seq names no dynamic dimension"),
    ],
    ids=["missing", "not-onnx", "unknown-backend", "missing-baseline", "unknown-dim"],
)
def test_errors_are_one_line_with_exit_code_1(
    capsys: pytest.CaptureFixture[str], models: dict[str, Path], tmp_path: Path, args: list[str], message: str
) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf")
    argv = [a.format(narrow=models["narrow"], garbage=garbage) for a in args]
    code, out, err = bench(capsys, *argv)
    assert code == EXIT_ERROR
    assert err.startswith("Error: ") and message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and out == ""


def test_a_backend_this_machine_cannot_run_says_how_to_get_it(
    capsys: pytest.CaptureFixture[str], models: dict[str, Path]
) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine can run onnxruntime-cuda")
    code, _, err = bench(capsys, str(models["narrow"]), "--backend", "onnxruntime-cuda")
    assert code == EXIT_ERROR
    assert "not usable on this machine" in err and "onnxruntime-gpu" in err and "Usable here: onnxruntime-cpu" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--noise-band", "big"], "neither 'auto' nor a number"), (["--dim", "seq"], "NAME=SIZE")],
    ids=["noise-band", "dim"],
)
def test_malformed_options_are_usage_errors(
    capsys: pytest.CaptureFixture[str], models: dict[str, Path], args: list[str], message: str
) -> None:
    code, _, err = bench(capsys, str(models["narrow"]), *args)
    assert code == 2
    assert message in err


def test_bench_as_a_subprocess(models: dict[str, Path]) -> None:
    done = subprocess.run(
        [
            *[sys.executable, "-m", "lepton_search", "bench", str(models["narrow"])],
            *["--sessions", "2", "--aa-runs", "2", "--json"],
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    d = json.loads(done.stdout)
    assert d["candidate"]["sessions"] == 2 and d["candidate"]["median_ms"] > 0
