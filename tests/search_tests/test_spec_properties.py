"""Property-based tests: every broken study file is a ConfigError with a message, never a crash."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lepton_search.errors import ConfigError, LeptonSearchError
from lepton_search.search import load_study_file, parse_study

QUICKSTART = tomllib.loads((Path(__file__).parents[2] / "studies" / "quickstart.toml").read_text())

junk = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10,
)


def _paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    paths = [prefix] if prefix else []
    if isinstance(data, dict):
        for key, value in data.items():
            paths += _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            paths += _paths(value, (*prefix, i))
    return paths


PATHS = _paths(QUICKSTART)


def _set(data: Any, path: tuple, value: Any) -> None:
    for part in path[:-1]:
        data = data[part]
    data[path[-1]] = value


def _accepts_or_explains(data: Any) -> None:
    try:
        parse_study(data)
    except ConfigError as e:
        assert str(e).strip(), "an error must say what is wrong"
        assert "Traceback" not in str(e)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), value=junk)
def test_replacing_any_value_with_junk_is_accepted_or_explained(path: tuple, value: Any) -> None:
    data = copy.deepcopy(QUICKSTART)
    _set(data, path, value)
    _accepts_or_explains(data)


@settings(max_examples=200, deadline=None)
@given(path=st.sampled_from([p for p in PATHS if isinstance(p[-1], str)]), key=st.text(min_size=1, max_size=12))
def test_an_unknown_key_anywhere_is_named(path: tuple, key: str) -> None:
    data = copy.deepcopy(QUICKSTART)
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    if not isinstance(parent, dict) or key in parent:
        return
    parent[key] = 1
    try:
        parse_study(data)
    except ConfigError as e:
        assert repr(key)[1:-1] in str(e) or "unknown" in str(e).lower() or "allowed" in str(e).lower()
    # a key that happens to be a valid one is fine


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=300))
def test_any_text_as_a_study_file_is_accepted_or_explained(tmp_path_factory: Any, text: str) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "study.toml"
    path.write_text(text, encoding="utf-8")
    try:
        load_study_file(path)
    except LeptonSearchError as e:
        assert str(e).strip()


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=200))
def test_binary_garbage_is_explained(tmp_path_factory: Any, data: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "study.toml"
    path.write_bytes(data)
    try:
        load_study_file(path)
    except LeptonSearchError as e:
        assert str(e).strip()
