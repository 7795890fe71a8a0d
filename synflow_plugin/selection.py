"""Exact selection of the weights to prune: the ``count`` smallest scores, ties broken by position.

:func:`smallest_positions` ranks one array. :class:`Survivors` runs the rounds of the
iterative loop: it holds the weights each tensor may still lose and, in each round,
scores them, prunes the smallest and zeroes them in the scored model, in one pass
over the survivors.

How a round stays at one pass. The survivors of each tensor are a bitmap, one bit
per weight. A stratified sample of the survivors' scores brackets the threshold
between ``lo`` and ``hi``. The pass then scores every survivor and notes which lie
below ``lo`` (pruned for sure: their bits go into a drop bitmap) and which inside
the bracket (ranked exactly afterwards, a small fraction of the survivors). If the
bracket turns out not to contain the threshold, the pass is repeated with an
infinite bracket, so the result never depends on the sample.
"""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from synflow_plugin import _kernels

__all__ = ["smallest_positions", "drop_smallest", "Survivors"]

_SAMPLE = 1 << 14
_CHUNK = 1 << 20  # weights per kernel task (a multiple of 64; offsets in a chunk are int32)


# --------------------------------------------------------------------------- one array
def smallest_positions(values: np.ndarray, count: int) -> np.ndarray:
    """Sorted positions of the ``count`` smallest ``values``; among equal values the
    earliest positions come first. Exact, whatever the ties.

    A random sample first brackets the threshold, so that only the values on the
    short side of it are partitioned: a few linear passes over ``values`` instead of a sort.

    >>> smallest_positions(np.array([3.0, 1.0, 1.0, 2.0, 1.0]), 2).tolist()
    [1, 2]
    """
    n = values.size
    if count <= 0:
        return np.empty(0, dtype=np.int64)
    if count >= n:
        return np.arange(n, dtype=np.int64)
    if count > n // 2:  # select the survivors instead: the short side
        kept = _extreme_positions(values, n - count, largest=True)
        drop = np.ones(n, dtype=bool)
        drop[kept] = False
        return np.flatnonzero(drop)
    return _extreme_positions(values, count, largest=False)


def _extreme_positions(values: np.ndarray, count: int, largest: bool) -> np.ndarray:
    """Sorted positions of the ``count`` smallest (or largest) values; ties are resolved
    so that the earliest positions count as the smallest."""
    n = values.size
    candidates = None
    if n > 4 * _SAMPLE:
        rng = np.random.default_rng(n)  # the result is exact; the sample only speeds it up
        sample = values[rng.integers(0, n, _SAMPLE)]
        q = count / n
        margin = int(q * _SAMPLE + 5.0 * math.sqrt(_SAMPLE * q * (1.0 - q)) + 2)
        if margin < _SAMPLE:
            rank = _SAMPLE - 1 - margin if largest else margin
            bound = np.partition(sample, rank)[rank]
            candidates = _kernels.positions_beyond(values, bound, upper=not largest)
            if candidates.size < count:  # an unlucky sample: fall back to all values
                candidates = None
    sub = values if candidates is None else values[candidates]
    rank = sub.size - count if largest else count - 1
    threshold = np.partition(sub, rank)[rank]
    chosen = sub > threshold if largest else sub < threshold
    missing = count - int(np.count_nonzero(chosen))
    if missing > 0:
        ties = np.flatnonzero(sub == threshold)
        chosen[ties[-missing:] if largest else ties[:missing]] = True
    positions = np.flatnonzero(chosen)
    return positions if candidates is None else candidates[positions]


def drop_smallest(values: np.ndarray, count: int) -> np.ndarray:
    """A boolean array with exactly ``count`` True entries at the smallest ``values``;
    among equal values the earliest positions are dropped first."""
    drop = np.zeros(values.size, dtype=bool)
    drop[smallest_positions(values, count)] = True
    return drop


