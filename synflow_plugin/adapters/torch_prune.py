"""The criteria as ``torch.nn.utils.prune`` methods.

Global pruning, as the paper does it::

    params = synflow_plugin.prunable_parameters(model)
    prune.global_unstructured(params, pruning_method=SynFlow, amount=0.999,
                              model=model, example_inputs=torch.randn(1, 3, 32, 32))

Layer-wise: ``SynFlow.apply(model.fc, "weight", amount=0.5, model=model,
example_inputs=x)`` or the function form ``synflow_unstructured(model.fc, "weight",
amount=0.5, model=model, example_inputs=x)``.

How it fits prune's contract. ``global_unstructured`` builds the method from its
keyword arguments and calls :meth:`compute_mask` with the flattened weights only,
so the method reads the ``(module, name)`` list from that call. The whole network
is scored (on a private copy) and the resulting masks are handed back in prune's
layout; prune then installs them with ``custom_from_mask``, so a pruned model holds
only torch's own ``CustomFromMask`` hooks: no reference to our classes, the model or
the data remains in it, and it pickles and round-trips its ``state_dict`` as any
pruned model does. ``prune.remove`` makes the masks permanent.

Existing masks are respected as prune's ``PruningContainer`` defines: ``amount`` is a
fraction of the surviving weights, and a pruned weight never comes back.

A tied weight (one parameter several modules hold) is masked module by module by
prune, so every use must be listed (``prunable_parameters`` lists them all): the uses
are ranked as one tensor, counted once, and each gets the same mask. A use left out
would go on reading every weight; a ``TiedWeightWarning`` names it.

Any registered criterion, a plugin's included, is a method through
:func:`pruning_method`: ``prune.global_unstructured(params,
pruning_method=pruning_method("mine"), amount=0.5, model=model)``. For the built-in
names it returns the classes above (``pruning_method("synflow") is SynFlow``).
"""

from __future__ import annotations

import ast
import sys
import types
from typing import Any, Callable, ClassVar, Iterable, Mapping

import torch
from torch import nn
from torch.nn.utils import prune

from synflow_plugin import criteria as _registry
from synflow_plugin.criteria import get_criterion
from synflow_plugin.errors import PruningError, PruningTypeError
from synflow_plugin.masking import check_amount, check_min_density, run_plan, scope_plan
from synflow_plugin.session import ScoringRequest, ScoringSession
from synflow_plugin.targets import current_mask, warn_unmasked_uses

__all__ = [
    # any registered criterion
    "pruning_method",
    # pruning methods
    "PaIPruningMethod",
    "Random",
    "Magnitude",
    "SNIP",
    "GraSP",
    "SynFlow",
    "IterSNIP",
    "FORCE",
    "GemMiner",
    "IMP",
    "NTKSAP",
    "ProsPr",
    "PHEW",
    # function forms
    "random_unstructured",
    "magnitude_unstructured",
    "snip_unstructured",
    "grasp_unstructured",
    "synflow_unstructured",
    "itersnip_unstructured",
    "force_unstructured",
    "gemminer_unstructured",
    "imp_unstructured",
    "ntksap_unstructured",
    "prospr_unstructured",
    "phew_unstructured",
]


#: The torch release whose ``prune.global_unstructured`` the frame lookup below was
#: checked against (tests/test_torch_prune.py pins its signature and its local names).
CHECKED_TORCH_VERSION = "2.13.0"


def _global_unstructured_call(caller: str = "PaIPruningMethod") -> tuple[list, dict] | None:
    """The ``parameters`` and ``importance_scores`` of the enclosing
    ``prune.global_unstructured`` call, if the method is being built by one.

    ``global_unstructured`` builds the method as ``pruning_method(**kwargs)`` and then
    hands it only the flattened weights, so the method has no other way to learn
    which ``(module, name)`` pairs it prunes than to read the call's local variables.
    This is the one place that relies on torch's internals; :func:`_call_arguments`
    checks them.
    """
    frame = sys._getframe(1)
    code = prune.global_unstructured.__code__
    while frame is not None:
        if frame.f_code is code:
            return _call_arguments(frame.f_locals, caller)
        frame = frame.f_back
    return None


