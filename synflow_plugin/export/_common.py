"""Pieces shared by the export modules: the error class, optional imports, input checks.

Nothing here imports onnx, onnxruntime or torch_pruning at module level: they are
optional (extras ``[onnx]`` and ``[torch-pruning]``) and are imported by
:func:`require_onnx` / :func:`require_torch_pruning` inside the functions that need them.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from synflow_plugin.errors import ExportError, PruningError, PruningTypeError
from synflow_plugin.permanent import check_nni_unwrapped, copy_model  # noqa: F401  (used by export)

__all__ = [
    "ExportError",
    "require_onnx",
    "require_torch_pruning",
    "as_input_tuple",
    "output_leaves",
    "copy_model",
    "check_nni_unwrapped",
    "relative_difference",
    "check_path",
]


def require_onnx(caller: str, *, exporter: bool = True):
    """Import ``onnx`` and ``onnxruntime`` (and ``onnxscript``, which torch's exporter needs).

    Returns:
        ``(onnx, onnxruntime)``.

    Raises:
        ImportError: naming the missing package and the extra that installs it.
    """
    names = ("onnx", "onnxruntime", "onnxscript") if exporter else ("onnx", "onnxruntime")
    modules = []
    for name in names:
        try:
            modules.append(importlib.import_module(name))
        except ImportError as exc:
            raise ImportError(
                f"{caller} needs the '{name}' package, which is not installed. Install the ONNX "
                "extra: pip install 'synflow-plugin[onnx]' (onnx, onnxruntime and onnxscript)."
            ) from exc
    return modules[0], modules[1]


def require_torch_pruning(caller: str):
    """Import ``torch_pruning`` or raise an ``ImportError`` that says how to install it."""
    try:
        return importlib.import_module("torch_pruning")
    except ImportError as exc:
        raise ImportError(
            f"{caller} removes channels with torch-pruning's dependency graph, and the "
            "'torch_pruning' package is not installed. Install it with "
            "pip install 'synflow-plugin[torch-pruning]', or pass compact=False to export "
            "the model with its zero channels kept."
        ) from exc


def as_input_tuple(example_inputs: Any, caller: str) -> tuple[torch.Tensor, ...]:
    """``example_inputs`` as a tuple of tensors: the positional arguments of ``forward``."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and example_inputs and all(
        isinstance(t, torch.Tensor) for t in example_inputs
    ):
        return tuple(example_inputs)
    got = type(example_inputs).__name__
    if isinstance(example_inputs, (tuple, list)):
        got = f"{got} of ({', '.join(type(t).__name__ for t in example_inputs) or 'nothing'})"
    raise PruningTypeError(
        f"{caller}: example_inputs should be a torch.Tensor or a non-empty tuple of tensors "
        f"(the positional arguments of model.forward), got {got}. Pass e.g. "
        "example_inputs=torch.randn(1, 3, 32, 32)."
    )


def output_leaves(output: Any, caller: str) -> list[torch.Tensor]:
    """The tensors of a model output (a tensor, or a nested tuple/list/dict of tensors)."""
    leaves = torch.utils._pytree.tree_leaves(output)
    tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
    if not tensors:
        raise ExportError(
            f"{caller}: the model returned {type(output).__name__}, which holds no tensor; "
            "an exported model must return a tensor or a tuple of tensors."
        )
    return tensors


def relative_difference(actual: Sequence[Any], expected: Sequence[Any]) -> tuple[float, float]:
    """``(max abs difference, max abs difference / max |expected|)`` over all outputs.

    The relative figure divides by the largest magnitude of the expected outputs (1.0
    when they are all zero), so a model whose outputs are ~1e3 is not held to an
    absolute 1e-4.
    """
    import numpy as np

    diff, scale = 0.0, 0.0
    for a, e in zip(actual, expected):
        a = np.asarray(a, dtype=np.float64)
        e = np.asarray(e, dtype=np.float64)
        if a.shape != e.shape:
            return float("inf"), float("inf")
        if a.size:
            diff = max(diff, float(np.max(np.abs(a - e))))
            scale = max(scale, float(np.max(np.abs(e))))
    if not np.isfinite(diff):
        return float("inf"), float("inf")
    return diff, diff / (scale if scale > 0 else 1.0)


def refuse_existing(path: Path, overwrite: bool, caller: str) -> None:
    """An existing file (or link) at ``path`` is replaced only with ``overwrite=True``."""
    if not overwrite and (path.exists() or path.is_symlink()):
        raise PruningError(f"{caller}: '{path}' already exists; pass overwrite=True to replace it, or choose "
                           "another path.")


def check_path(path: Any, caller: str, *, must_exist: bool) -> Path:
    """``path`` as a :class:`~pathlib.Path`, checked to name a (possible) regular file."""
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise PruningTypeError(
            f"{caller}: path should be a str or os.PathLike naming an .onnx file, got "
            f"{type(path).__name__} ({path!r:.60})"
        )
    p = Path(path).expanduser()
    if not str(path):
        raise PruningError(f"{caller}: path is empty; pass a file name such as 'model.onnx'.")
    if p.is_dir():
        raise PruningError(f"{caller}: path '{p}' is a directory; pass a file name such as '{p / 'model.onnx'}'.")
    if must_exist and not p.is_file():
        raise ExportError(f"{caller}: there is no file '{p}'; pass the path of an existing .onnx file.")
    if not must_exist:
        parent = p.parent if str(p.parent) else Path(".")
        if not parent.is_dir():
            raise PruningError(
                f"{caller}: cannot write '{p}': its directory '{parent}' does not exist. "
                "Create it first (the export does not create directories)."
            )
        if not os.access(parent, os.W_OK | os.X_OK):
            raise PruningError(f"{caller}: cannot write '{p}': directory '{parent}' is not writable.")
    return p
