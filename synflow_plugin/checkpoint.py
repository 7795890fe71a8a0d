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

:func:`read_checkpoint` returns the checked dict and builds nothing;
:func:`load_checkpoint` rebuilds the network from ``"model"`` and returns it with its
masks re-installed as ``torch.nn.utils.prune`` masks, ready to train or export.

A checkpoint is data, never code. ``weights_only=True`` keeps the unpickler from
running anything, and loading keeps the file from choosing what to run:

* a zoo model (``"spec": "vgg16_bn"``) is built from
  :data:`synflow_plugin.models.MODELS`; its options must be JSON values (``None``,
  bool, int, float, str, and lists / dicts of those) that the zoo factory accepts;
* a user factory (``"spec": "mypkg.nets:make_net"``) is imported and called only when
  the caller names that same factory: ``load_checkpoint(path,
  factory="mypkg.nets:make_net")`` (or the function itself), ``--factory
  mypkg.nets:make_net`` on the command line. Otherwise loading stops with a
  :class:`~synflow_plugin.errors.PruningError` before anything is imported;
* nothing is added to ``sys.path``: the factory's module is found the way any import
  is (install the package, or set ``PYTHONPATH``).

Every other defect (a missing key, a mask of the wrong shape or with values other than
0 and 1, a state dict of another model) is a ``PruningError`` raised before the model
is changed.

>>> import tempfile, os, torch
>>> from synflow_plugin.models import create_model
>>> model = create_model("mlp", input_shape=(1, 8), depth=2, width=4)
>>> spec = ModelSpec("mlp", {"depth": 2, "width": 4}, num_classes=10, input_shape=(1, 8))
>>> path = os.path.join(tempfile.mkdtemp(), "m.pt")
>>> _ = save_checkpoint(path, model, spec)
>>> torch.load(path, weights_only=True)["model"]["spec"]
'mlp'
>>> loaded, blob = load_checkpoint(path)
>>> type(loaded).__name__
'MLP'
"""

from __future__ import annotations

import pickle

import contextlib
import importlib
import inspect
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

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
    "read_checkpoint",
    "load_checkpoint",
    "masks_of",
    "factory_name",
    "FORMAT",
    "FORMAT_VERSION",
]

FORMAT = "synflow-plugin-checkpoint"
FORMAT_VERSION = 1

# "pkg.module:factory" or "pkg.module:Class.method": dotted identifiers on both sides.
_FACTORY_RE = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_JSON_SCALARS = (type(None), bool, int, float, str)
_SHOWN = 4  # how many offending keys an error message lists


def _check_json(value: Any, where: str) -> None:
    """Raise unless ``value`` is made of JSON values only (tuples count as lists)."""
    if isinstance(value, _JSON_SCALARS):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise PruningError(f"{where} has the key {key!r} ({type(key).__name__}); keys must be str")
            _check_json(item, f"{where}[{key!r}]")
        return
    raise PruningError(
        f"{where} is a {type(value).__name__} ({value!r:.60}); model options must be JSON values: "
        "None, bool, int, float, str, or lists / dicts of those"
    )


def _factory_params(factory: Callable) -> tuple[list[str], bool] | None:
    """``(keyword names, takes **kwargs)`` of ``factory``, or None when it has no signature."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    names = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names, any(p.kind is p.VAR_KEYWORD for p in parameters)


