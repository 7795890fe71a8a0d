"""Masks made permanent: :mod:`synflow_plugin.permanent`, under its former export path."""

from synflow_plugin.permanent import apply_masks, has_pruning_hooks, make_permanent

__all__ = ["make_permanent", "apply_masks", "has_pruning_hooks"]
