"""The ``>>>`` examples in the core modules' docstrings run and give what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "synflow_plugin.targets",
    "synflow_plugin.masking",
    "synflow_plugin.criteria",
    "synflow_plugin.selection",
    "synflow_plugin.checkpoint",
    "synflow_plugin.sanity",
    "synflow_plugin.testing",
    "synflow_plugin.nni",
    "synflow_plugin.adapters.nni.pruners",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    if name.endswith("nni") or ".nni." in name:
        pytest.importorskip("nni")
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, f"{name}: {result.failed} of {result.attempted} failed"