def _call_arguments(local_vars: Mapping[str, Any], caller: str) -> tuple[list, dict]:
    """``(parameters, importance_scores)`` from the local variables of a
    ``prune.global_unstructured`` frame; a clear error if torch renamed them."""
    if "parameters" not in local_vars:
        raise PruningError(
            f"{caller}: torch.nn.utils.prune.global_unstructured (torch {torch.__version__}) no longer keeps "
            f"the tensors it prunes in a local variable named 'parameters' (synflow-plugin reads it, as "
            f"checked on torch {CHECKED_TORCH_VERSION}; its locals here: {', '.join(sorted(local_vars))}), "
            f"so {caller} cannot tell which tensors it is given. Until synflow-plugin supports this torch, "
            f"prune layer by layer with {caller}.apply(module, 'weight', amount=..., model=...), or compute "
            "the masks with synflow_plugin.compute_masks(model, params, criterion, amount, ...) and install "
            "them with prune.custom_from_mask(module, name, mask)."
        )
    return list(local_vars["parameters"]), local_vars.get("importance_scores") or {}


def _check_criterion_attribute(cls: type) -> None:
    """Refuse a method class that names no criterion (a subclass without ``criterion = ...``,
    or :class:`PaIPruningMethod` itself)."""
    name = getattr(cls, "criterion", None)
    if not isinstance(name, str) or not name:
        got = "names no criterion" if name is None else f"has criterion={name!r}, not a registry name"
        raise PruningTypeError(
            f"{cls.__name__} {got}: a PaIPruningMethod subclass needs a class attribute "
            f"criterion = '<registry name>' (one of: {', '.join(_registry.list_criteria())}); or use "
            "synflow_plugin.pruning_method(name), which makes the method of any registered criterion"
        )


