"""English text that ships with Python and with this project's own dependencies, as passages.

Model hubs and dataset downloads are out of reach on the machines this runs on, so text tasks draw
on what is installed:

- :func:`pydoc_passages`: the paragraphs of ``pydoc_data.topics``, the language reference behind
  ``help()`` (about 1,300-1,600 depending on the Python version).
- :func:`docstring_passages`: the paragraphs of the docstrings of the standard library and of
  numpy, scipy, scikit-learn and SQLAlchemy (installed with lepton-search), read from their source
  files with :mod:`ast`, so nothing is imported or executed (about 40,000).
- :func:`license_passages`: the paragraphs of Python's licence and of those packages' licence
  files: legal English, a held-out source of a different kind from the technical text.

A passage is a paragraph (text between blank lines) of at least ``MIN_WORDS`` words with its
whitespace collapsed; each source is de-duplicated and sorted, so the same installation always gives
the same passages. :func:`source_signature` names what they were read from (Python and package
versions), for cache keys.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import json
import platform
import re
import sysconfig
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path

from lepton_search._atomic import write_json_atomically

#: Shorter paragraphs are mostly headings, signatures and table rows.
MIN_WORDS = 12
#: Installed with lepton-search (scikit-learn brings scipy), so their docstrings are always there.
DOCSTRING_PACKAGES: tuple[tuple[str, str], ...] = (
    ("numpy", "numpy"),
    ("scipy", "scipy"),
    ("sklearn", "scikit-learn"),
    ("sqlalchemy", "sqlalchemy"),
)
# Test suites and vendored copies are not the packages' own prose (and tests hold odd strings).
_SKIPPED_DIRS = frozenset({"test", "tests", "testing", "idlelib", "lib2to3", "site-packages", "_vendor", "__pycache__"})
_LICENSE_NAME = re.compile(r"^(LICEN[CS]E|COPYING|NOTICE)", re.IGNORECASE)


def paragraphs(text: str, min_words: int = MIN_WORDS) -> Iterator[str]:
    """The paragraphs of ``text`` with at least ``min_words`` words, whitespace collapsed."""
    for paragraph in re.split(r"\n\s*\n", text):
        collapsed = " ".join(paragraph.split())
        if len(collapsed.split()) >= min_words:
            yield collapsed


@cache
def pydoc_passages() -> tuple[str, ...]:
    """Paragraphs of ``pydoc_data.topics``, unique and sorted."""
    from pydoc_data.topics import topics

    return tuple(sorted({p for key in sorted(topics) for p in paragraphs(topics[key])}))


def _docstrings(root: Path) -> Iterator[str]:
    for path in sorted(root.rglob("*.py")):
        if _SKIPPED_DIRS.intersection(path.relative_to(root).parts[:-1]):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue  # a file for another Python version, or unreadable: not text we need
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                docstring = ast.get_docstring(node, clean=True)
                if docstring:
                    yield from paragraphs(docstring)


def _package_dirs() -> list[Path]:
    dirs = [Path(sysconfig.get_paths()["stdlib"])]
    for module, _ in DOCSTRING_PACKAGES:
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin is not None:
            dirs.append(Path(spec.origin).parent)
    return dirs


def source_signature() -> dict[str, str]:
    """What the passages are read from: the Python version and each package's version."""
    signature = {"python": platform.python_version(), "min_words": str(MIN_WORDS)}
    for module, distribution in DOCSTRING_PACKAGES:
        try:
            signature[module] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            signature[module] = "absent"
    return signature


def _signature_hash() -> str:
    return hashlib.sha256(json.dumps(source_signature(), sort_keys=True).encode()).hexdigest()[:16]


def docstring_passages(cache_dir: Path | None = None) -> tuple[str, ...]:
    """Docstring paragraphs of the standard library and :data:`DOCSTRING_PACKAGES`, unique and
    sorted. Reading them takes about ten seconds, so with ``cache_dir`` they are kept as JSON under
    ``<cache_dir>/corpus/``, keyed by :func:`source_signature` (written atomically)."""
    return _cached_docstrings(str(cache_dir) if cache_dir is not None else None)


@cache
def _cached_docstrings(cache_dir: str | None) -> tuple[str, ...]:
    path = Path(cache_dir) / "corpus" / f"docstrings-{_signature_hash()}.json" if cache_dir else None
    if path is not None:
        try:
            return tuple(json.loads(path.read_text()))
        except (OSError, ValueError):
            pass  # missing or damaged: read the sources and (re)write it
    found: set[str] = set()
    for directory in _package_dirs():
        found.update(_docstrings(directory))
    passages = tuple(sorted(found))
    if path is not None:
        write_json_atomically(path, list(passages))
    return passages


def _license_files() -> Iterable[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    yield stdlib / "LICENSE.txt"
    for _, distribution in DOCSTRING_PACKAGES:
        try:
            files = importlib.metadata.distribution(distribution).files or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for file in files:
            if _LICENSE_NAME.match(Path(str(file)).name):
                yield Path(str(file.locate()))


@cache
def license_passages() -> tuple[str, ...]:
    """Paragraphs of Python's licence and of :data:`DOCSTRING_PACKAGES`' licence files."""
    found: set[str] = set()
    for path in _license_files():
        try:
            found.update(paragraphs(path.read_text(errors="replace")))
        except OSError:
            continue
    return tuple(sorted(found))