# --------------------------------------------------------------------------- the rounds
@dataclass(eq=False)
class _Chunk:
    """A run of one tensor's survivor bitmap: words ``[first, stop)``, positions from
    ``64 * first``; ``live`` of them survive."""

    target: int
    first: int
    stop: int
    live: int
    band: np.ndarray | None = None  # per round: offsets scored inside the bracket
    band_score: np.ndarray | None = None  # ... and their scores
    n_below: int = 0
    n_band: int = 0
    nan: int = 0
    nonzero: int = 0
    outside: int = 0

    @property
    def start(self) -> int:
        """The flat position of the chunk's first bit."""
        return 64 * self.first

    def scan_arguments(self, bits: np.ndarray, drop: np.ndarray, score: np.ndarray, weight: np.ndarray | None,
                       lo: float, hi: float) -> tuple:
        """The arguments of this chunk's :func:`~synflow_plugin._kernels.scan_many` pass.

        ``band`` has room for every position of the chunk, but a pass writes only the
        entries it finds, from the start: the pages past them are never touched, so they
        take address space, not memory."""
        if self.band_score is None or self.band_score.dtype != score.dtype:
            size = 64 * (self.stop - self.first)
            self.band, self.band_score = _untouched(size, np.int32), _untouched(size, score.dtype)
        a, b = self.first, self.stop
        return (bits[a:b], score[self.start:], None if weight is None else weight[self.start:], lo, hi,
                drop[a:b], self.band, self.band_score)


@dataclass
class Round:
    """What one round saw, per target."""

    #: NaN scores among the survivors (nothing was pruned if there were any)
    nan: list[int]
    #: non-zero scores among the survivors
    nonzero: list[int]
    #: survivors' scores outside the normal range of their dtype
    #: (:func:`~synflow_plugin._kernels.normal_range`)
    outside: list[int]
    #: flat positions pruned, for the targets asked for in ``record``
    pruned: list[np.ndarray | None]
    #: whether the round was held back unpruned (see ``Survivors.prune(hold_outside=...)``)
    held: bool = False
    #: per target, how many survivors the call prunes (or, with ``dry_run``, would prune)
    would: list[int] | None = None


