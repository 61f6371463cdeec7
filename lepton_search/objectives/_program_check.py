"""Checks that a ``torch.export`` archive (``.pt2``) can be loaded without running code from it.

A ``.pt2`` file is a zip archive, and ``torch.export.load`` runs parts of it:

* weights and constants marked ``use_pickle`` are loaded with ``torch.load(weights_only=False)``,
  and custom or opaque objects with ``pickle.loads``: a pickle runs whatever it names;
* sample inputs that the restricted unpickler refuses are loaded again without restriction;
* AOTInductor entries are shared libraries that are loaded into the process;
* symbolic shape expressions are parsed with ``sympy.sympify``, which calls ``eval``;
* ``guards_code`` is Python source that ``program.module()`` passes to ``exec``;
* a node's target may be any attribute of ``torch``, called when the program runs.

So a program from someone else is loaded only when everything in it is data of the kinds that
``torch.export.save`` writes for an ordinary module: plain tensor payloads (no pickles), sample
inputs that ``torch.load(weights_only=True)`` accepts, aten/prims operators and a few pure Python
operators, shape expressions made of symbols, integers and arithmetic, and guards that only compare
input sizes with numbers (checked on their syntax tree). Anything
else is refused with :class:`~lepton_search.errors.UnsafeModelError`, before torch reads the file.
The check runs on the bytes that are then handed to torch, so the file cannot change in between.
"""

from __future__ import annotations

import ast
import io
import json
import re
from typing import Any

from lepton_search.errors import UnsafeModelError

_HOW_TO_PROCEED = (
    "A .pt2 program is code as well as data, so only programs that torch.export.save writes for an ordinary "
    "module (plain tensor weights, aten operators) are loaded. Re-export the model yourself with "
    "torch.export.save(torch.export.export(model, example_args), 'model.pt2'), or measure an ONNX export of it."
)

#: The archive entries ``torch.export.save`` writes for one program named ``model``.
_FIXED_ENTRIES = frozenset(
    {
        "archive_format",
        "archive_version",
        "byteorder",
        ".data/version",
        ".data/serialization_id",
        "models/model.json",
        "data/weights/model_weights_config.json",
        "data/constants/model_constants_config.json",
        "data/sample_inputs/model.pt",
    }
)
_WEIGHT = re.compile(r"^weight_\d+$")
_TENSOR_CONSTANT = re.compile(r"^tensor_\d+$")
# extra/ files are read back as text only; a .pt there is a TorchScript sample input (a pickle).
_EXTRA = re.compile(r"^extra/[\w.-]+$")

_TARGETS = (
    re.compile(r"^torch\.ops\.(aten|prims)\.[A-Za-z_]\w*\.[A-Za-z_]\w*$"),
    re.compile(
        r"^_operator\.(getitem|add|sub|mul|floordiv|truediv|mod|neg|pos|pow|eq|ne|lt|le|gt|ge|and_|or_|xor|not_|abs)$"
    ),
    re.compile(r"^torch\.sym_(float|int|max|min|not|ite|sum|sqrt)$"),
    re.compile(r"^math\.(ceil|floor|trunc|sqrt)$"),
)
# aten operators that touch files rather than tensors.
_FILE_OPS = re.compile(r"file|save|load", re.IGNORECASE)

