"""The pruning loop's per-round array work, compiled where possible.

Every round of an iterative criterion scores the survivors of each tensor, finds
the ones to prune and removes them: passes over up to all the weights, a hundred
times for SynFlow. The C versions in ``_kernels.c`` (built at install time when a
compiler is available) do it in one pass per segment, and the ``*_many`` batches
take every segment of a round in one call, on torch's own OpenMP team when torch
runs on more than one thread; the numpy versions here give the same results
everywhere else.

A *segment* is an int32 array ``pos`` of ascending offsets into a flat tensor; an
offset < 0 marks an entry pruned in the previous round, dropped by the next
:func:`score_pass`. Scores and weights are passed as flat arrays starting at the
segment's first position.
"""

from __future__ import annotations

import ctypes
import functools
import re
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

__all__ = [
    "COMPILED", "simd", "openmp_parallel",
    "sample_scores", "score_pass", "drop", "positions_beyond", "normal_range",
    "sample_many", "score_passes", "drop_many",
]


_ABI = 6  # must equal kernels_abi() in _kernels.c


def _load() -> ctypes.CDLL | None:
    for path in sorted(Path(__file__).parent.glob("_ckernels*.so")):
        try:
            lib = ctypes.CDLL(str(path))
            if lib.kernels_abi() != _ABI:  # a stale build: reinstall to rebuild it
                continue
        except (OSError, AttributeError):
            continue
        p, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        for suffix, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
            sample, scan, select = (getattr(lib, f"{name}_{suffix}") for name in ("sample", "pass", "select"))
            sample.argtypes = [p, i64, p, p, c_int, p, i64, ctypes.c_uint64]
            scan.argtypes = [p, i64, p, p, c_int, real, real, p, p, p, p]
            select.argtypes = [p, i64, real, c_int, p]
            sample.restype = scan.restype = select.restype = i64
        lib.drop.argtypes = [p, p, i64, p, i64]
        lib.drop.restype = None
        lib.kernels_simd.argtypes = [c_int]
        lib.kernels_simd.restype = c_int
        lib.pass_many.argtypes = lib.sample_many.argtypes = [p, i64, c_int, i64, p, ctypes.c_uint]
        lib.drop_many.argtypes = [p, i64, p, ctypes.c_uint]
        lib.pass_many.restype = lib.sample_many.restype = lib.drop_many.restype = None
        return lib
    return None


_LIB = _load()
#: Whether the compiled kernels are in use.
COMPILED = _LIB is not None


def simd(enable: bool | None = None) -> bool:
    """Whether the compiled float32 pass uses AVX-512 (where the CPU has it); pass
    ``enable`` to switch it (the results are the same either way)."""
    if _LIB is None:
        return False
    return bool(_LIB.kernels_simd(-1 if enable is None else int(enable)))


def _usable(*arrays: np.ndarray | None) -> bool:
    return _LIB is not None and all(a is None or a.flags.c_contiguous for a in arrays)


def _address(array: np.ndarray | None) -> int | None:
    return None if array is None else array.ctypes.data


def _suffix(array: np.ndarray) -> str:
    return "f64" if array.dtype == np.float64 else "f32"


def _scores(pos: np.ndarray, grad: np.ndarray, weight: np.ndarray | None, absolute: bool) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN scores are counted, not warned
        values = grad[pos] if weight is None else grad[pos] * weight[pos]
    return np.abs(values) if absolute else values


def sample_scores(pos: np.ndarray, n: int, grad: np.ndarray, weight: np.ndarray | None,
                  absolute: bool, out: np.ndarray, seed: int) -> int:
    """Scores of a stratified sample of ``pos[:n]`` (one draw in each of ``out.size``
    equal strata, marked entries skipped), written to ``out``; returns their number."""
    m = out.size
    if m == 0 or n == 0:
        return 0
    if _usable(pos, grad, weight, out):
        kernel = getattr(_LIB, f"sample_{_suffix(grad)}")
        return kernel(pos.ctypes.data, n, grad.ctypes.data, _address(weight), int(absolute),
                      out.ctypes.data, m, seed & (2**64 - 1))
    rng = np.random.default_rng(seed)
    index = np.minimum(((np.arange(m) + rng.random(m)) * (n / m)).astype(np.int64), n - 1)
    picked = pos[index]
    picked = picked[picked >= 0]
    out[: picked.size] = _scores(picked, grad, weight, absolute)
    return picked.size


def normal_range(dtype: np.dtype) -> tuple[float, float]:
    """Magnitudes ``(small, big)`` between which a score of ``dtype`` is trusted to rank:
    2^16 inside the normal range, so that the products it came from did not underflow
    into subnormals or overflow."""
    info = np.finfo(dtype)
    return float(info.tiny) * 65536.0, float(info.max) / 65536.0


