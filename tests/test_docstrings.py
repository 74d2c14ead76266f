"""Every ``>>>`` example in the packages' docstrings runs, and shows what it prints.

Examples make their own tmp warehouses; the few marked ``# doctest: +SKIP`` need a Ray
cluster, a network, or data that is minutes to generate (TPC-H).
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

_ROOTS = ("matrixos", "matrixos.engine", "matrixos.storage", "matrixos.connectors")


def _modules() -> list[str]:
    names = set(_ROOTS)
    for root in _ROOTS:
        package = importlib.import_module(root)
        names.update(m.name for m in pkgutil.walk_packages(package.__path__, root + "."))
    return sorted(names)


def _with_examples(name: str) -> bool:
    module = importlib.import_module(name)
    return any(t.examples for t in doctest.DocTestFinder().find(module))


MODULES = [m for m in _modules() if _with_examples(m)]


def test_examples_are_found() -> None:
    # The walk reaches the engine, storage and connectors packages, not only matrixos/.
    assert {"matrixos.engine._syntax", "matrixos.storage.volume", "matrixos.ai.embed"} <= set(
        MODULES
    )


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # examples that write relative paths write here
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    for test in doctest.DocTestFinder().find(module):
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