# Tokens of a shape expression as torch.export writes them, e.g.
# "Symbol('s33', positive=True, integer=True)" or "2*s0 + Mod(s1, 8)".
_EXPR_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d+)?)|('[a-z]+\d+')|([A-Za-z_]\w*)|(\*\*|//|==|!=|<=|>=|[-+*/%(),=<>&|~]))")
_SYMBOL_NAME = re.compile(r"^[a-z]+\d+$")
_EXPR_NAMES = frozenset(
    {
        "Symbol",
        "positive",
        "integer",
        "nonnegative",
        "real",
        "finite",
        "True",
        "False",
        "oo",
        "Integer",
        "Rational",
        "Float",
        "Max",
        "Min",
        "Mod",
        "Abs",
        "Eq",
        "Ne",
        "Lt",
        "Le",
        "Gt",
        "Ge",
        "And",
        "Or",
        "Not",
        "floor",
        "ceiling",
        "sqrt",
        "Piecewise",
        # torch.utils._sympy.functions, which the deserializer passes to sympify as locals
        "FloorDiv",
        "ModularIndexing",
        "Where",
        "PythonMod",
        "CeilToInt",
        "FloorToInt",
        "CleanDiv",
        "IntTrueDiv",
        "FloatTrueDiv",
        "FloatPow",
        "PowByNatural",
        "TruncToFloat",
        "TruncToInt",
        "RoundToInt",
        "RoundDecimal",
        "ToFloat",
        "Identity",
        "IsNonOverlappingAndDenseIndicator",
        "OpaqueUnaryFn_sqrt",
    }
)


def _refuse(name: str, reason: str) -> UnsafeModelError:
    return UnsafeModelError(f"{name} is refused: {reason}. {_HOW_TO_PROCEED}")


def _check_payloads(name: str, records: dict[str, bytes], config_entry: str, pattern: re.Pattern[str]) -> None:
    try:
        config = json.loads(records[config_entry])["config"]
        items = config.items()
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise _refuse(name, f"its {config_entry} is not a payload table ({type(e).__name__}: {e})") from e
    for fqn, meta in items:
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            raise _refuse(name, f"{fqn!r} in {config_entry} is stored as a pickle, and unpickling runs code")
        path_name = meta.get("path_name")
        if not isinstance(path_name, str) or not pattern.match(path_name):
            raise _refuse(name, f"{fqn!r} in {config_entry} is stored as {path_name!r}, which is not a plain tensor")


def _check_expr(name: str, expr: str) -> None:
    pos = 0
    while expr[pos:].strip():
        match = _EXPR_TOKEN.match(expr, pos)
        if match is None or match.end() == pos:
            raise _refuse(name, f"its shape expression {expr[:200]!r} is not arithmetic on symbols")
        identifier = match.group(3)
        if identifier is not None and identifier not in _EXPR_NAMES and not _SYMBOL_NAME.match(identifier):
            raise _refuse(
                name, f"its shape expression {expr[:200]!r} names {identifier!r}, which is not a shape function"
            )
        pos = match.end()


_GUARD_NODES = (
    ast.Expression,
    ast.Compare,
    ast.BoolOp,
    ast.BinOp,
    ast.UnaryOp,
    ast.Call,
    ast.Name,
    ast.Attribute,
    ast.Subscript,
    ast.Constant,
    ast.Load,
    ast.operator,
    ast.cmpop,
    ast.boolop,
    ast.unaryop,
)
_GUARD_NAMES = _EXPR_NAMES | {"L", "math", "inf"}
_GUARD_METHODS = frozenset({"size", "stride", "storage_offset"})
_GUARD_MATH = frozenset({"isnan", "inf", "ceil", "floor", "trunc", "sqrt"})
_INPUT_KEY = re.compile(r"^[A-Za-z_]\w*$")


def _guard_problem(code: str) -> str | None:
    """Why ``code`` (one entry of ``guards_code``) is more than a comparison of input sizes, or None."""
    try:
        tree = ast.parse(code, mode="eval")
    except SyntaxError as e:
        return f"it is not an expression ({e.msg})"
    for node in ast.walk(tree):
        if not isinstance(node, _GUARD_NODES):
            return f"it contains a {type(node).__name__}"
        if isinstance(node, ast.Name) and node.id not in _GUARD_NAMES:
            return f"it names {node.id!r}"
        if isinstance(node, ast.Attribute):
            on_math = isinstance(node.value, ast.Name) and node.value.id == "math"
            if not (node.attr in _GUARD_MATH if on_math else node.attr in _GUARD_METHODS):
                return f"it reads the attribute {node.attr!r}"
        if isinstance(node, ast.Call) and (node.keywords or not isinstance(node.func, (ast.Name, ast.Attribute))):
            return "it makes a call other than a size or math function"
        if isinstance(node, ast.Constant) and not (
            isinstance(node.value, (bool, int, float)) or (isinstance(node.value, str) and _INPUT_KEY.match(node.value))
        ):
            return f"it holds the constant {node.value!r}"
    return None


def _walk(name: str, node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "target" and isinstance(value, str):
                if not any(p.match(value) for p in _TARGETS) or (
                    value.startswith("torch.ops.") and _FILE_OPS.search(value.split(".")[3])
                ):
                    raise _refuse(name, f"its graph calls {value!r}, which is not an aten tensor operator")
            elif key == "expr_str" and isinstance(value, str):
                _check_expr(name, value)
            else:
                _walk(name, value)
    elif isinstance(node, list):
        for value in node:
            _walk(name, value)


def check_program_archive(data: bytes, name: str) -> None:
    """Refuses a ``.pt2`` archive whose loading or running would execute code from it.

    Args:
        data: The archive's bytes (the same bytes are then given to ``torch.export.load``).
        name: The file's name, for messages.

    Raises:
        UnsafeModelError: the archive holds pickled payloads, compiled libraries, guard code, shape
            expressions beyond arithmetic, operators other than aten/prims ones, or entries
            ``torch.export.save`` does not write; or it is not a PT2 archive at all.
    """
    import torch

    try:
        reader = torch._C.PyTorchFileReader(io.BytesIO(data))
        records = {entry: bytes(reader.get_record(entry)) for entry in reader.get_all_records()}
    except Exception as e:
        raise UnsafeModelError(
            f"{name} is not a torch.export program (not a readable PT2 archive: {type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''}). Save one with "
            "torch.export.save(torch.export.export(model, example_args), 'model.pt2')."
        ) from e
    missing = sorted(_FIXED_ENTRIES - {".data/serialization_id", "byteorder"} - records.keys())
    if missing or records.get("archive_format") != b"pt2":
        raise UnsafeModelError(
            f"{name} is not a torch.export program (it lacks {', '.join(missing) or 'archive_format = pt2'}), and "
            "it is not opened otherwise: a pickle (torch.save of a module) runs code when loaded. Save a program "
            "with torch.export.save(torch.export.export(model, example_args), 'model.pt2')."
        )
    for entry in records:
        if entry in _FIXED_ENTRIES or (_EXTRA.match(entry) and not entry.endswith(".pt")):
            continue
        folder, _, leaf = entry.rpartition("/")
        if (folder == "data/weights" and _WEIGHT.match(leaf)) or (
            folder == "data/constants" and _TENSOR_CONSTANT.match(leaf)
        ):
            continue
        if entry.startswith("data/aotinductor/"):
            raise _refuse(name, f"it holds AOTInductor entries such as {entry!r}, compiled code that loading runs")
        raise _refuse(name, f"it holds {entry!r}, which torch.export.save does not write for one program")
    _check_payloads(name, records, "data/weights/model_weights_config.json", _WEIGHT)
    _check_payloads(name, records, "data/constants/model_constants_config.json", _TENSOR_CONSTANT)
    try:
        program = json.loads(records["models/model.json"])
    except ValueError as e:
        raise _refuse(name, f"its models/model.json is not JSON ({e})") from e
    if not isinstance(program, dict):
        raise _refuse(name, "its models/model.json is not a program")
    guards = program.get("guards_code") or []
    if not isinstance(guards, list) or not all(isinstance(g, str) for g in guards):
        raise _refuse(name, "its guards_code is not a list of expressions")
    for guard in guards:
        problem = _guard_problem(guard)
        if problem:
            raise _refuse(
                name,
                f"its guards_code entry {guard[:200]!r} is Python that torch executes when the program is used, and "
                f"{problem}; only comparisons of input sizes are accepted",
            )
    _walk(name, program)
    sample_inputs = records["data/sample_inputs/model.pt"]
    try:
        if sample_inputs:
            torch.load(io.BytesIO(sample_inputs), weights_only=True)
    except Exception as e:
        # torch.export.load would retry this with weights_only=False, a full unpickle.
        raise _refuse(
            name, f"its sample inputs are not plain tensors ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from e