class PaIPruningMethod(prune.BasePruningMethod):
    """Base of the pruning-at-initialisation methods; subclasses only name a criterion.

    A subclass sets the class attribute ``criterion = "<registry name>"``;
    :func:`pruning_method` makes such a class for any registered name.

    Args:
        amount: fraction in [0, 1] of the surviving weights to prune, or their number.
        model: the network holding the pruned tensors (scored as a whole, never changed);
            optional for criteria that do not run the network (``Magnitude``, ``Random``).
        example_inputs: an input ``model`` accepts (SynFlow uses only its shape).
        data: ``(inputs, targets)`` batches for data-driven criteria (SNIP, GraSP, ...).
        loss_fn: ``loss_fn(logits, targets)``; cross-entropy by default.
        num_batches: use only the first batches of ``data``.
        iterations: rounds of pruning; default: the criterion's (SynFlow 100).
        schedule: ``"exponential"`` (the paper) or ``"linear"``.
        scope: ``"global"``, ``"local"`` (same fraction per tensor) or ``"erk"``.
        progress: tqdm bar over the rounds (default: on a terminal only).
        min_density: the fraction of each pruned tensor kept at least (the total count
            stays exact); guards against layer collapse.
        **options: the criterion's options (``batchnorm=``, ``seed=``, ``temperature=``), and
            ``process_group=`` (see :mod:`synflow_plugin.distributed`: by default the ranks of
            an initialised ``torch.distributed`` job get the same masks).
    """

    PRUNING_TYPE = "unstructured"
    criterion: ClassVar[str]

    def __init__(
        self,
        amount: int | float,
        *,
        model: nn.Module | None = None,
        example_inputs: Any = None,
        data: Iterable | None = None,
        loss_fn: Callable | None = None,
        num_batches: int | None = None,
        iterations: int | None = None,
        schedule: str = "exponential",
        scope: str = "global",
        progress: bool | None = None,
        min_density: float = 0.0,
        **options: Any,
    ) -> None:
        caller = type(self).__name__
        _check_criterion_attribute(type(self))
        self.amount = check_amount(amount, caller)
        self.min_density = check_min_density(min_density, caller)
        # Every argument is checked here, before torch does any work.
        self._model: nn.Module | None = model
        self._request: ScoringRequest | None = ScoringRequest.build(
            self.criterion, example_inputs=example_inputs, data=data, loss_fn=loss_fn, num_batches=num_batches,
            iterations=iterations, schedule=schedule, scope=scope, progress=progress, caller=caller, **options)
        if model is None and self._request.criterion.reads_network:
            raise PruningError(
                f"{caller} scores the whole network: pass model=<the nn.Module that contains the "
                f"pruned layers>, e.g. prune.global_unstructured(params, pruning_method={caller}, "
                "amount=0.9, model=model, example_inputs=x)"
            )
        call = _global_unstructured_call(caller)
        if call is not None and call[1]:
            raise PruningError(
                f"{caller} computes its own importance scores; call global_unstructured without "
                "importance_scores=..."
            )
        self._params = call[0] if call is not None else None

    def _masks(self, params: list) -> list[torch.Tensor]:
        """The core's masks for ``params``; afterwards the method holds no reference to
        the model or the data."""
        # A criterion that does not run the network (magnitude, random) needs only the pruned layers.
        model = self._model if self._model is not None else nn.ModuleList(dict.fromkeys(m for m, _ in params))
        session = ScoringSession(model, params, self._request)
        warn_unmasked_uses(model, params, type(self).__name__)
        self._model = self._request = None
        return session.per_pair(run_plan(session, scope_plan(session, self.amount, self.min_density)))

    def compute_mask(self, t: torch.Tensor, default_mask: torch.Tensor) -> torch.Tensor:
        """The mask of the surviving entries ``t`` of the tensors given to ``global_unstructured``."""
        if self._params is None:
            name = type(self).__name__
            raise PruningError(
                f"{name} needs to know which tensors it prunes: use "
                f"prune.global_unstructured(params, pruning_method={name}, ...) or "
                f"{name}.apply(module, 'weight', amount=..., model=...)"
            )
        params, self._params = self._params, None
        masks = self._masks(params)
        # prune hands over only the entries that survive earlier masks: answer in kind.
        mask = torch.cat([m.reshape(-1) for m in masks])
        if any(prune.is_pruned(m) and f"{n}_mask" in m._buffers for m, n in params):
            started = torch.cat([current_mask(m, n).reshape(-1) for m, n in params])
            mask = mask[started.to(mask.device)]
        if mask.numel() != t.numel():
            raise PruningError(
                f"{type(self).__name__}: the tensors passed to global_unstructured hold "
                f"{t.numel()} unpruned weights but the model's masks give {mask.numel()}; "
                "pass tensors of the model given as model=..."
            )
        return mask.to(device=default_mask.device, dtype=default_mask.dtype)

    @classmethod
    def apply(cls, module: nn.Module, name: str, amount: int | float, *,  # type: ignore[override]
              importance_scores: torch.Tensor | None = None, **kwargs: Any) -> prune.BasePruningMethod:
        """Prune ``module.<name>`` on its own (layer-wise), scoring it inside ``model``.

        Returns the forward pre-hook installed on ``module`` (``torch.nn.utils.prune``'s
        ``CustomFromMask``, or a ``PruningContainer`` if it was pruned before).
        """
        if importance_scores is not None:
            raise PruningError(f"{cls.__name__} computes its own importance scores; drop importance_scores=...")
        method = cls(amount, **kwargs)
        mask = method._masks([(module, name)])[0]
        return prune.CustomFromMask.apply(module, name, mask=mask.to(getattr(module, name).dtype))