def score_pass(pos: np.ndarray, n: int, grad: np.ndarray, weight: np.ndarray | None, absolute: bool,
               lo: float, hi: float, below: np.ndarray, band: np.ndarray, band_score: np.ndarray
               ) -> tuple[int, int, int, int, int, int]:
    """Compact ``pos[:n]`` in place (dropping marked entries) and sort its scores by the
    bracket ``[lo, hi]``: the indices of scores ``< lo`` go to ``below``, the others
    not ``> hi`` (NaN included) to ``band`` with their scores in ``band_score`` (all
    with room for ``n``).

    Returns ``(new n, below count, band count, NaN count, non-zero count, outside
    count)``, the last the scores whose magnitude is non-zero and outside
    :func:`normal_range` (infinity included).
    """
    if _usable(pos, grad, weight, below, band, band_score):
        stats = np.empty(5, dtype=np.int64)
        kernel = getattr(_LIB, f"pass_{_suffix(grad)}")
        size = kernel(pos.ctypes.data, n, grad.ctypes.data, _address(weight), int(absolute), lo, hi,
                      below.ctypes.data, band.ctypes.data, band_score.ctypes.data, stats.ctypes.data)
        return (size, *(int(x) for x in stats))
    live = pos[:n][pos[:n] >= 0]
    pos[: live.size] = live
    values = _scores(live, grad, weight, absolute)
    low = np.flatnonzero(values < lo)
    inside = np.flatnonzero(~(values < lo) & ~(values > hi))
    below[: low.size] = low
    band[: inside.size] = inside
    band_score[: inside.size] = values[inside]
    nan = int(np.count_nonzero(np.isnan(values)))
    small, big = normal_range(values.dtype)
    magnitude = np.abs(values)
    outside = int(np.count_nonzero((magnitude > big) | ((magnitude < small) & (values != 0))))
    return live.size, low.size, inside.size, nan, int(np.count_nonzero(values)), outside


def drop(pos: np.ndarray, index: np.ndarray, weight: np.ndarray | None) -> None:
    """Mark ``pos[index]`` as pruned and zero ``weight`` at those offsets, if given
    (entries marked already are left alone)."""
    if index.size == 0:
        return
    if _usable(pos, index, weight) and index.dtype == np.int32:
        _LIB.drop(pos.ctypes.data, index.ctypes.data, index.size, _address(weight),
                  0 if weight is None else weight.itemsize)
        return
    if weight is not None:
        offsets = pos[index]
        weight[offsets[offsets >= 0]] = 0  # entries marked already are left alone
    pos[index] = -1


def positions_beyond(values: np.ndarray, bound: float, *, upper: bool) -> np.ndarray:
    """Ascending positions with ``values <= bound`` (``upper``) or ``values >= bound``."""
    if _usable(values):
        kernel = getattr(_LIB, f"select_{_suffix(values)}")
        out = np.empty(kernel(values.ctypes.data, values.size, bound, int(upper), None) + 1, dtype=np.int64)
        count = kernel(values.ctypes.data, values.size, bound, int(upper), out.ctypes.data)
        return out[:count]
    return np.flatnonzero(values <= bound if upper else values >= bound)


# --------------------------------------------------------------------------- batches
# One call per round for all segments. With threads > 1 the tasks are shared out over
# the OpenMP team of the runtime torch itself runs on (see openmp_parallel): its workers
# are still spinning after torch's backward pass, so threads of our own would only
# compete with them. Elsewhere, and without the compiled kernels, the tasks run in turn.
_p, _i64 = ctypes.c_void_p, ctypes.c_int64


class _PassTask(ctypes.Structure):
    _fields_ = [("pos", _p), ("n", _i64), ("grad", _p), ("weight", _p), ("lo", ctypes.c_double),
                ("hi", ctypes.c_double), ("below", _p), ("band", _p), ("band_score", _p),
                ("stats", _i64 * 5)]


class _SampleTask(ctypes.Structure):
    _fields_ = [("pos", _p), ("n", _i64), ("grad", _p), ("weight", _p), ("out", _p), ("m", _i64),
                ("seed", ctypes.c_uint64), ("taken", _i64)]


class _DropTask(ctypes.Structure):
    _fields_ = [("pos", _p), ("index", _p), ("m", _i64), ("weight", _p), ("itemsize", _i64)]


def _tasks(kind: type, jobs: Sequence[tuple], size: Callable[[tuple], int], fill: Callable) -> tuple:
    """A ctypes array of ``kind``, largest job first, and the job index of each task."""
    order = sorted(range(len(jobs)), key=lambda k: -size(jobs[k]))
    tasks = (kind * len(jobs))()
    for task, k in zip(tasks, order):
        fill(task, *jobs[k])
    return tasks, order


