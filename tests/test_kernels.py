"""The compiled per-round kernels give exactly what their numpy versions give."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synflow_plugin import _kernels, compute_masks, prunable_parameters
from synflow_plugin.models import create_model

compiled = pytest.mark.skipif(not _kernels.COMPILED, reason="the C kernels were not built here")


@pytest.fixture
def numpy_only(monkeypatch):
    monkeypatch.setattr(_kernels, "_LIB", None)


def both(fn, *args, **kwargs):
    """fn's result with the compiled kernels, then with the numpy versions."""
    first = fn(*args, **kwargs)
    lib, _kernels._LIB = _kernels._LIB, None
    try:
        second = fn(*args, **kwargs)
    finally:
        _kernels._LIB = lib
    return first, second


@compiled
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weighted,absolute", [(False, False), (False, True), (True, True), (True, False)])
def test_gather_matches_numpy(dtype, weighted, absolute):
    rng = np.random.default_rng(0)
    score, weight = rng.standard_normal(10_000).astype(dtype), rng.standard_normal(10_000).astype(dtype)
    pool = np.flatnonzero(rng.random(10_000) > 0.3)

    def run():
        out = np.empty(pool.size, dtype=dtype)
        _kernels.gather(score, pool, out, weight=weight if weighted else None, absolute=absolute)
        return out

    fast, slow = both(run)
    assert np.array_equal(fast, slow)
    expected = score[pool] * (weight[pool] if weighted else 1)
    assert np.array_equal(slow, np.abs(expected) if absolute else expected)


@compiled
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("upper", [True, False])
def test_positions_beyond_and_delete_sorted_match_numpy(dtype, upper):
    rng = np.random.default_rng(1)
    values = rng.standard_normal(50_000).astype(dtype)
    fast, slow = both(_kernels.positions_beyond, values, 0.3, upper=upper)
    assert np.array_equal(fast, slow) and np.array_equal(slow, np.flatnonzero(values <= 0.3 if upper
                                                                            else values >= 0.3))
    pool = np.flatnonzero(rng.random(50_000) > 0.5)
    drop = np.sort(rng.choice(pool.size, 777, replace=False))
    fast, slow = both(_kernels.delete_sorted, pool, drop)
    assert np.array_equal(fast, slow) and fast.size == pool.size - 777
    edge = np.array([0, pool.size - 1])
    assert np.array_equal(*both(_kernels.delete_sorted, pool, edge))


@pytest.mark.parametrize("criterion", ["synflow", "magnitude", "random"])
def test_masks_are_the_same_without_the_compiled_kernels(criterion, numpy_only, request):
    torch.manual_seed(0)
    model = create_model("vgg11_bn", num_classes=10, width_multiplier=0.25)
    kwargs = {"example_inputs": torch.randn(1, 3, 32, 32), "iterations": 8} if criterion == "synflow" else {}
    if criterion == "random":
        kwargs["seed"] = 0
    slow = compute_masks(model, prunable_parameters(model), criterion, 0.99, **kwargs)
    request.getfixturevalue("monkeypatch").undo()
    fast = compute_masks(model, prunable_parameters(model), criterion, 0.99, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(slow, fast))