def factory_name(factory: Callable) -> str:
    """``"module:qualname"`` of a callable, the form a checkpoint records a factory in.

    >>> from synflow_plugin.models import mlp
    >>> factory_name(mlp)
    'synflow_plugin.models.mlp:mlp'
    """
    module, qualname = getattr(factory, "__module__", None), getattr(factory, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise PruningTypeError(
            f"{factory!r:.60} has no __module__ and __qualname__, so it cannot be matched with the factory a "
            "checkpoint names; pass the factory's import path as a string, e.g. factory='mypkg.nets:make_net'"
        )
    return f"{module}:{qualname}"


@dataclass
class ModelSpec:
    """How to rebuild a network: a zoo name or ``"pkg.module:factory"``, and its options.

    Attributes:
        spec: a name of :func:`~synflow_plugin.models.list_models` or the import path of
            a callable returning an ``nn.Module`` (``"mypkg.nets:make_net"``).
        options: keyword arguments for the factory, JSON values only (``None``, bool,
            int, float, str, lists and dicts of those), so that a checkpoint stays data.
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
    def from_dict(cls, blob: Mapping[str, Any], *, source: str = "model spec") -> "ModelSpec":
        """A checked spec from the ``"model"`` entry of a checkpoint; imports nothing.

        Raises:
            PruningError: a missing or mistyped entry, an unknown zoo model, a zoo option the
                model does not take, or options that are not JSON values. ``source`` starts
                the message (e.g. ``"checkpoint 'm.pt'"``).
        """
        if not isinstance(blob, Mapping):
            raise PruningError(f"{source}: 'model' should be a dict with a 'spec' key, got {type(blob).__name__}")
        spec = blob.get("spec")
        if not isinstance(spec, str) or not spec.strip():
            raise PruningError(
                f"{source}: model['spec'] should be a zoo model name or 'package.module:factory', got {spec!r:.60}"
            )
        options = blob.get("options")
        options = {} if options is None else options
        if not isinstance(options, dict):
            raise PruningError(f"{source}: model['options'] should be a dict of keyword arguments, got "
                               f"{type(options).__name__}")
        _check_json(options, f"{source}: model['options']")
        num_classes = blob.get("num_classes")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)):
            raise PruningError(f"{source}: model['num_classes'] should be an int or None, got {num_classes!r:.60}")
        input_shape = blob.get("input_shape")
        if input_shape is not None:
            if (not isinstance(input_shape, (list, tuple)) or not input_shape
                    or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in input_shape)):
                raise PruningError(f"{source}: model['input_shape'] should be a list of positive ints or None, "
                                   f"got {input_shape!r:.60}")
            input_shape = [int(s) for s in input_shape]
        out = cls(spec.strip(), dict(options), num_classes, input_shape)
        out._check(source)
        return out

    def _check(self, source: str) -> None:
        """The name is well formed and, for a zoo model, every option is one it takes."""
        if not self.is_zoo:
            if not _FACTORY_RE.fullmatch(self.spec):
                raise PruningError(f"{source}: model {self.spec!r} should look like 'package.module:factory'")
            return
        name = self.spec.lower()
        if name not in MODELS:
            raise PruningError(
                f"{source}: unknown model {self.spec!r}; expected one of: {', '.join(MODELS)}, "
                "or 'package.module:factory' for your own model"
            )
        names, _ = _factory_params(MODELS[name]) or ([], False)
        unknown = sorted(set(self.options) - set(names))
        if unknown:
            raise PruningTypeError(
                f"{source}: model {name!r} does not take the option(s) {', '.join(unknown)}; its options are: "
                f"{', '.join(n for n in names if n not in ('num_classes', 'input_shape'))} "
                "(plus num_classes and input_shape)"
            )


def _import_factory(spec: str) -> Callable[..., Any]:
    """The callable ``"pkg.module:attr"`` names, imported from ``sys.path`` as it is."""
    if not _FACTORY_RE.fullmatch(spec):
        raise PruningError(f"model {spec!r} should look like 'package.module:factory'")
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PruningError(
            f"cannot import module {module_name!r} of model {spec!r}: {exc}; install the package that "
            "holds it or add its folder to PYTHONPATH"
        ) from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise PruningError(f"module {module_name!r} has no attribute {attr!r} (model {spec!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise PruningTypeError(f"{spec!r} is a {type(obj).__name__}, not a callable that returns an nn.Module")
    return obj


def build_model(spec: ModelSpec, *, factory: Callable[..., nn.Module] | None = None) -> nn.Module:
    """A freshly initialised model from ``spec`` (seed the global RNG first for a fixed init).

    A zoo spec is built from :data:`~synflow_plugin.models.MODELS`. For a user spec,
    ``factory`` (a callable) is called with ``spec.options``; without it, the callable
    ``spec.spec`` names is imported. Only pass specs you wrote yourself: for a spec read
    from a file, use :func:`load_checkpoint`, which imports a factory only when you name it.

    Raises:
        PruningError: an unknown zoo model, an option the factory does not take, options
            that are not JSON values, a factory that cannot be imported or does not return
            an ``nn.Module`` (:class:`~synflow_plugin.errors.PruningTypeError`).
    """
    _check_json(spec.options, f"{spec.spec}: options")
    if spec.is_zoo:
        if factory is not None:
            raise PruningTypeError(f"{spec.spec!r} is a zoo model; pass factory= only for a user factory spec")
        spec._check("build_model()")
        kwargs: dict[str, Any] = dict(spec.options)
        if spec.num_classes is not None:
            kwargs["num_classes"] = spec.num_classes
        if spec.input_shape is not None:
            kwargs["input_shape"] = tuple(spec.input_shape)
        try:
            return create_model(spec.spec, **kwargs)
        except PruningError:
            raise
        except (TypeError, ValueError) as exc:  # an option value the factory does not validate itself
            raise PruningError(f"{spec.spec}({_call_text(kwargs)}) failed: {exc}; check the model options") from exc
    if factory is None:
        factory = _import_factory(spec.spec)
    elif not callable(factory):
        raise PruningTypeError(f"factory should be a callable returning an nn.Module, got {type(factory).__name__}")
    params = _factory_params(factory)
    if params is not None:
        names, takes_any = params
        unknown = sorted(set(spec.options) - set(names))
        if unknown and not takes_any:
            raise PruningTypeError(
                f"{spec.spec} does not take the option(s) {', '.join(unknown)}; its parameters are: "
                f"{', '.join(names) or 'none'}"
            )
    try:
        model = factory(**spec.options)
    except TypeError as exc:
        raise PruningTypeError(f"{spec.spec}({_call_text(spec.options)}) failed: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise PruningTypeError(f"{spec.spec} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _call_text(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r:.40}" for k, v in kwargs.items())


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
    full = model.state_dict()
    for key, value in full.items():
        if key.endswith("_mask"):
            continue
        if key.endswith("_orig"):
            base = key[: -len("_orig")]
            state[base] = (value * full[f"{base}_mask"]).detach().cpu().clone()
        else:
            state[key] = value.detach().cpu().clone()
    return state


def _check_output(path: Path, overwrite: bool, caller: str) -> None:
    if path.is_dir():
        raise PruningError(f"{caller}: '{path}' is a directory; pass a file name such as '{path / 'model.pt'}'")
    if path.exists() and not overwrite:
        raise PruningError(f"{caller}: '{path}' already exists; pass overwrite=True to replace it, "
                           "or choose another path")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    spec: ModelSpec,
    *,
    pruning: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` (pruned by ``torch.nn.utils.prune`` or not) and how to rebuild it.

    The file is written to a temporary file beside ``path`` and renamed into place, so
    ``path`` is either the old file or the complete new one, and a failed write leaves
    nothing behind.

    Args:
        path: the file to write; its directory is created.
        model: the network, with or without ``torch.nn.utils.prune`` masks.
        spec: how to rebuild it (zoo name or ``"pkg.module:factory"``, JSON options).
        pruning, training: JSON-like records stored with it.
        overwrite: replace an existing file (refused by default, as
            :func:`~synflow_plugin.export.export_onnx` does).

    Returns:
        The path written.

    Raises:
        PruningError: ``path`` is a directory, or exists and ``overwrite`` is False, or
            ``spec`` is not valid (options that are not JSON values, an unknown zoo model
            or option).
    """
    from synflow_plugin import __version__

    path = Path(path)
    caller = "save_checkpoint()"
    _check_output(path, overwrite, caller)
    ModelSpec.from_dict(spec.as_dict(), source=caller)  # what cannot be loaded back is not written
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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(blob, handle)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it the usual mode
        _check_output(path, overwrite, caller)  # another writer may have created it meanwhile
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checked dict of a checkpoint file; builds no model and imports nothing.

    Raises:
        PruningError: the file is missing, unreadable, not a checkpoint of this format, of
            a newer format version, or one of its entries is missing or of the wrong type.
    """
    path = Path(path)
    where = f"checkpoint '{path}'"
    if not path.is_file():
        raise PruningError(f"{where} does not exist")
    if path.suffix == ".onnx":
        raise PruningError(f"'{path}' is an ONNX file, not a checkpoint: pass the checkpoint it was exported "
                           "from (written by `synflow-plugin prune` / `train` or save_checkpoint())")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own text suggests weights_only=False, which would run what the file names: never.
        named = re.search(r"GLOBAL ([\w.]+)", str(exc))
        raise PruningError(
            f"cannot read {where}: it holds more than tensors and plain values"
            + (f" (it names {named.group(1)})" if named else "")
            + ". A checkpoint is data: this one is refused without importing or running anything it names. "
            "It was not written by save_checkpoint() or `synflow-plugin prune` / `train`."
        ) from None
    except Exception as exc:
        raise PruningError(f"cannot read {where}: {exc}") from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise PruningError(
            f"'{path}' is not a synflow-plugin checkpoint (written by `synflow-plugin prune` / `train` or "
            "save_checkpoint())"
        )
    redo = "write it again with save_checkpoint() or `synflow-plugin prune`"
    version = blob.get("format_version", FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version > FORMAT_VERSION:
        raise PruningError(f"{where} has format_version {version!r}; this synflow-plugin reads versions up to "
                           f"{FORMAT_VERSION}: upgrade synflow-plugin")
    missing = [key for key in ("model", "state_dict", "masks") if key not in blob]
    if missing:
        raise PruningError(f"{where} has no {', '.join(repr(k) for k in missing)} entry "
                           f"(it has: {', '.join(map(str, blob))}); {redo}")
    ModelSpec.from_dict(blob["model"], source=where)
    for key in ("state_dict", "masks"):
        entry = blob[key]
        if not isinstance(entry, dict):
            raise PruningError(f"{where}: {key!r} should be a dict of tensors, got {type(entry).__name__}; {redo}")
        bad = [k for k, v in entry.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            k = bad[0]
            raise PruningError(f"{where}: {key}[{k!r}] should be a tensor under a str key, got "
                               f"{type(entry[k]).__name__}; {redo}")
    for key, kind in (("pruning", dict), ("training", dict), ("layers", list)):
        if blob.get(key) is not None and not isinstance(blob[key], kind):
            raise PruningError(f"{where}: {key!r} should be a {kind.__name__}, got {type(blob[key]).__name__}; "
                               f"{redo}")
    return blob


def _allowed_factory(spec: ModelSpec, factory: str | Callable | None, where: str) -> Callable | None:
    """The factory to build a user spec with, if the caller named the one the file names."""
    if spec.is_zoo:
        if factory is not None:
            raise PruningError(f"{where} names the zoo model {spec.spec!r}, which is built without a factory; "
                               "drop factory= (--factory)")
        return None
    allow = (f"if you trust it, allow it with load_checkpoint(path, factory={spec.spec!r}) or "
             f"`--factory {spec.spec}` on the command line (it is imported and called)")
    if factory is None:
        raise PruningError(f"{where} names the user factory {spec.spec!r}; a checkpoint's factory is imported only "
                           f"when the caller names it, so nothing was imported. {allow[0].upper()}{allow[1:]}")
    if isinstance(factory, str):
        if factory.strip() != spec.spec:
            raise PruningError(f"{where} names the factory {spec.spec!r}, not {factory!r}; {allow}")
        return _import_factory(spec.spec)
    if callable(factory):
        given = factory_name(factory)
        if given != spec.spec:
            raise PruningError(f"{where} names the factory {spec.spec!r}, but the callable given is {given!r}; "
                               f"pass that function instead, or {allow}")
        return factory
    raise PruningTypeError(f"factory should be None, a 'package.module:factory' string or a callable, got "
                           f"{type(factory).__name__}")


def _check_state(model: nn.Module, state: Mapping[str, torch.Tensor], where: str, spec: ModelSpec) -> None:
    """Raise, naming the keys, unless ``state`` fits ``model`` key by key, shape by shape."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = []
    for key, value in state.items():
        want = expected.get(key)
        if want is None:
            continue
        if tuple(value.shape) != tuple(want.shape):
            wrong.append(f"{key!r} has shape {tuple(value.shape)}, expected {tuple(want.shape)}")
        elif value.dtype != want.dtype and not (value.is_floating_point() and want.is_floating_point()):
            wrong.append(f"{key!r} has dtype {value.dtype}, expected {want.dtype}")
    if not (missing or unexpected or wrong):
        return
    problems = wrong[:_SHOWN]
    if missing:
        problems.append("missing " + ", ".join(
            f"{k!r} {tuple(expected[k].shape)}" for k in missing[:_SHOWN]) + (" ..." if len(missing) > _SHOWN else ""))
    if unexpected:
        problems.append("unexpected " + ", ".join(
            f"{k!r} {tuple(state[k].shape)}" for k in unexpected[:_SHOWN])
            + (" ..." if len(unexpected) > _SHOWN else ""))
    raise PruningError(
        f"{where}: its state_dict does not fit the model {spec.spec}({_call_text(spec.options)}) rebuilt from it: "
        f"{'; '.join(problems)}. The file was written for another model or other options; load it with the "
        "factory and options that wrote it, or write it again"
    )


def _check_masks(model: nn.Module, masks: Mapping[str, torch.Tensor],
                 where: str) -> list[tuple[nn.Module, str, torch.Tensor]]:
    """``(module, name, bool mask)`` per mask, after checking every one against ``model``."""
    modules = dict(model.named_modules())
    out = []
    for key, mask in masks.items():
        module_name, _, name = key.rpartition(".")
        module = modules.get(module_name)
        if module is None or not isinstance(module._parameters.get(name), nn.Parameter):
            raise PruningError(f"{where}: mask {key!r} names no parameter of the rebuilt model (its parameters "
                               f"are e.g. {', '.join(n for n, _ in list(model.named_parameters())[:_SHOWN])}); "
                               "the file was written for another model")
        target = module._parameters[name]
        if tuple(mask.shape) != tuple(target.shape):
            raise PruningError(f"{where}: mask {key!r} has shape {tuple(mask.shape)}, expected "
                               f"{tuple(target.shape)} (the shape of the tensor it masks); write the file again")
        if mask.dtype != torch.bool:
            if mask.is_complex() or not (mask.is_floating_point() or mask.dtype in _INT_DTYPES):
                raise PruningError(f"{where}: mask {key!r} has dtype {mask.dtype}, expected torch.bool (or 0/1 "
                                   "numbers); write the file again")
            bad = mask[(mask != 0) & (mask != 1)]
            if bad.numel():
                shown = ", ".join(f"{v:g}" for v in bad.flatten()[:_SHOWN].double().tolist())
                raise PruningError(f"{where}: mask {key!r} ({mask.dtype}) holds {bad.numel()} value(s) other than "
                                   f"0 and 1 (e.g. {shown}); a mask keeps (1) or prunes (0) each weight. Write "
                                   "the file again, or round the mask yourself")
        out.append((module, name, mask.to(torch.bool)))
    return out


_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def load_checkpoint(
    path: str | os.PathLike,
    *,
    factory: str | Callable[..., nn.Module] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The model of a checkpoint, masks installed with ``prune.custom_from_mask``, and the dict.

    Args:
        path: a file written by :func:`save_checkpoint` (``synflow-plugin prune`` /
            ``train``).
        factory: the user factory you allow the file to use, needed when the file names
            one (``"spec": "pkg.module:factory"``) and refused for a zoo model. Either the
            same ``"pkg.module:factory"`` string the file records (it is then imported),
            or the callable itself, whose ``module:qualname`` (:func:`factory_name`) must
            equal the recorded string. A file's factory is never imported otherwise.

    Returns:
        ``(model, blob)``: the rebuilt model, with the file's state and masks, and the dict
        of :func:`read_checkpoint`.

    Raises:
        PruningError: everything :func:`read_checkpoint` raises; a user factory not named by
            ``factory`` (nothing is imported then), or a ``factory`` given for a zoo model; a
            state dict that does not fit the rebuilt model (missing / unexpected keys, shapes,
            dtypes); a mask that names no parameter, has another shape than its tensor or
            values other than 0 and 1. Every entry is checked before the state is loaded.

    Example:
        >>> model, blob = load_checkpoint("net.pt", factory="mypkg.nets:make_net")  # doctest: +SKIP
    """
    blob = read_checkpoint(path)
    where = f"checkpoint '{Path(path)}'"
    spec = ModelSpec.from_dict(blob["model"], source=where)
    model = build_model(spec, factory=_allowed_factory(spec, factory, where))
    _check_state(model, blob["state_dict"], where, spec)
    masks = _check_masks(model, blob["masks"], where)
    model.load_state_dict(blob["state_dict"])
    for module, name, mask in masks:
        prune.custom_from_mask(module, name, mask)
    return model, blob


def example_inputs_for(model: nn.Module, spec: ModelSpec, batch: int = 1) -> torch.Tensor:
    """A random input batch shaped for ``model`` (its ``input_shape`` attribute, else the spec's)."""
    shape = getattr(model, "input_shape", None) or spec.input_shape
    if shape is None:
        raise PruningError(
            f"cannot tell the input shape of {spec.spec}: the checkpoint records none and the model has no "
            "input_shape attribute. Write the checkpoint with one (`synflow-plugin prune ... --input-shape "
            "3,32,32`, or save_checkpoint(path, model, ModelSpec(..., input_shape=(3, 32, 32))))."
        )
    return torch.randn(batch, *shape)
