"""A ``.pt2`` from someone else must not run code: crafted archives whose pickles, shape
expressions, guard code or node targets would create a marker file are refused, by ``bench`` too,
also when renamed ``.onnx``; programs written by ``torch.export.save`` still load."""

from __future__ import annotations

import builtins
import io
import json
import zipfile
from pathlib import Path

import pytest
import torch

from lepton_search.cli import EXIT_ERROR, main
from lepton_search.errors import UnsafeModelError
from lepton_search.objectives._bench import model_format
from lepton_search.objectives.latency import load_exported_program


class _Payload:
    """Unpickling this creates ``marker`` (a stand-in for any code a pickle can run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return builtins.open, (str(self.marker), "w")


def _pickled(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save(_Payload(marker), buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU()).eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(model, (torch.randn(2, 8),), dynamic_shapes=({0: batch},))
    path = tmp_path_factory.mktemp("programs") / "model.pt2"
    torch.export.save(exported, str(path))
    return path


def _rewrite(source: Path, target: Path, edit: dict[str, bytes]) -> Path:
    """``source`` with the entries in ``edit`` (named without the archive's root folder) replaced."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            inner = info.filename.split("/", 1)[1]
            zout.writestr(info.filename, edit.get(inner, zin.read(info.filename)))
    return target


def _read(source: Path, inner: str) -> bytes:
    with zipfile.ZipFile(source) as z:
        return z.read(next(n for n in z.namelist() if n.split("/", 1)[1] == inner))


def _pickled_weight(program: Path, target: Path, marker: Path) -> Path:
    weights = json.loads(_read(program, "data/weights/model_weights_config.json"))
    first = next(iter(weights["config"].values()))
    first["use_pickle"] = True
    return _rewrite(
        program,
        target,
        {
            "data/weights/model_weights_config.json": json.dumps(weights).encode(),
            f"data/weights/{first['path_name']}": _pickled(marker),
        },
    )


def _edited_program(program: Path, target: Path, edit: object) -> Path:
    data = json.loads(_read(program, "models/model.json"))
    edit(data)  # type: ignore[operator]
    return _rewrite(program, target, {"models/model.json": json.dumps(data).encode()})


def test_the_crafted_archive_runs_its_pickle_under_plain_torch_export_load(program: Path, tmp_path: Path) -> None:
    # The defect this module guards against: torch.export.load unpickles a weight marked use_pickle.
    marker = tmp_path / "pwned"
    crafted = _pickled_weight(program, tmp_path / "evil.pt2", marker)
    try:
        torch.export.load(str(crafted))
    except Exception:
        pass  # the pickle has run by the time anything fails
    assert marker.exists()


def test_a_pickled_weight_is_refused_and_never_unpickled(program: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    crafted = _pickled_weight(program, tmp_path / "evil.pt2", marker)
    with pytest.raises(UnsafeModelError, match=r"stored as a pickle.*Re-export the model"):
        load_exported_program(crafted)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["evil.pt2", "renamed.onnx"])
def test_bench_refuses_a_pickled_archive_whatever_its_name(
    program: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    marker = tmp_path / "pwned"
    crafted = _pickled_weight(program, tmp_path / name, marker)
    assert model_format(crafted) == "torch-export"  # decided by content, not by the suffix
    code = main(["bench", str(crafted), "--aa-runs", "0", "--sessions", "2"])
    err = capsys.readouterr().err
    assert code == EXIT_ERROR
    assert f"Error: {name} is refused" in err and "pickle" in err
    assert "Traceback" not in err
    assert not marker.exists()


def test_sample_inputs_that_need_a_full_unpickle_are_refused(program: Path, tmp_path: Path) -> None:
    # torch.export.load retries sample inputs with weights_only=False when the safe load fails.
    marker = tmp_path / "pwned"
    crafted = _rewrite(program, tmp_path / "evil.pt2", {"data/sample_inputs/model.pt": _pickled(marker)})
    with pytest.raises(UnsafeModelError, match="sample inputs are not plain tensors"):
        load_exported_program(crafted)
    assert not marker.exists()


def _set_first_expr(data: object, value: str) -> bool:
    """Replaces the first shape expression found in the program's JSON."""
    if isinstance(data, dict):
        if "expr_str" in data:
            data["expr_str"] = value
            return True
        return any(_set_first_expr(v, value) for v in data.values())
    return isinstance(data, list) and any(_set_first_expr(v, value) for v in data)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda d, m: _set_first_expr(d, f"__import__('builtins').open('{m}', 'w')"),
            "names .__import__.",
        ),
        (lambda d, m: _set_first_expr(d, "lambdify(s0, s0)"), "names 'lambdify'"),
        (lambda d, m: d.update(guards_code=[f"open('{m}', 'w')"]), "guards_code entry .* names 'open'"),
        (lambda d, m: d.update(guards_code=["L['x'].__class__ == 1"]), "reads the attribute '__class__'"),
        (
            lambda d, m: d["graph_module"]["graph"]["nodes"][0].update(target="torch.load"),
            "calls 'torch.load'",
        ),
        (
            lambda d, m: d["graph_module"]["graph"]["nodes"][0].update(target="torch.ops.aten.from_file.default"),
            "calls 'torch.ops.aten.from_file.default'",
        ),
    ],
)
def test_code_in_the_program_json_is_refused(program: Path, tmp_path: Path, edit: object, expected: str) -> None:
    marker = tmp_path / "pwned"
    crafted = _edited_program(program, tmp_path / "evil.pt2", lambda d: edit(d, marker))  # type: ignore[operator]
    with pytest.raises(UnsafeModelError, match=expected):
        load_exported_program(crafted)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("data/aotinductor/model/model.so", "AOTInductor"),
        ("data/constants/custom_obj_0", "does not write"),
        ("extra/model.forward.sample_input.pt", "does not write"),
    ],
)
def test_entries_torch_export_save_does_not_write_are_refused(
    program: Path, tmp_path: Path, extra: str, expected: str
) -> None:
    crafted = tmp_path / "extra.pt2"
    _rewrite(program, crafted, {})
    with zipfile.ZipFile(crafted, "a") as z:
        root = z.namelist()[0].split("/", 1)[0]
        z.writestr(f"{root}/{extra}", b"\x7fELF")
    with pytest.raises(UnsafeModelError, match=expected):
        load_exported_program(crafted)


def test_a_zip_that_is_no_program_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(UnsafeModelError, match=r"is not a torch\.export program"):
        load_exported_program(path)


def test_a_program_saved_by_torch_export_still_loads_and_runs(program: Path) -> None:
    loaded = load_exported_program(program)
    assert loaded.module()(torch.randn(5, 8)).shape == (5, 4)


def test_size_guards_are_accepted(tmp_path: Path) -> None:
    # Two inputs sharing a dynamic batch carry the guard "L['x'].size()[0] == L['i'].size()[0]".
    class Two(torch.nn.Module):
        def forward(self, x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
            return x + i

    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(
        Two(), (torch.randn(4, 3), torch.randn(4, 3)), dynamic_shapes=({0: batch}, {0: batch})
    )
    assert exported._guards_code
    torch.export.save(exported, str(tmp_path / "two.pt2"))
    assert load_exported_program(tmp_path / "two.pt2").module()(torch.ones(2, 3), torch.ones(2, 3)).shape == (2, 3)