class Survivors:
    """The weights each target may still lose, over the rounds of one pruning call.

    Each target's survivors are a bitmap (one bit per weight), cut into chunks of
    ``_CHUNK`` weights: the unit of work the kernels share out over threads.

    Args:
        flags: per target, a flat boolean array (or a tensor): the weights the call may
            prune; ``None`` for a target that is not ranked here.
        revivable: keep the starting survivors for :meth:`reset` (criteria that revive).
        threads: the passes run on this many threads of torch's own OpenMP team, where
            there is one (see :func:`~synflow_plugin._kernels.scan_many`).
    """

    def __init__(self, flags: Sequence, revivable: bool = False, threads: int = 1) -> None:
        self.threads = threads
        self.sizes = [0 if f is None else int(np.prod(f.shape)) for f in flags]
        self.bits = [_bitmap(f) for f in flags]
        self.drop = [np.zeros_like(b) for b in self.bits]
        self.initial = [b.copy() for b in self.bits] if revivable else None
        self._by_target = [self._split(t, b) for t, b in enumerate(self.bits)]

    @staticmethod
    def _split(target: int, bits: np.ndarray) -> list[_Chunk]:
        words = _CHUNK // 64
        chunks = []
        for first in range(0, bits.size, words):
            part = bits[first:first + words]
            chunks.append(_Chunk(target, first, first + part.size, _popcount(part)))
        return chunks

    # ----------------------------------------------------------------- queries
    def live(self, target: int) -> int:
        """How many weights of ``target`` survive."""
        return sum(c.live for c in self._by_target[target])

    def flags(self, target: int) -> np.ndarray:
        """The survivors of ``target`` as a flat boolean array."""
        return _kernels.unpack(self.bits[target], self.sizes[target])

    def positions(self, target: int) -> np.ndarray:
        """The flat positions (int64, ascending) of ``target``'s survivors."""
        return _kernels.set_positions(self.bits[target])

    def reset(self) -> None:
        """Back to the survivors the call started with (needs ``revivable=True``)."""
        for bits, initial, chunks in zip(self.bits, self.initial, self._by_target):
            bits[:] = initial
            for c in chunks:
                c.live = _popcount(bits[c.first:c.stop])

    # ----------------------------------------------------------------- a round
    def prune(
        self,
        scores: Sequence[np.ndarray],
        weights: Sequence[np.ndarray | None],
        absolute: bool,
        groups: Sequence[Sequence[int]],
        counts: Sequence[int],
        zero: Sequence[np.ndarray | None],
        record: Sequence[bool],
        seed: int = 0,
        hold_outside: bool = False,
        dry_run: bool = False,
    ) -> Round:
        """Prune the ``counts[g]`` smallest scores among the survivors of each group of targets.

        A weight's score is ``scores[t][p]``, times ``weights[t][p]`` where given, in
        absolute value if ``absolute`` (flat arrays of one dtype per target). The pruned
        positions of target ``t`` are set to zero in ``zero[t]`` where given, and
        returned where ``record[t]``. Ties: the earliest (target, position) goes first.
        Nothing is pruned when a score is NaN (see :attr:`Round.nan`), nor, with
        ``hold_outside``, when a score lies outside its dtype's normal range: the caller
        can then score the round again in a wider dtype and call again. With ``dry_run``
        nothing is pruned either, and :attr:`Round.would` says how many survivors of each
        target the call would prune (a bounded ranking fixes the targets over their bound
        and ranks the rest again).
        """
        members = [[c for t in group for c in self._by_target[t]] for group in groups]
        in_call = {c for chunks in members for c in chunks}
        brackets = [self._bracket(chunks, count, scores, weights, absolute, seed)
                    for chunks, count in zip(members, counts)]
        self._scan([(c, b) for chunks, b in zip(members, brackets) for c in chunks], scores, weights, absolute)
        chosen: dict[_Chunk, np.ndarray] = {}
        for chunks, count in zip(members, counts):
            below = sum(c.n_below for c in chunks)
            if not below <= count <= below + sum(c.n_band for c in chunks):
                # The sample missed: every survivor goes into the band.
                self._scan([(c, (-math.inf, math.inf)) for c in chunks], scores, weights, absolute)
                below = 0
            chosen.update(self._choose(chunks, count - below))

        # Per target, over the chunks this call scanned (the others are left as they are).
        scanned = [[c for c in chunks if c in in_call] for chunks in self._by_target]
        nan, nonzero, outside = ([sum(getattr(c, stat) for c in chunks) for chunks in scanned]
                                 for stat in ("nan", "nonzero", "outside"))
        pruned: list[np.ndarray | None] = [None] * len(self._by_target)
        would = [sum(c.n_below + (chosen[c].size if c in chosen else 0) for c in chunks) for chunks in scanned]
        if any(nan) or (hold_outside and any(outside)):
            return Round(nan, nonzero, outside, pruned, held=True, would=would)
        if dry_run:
            return Round(nan, nonzero, outside, pruned, would=would)
        applies, applied = [], []
        for t, chunks in enumerate(scanned):
            drop = self.drop[t]
            for c in chunks:
                part = drop[c.first:c.stop]
                if c in chosen:
                    _kernels.mark(part, chosen[c])
                weight = None if zero[t] is None else zero[t][c.start:]
                applies.append((self.bits[t][c.first:c.stop], part, weight))
                applied.append(c)
            if record[t] and chunks:
                a, b = chunks[0].first, chunks[-1].stop
                pruned[t] = 64 * a + _kernels.set_positions(drop[a:b] & self.bits[t][a:b])
        for c, removed in zip(applied, _kernels.apply_many(applies, self.threads)):
            c.live -= removed
        return Round(nan, nonzero, outside, pruned, would=would)

    def _scan(self, work: list[tuple[_Chunk, tuple[float, float]]], scores, weights, absolute) -> None:
        """One scoring pass over each chunk of ``work``, with its bracket ``(lo, hi)``."""
        results = _kernels.scan_many(
            [c.scan_arguments(self.bits[c.target], self.drop[c.target], scores[c.target], weights[c.target], lo, hi)
             for c, (lo, hi) in work],
            absolute, self.threads)
        for (c, _), (c.n_below, c.n_band, c.nan, c.nonzero, c.outside, live) in zip(work, results):
            assert live == c.live, "the survivor count of a chunk drifted from its bitmap"

    def _bracket(self, chunks, count, scores, weights, absolute, seed) -> tuple[float, float]:
        """Bounds ``lo <= threshold <= hi`` of the ``count``-th smallest score, from a sample."""
        live = sum(c.live for c in chunks)
        if count <= 0:
            return -math.inf, -math.inf
        if live <= 4 * _SAMPLE:
            return -math.inf, math.inf
        draws = []
        for k, c in enumerate(chunks):
            if c.live:
                out = np.empty(max(1, round(_SAMPLE * c.live / live)), dtype=scores[c.target].dtype)
                weight = weights[c.target]
                draws.append((self.bits[c.target][c.first:c.stop], c.live, scores[c.target][c.start:],
                              None if weight is None else weight[c.start:], out, seed * 1_000_003 + k))
        taken = _kernels.sample_many(draws, absolute, self.threads)
        sample = np.concatenate([draw[4][:m] for draw, m in zip(draws, taken)])
        m = sample.size
        q = min(1.0, count / live)
        margin = 5.0 * math.sqrt(m * q * (1.0 - q)) + 2.0
        low, high = math.floor(q * m - margin), math.ceil(q * m + margin)
        ranks = [r for r in (low, high) if 0 <= r < m]
        if ranks:
            sample = np.partition(sample, ranks)
        return (float(sample[low]) if low >= 0 else -math.inf), (float(sample[high]) if high < m else math.inf)

    @staticmethod
    def _choose(chunks: list[_Chunk], count: int) -> dict[_Chunk, np.ndarray]:
        """The ``count`` smallest band entries of ``chunks`` (offsets from each one's start)."""
        if count <= 0:
            return {}
        sizes = [c.n_band for c in chunks]
        if count >= sum(sizes):
            return {c: c.band[: c.n_band] for c in chunks}
        values = np.concatenate([c.band_score[: c.n_band] for c in chunks])
        picked = smallest_positions(values, count)
        bounds = np.cumsum([0] + sizes)
        cuts = np.searchsorted(picked, bounds)
        return {c: c.band[picked[a:b] - lo] for c, a, b, lo in zip(chunks, cuts[:-1], cuts[1:], bounds[:-1])}


def _untouched(size: int, dtype) -> np.ndarray:
    """An array of ``size`` entries in memory of its own, mapped from the system: the
    pages a pass never writes take no memory, and the array does not pin the C heap."""
    buffer = mmap.mmap(-1, max(1, size * np.dtype(dtype).itemsize))
    return np.frombuffer(buffer, dtype=dtype, count=size)


def _bitmap(flags) -> np.ndarray:
    """The bitmap of a target's flags: a boolean array or tensor, or None (no survivors)."""
    if flags is None:
        return np.zeros(0, dtype=np.uint64)
    if isinstance(flags, torch.Tensor):
        if flags.numel() and all(s == 0 for s in flags.stride()) and bool(flags.reshape(-1)[0]):
            return _kernels.full_bitmap(flags.numel())  # an expanded all-True view: no copy needed
        flags = flags.detach().reshape(-1).cpu().numpy()
    return _kernels.bitmap(np.asarray(flags, dtype=bool).reshape(-1))


def _popcount(words: np.ndarray) -> int:
    """The number of set bits of a bitmap."""
    return int(np.bitwise_count(words).sum(dtype=np.int64)) if hasattr(np, "bitwise_count") else int(
        np.unpackbits(words.view(np.uint8)).sum(dtype=np.int64))
