"""The per-round kernels and the survivor bookkeeping give exact, implementation-independent results."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synflow_plugin import _kernels, compute_masks, prunable_parameters, selection
from synflow_plugin.models import create_model
from synflow_plugin.selection import Survivors

compiled = pytest.mark.skipif(not _kernels.COMPILED, reason="the C kernels were not built here")
VARIANTS = ["numpy", "scalar", "simd"]


@pytest.fixture
def numpy_only(monkeypatch):
    monkeypatch.setattr(_kernels, "_LIB", None)


def with_variant(variant, fn, *args, **kwargs):
    """fn's result with the numpy kernels, the scalar C ones or the AVX-512 C ones."""
    if variant != "numpy" and not _kernels.COMPILED:
        pytest.skip("the C kernels were not built here")
    if variant == "simd" and not _kernels.simd(True):
        pytest.skip("no AVX-512 on this CPU")
    lib = _kernels._LIB
    if variant == "numpy":
        _kernels._LIB = None
    elif variant == "scalar":
        _kernels.simd(False)
    try:
        return fn(*args, **kwargs)
    finally:
        _kernels._LIB = lib
        _kernels.simd(True)


def random_case(rng, dtype, size):
    grad = rng.standard_normal(size).astype(dtype)
    grad[rng.random(size) < 0.05] = 0  # ties at zero
    grad[rng.random(size) < 0.05] = 0.5  # and elsewhere
    weight = rng.standard_normal(size).astype(dtype)
    pos = np.flatnonzero(rng.random(size) < rng.uniform(0.05, 1.0)).astype(np.int32)
    pos[rng.random(pos.size) < 0.1] = -1  # pruned in the previous round
    return grad, weight, pos


def run_pass(pos, grad, weight, absolute, lo, hi):
    pos = pos.copy()
    below, band = np.empty(pos.size, np.int32), np.empty(pos.size, np.int32)
    band_score = np.empty(pos.size, grad.dtype)
    n, nb, nc, nan, nonzero, outside = _kernels.score_pass(pos, pos.size, grad, weight, absolute, lo, hi,
                                                           below, band, band_score)
    return (n, nan, nonzero, outside), pos[:n], below[:nb], band[:nc], band_score[:nc]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_score_pass_compacts_scores_and_sorts_by_the_bracket(variant, dtype):
    rng = np.random.default_rng(0)
    for trial in range(60):
        grad, weight, pos = random_case(rng, dtype, int(rng.integers(1, 3000)))
        if trial % 5 == 0:
            grad[rng.integers(grad.size)] = np.nan
        if trial % 4 == 1:  # scores outside the normal range: huge, infinite, tiny
            info = np.finfo(dtype)
            spots = rng.integers(grad.size, size=3)
            grad[spots] = [info.max / 2, np.inf, info.tiny * 4]
        w = weight if trial % 3 else None
        absolute = bool(trial % 2)
        lo, hi = sorted(float(x) for x in rng.standard_normal(2) * 0.5)
        if trial % 7 == 0:
            lo, hi = -np.inf, np.inf
        got = with_variant(variant, run_pass, pos, grad, w, absolute, lo, hi)

        live = pos[pos >= 0]
        with np.errstate(over="ignore", invalid="ignore"):
            scores = grad[live] * (1 if w is None else w[live])
        scores = np.abs(scores) if absolute else scores
        low = np.flatnonzero(scores < lo)
        inside = np.flatnonzero(~(scores < lo) & ~(scores > hi))  # NaN goes to the band
        small, big = _kernels.normal_range(dtype)
        magnitude = np.abs(scores)
        outside = int(((magnitude > big) | ((magnitude < small) & (scores != 0))).sum())
        assert got[0] == (live.size, int(np.isnan(scores).sum()), int(np.count_nonzero(scores)), outside)
        assert np.array_equal(got[1], live)
        assert np.array_equal(got[2], low) and np.array_equal(got[3], inside)
        assert np.array_equal(got[4], scores[inside], equal_nan=True)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_score_passes_give_what_single_passes_give(variant, dtype, threads):
    rng = np.random.default_rng(4)
    cases = [random_case(rng, dtype, int(rng.integers(1, 20_000))) for _ in range(9)]
    brackets = [tuple(sorted(float(x) for x in rng.standard_normal(2))) for _ in cases]

    def arguments():
        return [(pos.copy(), pos.size, grad, weight, lo, hi, np.empty(pos.size, np.int32),
                 np.empty(pos.size, np.int32), np.empty(pos.size, dtype))
                for (grad, weight, pos), (lo, hi) in zip(cases, brackets)]

    batch = arguments()
    results = with_variant(variant, _kernels.score_passes, batch, True, threads)
    single = arguments()
    expected = [_kernels.score_pass(a[0], a[1], a[2], a[3], True, *a[4:]) for a in single]
    assert results == expected
    for a, b, (n, nb, nc, *_) in zip(batch, single, expected):
        assert np.array_equal(a[0][:n], b[0][:n]) and np.array_equal(a[6][:nb], b[6][:nb])
        assert np.array_equal(a[7][:nc], b[7][:nc]) and np.array_equal(a[8][:nc], b[8][:nc])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("threads", [1, 2])
