"""The pruning loop's per-round array work, compiled where possible.

Every round of an iterative criterion scores the survivors of each tensor, finds
the ones to prune and removes them: passes over up to all the weights, a hundred
times for SynFlow. The C versions in ``_kernels.c`` (built at install time when a
compiler is available) do it in one pass per chunk, and the ``*_many`` batches
take every chunk of a round in one call, on torch's own OpenMP team when torch
runs on more than one thread; the numpy versions here give the same results
everywhere else.

The survivors of a tensor are a *bitmap*: a uint64 array whose bit ``b`` of word
``w`` says whether flat position ``64 * w + b`` may still be pruned (1/32 of the
bytes of a float32 tensor). A kernel works on a *chunk*, a run of words: its score
and weight arrays start at the chunk's first position, and the positions it reports
are offsets from there (int32).
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
    "bitmap", "full_bitmap", "unpack", "set_positions", "sample", "scan", "apply", "mark", "positions_beyond", "normal_range",
    "sample_many", "scan_many", "apply_many",
]


_ABI = 8  # must equal kernels_abi() in _kernels.c


def _load() -> ctypes.CDLL | None:
    if sys.byteorder != "little":  # the bitmaps are read as bytes by numpy and as words by C
        return None
    for path in sorted(Path(__file__).parent.glob("_ckernels*.so")):
        try:
            lib = ctypes.CDLL(str(path))
            if lib.kernels_abi() != _ABI:  # a stale build: reinstall to rebuild it
                continue
        except (OSError, AttributeError):
            continue
        p, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        for suffix, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
            sample_, scan_, select = (getattr(lib, f"{name}_{suffix}") for name in ("sample", "scan", "select"))
            sample_.argtypes = [p, i64, i64, p, p, c_int, p, i64, ctypes.c_uint64]
            scan_.argtypes = [p, i64, p, p, c_int, real, real, p, p, p, p]
            select.argtypes = [p, i64, real, c_int, p]
            sample_.restype = select.restype = i64
            scan_.restype = None
        lib.apply.argtypes = [p, p, i64, p, i64]
        lib.apply.restype = i64
        lib.mark.argtypes = [p, p, i64]
        lib.mark.restype = None
        lib.kernels_simd.argtypes = [c_int]
        lib.kernels_simd.restype = c_int
        lib.scan_many.argtypes = lib.sample_many.argtypes = [p, i64, c_int, i64, p, ctypes.c_uint]
        lib.apply_many.argtypes = [p, i64, p, ctypes.c_uint]
        lib.scan_many.restype = lib.sample_many.restype = lib.apply_many.restype = None
        return lib
    return None


_LIB = _load()
#: Whether the compiled kernels are in use.
COMPILED = _LIB is not None


def simd(enable: bool | None = None) -> bool:
    """Whether the compiled kernels use AVX-512 (where the CPU has it); pass ``enable``
    to switch it (the results are the same either way)."""
    if _LIB is None:
        return False
    return bool(_LIB.kernels_simd(-1 if enable is None else int(enable)))


def _usable(*arrays: np.ndarray | None) -> bool:
    return _LIB is not None and all(a is None or a.flags.c_contiguous for a in arrays)


def _address(array: np.ndarray | None) -> int | None:
    return None if array is None else array.ctypes.data


def _suffix(array: np.ndarray) -> str:
    return "f64" if array.dtype == np.float64 else "f32"


# --------------------------------------------------------------------------- bitmaps
def bitmap(flags: np.ndarray) -> np.ndarray:
    """The bitmap (uint64 words) of a flat boolean array."""
    packed = np.packbits(np.asarray(flags, dtype=bool), bitorder="little")
    words = np.zeros(-(-packed.size // 8), dtype=np.uint64)
    words.view(np.uint8)[: packed.size] = packed
    return words


def full_bitmap(size: int) -> np.ndarray:
    """The bitmap of ``size`` True flags."""
    words = np.full(-(-size // 64), np.uint64(2**64 - 1), dtype=np.uint64)
    if size % 64:
        words[-1] = np.uint64((1 << (size % 64)) - 1)
    return words


def unpack(bits: np.ndarray, size: int | None = None) -> np.ndarray:
    """The flags of a bitmap as a boolean array (of ``size`` entries, default all its bits)."""
    return np.unpackbits(bits.view(np.uint8), bitorder="little", count=size).view(bool)


def set_positions(bits: np.ndarray) -> np.ndarray:
    """The ascending positions (int64) of a bitmap's set bits; words without one are
    skipped, so a sparse bitmap costs what its set words cost."""
    words = np.flatnonzero(bits)
    flags = np.unpackbits(bits[words].view(np.uint8).reshape(-1, 8), axis=1, bitorder="little").view(bool)
    return (words[:, None] * 64 + np.arange(64))[flags]


def mark(drop: np.ndarray, offsets: np.ndarray) -> None:
    """Set the bits at ``offsets`` in the bitmap ``drop``."""
    if not offsets.size:
        return
    if offsets.dtype == np.int32 and _usable(drop, offsets):
        _LIB.mark(drop.ctypes.data, offsets.ctypes.data, offsets.size)
        return
    offsets = offsets.astype(np.int64, copy=False)
    np.bitwise_or.at(drop, offsets >> 6, np.left_shift(np.uint64(1), (offsets & 63).astype(np.uint64)))


def _scores(offsets: np.ndarray, grad: np.ndarray, weight: np.ndarray | None, absolute: bool) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN scores are counted, not warned
        values = grad[offsets] if weight is None else grad[offsets] * weight[offsets]
    return np.abs(values) if absolute else values


def normal_range(dtype: np.dtype) -> tuple[float, float]:
    """Magnitudes ``(small, big)`` between which a score of ``dtype`` is trusted to rank:
    2^16 inside the normal range, so that the products it came from did not underflow
    into subnormals or overflow."""
    info = np.finfo(dtype)
    return float(info.tiny) * 65536.0, float(info.max) / 65536.0


# --------------------------------------------------------------------------- one chunk
def sample(bits: np.ndarray, n: int, grad: np.ndarray, weight: np.ndarray | None,
           absolute: bool, out: np.ndarray, seed: int) -> int:
    """Scores of a stratified sample of the ``n`` live entries of ``bits`` (the k-th of
    ``out.size`` draws has rank ``floor((k + u) * n / m)``), written to ``out``; returns
    their number."""
    m = out.size
    if m == 0 or n == 0:
        return 0
    if _usable(bits, grad, weight, out):
        kernel = getattr(_LIB, f"sample_{_suffix(grad)}")
        return kernel(bits.ctypes.data, bits.size, n, grad.ctypes.data, _address(weight), int(absolute),
                      out.ctypes.data, m, seed & (2**64 - 1))
    rng = np.random.default_rng(seed)
    ranks = np.minimum(((np.arange(m) + rng.random(m)) * (n / m)).astype(np.int64), n - 1)
    live = np.flatnonzero(unpack(bits))
    out[:] = _scores(live[ranks], grad, weight, absolute)
    return m


def scan(bits: np.ndarray, grad: np.ndarray, weight: np.ndarray | None, absolute: bool, lo: float, hi: float,
         drop: np.ndarray, band: np.ndarray, band_score: np.ndarray) -> tuple[int, int, int, int, int, int]:
    """Score the live entries of ``bits`` and sort them by the bracket ``[lo, hi]``: the
    bits of scores ``< lo`` are set in ``drop`` (a bitmap of ``bits.size`` words, every
    word written), the offsets of the others not ``> hi`` (NaN included) go to ``band``
    with their scores in ``band_score`` (both with room for every live entry).

    Returns ``(below count, band count, NaN count, non-zero count, outside count, live
    count)``, outside counting the scores whose magnitude is non-zero and outside
    :func:`normal_range` (infinity included).
    """
    if _usable(bits, grad, weight, drop, band, band_score):
        stats = np.empty(6, dtype=np.int64)
        kernel = getattr(_LIB, f"scan_{_suffix(grad)}")
        kernel(bits.ctypes.data, bits.size, grad.ctypes.data, _address(weight), int(absolute), lo, hi,
               drop.ctypes.data, band.ctypes.data, band_score.ctypes.data, stats.ctypes.data)
        return tuple(int(x) for x in stats)
    live = np.flatnonzero(unpack(bits))
    values = _scores(live, grad, weight, absolute)
    low = values < lo
    inside = ~low & ~(values > hi)
    flags = np.zeros(bits.size * 64, dtype=bool)
    flags[live[low]] = True
    drop[:] = bitmap(flags)
    band[: int(inside.sum())] = live[inside]
    band_score[: int(inside.sum())] = values[inside]
    small, big = normal_range(values.dtype)
    magnitude = np.abs(values)
    outside = int(np.count_nonzero((magnitude > big) | ((magnitude < small) & (values != 0))))
    return (int(low.sum()), int(inside.sum()), int(np.count_nonzero(np.isnan(values))),
            int(np.count_nonzero(values)), outside, live.size)


def apply(bits: np.ndarray, drop: np.ndarray, weight: np.ndarray | None) -> int:
    """Clear in ``bits`` the live bits set in ``drop`` and zero ``weight`` at their
    positions, if given; returns how many were cleared."""
    if _usable(bits, drop, weight):
        return _LIB.apply(bits.ctypes.data, drop.ctypes.data, bits.size, _address(weight),
                          0 if weight is None else weight.itemsize)
    gone = drop & bits
    bits &= ~gone
    if weight is not None:
        weight[np.flatnonzero(unpack(gone))] = 0
    return int(np.count_nonzero(unpack(gone)))


def positions_beyond(values: np.ndarray, bound: float, *, upper: bool) -> np.ndarray:
    """Ascending positions with ``values <= bound`` (``upper``) or ``values >= bound``."""
    if _usable(values):
        kernel = getattr(_LIB, f"select_{_suffix(values)}")
        out = np.empty(kernel(values.ctypes.data, values.size, bound, int(upper), None) + 1, dtype=np.int64)
        count = kernel(values.ctypes.data, values.size, bound, int(upper), out.ctypes.data)
        return out[:count]
    return np.flatnonzero(values <= bound if upper else values >= bound)


# --------------------------------------------------------------------------- batches
# One call per round for all chunks. With threads > 1 the tasks are shared out over
# the OpenMP team of the runtime torch itself runs on (see openmp_parallel): its workers
# are still spinning after torch's backward pass, so threads of our own would only
# compete with them. Elsewhere, and without the compiled kernels, the tasks run in turn.
_p, _i64 = ctypes.c_void_p, ctypes.c_int64


class _ScanTask(ctypes.Structure):
    _fields_ = [("bits", _p), ("words", _i64), ("grad", _p), ("weight", _p), ("lo", ctypes.c_double),
                ("hi", ctypes.c_double), ("drop", _p), ("band", _p), ("band_score", _p), ("stats", _i64 * 6)]


class _SampleTask(ctypes.Structure):
    _fields_ = [("bits", _p), ("words", _i64), ("n", _i64), ("grad", _p), ("weight", _p), ("out", _p),
                ("m", _i64), ("seed", ctypes.c_uint64), ("taken", _i64)]


class _ApplyTask(ctypes.Structure):
    _fields_ = [("bits", _p), ("drop", _p), ("words", _i64), ("weight", _p), ("itemsize", _i64),
                ("removed", _i64)]


def _tasks(kind: type, jobs: Sequence[tuple], size: Callable[[tuple], int], fill: Callable) -> tuple:
    """A ctypes array of ``kind``, largest job first, and the job index of each task."""
    order = sorted(range(len(jobs)), key=lambda k: -size(jobs[k]))
    tasks = (kind * len(jobs))()
    for task, k in zip(tasks, order):
        fill(task, *jobs[k])
    return tasks, order


def _team(threads: int) -> int | None:
    return openmp_parallel() if threads > 1 else None


def scan_many(scans: Sequence[tuple], absolute: bool, threads: int = 1) -> list[tuple[int, ...]]:
    """:func:`scan` for each ``(bits, grad, weight, lo, hi, drop, band, band_score)`` of
    ``scans`` (disjoint outputs, one score dtype); their results in order."""
    if not scans or not all(_usable(a[0], a[1], a[2], a[5], a[6], a[7]) and a[1].dtype == scans[0][1].dtype
                            for a in scans):
        return [scan(a[0], a[1], a[2], absolute, *a[3:]) for a in scans]

    def fill(task, bits, grad, weight, lo, hi, drop, band, band_score):
        task.bits, task.words, task.grad, task.weight = bits.ctypes.data, bits.size, grad.ctypes.data, _address(weight)
        task.lo, task.hi = lo, hi
        task.drop, task.band, task.band_score = drop.ctypes.data, band.ctypes.data, band_score.ctypes.data

    tasks, order = _tasks(_ScanTask, scans, lambda a: a[0].size, fill)
    _LIB.scan_many(ctypes.addressof(tasks), len(tasks), int(absolute), scans[0][1].itemsize,
                   _team(threads), threads)
    results: list = [None] * len(scans)
    for task, k in zip(tasks, order):
        results[k] = tuple(task.stats)
    return results


def sample_many(samples: Sequence[tuple], absolute: bool, threads: int = 1) -> list[int]:
    """:func:`sample` for each ``(bits, n, grad, weight, out, seed)`` of ``samples``
    (one score dtype); the number of scores written to each ``out``."""
    if not samples or not all(_usable(a[0], a[2], a[3], a[4]) and a[2].dtype == samples[0][2].dtype
                              for a in samples):
        return [sample(a[0], a[1], a[2], a[3], absolute, a[4], a[5]) for a in samples]

    def fill(task, bits, n, grad, weight, out, seed):
        task.bits, task.words, task.n = bits.ctypes.data, bits.size, n
        task.grad, task.weight = grad.ctypes.data, _address(weight)
        task.out, task.m, task.seed = out.ctypes.data, out.size, seed & (2**64 - 1)

    tasks, order = _tasks(_SampleTask, samples, lambda a: a[4].size, fill)
    _LIB.sample_many(ctypes.addressof(tasks), len(tasks), int(absolute), samples[0][2].itemsize,
                     _team(threads), threads)
    taken = [0] * len(samples)
    for task, k in zip(tasks, order):
        taken[k] = task.taken
    return taken


def apply_many(applies: Sequence[tuple], threads: int = 1) -> list[int]:
    """:func:`apply` for each ``(bits, drop, weight)`` of ``applies`` (disjoint bits);
    how many each cleared."""
    if not all(_usable(*a) for a in applies):
        return [apply(*a) for a in applies]

    def fill(task, bits, drop, weight):
        task.bits, task.drop, task.words = bits.ctypes.data, drop.ctypes.data, bits.size
        task.weight, task.itemsize = _address(weight), 0 if weight is None else weight.itemsize

    tasks, order = _tasks(_ApplyTask, applies, lambda a: a[0].size, fill)
    _LIB.apply_many(ctypes.addressof(tasks), len(tasks), _team(threads), threads)
    removed = [0] * len(applies)
    for task, k in zip(tasks, order):
        removed[k] = task.removed
    return removed


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