def _team(threads: int) -> int | None:
    return openmp_parallel() if threads > 1 else None


def score_passes(passes: Sequence[tuple], absolute: bool, threads: int = 1) -> list[tuple[int, ...]]:
    """:func:`score_pass` for each ``(pos, n, grad, weight, lo, hi, below, band,
    band_score)`` of ``passes`` (disjoint buffers, one score dtype); their results in order."""
    if not passes or not all(_usable(a[0], a[2], a[3], a[6], a[7], a[8]) and a[2].dtype == passes[0][2].dtype
                             for a in passes):
        return [score_pass(a[0], a[1], a[2], a[3], absolute, *a[4:]) for a in passes]

    def fill(task, pos, n, grad, weight, lo, hi, below, band, band_score):
        task.pos, task.n, task.grad, task.weight = pos.ctypes.data, n, grad.ctypes.data, _address(weight)
        task.lo, task.hi = lo, hi
        task.below, task.band, task.band_score = below.ctypes.data, band.ctypes.data, band_score.ctypes.data

    tasks, order = _tasks(_PassTask, passes, lambda a: a[1], fill)
    _LIB.pass_many(ctypes.addressof(tasks), len(tasks), int(absolute), passes[0][2].itemsize,
                   _team(threads), threads)
    results: list = [None] * len(passes)
    for task, k in zip(tasks, order):
        results[k] = (task.n, *task.stats)
    return results


def sample_many(samples: Sequence[tuple], absolute: bool, threads: int = 1) -> list[int]:
    """:func:`sample_scores` for each ``(pos, n, grad, weight, out, seed)`` of
    ``samples`` (one score dtype); the number of scores written to each ``out``."""
    if not samples or not all(_usable(a[0], a[2], a[3], a[4]) and a[2].dtype == samples[0][2].dtype
                              for a in samples):
        return [sample_scores(a[0], a[1], a[2], a[3], absolute, a[4], a[5]) for a in samples]

    def fill(task, pos, n, grad, weight, out, seed):
        task.pos, task.n, task.grad, task.weight = pos.ctypes.data, n, grad.ctypes.data, _address(weight)
        task.out, task.m, task.seed = out.ctypes.data, out.size if n else 0, seed & (2**64 - 1)

    tasks, order = _tasks(_SampleTask, samples, lambda a: a[4].size, fill)
    _LIB.sample_many(ctypes.addressof(tasks), len(tasks), int(absolute), samples[0][2].itemsize,
                     _team(threads), threads)
    taken = [0] * len(samples)
    for task, k in zip(tasks, order):
        taken[k] = task.taken
    return taken


def drop_many(drops: Sequence[tuple], threads: int = 1) -> None:
    """:func:`drop` for each ``(pos, index, weight)`` of ``drops`` (disjoint entries)."""
    if not all(_usable(*a) and a[1].dtype == np.int32 for a in drops):
        for pos, index, weight in drops:
            drop(pos, index, weight)
        return

    def fill(task, pos, index, weight):
        task.pos, task.index, task.m = pos.ctypes.data, index.ctypes.data, index.size
        task.weight, task.itemsize = _address(weight), 0 if weight is None else weight.itemsize

    tasks, _ = _tasks(_DropTask, drops, lambda a: a[1].size, fill)
    _LIB.drop_many(ctypes.addressof(tasks), len(tasks), _team(threads), threads)


@functools.lru_cache(maxsize=1)
def openmp_parallel() -> int | None:
    """The address of ``GOMP_parallel`` in the OpenMP runtime torch was loaded with
    (GNU libgomp, or LLVM's libomp, which provides the same entry point), or None
    when torch uses another threading backend or the runtime cannot be found."""
    if "OpenMP" not in torch.__config__.parallel_info():
        return None
    # The runtime bundled with torch's wheels, else one already mapped into this process
    # (torch linked against the system's, as in conda builds).
    runtime = re.compile(r"lib(?:g|i)?omp[^/\s]*\.(?:so[.\d]*|dylib)$")
    bundled = Path(torch.__file__).parent / "lib"
    candidates = sorted(str(p) for p in bundled.glob("lib*") if runtime.match(p.name) and p.is_file())
    if sys.platform.startswith("linux"):
        mapped = re.findall(r"(/\S+)$", Path("/proc/self/maps").read_text(), re.M)
        candidates += sorted({path for path in mapped if runtime.match(Path(path).name)})
    for path in candidates:
        try:
            return ctypes.cast(ctypes.CDLL(path).GOMP_parallel, ctypes.c_void_p).value
        except (OSError, AttributeError):
            continue
    return None
