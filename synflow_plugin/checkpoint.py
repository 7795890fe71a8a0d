"""Pruned-model checkpoints that load with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors, strings, numbers, lists and dicts, so it
loads with the safe unpickler and needs no class of this package to be read::

    {
      "format": "synflow-plugin-checkpoint", "format_version": 1,
      "model": {"spec": "vgg16_bn" | "pkg.module:factory", "options": {...},
                "num_classes": 100 | None, "input_shape": [3, 32, 32]},
      "state_dict": {...},   # dense tensors, pruned weights stored as zeros
      "masks": {"features.0.weight": <bool tensor>, ...},
      "pruning": {"criterion": ..., "amount": ..., "compression": ..., ...},
      "layers": [{"name", "shape", "size", "remaining", "density"}, ...],
      "training": {...} (after ``synflow-plugin train``),
      "synflow_plugin_version": "...",
    }

:func:`build_model` rebuilds the network from ``"model"`` (a zoo name or the user's
factory), :func:`load_checkpoint` returns it with its masks re-installed as
``torch.nn.utils.prune`` masks, ready to train or export.

>>> import tempfile, os, torch
>>> from synflow_plugin.models import create_model
>>> model = create_model("mlp", input_shape=(1, 8), depth=2, width=4)
>>> spec = ModelSpec("mlp", {"depth": 2, "width": 4}, num_classes=10, input_shape=(1, 8))
>>> path = os.path.join(tempfile.mkdtemp(), "m.pt")
>>> _ = save_checkpoint(path, model, spec)
>>> torch.load(path, weights_only=True)["model"]["spec"]
'mlp'
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torch.nn.utils import prune

from synflow_plugin.diagnostics import layer_report
from synflow_plugin.errors import PruningError, PruningTypeError
from synflow_plugin.models import MODELS, create_model

__all__ = [
    "ModelSpec",
    "build_model",
    "example_inputs_for",
    "save_checkpoint",
    "load_checkpoint",
    "masks_of",
    "FORMAT",
]

FORMAT = "synflow-plugin-checkpoint"
FORMAT_VERSION = 1


@dataclass
class ModelSpec:
    """How to rebuild a network: a zoo name or ``"pkg.module:factory"``, and its options.

    Attributes:
        spec: a name of :func:`~synflow_plugin.models.list_models` or the import path of
            a callable returning an ``nn.Module`` (``"mypkg.nets:make_net"``).
        options: keyword arguments for the factory (plain Python values).
        num_classes, input_shape: passed to zoo models; for a user factory only
            recorded (``input_shape`` gives the example input when the model has no
            ``input_shape`` attribute).
    """

    spec: str
    options: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None
    input_shape: Sequence[int] | None = None

    @property
    def is_zoo(self) -> bool:
        return ":" not in self.spec

    def as_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "options": dict(self.options),
            "num_classes": self.num_classes,
            "input_shape": None if self.input_shape is None else [int(s) for s in self.input_shape],
        }

    @classmethod
    def from_dict(cls, blob: Mapping[str, Any]) -> "ModelSpec":
        return cls(blob["spec"], dict(blob.get("options") or {}), blob.get("num_classes"),
                   blob.get("input_shape"))


def _import_factory(spec: str):
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise PruningError(f"model {spec!r} should look like 'package.module:factory'")
    # Like `python -m`, find modules in the working directory too (console scripts do not).
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PruningError(f"cannot import module {module_name!r} of model {spec!r}: {exc}") from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise PruningError(f"module {module_name!r} has no attribute {attr!r} (model {spec!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise PruningTypeError(f"{spec!r} is a {type(obj).__name__}, not a callable that returns an nn.Module")
    return obj


def build_model(spec: ModelSpec) -> nn.Module:
    """A freshly initialised model from ``spec`` (seed the global RNG first for a fixed init)."""
    if spec.is_zoo:
        if spec.spec.strip().lower() not in MODELS:
            raise PruningError(
                f"unknown model {spec.spec!r}; expected one of: {', '.join(MODELS)}, "
                "or 'package.module:factory' for your own model"
            )
        kwargs: dict[str, Any] = dict(spec.options)
        if spec.num_classes is not None:
            kwargs["num_classes"] = spec.num_classes
        if spec.input_shape is not None:
            kwargs["input_shape"] = tuple(spec.input_shape)
        return create_model(spec.spec, **kwargs)
    factory = _import_factory(spec.spec)
    try:
        model = factory(**spec.options)
    except TypeError as exc:
        raise PruningTypeError(f"{spec.spec}({', '.join(f'{k}=...' for k in spec.options)}) failed: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise PruningTypeError(f"{spec.spec} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{qualified tensor name: bool mask}`` of every ``torch.nn.utils.prune`` mask in ``model``."""
    out = {}
    for module_name, module in model.named_modules():
        for buffer_name, buffer in module._buffers.items():
            if buffer_name.endswith("_mask") and f"{buffer_name[:-5]}_orig" in module._parameters:
                key = f"{module_name}.{buffer_name[:-5]}" if module_name else buffer_name[:-5]
                out[key] = buffer.detach().cpu() != 0
    return out


def _plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the unpruned layout: ``weight = weight_orig * weight_mask``."""
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("_mask"):
            continue
        if key.endswith("_orig"):
            base = key[: -len("_orig")]
            mask = model.state_dict()[f"{base}_mask"]
            state[base] = (value * mask).detach().cpu().clone()
        else:
            state[key] = value.detach().cpu().clone()
    return state


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    spec: ModelSpec,
    *,
    pruning: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` (pruned by ``torch.nn.utils.prune`` or not) and how to rebuild it.

    Returns:
        The path written (its directory is created).
    """
    from synflow_plugin import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": spec.as_dict(),
        "state_dict": _plain_state_dict(model),
        "masks": masks_of(model),
        "pruning": dict(pruning or {}),
        "layers": [row.as_dict() for row in layer_report(model)],
        "training": dict(training or {}),
        "synflow_plugin_version": __version__,
    }
    for row in blob["layers"]:
        row["shape"] = list(row["shape"])
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """The model of a checkpoint, masks installed with ``prune.custom_from_mask``, and the dict.

    Raises:
        PruningError: the file is missing or is not a checkpoint of this format.
    """
    path = Path(path)
    if not path.is_file():
        raise PruningError(f"checkpoint {str(path)!r} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PruningError(f"cannot read checkpoint {str(path)!r}: {exc}") from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise PruningError(
            f"{str(path)!r} is not a synflow-plugin checkpoint (written by `synflow-plugin prune` / `train`)"
        )
    model = build_model(ModelSpec.from_dict(blob["model"]))
    model.load_state_dict(blob["state_dict"])
    modules = dict(model.named_modules())
    for key, mask in blob["masks"].items():
        module_name, _, name = key.rpartition(".")
        if module_name not in modules:
            raise PruningError(f"checkpoint mask {key!r} names no module of the rebuilt model")
        prune.custom_from_mask(modules[module_name], name, mask)
    return model, blob


def example_inputs_for(model: nn.Module, spec: ModelSpec, batch: int = 1) -> torch.Tensor:
    """A random input batch shaped for ``model`` (its ``input_shape`` attribute, else the spec's)."""
    shape = getattr(model, "input_shape", None) or spec.input_shape
    if shape is None:
        raise PruningError(
            f"cannot tell the input shape of {spec.spec}: pass --input-shape, e.g. --input-shape 3,32,32"
        )
    return torch.randn(batch, *shape)