def test_batched_samples_and_drops_give_what_single_calls_give(variant, threads):
    rng = np.random.default_rng(5)
    cases = [random_case(rng, np.float32, int(rng.integers(1, 20_000))) for _ in range(7)]
    draws = [(pos, pos.size, grad, weight, np.empty(64, np.float32), k) for k, (grad, weight, pos) in enumerate(cases)]
    taken = with_variant(variant, _kernels.sample_many, draws, True, threads)
    for (pos, n, grad, weight, out, seed), m in zip(draws, taken):
        single = np.empty(64, np.float32)
        assert m == with_variant(variant, _kernels.sample_scores, pos, n, grad, weight, True, single, seed)
        assert np.array_equal(out[:m], single[:m])

    batch, single = [], []
    for grad, weight, pos in cases:
        index = np.flatnonzero(rng.random(pos.size) < 0.3).astype(np.int32)
        batch.append((pos.copy(), index, weight.copy()))
        single.append((pos.copy(), index, weight.copy()))
    with_variant(variant, _kernels.drop_many, batch, threads)
    for (pos, index, weight), (pos2, _, weight2) in zip(batch, single):
        _kernels.drop(pos2, index, weight2)
        assert np.array_equal(pos, pos2) and np.array_equal(weight, weight2)


@compiled
def test_the_openmp_runtime_of_torch_is_found_where_torch_uses_gnu_openmp():
    import sys

    info = torch.__config__.parallel_info()
    if not sys.platform.startswith("linux") or "OpenMP" not in info:
        pytest.skip("torch does not run on an OpenMP runtime here")
    assert isinstance(_kernels.openmp_parallel(), int)


@pytest.mark.parametrize("variant", VARIANTS)
def test_sample_scores_draws_live_scores_from_every_stratum(variant):
    rng = np.random.default_rng(1)
    grad, weight, pos = random_case(rng, np.float32, 50_000)
    out = np.full(512, np.nan, dtype=np.float32)
    count = with_variant(variant, _kernels.sample_scores, pos, pos.size, grad, weight, True, out, 3)
    live = pos[pos >= 0]
    assert 0.8 * 512 < count <= 512 and not np.isnan(out[:count]).any()
    assert np.isin(out[:count], np.abs(grad[live] * weight[live])).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_drop_marks_entries_and_zeroes_their_weights_once(variant):
    weight = np.arange(1, 11, dtype=np.float64)
    pos = np.array([1, 3, 4, 7, 9], dtype=np.int32)
    index = np.array([0, 3], dtype=np.int32)
    with_variant(variant, _kernels.drop, pos, index, weight)
    with_variant(variant, _kernels.drop, pos, index, weight)  # marked entries are left alone
    assert pos.tolist() == [-1, 3, 4, -1, 9]
    assert np.flatnonzero(weight == 0).tolist() == [1, 7]


@compiled
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("upper", [True, False])
def test_positions_beyond_matches_numpy(dtype, upper):
    values = np.random.default_rng(1).standard_normal(50_000).astype(dtype)
    fast = _kernels.positions_beyond(values, 0.3, upper=upper)
    assert np.array_equal(fast, np.flatnonzero(values <= 0.3 if upper else values >= 0.3))


