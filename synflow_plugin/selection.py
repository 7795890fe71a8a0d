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

Streamed rounds. Where the scores come one tensor at a time and cannot be kept, as
a backward pass produces gradients, :meth:`Survivors.prune_streamed` scans each
tensor as it comes, with a bracket predicted from the group's previous round (its
sample, and how far its threshold drifted from the prediction): one scoring pass,
and no gradient held beyond its own tensor. A group the prediction missed is scored
again with the bracket of the round's own sample; the result is exact either way.
"""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from synflow_plugin import _kernels
from synflow_plugin.targets import expanded_value

__all__ = ["smallest_positions", "drop_smallest", "Survivors"]

_SAMPLE = 1 << 14
_CHUNK = 1 << 20  # weights per kernel task (a multiple of 64; offsets in a chunk are int32)
_BATCH = 2 * _CHUNK  # streamed rounds rank the targets that come in batches of at least this many weights


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
        margin = int(q * _SAMPLE + _rank_margin(_SAMPLE, q))
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
        self._forecasts: dict[tuple[int, ...], _Forecast | None] = {}  # per group, for prune_streamed

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
        members = self._members(groups)
        brackets = [self._bracket(chunks, count, scores, weights, absolute, seed)
                    for chunks, count in zip(members, counts)]
        self._scan([(c, b) for chunks, b in zip(members, brackets) for c in chunks], scores, weights, absolute)
        for chunks, count in zip(members, counts):
            if not _contains(chunks, count):
                # The sample missed: every survivor goes into the band.
                self._scan([(c, (-math.inf, math.inf)) for c in chunks], scores, weights, absolute)
        return self._finish(members, counts, zero, record, hold_outside, dry_run)[0]

    def prune_streamed(
        self,
        stream: Callable[[Callable[[int, np.ndarray, np.ndarray | None], None]], None],
        absolute: bool,
        groups: Sequence[Sequence[int]],
        counts: Sequence[int],
        zero_after: Callable[[], Sequence[np.ndarray | None]],
        record: Sequence[bool],
        seed: int = 0,
        hold_outside: bool = False,
    ) -> Round:
        """:meth:`prune` for scores that come one target at a time, once each pass.

        ``stream(visit)`` runs one scoring pass: it calls ``visit(t, scores, weights)``
        for every target ``t`` as its scores are ready (flat arrays, ``weights`` None
        where the score is not multiplied by one). The target is sampled and scanned
        with its group's bracket, predicted from the group's previous round
        (:class:`_Forecast`): at once if it is large, else together with the next ones
        once they add up to ``_BATCH`` weights (their arrays are kept until then). A
        group whose prediction missed the threshold is scored again with the bracket of
        this round's sample (then, if that missed too, with an infinite one); a group
        without a prediction gets a pass that only samples first. The result is
        :meth:`prune`'s on the scores of each group's last pass, whatever the
        prediction. ``zero_after()`` gives :meth:`prune`'s ``zero`` arrays, asked for
        after the scoring passes (which may replace the tensors).
        """
        counts = [max(0, count) for count in counts]
        members = self._members(groups)
        owner = {t: g for g, group in enumerate(groups) for t in group}
        live = [sum(c.live for c in chunks) for chunks in members]
        forecasts = [self._forecasts.get(tuple(group)) for group in groups]
        # A group too small to sample, or that prunes nothing, has its bracket already.
        fixed = [count == 0 or n <= 4 * _SAMPLE for count, n in zip(counts, live)]
        brackets = [_bracket_from(np.empty(0), count, n) if known else None if forecast is None
                    else forecast.predict(count, n) for count, n, forecast, known in zip(counts, live, forecasts, fixed)]
        hits = [b is not None for b in brackets]  # whether the group's first bracket held its threshold
        parts: list[list[np.ndarray]] = [[] for _ in groups]
        samples = [np.empty(0) for _ in groups]
        pending, first = set(range(len(groups))), True  # first: the round's first pass
        waiting: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}  # targets ranked together, in batches
        waiting_size = 0  # their weights

        def rank_waiting() -> None:
            """Sample (in a round's first pass) and scan the waiting targets, in one call
            of each kernel."""
            scores = {t: score for t, (score, _) in waiting.items()}
            weights = {t: weight for t, (_, weight) in waiting.items()}
            draws, owners = [], []
            for t in waiting:
                g, chunks = owner[t], self._by_target[t]
                if first and not fixed[g] and chunks:
                    new = self._draws(chunks, live[g], scores, weights, seed, members[g].index(chunks[0]))
                    draws += new
                    owners += [g] * len(new)
            for g, draw, m in zip(owners, draws, _kernels.sample_many(draws, absolute, self.threads)):
                parts[g].append(draw[4][:m])
            self._scan([(c, brackets[owner[t]]) for t in waiting if brackets[owner[t]] is not None
                        for c in self._by_target[t]], scores, weights, absolute)
            waiting.clear()

        def visit(t: int, score: np.ndarray, weight: np.ndarray | None) -> None:
            nonlocal waiting_size
            if owner.get(t) in pending:
                waiting[t] = score, weight
                waiting_size += self.sizes[t]
                if waiting_size >= _BATCH:
                    rank_waiting()
                    waiting_size = 0

        # At most three passes: the predicted bracket (or, without one, a sample only),
        # the bracket of the round's own sample, an infinite bracket (which holds any count).
        held = False
        for attempt in range(3):
            first = attempt == 0
            stream(visit)
            rank_waiting()
            waiting_size = 0
            held = any(c.nan or (hold_outside and c.outside) for g in pending if brackets[g] is not None
                       for c in members[g])
            if held:
                break  # _finish holds the round back, with nothing pruned
            if first:
                samples = [np.concatenate(p) if p else np.empty(0) for p in parts]
            for g in list(pending):
                if brackets[g] is not None and _contains(members[g], counts[g]):
                    pending.discard(g)
                    continue
                if brackets[g] is not None and first:
                    hits[g] = False
                brackets[g] = (_bracket_from(samples[g], counts[g], live[g]) if brackets[g] is None or first
                               else (-math.inf, math.inf))
            if not pending:
                break
        assert held or not pending, "an infinite bracket holds every count"
        result, thresholds = self._finish(members, counts, zero_after(), record, hold_outside, dry_run=False,
                                          thresholds=True)
        if not result.held:
            for g, group in enumerate(groups):
                # The round's cut: the largest score it pruned from the band, else (all it
                # pruned lay below the bracket) the bracket's foot.
                cut = thresholds[g] if thresholds[g] is not None or counts[g] == 0 else brackets[g][0]
                self._forecasts[tuple(group)] = _Forecast.after(forecasts[g], samples[g], cut, hits[g])
        return result

    def _members(self, groups: Sequence[Sequence[int]]) -> list[list[_Chunk]]:
        return [[c for t in group for c in self._by_target[t]] for group in groups]

    def _finish(self, members: list[list[_Chunk]], counts: Sequence[int], zero: Sequence[np.ndarray | None],
                record: Sequence[bool], hold_outside: bool, dry_run: bool,
                thresholds: bool = False) -> tuple[Round, list[float | None]]:
        """The round's result from each group's scanned chunks, whose bracket contains
        the threshold: the band entries chosen, the drops applied (unless held back);
        and, if ``thresholds``, each group's threshold, the largest score it prunes from
        the band (None if none, or not asked for)."""
        # Per target, over the chunks this call scanned (the others are left as they are).
        in_call = {c for chunks in members for c in chunks}
        scanned = [[c for c in chunks if c in in_call] for chunks in self._by_target]
        nan, nonzero, outside = ([sum(getattr(c, stat) for c in chunks) for chunks in scanned]
                                 for stat in ("nan", "nonzero", "outside"))
        pruned: list[np.ndarray | None] = [None] * len(self._by_target)
        if any(nan) or (hold_outside and any(outside)):
            return Round(nan, nonzero, outside, pruned, held=True), [None] * len(members)
        chosen: dict[_Chunk, np.ndarray] = {}
        cuts: list[float | None] = []
        for chunks, count in zip(members, counts):
            picked, cut = self._choose(chunks, count - sum(c.n_below for c in chunks), thresholds)
            chosen.update(picked)
            cuts.append(cut)
        would = [sum(c.n_below + (chosen[c].size if c in chosen else 0) for c in chunks) for chunks in scanned]
        if dry_run:
            return Round(nan, nonzero, outside, pruned, would=would), cuts
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
        return Round(nan, nonzero, outside, pruned, would=would), cuts

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
        if count <= 0 or live <= 4 * _SAMPLE:
            return _bracket_from(np.empty(0), count, live)
        return _bracket_from(self._sample(chunks, live, scores, weights, absolute, seed), count, live)

    def _sample(self, chunks, live, scores, weights, absolute, seed) -> np.ndarray:
        """A stratified sample of the scores of a group's ``chunks`` (``live`` survivors)."""
        draws = self._draws(chunks, live, scores, weights, seed)
        taken = _kernels.sample_many(draws, absolute, self.threads)
        return np.concatenate([draw[4][:m] for draw, m in zip(draws, taken)]) if draws else np.empty(0)

    def _draws(self, chunks, live, scores, weights, seed, start: int = 0) -> list[tuple]:
        """The :func:`~synflow_plugin._kernels.sample_many` jobs of ``chunks``, the
        ``start``-th to last of a group of ``live`` survivors: each draws its share of
        ``_SAMPLE``, seeded by its place in the group."""
        draws = []
        for k, c in enumerate(chunks, start):
            if c.live:
                out = np.empty(max(1, round(_SAMPLE * c.live / live)), dtype=scores[c.target].dtype)
                weight = weights[c.target]
                draws.append((self.bits[c.target][c.first:c.stop], c.live, scores[c.target][c.start:],
                              None if weight is None else weight[c.start:], out, seed * 1_000_003 + k))
        return draws

    @staticmethod
    def _choose(chunks: list[_Chunk], count: int, threshold: bool = False) -> tuple[dict[_Chunk, np.ndarray],
                                                                                      float | None]:
        """The ``count`` smallest band entries of ``chunks`` (offsets from each one's
        start), and, if ``threshold``, the largest score among them (else None)."""
        if count <= 0:
            return {}, None
        sizes = [c.n_band for c in chunks]
        values = np.concatenate([c.band_score[: c.n_band] for c in chunks])
        if count >= values.size:
            top = float(values.max()) if threshold and values.size else None
            return {c: c.band[: c.n_band] for c in chunks}, top
        picked = smallest_positions(values, count)
        bounds = np.cumsum([0] + sizes)
        cuts = np.searchsorted(picked, bounds)
        return ({c: c.band[picked[a:b] - lo] for c, a, b, lo in zip(chunks, cuts[:-1], cuts[1:], bounds[:-1])},
                float(values[picked].max()) if threshold else None)


#: A predicted bracket reaches from the ranks ``_RANKS[0] * k`` to ``_RANKS[1] * k``
#: (k: the round's count) in the last round's surviving sample, and then this factor
#: further in score on each side; the factor is squared after a miss and relaxed
#: back towards ``_WIDTH`` after each hit.
_RANKS = (0.75, 1.35)
_WIDTH = 1.03
#: ... raised to the power ``1 + _WIDEN * q`` for a round that prunes the fraction q of
#: the survivors: 1.09 at SynFlow's 100 rounds to 1e-3 (q = 0.07), 1.75 at 5 rounds to 1%.
_WIDEN = 30.0


@dataclass
class _Forecast:
    """What a group's last streamed round tells of its next one: the scores of the
    sample that survived it (sorted), how far its threshold drifted from the
    prediction (a factor, None before two rounds), and the bracket's width."""

    survived: np.ndarray
    drift: float | None
    width: float
    point: float | None = None  # the last prediction's threshold, in the previous round's scores

    def predict(self, count: int, live: int) -> tuple[float, float]:
        """The predicted bracket of the ``count``-th smallest of ``live`` scores: the
        surviving sample at ranks around that fraction (``_RANKS`` times it, or five
        standard deviations of the sample's rank, whichever is wider), scaled by the
        drift and widened each side by ``width``, more for a round that prunes more
        (``_WIDEN``). Keeps the point prediction, from which :meth:`after` measures
        the next drift."""
        m, q = self.survived.size, count / live
        margin = _rank_margin(m, q)
        low = math.floor(min(_RANKS[0] * q * m, q * m - margin))
        high = math.ceil(max(_RANKS[1] * q * m, q * m + margin))
        width = self.width ** (1.0 + _WIDEN * q)  # a round that prunes much moves the scores much
        scale, width = (1.0, width * width) if self.drift is None else (self.drift, width)
        self.point = float(self.survived[min(m - 1, math.floor(q * m))])
        lo = float(self.survived[low]) * scale / width if low >= 0 else -math.inf
        hi = float(self.survived[high]) * scale * width if high < m else math.inf
        return lo, hi

    @staticmethod
    def after(last: "_Forecast | None", sample: np.ndarray, threshold: float | None,
              hit: bool) -> "_Forecast | None":
        """The forecast after a round with this ``sample`` of its scores, which pruned
        the scores up to ``threshold`` (None: nothing); ``hit``: whether the round's
        predicted bracket held the threshold. None where there is nothing to predict
        from: too small a sample, or scores that are not all positive (the drift is a
        factor)."""
        survived = np.sort(sample if threshold is None else sample[sample > threshold])
        if survived.size < 64 or not survived[0] > 0:
            return None
        width = _WIDTH if last is None else (max(_WIDTH, last.width ** 0.9) if hit else last.width ** 2)
        drift = None
        if last is not None and last.point and threshold is not None and threshold > 0:
            drift = threshold / last.point
        return _Forecast(survived, drift, width)


def _bracket_from(sample: np.ndarray, count: int, live: int) -> tuple[float, float]:
    """Bounds ``lo <= threshold <= hi`` of the ``count``-th smallest of ``live`` scores
    from a stratified ``sample`` of them, five standard deviations of rank each side;
    no bounds without a sample (and ``lo = hi = -inf`` when nothing is pruned)."""
    if count <= 0:
        return -math.inf, -math.inf
    m = sample.size
    if m == 0:
        return -math.inf, math.inf
    q = min(1.0, count / live)
    margin = _rank_margin(m, q)
    low, high = math.floor(q * m - margin), math.ceil(q * m + margin)
    ranks = [r for r in (low, high) if 0 <= r < m]
    if ranks:
        sample = np.partition(sample, ranks)
    return (float(sample[low]) if low >= 0 else -math.inf), (float(sample[high]) if high < m else math.inf)


def _rank_margin(m: int, q: float) -> float:
    """How far, in ranks, the ``q``-quantile of the whole may lie from that of a sample
    of ``m``: five standard deviations of its rank, plus two."""
    return 5.0 * math.sqrt(m * q * (1.0 - q)) + 2.0


def _contains(chunks: list[_Chunk], count: int) -> bool:
    """Whether the chunks' last scan bracketed the ``count``-th smallest score."""
    below = sum(c.n_below for c in chunks)
    return below <= count <= below + sum(c.n_band for c in chunks)


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
        if expanded_value(flags):
            return _kernels.full_bitmap(flags.numel())  # an expanded all-True view: no copy needed
        flags = flags.detach().reshape(-1).cpu().numpy()
    return _kernels.bitmap(np.asarray(flags, dtype=bool).reshape(-1))


def _popcount(words: np.ndarray) -> int:
    """The number of set bits of a bitmap."""
    return int(np.bitwise_count(words).sum(dtype=np.int64)) if hasattr(np, "bitwise_count") else int(
        np.unpackbits(words.view(np.uint8)).sum(dtype=np.int64))