class Random(PaIPruningMethod):
    """Random pruning: Gaussian scores ranked globally; ``scope="local"`` or ``"erk"`` for
    the layer-wise variants, ``seed=`` for a reproducible mask."""

    criterion = "random"


class Magnitude(PaIPruningMethod):
    """Magnitude pruning at initialisation: keep the largest |θ|."""

    criterion = "magnitude"


class SNIP(PaIPruningMethod):
    """SNIP (Lee et al., 2019, https://arxiv.org/abs/1810.02340): |θ ⊙ ∂L/∂θ|; needs ``data=``."""

    criterion = "snip"


class GraSP(PaIPruningMethod):
    """GraSP (Wang et al., 2020, https://arxiv.org/abs/2002.07376): keeps the largest θ ⊙ Hg,
    i.e. removes the largest −θ ⊙ Hg as the paper does; needs ``data=``."""

    criterion = "grasp"


class SynFlow(PaIPruningMethod):
    """SynFlow (Tanaka et al., 2020, https://arxiv.org/abs/2006.05467): iterative synaptic
    flow, data-free, 100 exponential rounds; needs ``example_inputs=`` for the input shape."""

    criterion = "synflow"


class IterSNIP(PaIPruningMethod):
    """Iterative SNIP (de Jorge et al., 2021, https://arxiv.org/abs/2006.09081); needs ``data=``."""

    criterion = "itersnip"


class FORCE(PaIPruningMethod):
    """FORCE (de Jorge et al., 2021): iterative SNIP in which weights pruned in an earlier
    round of the same call may come back; needs ``data=``."""

    criterion = "force"


class GemMiner(PaIPruningMethod):
    """GemMiner (Sreenivasan et al., 2022, https://arxiv.org/abs/2202.12002): scores trained
    with the weights frozen, the lowest flagged off each round; needs ``data=`` (a training
    loader) and takes ``epochs=``, ``lr=``, ..."""

    criterion = "gemminer"


class IMP(PaIPruningMethod):
    """Iterative magnitude pruning with rewinding (Frankle & Carbin, 2019,
    https://arxiv.org/abs/1803.03635; Frankle et al., 2020): train, prune by magnitude,
    rewind, per level; needs ``train_fn=`` (trains the copy it is given in place)."""

    criterion = "imp"


class NTKSAP(PaIPruningMethod):
    """NTK-SAP (Wang et al., 2023, https://arxiv.org/abs/2304.02840): the mask's effect on the
    neural tangent kernel's spectrum, on random inputs and re-drawn weights; data-free, needs
    ``example_inputs=`` for the input shape."""

    criterion = "ntksap"


class ProsPr(PaIPruningMethod):
    """ProsPr (Alizadeh et al., 2022, https://arxiv.org/abs/2202.08132): |∂L/∂m| through a few
    inner training steps; needs ``data=``."""

    criterion = "prospr"


class PHEW(PaIPruningMethod):
    """PHEW (Patil & Dovrolis, 2021, https://arxiv.org/abs/2010.11354): biased random walks
    with probability ∝ |θ|, data-free; ``seed=`` for a reproducible mask."""

    criterion = "phew"


_BUILT_IN: dict[str, type[PaIPruningMethod]] = {
    cls.criterion: cls for cls in (Random, Magnitude, SNIP, GraSP, SynFlow, IterSNIP, FORCE,
                                   GemMiner, IMP, NTKSAP, ProsPr, PHEW)
}
#: The classes :func:`pruning_method` made, one per registry name.
_MADE: dict[str, type[PaIPruningMethod]] = {}


