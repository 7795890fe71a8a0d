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
    flags = rng.random(size) < rng.uniform(0.02, 1.0)
    flags[: int(rng.integers(0, 200))] = True  # dense words beside sparse ones
    return grad, weight, _kernels.bitmap(flags)


def run_scan(bits, grad, weight, absolute, lo, hi):
    drop = np.full(bits.size, 12345, dtype=np.uint64)  # every word is written
    band, band_score = np.empty(64 * bits.size, np.int32), np.empty(64 * bits.size, grad.dtype)
    stats = _kernels.scan(bits, grad, weight, absolute, lo, hi, drop, band, band_score)
    return stats, drop, band[: stats[1]], band_score[: stats[1]]


def test_bitmaps_hold_one_bit_per_flag():
    flags = np.random.default_rng(0).random(1000) < 0.3
    bits = _kernels.bitmap(flags)
    assert bits.dtype == np.uint64 and bits.size == 16
    assert np.array_equal(_kernels.unpack(bits, 1000), flags) and not _kernels.unpack(bits)[1000:].any()
    assert np.array_equal(_kernels.unpack(_kernels.full_bitmap(130), 130), np.ones(130, bool))
    assert _kernels.unpack(_kernels.full_bitmap(130)).sum() == 130
    assert np.array_equal(_kernels.set_positions(bits), np.flatnonzero(flags))
    assert _kernels.set_positions(np.zeros(3, np.uint64)).size == 0
    drop = np.zeros(16, np.uint64)
    _kernels.mark(drop, np.array([0, 63, 64, 999]))
    assert np.flatnonzero(_kernels.unpack(drop)).tolist() == [0, 63, 64, 999]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scan_scores_the_live_entries_and_sorts_them_by_the_bracket(variant, dtype):
    rng = np.random.default_rng(0)
    for trial in range(60):
        grad, weight, bits = random_case(rng, dtype, int(rng.integers(1, 3000)))
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
        stats, drop, band, band_score = with_variant(variant, run_scan, bits, grad, w, absolute, lo, hi)

        live = np.flatnonzero(_kernels.unpack(bits))
        with np.errstate(over="ignore", invalid="ignore"):
            scores = grad[live] * (1 if w is None else w[live])
        scores = np.abs(scores) if absolute else scores
        low = scores < lo
        inside = ~low & ~(scores > hi)  # NaN goes to the band
        small, big = _kernels.normal_range(dtype)
        magnitude = np.abs(scores)
        outside = int(((magnitude > big) | ((magnitude < small) & (scores != 0))).sum())
        assert stats == (int(low.sum()), int(inside.sum()), int(np.isnan(scores).sum()),
                         int(np.count_nonzero(scores)), outside, live.size)
        assert np.array_equal(np.flatnonzero(_kernels.unpack(drop)), live[low])
        assert np.array_equal(band, live[inside])
        assert np.array_equal(band_score, scores[inside], equal_nan=True)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_batched_scans_give_what_single_scans_give(variant, dtype, threads):
    rng = np.random.default_rng(4)
    cases = [random_case(rng, dtype, int(rng.integers(1, 20_000))) for _ in range(9)]
    brackets = [tuple(sorted(float(x) for x in rng.standard_normal(2))) for _ in cases]

    def arguments():
        return [(bits, grad, weight, lo, hi, np.empty(bits.size, np.uint64), np.empty(64 * bits.size, np.int32),
                 np.empty(64 * bits.size, dtype)) for (grad, weight, bits), (lo, hi) in zip(cases, brackets)]

    batch = arguments()
    results = with_variant(variant, _kernels.scan_many, batch, True, threads)
    single = arguments()
    expected = [_kernels.scan(a[0], a[1], a[2], True, *a[3:]) for a in single]
    assert results == expected
    for a, b, (nb, nc, *_) in zip(batch, single, expected):
        assert np.array_equal(a[5], b[5])
        assert np.array_equal(a[6][:nc], b[6][:nc]) and np.array_equal(a[7][:nc], b[7][:nc])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("threads", [1, 2])