def reference_round(scores, live, groups, counts):
    """The pruned positions per target: stable sort of the scores of each group."""
    pruned = {}
    for group, count in zip(groups, counts):
        keys = [(scores[t][p], t, p) for t in group for p in live[t]]
        for _, t, p in sorted(keys, key=lambda k: (k[0], k[1], k[2]))[:count]:
            pruned.setdefault(t, set()).add(p)
    return pruned


@pytest.mark.parametrize("grouping", ["global", "local"])
def test_survivors_prune_exactly_the_smallest_with_ties_by_position(grouping, monkeypatch):
    monkeypatch.setattr(selection, "_MAX_SPAN", 2000)  # several segments per tensor
    monkeypatch.setattr(selection, "_SAMPLE", 256)  # small tensors still use the bracket
    rng = np.random.default_rng(2)
    sizes = [7000, 300, 12000]
    scores = [np.round(rng.standard_normal(n), 1).astype(np.float32) for n in sizes]  # many ties
    weights = [np.ones(n, dtype=np.float32) for n in sizes]
    live = [np.flatnonzero(rng.random(n) < 0.8) for n in sizes]
    groups = [[0, 1, 2]] if grouping == "global" else [[0], [1], [2]]
    alive = Survivors(live)
    for r in range(4):
        before = [alive.positions(t) for t in range(3)]
        counts = [sum(before[t].size for t in g) // 5 for g in groups]
        expected = reference_round(scores, before, groups, counts)
        result = alive.prune(scores, [None] * 3, False, groups, counts, zero=weights, record=[True] * 3, seed=r)
        for t in range(3):
            gone = set(before[t].tolist()) - set(alive.positions(t).tolist())
            assert gone == expected.get(t, set()) == set(result.pruned[t].tolist())
            assert (weights[t][sorted(gone)] == 0).all() and alive.live(t) == before[t].size - len(gone)
        scores = [s[::-1].copy() for s in scores]  # new scores every round


def test_survivors_stay_exact_when_the_sample_misses_the_threshold(monkeypatch):
    rng = np.random.default_rng(3)
    scores = [rng.standard_normal(400_000).astype(np.float32)]
    monkeypatch.setattr(Survivors, "_bracket", staticmethod(lambda *args: (5.0, 6.0)))  # above every score
    alive = Survivors([np.arange(400_000)])
    result = alive.prune(scores, [None], False, [[0]], [1234], zero=[None], record=[True])
    assert np.array_equal(result.pruned[0], np.sort(np.argsort(scores[0], kind="stable")[:1234]))


def test_survivors_prune_nothing_on_nan_and_reset_to_the_start():
    scores = [np.arange(10, dtype=np.float64)]
    alive = Survivors([np.arange(2, 10)], revivable=True)
    alive.prune(scores, [None], False, [[0]], [3], zero=[None], record=[False])
    assert alive.positions(0).tolist() == [5, 6, 7, 8, 9]
    scores[0][7] = np.nan
    result = alive.prune(scores, [None], False, [[0]], [1], zero=[None], record=[True])
    assert result.nan == [1] and alive.live(0) == 5
    alive.reset()
    assert alive.positions(0).tolist() == list(range(2, 10))


@pytest.mark.parametrize("criterion", ["synflow", "magnitude", "random", "force"])
def test_masks_are_the_same_without_the_compiled_kernels(criterion, numpy_only, request):
    torch.manual_seed(0)
    model = create_model("vgg11_bn", num_classes=10, width_multiplier=0.25)
    kwargs = {"example_inputs": torch.randn(1, 3, 32, 32), "iterations": 8} if criterion == "synflow" else {}
    if criterion == "random":
        kwargs["seed"] = 0
    if criterion == "force":
        kwargs = {"data": [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))], "iterations": 3}
    slow = compute_masks(model, prunable_parameters(model), criterion, 0.99, **kwargs)
    request.getfixturevalue("monkeypatch").undo()
    fast = compute_masks(model, prunable_parameters(model), criterion, 0.99, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(slow, fast))
    if _kernels.simd():
        _kernels.simd(False)
        try:
            scalar = compute_masks(model, prunable_parameters(model), criterion, 0.99, **kwargs)
        finally:
            _kernels.simd(True)
        assert all(torch.equal(a, b) for a, b in zip(scalar, fast))
