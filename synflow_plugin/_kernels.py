"""The pruning loop's per-round array work, compiled where possible.

Every round of an iterative criterion gathers the survivors' scores, finds the
candidates below a bound and removes the pruned positions from the survivors: a few
passes over up to all the weights, a hundred times for SynFlow. The C versions in
``_kernels.c`` (built at install time when a compiler is available) do each in one
pass; the numpy versions here give the same results everywhere else.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

__all__ = ["COMPILED", "gather", "positions_beyond", "delete_sorted"]


_ABI = 1  # must equal kernels_abi() in _kernels.c


def _load() -> ctypes.CDLL | None:
    for path in sorted(Path(__file__).parent.glob("_ckernels*.so")):
        try:
            lib = ctypes.CDLL(str(path))
            if lib.kernels_abi() != _ABI:  # a stale build: reinstall to rebuild it
                continue
        except (OSError, AttributeError):
            continue
        p, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        for name in ("gather_f32", "gather_f64"):
            getattr(lib, name).argtypes = [p, p, p, i64, p, c_int]
            getattr(lib, name).restype = None
        lib.select_f32.argtypes = [p, i64, ctypes.c_float, c_int, p]
        lib.select_f64.argtypes = [p, i64, ctypes.c_double, c_int, p]
        lib.select_f32.restype = lib.select_f64.restype = i64
        lib.delete_sorted.argtypes = [p, i64, p, i64, p]
        lib.delete_sorted.restype = i64
        return lib
    return None


_LIB = _load()
#: Whether the compiled kernels are in use.
COMPILED = _LIB is not None


def _usable(*arrays: np.ndarray) -> bool:
    return _LIB is not None and all(a.flags.c_contiguous for a in arrays)


def gather(score: np.ndarray, pool: np.ndarray, out: np.ndarray, *,
           weight: np.ndarray | None = None, absolute: bool = False) -> None:
    """``out[:] = score[pool]`` (times ``weight[pool]``), in absolute value if asked.

    ``score``, ``weight`` and ``out`` share one dtype (float32 or float64); ``pool`` is int64.
    """
    if _usable(score, pool, out) and (weight is None or _usable(weight)):
        kernel = _LIB.gather_f64 if score.dtype == np.float64 else _LIB.gather_f32
        kernel(score.ctypes.data, None if weight is None else weight.ctypes.data, pool.ctypes.data,
               pool.size, out.ctypes.data, int(absolute))
        return
    np.take(score, pool, out=out)
    if weight is not None:
        out *= np.take(weight, pool)
    if absolute:
        np.abs(out, out=out)


def positions_beyond(values: np.ndarray, bound: float, *, upper: bool) -> np.ndarray:
    """Ascending positions with ``values <= bound`` (``upper``) or ``values >= bound``."""
    if _usable(values):
        kernel = _LIB.select_f64 if values.dtype == np.float64 else _LIB.select_f32
        out = np.empty(kernel(values.ctypes.data, values.size, bound, int(upper), None) + 1, dtype=np.int64)
        count = kernel(values.ctypes.data, values.size, bound, int(upper), out.ctypes.data)
        return out[:count]
    return np.flatnonzero(values <= bound if upper else values >= bound)


def delete_sorted(pool: np.ndarray, drop: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``pool`` without the entries at the ascending, distinct positions ``drop``; written
    to the start of ``out`` (a view of it is returned) when given, else to a new array."""
    if drop.size == 0:
        return pool
    size = pool.size - drop.size
    result = np.empty(size, dtype=np.int64) if out is None else out[:size]
    if _usable(pool, drop, result) and pool.dtype == np.int64 and drop.dtype == np.int64:
        _LIB.delete_sorted(pool.ctypes.data, pool.size, drop.ctypes.data, drop.size, result.ctypes.data)
    else:
        keep = np.ones(pool.size, dtype=bool)
        keep[drop] = False
        np.compress(keep, pool, out=result)
    return result
