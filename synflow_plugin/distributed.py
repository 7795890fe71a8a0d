"""Identical masks on every rank of a ``torch.distributed`` job.

A data-parallel job prunes at initialisation on every rank. Data-free criteria
(SynFlow, seeded Random, magnitude) see the same weights everywhere and so give the
same masks; the data-driven ones (SNIP, GraSP, IterSNIP, FORCE) would score each
rank's own batches and give each replica a different network. So, when a process
group is in use:

* the data-driven criteria reduce what their scores are built from (the gradients
  summed over the batches, GraSP's Hessian-gradient product too) across the ranks,
  so every rank gets the mask one process would get from all ranks' batches
  together (:meth:`~synflow_plugin.criteria.ScoringState.all_reduce`);
* every criterion checks, before scoring, that the pruned weights are the same on
  every rank (a hash of their bytes; ranks initialised with different seeds are an
  error naming the ranks), and after the last round that the masks are;
* a data-driven criterion that cannot reduce (it does not declare
  ``Criterion.reduces_across_ranks``) is refused under a process group.

Which group: ``process_group=None`` (the default) uses the default group when
``torch.distributed`` is initialised with more than one rank, else none; a
``ProcessGroup`` uses that group; ``process_group=False`` scores in this process
alone, e.g. when only rank 0 prunes and then broadcasts (every rank of the group
must call the prune, or the collectives wait forever).
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import torch

from synflow_plugin.errors import PruningError, PruningTypeError

__all__ = ["resolve_group", "all_reduce_sum", "check_same_on_every_rank", "fingerprint"]


def resolve_group(process_group: Any = None, caller: str = "prune") -> Any:
    """The process group a prune works across, or None for this process alone.

    Args:
        process_group: None (the default group, if ``torch.distributed`` is initialised
            with more than one rank), a ``torch.distributed.ProcessGroup``, or False.
    """
    if process_group is False:
        return None
    if not torch.distributed.is_available():
        if process_group is not None:
            raise PruningError(f"{caller}: process_group= was given, but this torch has no torch.distributed")
        return None
    dist = torch.distributed
    if process_group is None:
        if not dist.is_initialized():
            return None
        group = dist.group.WORLD
    elif isinstance(process_group, dist.ProcessGroup):
        group = process_group
    else:
        raise PruningTypeError(
            f"{caller}: process_group should be a torch.distributed.ProcessGroup, None (the default group "
            f"when one is initialised) or False (this process alone), got {type(process_group).__name__}"
        )
    return group if dist.get_world_size(group) > 1 else None


def all_reduce_sum(tensors: Sequence[torch.Tensor], group: Any) -> None:
    """Sum ``tensors`` in place across the ranks of ``group`` (one collective per dtype)."""
    if group is None or not tensors:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for tensor in tensors:
        by_dtype.setdefault(tensor.dtype, []).append(tensor)
    for same in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in same])
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM, group=group)
        offset = 0
        for tensor in same:
            tensor.copy_(flat[offset:offset + tensor.numel()].view_as(tensor))
            offset += tensor.numel()


def fingerprint(tensors: Sequence[torch.Tensor]) -> str:
    """A hash of the tensors' shapes, dtypes and bytes."""
    digest = hashlib.sha256()
    for tensor in tensors:
        t = tensor.detach().to("cpu").contiguous()  # an expanded all-True mask is materialised here
        digest.update(f"{tuple(t.shape)}{t.dtype};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def check_same_on_every_rank(tensors: Sequence[torch.Tensor], group: Any, what: str, fix: str,
                             caller: str = "prune") -> None:
    """Raise a :class:`PruningError` naming the ranks where ``tensors`` differ from rank 0's
    (any dtype, masks included); nothing to do without a group."""
    if group is None:
        return
    dist = torch.distributed
    mine = fingerprint(tensors)
    every: list[str] = [""] * dist.get_world_size(group)
    dist.all_gather_object(every, mine, group=group)
    differ = [rank for rank, value in enumerate(every) if value != every[0]]
    if differ:
        raise PruningError(
            f"{caller}: {what} differ between the ranks of the process group: rank(s) "
            f"{', '.join(map(str, differ))} disagree with rank 0. {fix}"
        )