def test_batched_samples_and_applies_give_what_single_calls_give(variant, threads):
    rng = np.random.default_rng(5)
    cases = [random_case(rng, np.float32, int(rng.integers(1, 20_000))) for _ in range(7)]
    counts = [int(np.count_nonzero(_kernels.unpack(bits))) for _, _, bits in cases]
    draws = [(bits, n, grad, weight, np.empty(64, np.float32), k)
             for k, ((grad, weight, bits), n) in enumerate(zip(cases, counts))]
    taken = with_variant(variant, _kernels.sample_many, draws, True, threads)
    for (bits, n, grad, weight, out, seed), m in zip(draws, taken):
        single = np.empty(64, np.float32)
        assert m == with_variant(variant, _kernels.sample, bits, n, grad, weight, True, single, seed)
        assert np.array_equal(out[:m], single[:m])

    batch, single = [], []
    for grad, weight, bits in cases:
        drop = _kernels.bitmap(rng.random(64 * bits.size) < 0.3)
        batch.append((bits.copy(), drop, weight.copy()))
        single.append((bits.copy(), drop, weight.copy()))
    removed = with_variant(variant, _kernels.apply_many, batch, threads)
    for (bits, drop, weight), (bits2, _, weight2), count in zip(batch, single, removed):
        assert count == _kernels.apply(bits2, drop, weight2)
        assert np.array_equal(bits, bits2) and np.array_equal(weight, weight2)


@compiled
def test_the_openmp_runtime_of_torch_is_found_where_torch_uses_gnu_openmp():
    import sys

    info = torch.__config__.parallel_info()
    if not sys.platform.startswith("linux") or "OpenMP" not in info:
        pytest.skip("torch does not run on an OpenMP runtime here")
    assert isinstance(_kernels.openmp_parallel(), int)


@pytest.mark.parametrize("variant", VARIANTS)
def test_sample_draws_live_scores_from_every_stratum(variant):
    rng = np.random.default_rng(1)
    grad, weight, bits = random_case(rng, np.float32, 50_000)
    live = np.flatnonzero(_kernels.unpack(bits))
    grad[live] = np.arange(live.size)  # the score of the live entry of rank r is r
    weight[:] = 1
    out = np.full(512, np.nan, dtype=np.float32)
    count = with_variant(variant, _kernels.sample, bits, live.size, grad, weight, True, out, 3)
    stratum = (out.astype(np.int64) * 512) // live.size
    # One draw in each stratum (up to rounding at a stratum's edge), in rank order.
    assert count == 512 and np.abs(stratum - np.arange(512)).max() <= 1 and (np.diff(out) > 0).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_mark_sets_the_bits_at_the_offsets(variant):
    rng = np.random.default_rng(6)
    for _ in range(20):
        offsets = rng.choice(64 * 50, size=int(rng.integers(1, 1500)), replace=False).astype(np.int32)
        drop = np.zeros(50, np.uint64)
        drop[rng.integers(0, 50, 5)] = 5  # bits set before stay set
        expected = _kernels.unpack(drop).copy()
        expected[offsets] = True
        with_variant(variant, _kernels.mark, drop, offsets)
        assert np.array_equal(_kernels.unpack(drop), expected)


@pytest.mark.parametrize("variant", VARIANTS)
def test_apply_clears_live_bits_and_zeroes_their_weights_once(variant):
    weight = np.arange(1, 131, dtype=np.float64)
    bits = _kernels.bitmap(np.isin(np.arange(130), [1, 3, 4, 7, 9, 64, 129]))
    drop = _kernels.bitmap(np.isin(np.arange(130), [1, 2, 7, 129]))  # 2 is not live: ignored
    assert with_variant(variant, _kernels.apply, bits, drop, weight) == 3
    assert with_variant(variant, _kernels.apply, bits, drop, weight) == 0  # cleared already
    assert np.flatnonzero(_kernels.unpack(bits)).tolist() == [3, 4, 9, 64]
    assert np.flatnonzero(weight == 0).tolist() == [1, 7, 129]


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
    monkeypatch.setattr(selection, "_CHUNK", 2048)  # several chunks per tensor
    monkeypatch.setattr(selection, "_SAMPLE", 256)  # small tensors still use the bracket
    rng = np.random.default_rng(2)
    sizes = [7000, 300, 12000]
    scores = [np.round(rng.standard_normal(n), 1).astype(np.float32) for n in sizes]  # many ties
    weights = [np.ones(n, dtype=np.float32) for n in sizes]
    live = [rng.random(n) < 0.8 for n in sizes]
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
    alive = Survivors([np.ones(400_000, bool)])
    result = alive.prune(scores, [None], False, [[0]], [1234], zero=[None], record=[True])
    assert np.array_equal(result.pruned[0], np.sort(np.argsort(scores[0], kind="stable")[:1234]))


def test_survivors_prune_nothing_on_nan_and_reset_to_the_start():
    scores = [np.arange(10, dtype=np.float64)]
    alive = Survivors([np.arange(10) >= 2], revivable=True)
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
