"""The library's one exception family.

Every error raised for bad user input is a :class:`PruningError`. It subclasses
:class:`ValueError` so existing ``except ValueError`` code keeps working;
:class:`PruningTypeError` additionally subclasses :class:`TypeError` for
arguments of the wrong type, as ``torch.nn.utils.prune`` keeps the two apart.
"""

from __future__ import annotations

__all__ = ["PruningError", "PruningTypeError", "ExportError"]


class PruningError(ValueError):
    """A pruning request that cannot be carried out; the message says what to fix."""


class PruningTypeError(PruningError, TypeError):
    """An argument of the wrong type; the message names the expected type."""


class ExportError(PruningError):
    """A model that cannot be made permanent, compacted, exported, verified or benchmarked.

    When a host library (torch.onnx, onnxruntime, torch-pruning) failed, its exception
    is chained as ``__cause__``.
    """
