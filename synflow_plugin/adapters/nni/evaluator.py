"""Reading batches through NNI's evaluator, and the plain copy of an NNI-wrapped model.

The data-driven pruners take their ``(inputs, targets)`` batches from the
``training_step`` of an NNI ``TorchEvaluator``: its training function runs until
enough batches have passed, then stops; every parameter, gradient, buffer and
train/eval flag of the model is put back exactly afterwards.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from typing import Any, Mapping

import torch
from torch import nn

from nni.compression.base.target_space import TargetType
from nni.compression.base.wrapper import ModuleWrapper
from nni.compression.utils.evaluator import Evaluator

from synflow_plugin.criteria.base import describe
from synflow_plugin.errors import PruningError

__all__ = ["plain_copy", "collect_batches"]


def plain_copy(model: nn.Module, wrappers: Mapping[str, ModuleWrapper]) -> nn.Module:
    """A copy of an NNI-wrapped ``model`` without NNI: every wrapped module holds its
    (unmasked) parameters again and its own ``forward``. The model is not touched.

    The copy shares every parameter and buffer with ``model`` (the unmasked ones are
    those NNI's wrappers hold), so it costs no tensor memory; it is only read, by the
    scoring session, whose scoring copy is the one that holds tensors of its own."""
    memo: dict[int, Any] = {}
    wrapped = []
    for name, wrapper in wrappers.items():
        module = wrapper.module
        if getattr(module, "_nni_wrapper", None) is not wrapper:
            continue  # unwrapped: the module holds its own parameters
        memo[id(wrapper)] = None
        if "forward" in module.__dict__:
            memo[id(module.__dict__["forward"])] = None
        params = {}
        for spaces in (wrapper.pruning_target_spaces, wrapper.quantization_target_spaces,
                       wrapper.distillation_target_spaces):
            for target_name, space in spaces.items():
                if space.type is TargetType.PARAMETER and isinstance(space.target, nn.Parameter):
                    if module._buffers.get(target_name) is not None:
                        memo[id(module._buffers[target_name])] = None
                    params[target_name] = space.target
        wrapped.append((name, params))
    for module in model.modules():  # e.g. the weight torch.nn.utils.prune recomputes: rebuilt by scoring_copy
        for value in module.__dict__.values():
            if isinstance(value, torch.Tensor) and not value.is_leaf:
                memo[id(value)] = None
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        memo.setdefault(id(tensor), tensor)  # shared, except what NNI's wrappers replaced (None above)
    try:
        clone = copy.deepcopy(model, memo)
    except Exception as exc:
        raise PruningError(
            f"cannot copy the {type(model).__name__} model to score it ({exc}). Scoring runs on a "
            "copy so that the model is left exactly as it was; make the model deep-copyable."
        ) from exc
    with torch.no_grad():
        for name, params in wrapped:
            module = clone.get_submodule(name)
            module._modules.pop("_nni_wrapper", None)
            module.__dict__.pop("forward", None)
            for target_name, param in params.items():
                module._buffers.pop(target_name, None)
                module.register_parameter(target_name, param)
    return clone


class _ModelState:
    """Every parameter (value, gradient, ``requires_grad``), buffer and train/eval flag of
    a model, to be put back exactly, objects included."""

    def __init__(self, model: nn.Module) -> None:
        self._entries = []
        for module in model.modules():
            params = {n: (p, p.detach().clone(), None if p.grad is None else p.grad.detach().clone(), p.requires_grad)
                      for n, p in module._parameters.items() if p is not None}
            buffers = {n: (b, None if b is None else b.detach().clone()) for n, b in module._buffers.items()}
            self._entries.append((module, module.training, params, buffers))

    def restore(self) -> None:
        with torch.no_grad():
            for module, training, params, buffers in self._entries:
                module.training = training
                for name, (p, value, grad, requires_grad) in params.items():
                    module._parameters[name] = p
                    p.copy_(value)
                    p.grad = grad
                    p.requires_grad_(requires_grad)
                for name, (b, value) in buffers.items():
                    module._buffers[name] = b
                    if b is not None and b.grad_fn is None:
                        b.copy_(value)


class _EnoughBatches(BaseException):
    """Stops the evaluator's training function once the batches are in. A BaseException,
    so that a training loop's ``except Exception`` does not swallow it."""


def _detached(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, Mapping):
        return {k: _detached(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_detached(v) for v in value)
    return value


def collect_batches(evaluator: Evaluator, model: nn.Module, param_names_map: Any, num_batches: int,
                    caller: str) -> list[tuple[Any, Any]]:
    """The first ``num_batches`` ``(inputs, targets)`` batches ``evaluator``'s
    ``training_step`` receives; ``model`` is put back exactly afterwards."""
    batches: list[tuple[Any, Any]] = []

    def record(loss: torch.Tensor, batch: Any) -> torch.Tensor:
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
            raise PruningError(
                f"{caller}: the evaluator's training_step received {describe(batch)}; the data-driven "
                "pruners read (inputs, targets) batches: make training_step(batch, model) take "
                "batch = (inputs, targets)."
            )
        batches.append((_detached(batch[0]), _detached(batch[1])))
        if len(batches) >= num_batches:
            raise _EnoughBatches
        return loss

    state = _ModelState(model)
    evaluator.bind_model(model, param_names_map)
    try:
        evaluator.patch_loss(record)
        try:
            evaluator.train(max_steps=num_batches, max_epochs=None)
        except _EnoughBatches:
            pass
    finally:
        evaluator.unbind_model()
        state.restore()
    if not batches:
        raise PruningError(
            f"{caller}: the evaluator's training_func ran no training_step, so there is no batch to "
            "score with; check that it loops over a non-empty DataLoader."
        )
    if len(batches) < num_batches:
        warnings.warn(
            f"{caller}: the evaluator's training_func stopped after {len(batches)} of num_batches="
            f"{num_batches} batches; scoring with those.",
            UserWarning,
            stacklevel=5,
        )
    return batches