def pruning_method(name: str) -> type[PaIPruningMethod]:
    """The ``torch.nn.utils.prune`` method of the registered criterion ``name``.

    Every criterion of :mod:`synflow_plugin.criteria`, those of installed plugins (the
    ``synflow_plugin.criteria`` entry points) included, becomes a
    :class:`PaIPruningMethod` with no other code. Built-in names return their classes
    (``pruning_method("synflow") is SynFlow``); any other name returns a class made
    on the first call and returned again on every later one. That class is found
    under its ``__qualname__`` in this module, so it pickles by reference wherever the
    criterion is registered (for a name without dots). (A pruned model never holds the method: prune installs
    its own ``CustomFromMask`` hooks, so a model pruned with any method pickles.)

    Args:
        name: a registry name, case-insensitive (``synflow_plugin.list_criteria()``).

    Returns:
        A :class:`PaIPruningMethod` subclass: pass it as ``pruning_method=`` to
        ``prune.global_unstructured``, or call its ``.apply(module, name, amount, model=...)``.

    Raises:
        PruningTypeError: ``name`` is not a string.
        PruningError: no criterion is registered under ``name`` (the message lists the names).

    >>> import torch, torch.nn as nn, torch.nn.utils.prune as prune
    >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> params = [(model[0], "weight"), (model[2], "weight")]
    >>> prune.global_unstructured(params, pruning_method=pruning_method("magnitude"), amount=0.5, model=model)
    >>> int(model[0].weight_mask.sum() + model[2].weight_mask.sum())
    12
    """
    if not isinstance(name, str):
        raise PruningTypeError(
            f"pruning_method(): name should be a registry name (a str, one of: "
            f"{', '.join(_registry.list_criteria())}), got {type(name).__name__}"
        )
    key = name.lower()
    if key not in _registry.list_criteria():
        get_criterion(name)  # raises the registry's error, which lists the valid names
    if key in _BUILT_IN:
        return _BUILT_IN[key]
    made = _MADE.get(key)
    if made is None:
        qualname = f"pruning_method({key!r})"
        summary = getattr(_registry.CRITERIA[key], "summary", "") or "a registered criterion"
        made = types.new_class(qualname, (PaIPruningMethod,), exec_body=lambda ns: ns.update(
            criterion=key, __module__=__name__, __qualname__=qualname,
            __doc__=f"The criterion {key!r} ({summary}) as a torch.nn.utils.prune method; "
                    f"keyword arguments as for :class:`PaIPruningMethod`.",
        ))
        made = _MADE.setdefault(key, made)  # two threads racing keep one class
    return made


def __getattr__(attribute: str) -> Any:
    # Unpickling finds a class made by pruning_method under its qualname, pruning_method('mine').
    if attribute.startswith("pruning_method(") and attribute.endswith(")"):
        try:
            name = ast.literal_eval(attribute[len("pruning_method("):-1])
        except (ValueError, SyntaxError):
            name = None
        if isinstance(name, str) and name.lower() in _registry.list_criteria():
            return pruning_method(name)
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")


def _function_form(method: type[PaIPruningMethod]) -> Callable[..., nn.Module]:
    def prune_tensor(module: nn.Module, name: str, amount: int | float, **kwargs: Any) -> nn.Module:
        method.apply(module, name, amount, **kwargs)
        return module

    prune_tensor.__name__ = prune_tensor.__qualname__ = f"{method.criterion}_unstructured"
    prune_tensor.__doc__ = (
        f"Prune ``amount`` of ``module.<name>`` in place with {method.__name__}, scored inside "
        f"``model=``; returns ``module``. Keyword arguments as for :class:`{method.__name__}`."
    )
    return prune_tensor


random_unstructured = _function_form(Random)
magnitude_unstructured = _function_form(Magnitude)
snip_unstructured = _function_form(SNIP)
grasp_unstructured = _function_form(GraSP)
synflow_unstructured = _function_form(SynFlow)
itersnip_unstructured = _function_form(IterSNIP)
force_unstructured = _function_form(FORCE)
gemminer_unstructured = _function_form(GemMiner)
imp_unstructured = _function_form(IMP)
ntksap_unstructured = _function_form(NTKSAP)
prospr_unstructured = _function_form(ProsPr)
phew_unstructured = _function_form(PHEW)
