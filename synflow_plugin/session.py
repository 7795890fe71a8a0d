"""The public scoring API every host adapter uses: a validated request and a scoring session.

A :class:`ScoringRequest` is what a prune asks of a criterion (the criterion with its
options, the example inputs or batches, the rounds, schedule and scope), checked once
whichever host it came from. A :class:`ScoringSession` owns the private scoring copy of
the model for one request: it resolves the targets, makes the copy, runs the
criterion's ``prepare`` and gives one round of scores at a time. The user's model is
never touched, so there is nothing to restore; leaving the ``with`` block releases
the copy::

    request = ScoringRequest.build("synflow", example_inputs=x, iterations=10)
    with ScoringSession(model, params, request) as session:
        scores = session.scores()        # one round, what Criterion.score returns

:func:`synflow_plugin.masking.run_plan` runs the pruning rounds on a session.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from synflow_plugin.criteria import Criterion, GradientCriterion, Inputs, ScoringState, get_criterion
from synflow_plugin.distributed import check_same_on_every_rank, resolve_group
from synflow_plugin.errors import PruningError, PruningTypeError
from synflow_plugin.targets import Target, current_mask, expanded_value, resolve_targets, scoring_copy

__all__ = ["ScoringRequest", "ScoringSession", "ZeroFlowWarning", "SCHEDULES", "SCOPES", "check_train_fn"]

SCHEDULES = ("exponential", "linear")
#: ``global``: one ranking over all targets (the paper); ``local`` (or its alias
#: ``uniform``): every target keeps the same fraction (layer-wise pruning); ``erk``:
#: Erdős–Rényi-Kernel layer budgets.
SCOPES = ("global", "local", "uniform", "erk")


class ZeroFlowWarning(UserWarning):
    """A pruned tensor scores zero everywhere at the first round, so it would be removed first."""


class ScoringRequest:
    """A pruning request, validated: the criterion, its inputs and the round settings.

    Build it with :meth:`build`, which takes the keywords every entry point accepts and
    raises a :class:`~synflow_plugin.errors.PruningError` naming ``caller`` for any bad one.

    Attributes:
        criterion: the :class:`~synflow_plugin.criteria.Criterion` instance.
        inputs: example inputs, batches and loss (:class:`~synflow_plugin.criteria.Inputs`).
        iterations: rounds asked for (None: the criterion's default), see :attr:`rounds`.
        schedule, scope, progress, caller: as passed, checked.
    """

    __slots__ = ("criterion", "inputs", "iterations", "schedule", "scope", "progress", "caller", "group")

    def __init__(self, criterion: Criterion, inputs: Inputs, iterations: int | None, schedule: str,
                 scope: str, progress: bool | None, caller: str, group: Any = None) -> None:
        self.criterion, self.inputs, self.iterations = criterion, inputs, iterations
        self.schedule, self.scope, self.progress, self.caller = schedule, scope, progress, caller
        self.group = group

    @classmethod
    def build(
        cls,
        criterion: str | Criterion | type[Criterion] = "synflow",
        *,
        example_inputs: Any = None,
        data: Iterable | None = None,
        loss_fn: Callable | None = None,
        num_batches: int | None = None,
        iterations: int | None = None,
        schedule: str = "exponential",
        scope: str = "global",
        progress: bool | None = None,
        caller: str = "prune",
        data_later: bool = False,
        process_group: Any = None,
        **options: Any,
    ) -> "ScoringRequest":
        """Check every argument and build the criterion with its ``options``.

        ``data_later``: the batches come later (:meth:`with_data`), as when a host
        reads them from its own training loop; ``data=`` is not required yet.
        ``process_group``: the ``torch.distributed`` group whose ranks must get the same
        masks (None: the default group when one is initialised; False: this process
        alone); see :mod:`synflow_plugin.distributed`."""
        if iterations is not None and (isinstance(iterations, (bool, np.bool_))
                                       or not isinstance(iterations, (int, np.integer)) or iterations < 1):
            raise PruningError(f"{caller}: iterations={iterations!r} should be a positive int or None")
        if schedule not in SCHEDULES:
            raise PruningError(f"{caller}: schedule={schedule!r} is not valid; expected one of {SCHEDULES}")
        if scope not in SCOPES:
            raise PruningError(f"{caller}: scope={scope!r} is not valid; expected one of {SCOPES}")
        if progress is not None and not isinstance(progress, (bool, np.bool_)):
            raise PruningTypeError(
                f"{caller}: progress={progress!r} should be True, False or None (a bar only on a terminal)"
            )
        group = resolve_group(process_group, caller)
        built = get_criterion(criterion, **options)
        if group is not None and built.needs_data and not built.reduces_across_ranks:
            title = type(built).__name__.removesuffix("Criterion") or built.name
            raise PruningError(
                f"{caller}: {title} scores each rank's own batches and cannot combine them across the "
                f"{torch.distributed.get_world_size(group)} ranks of the process group, so the ranks would "
                "get different masks. Prune on one rank and broadcast the masks, or pass process_group=False "
                "to prune each rank alone (knowingly)."
            )
        if schedule != SCHEDULES[0] and type(built).keep_fractions is not Criterion.keep_fractions:
            title = type(built).__name__.removesuffix("Criterion") or built.name
            raise PruningError(
                f"{caller}: schedule={schedule!r} does not apply to {title}, whose rounds follow its own schedule "
                "(see its documentation, e.g. IMP's rate per level); leave schedule out."
            )
        inputs = Inputs(example_inputs=example_inputs, data=data, loss_fn=loss_fn, num_batches=num_batches)
        if built.needs_data and not data_later:
            inputs.require_data(built.name, caller)
        if built.needs_training:
            check_train_fn(built, caller)
        if built.needs_example_inputs and example_inputs is None:
            title = type(built).__name__.removesuffix("Criterion") or built.name
            raise PruningError(
                f"{caller}: {title} needs example_inputs=<a tensor shaped like one input batch, e.g. "
                "torch.randn(1, 3, 32, 32)>: it runs the model on an input of that shape."
            )
        return cls(built, inputs, None if iterations is None else int(iterations), schedule, scope,
                   None if progress is None else bool(progress), caller, group)

    def with_data(self, data: Iterable | None, num_batches: int | None = None) -> "ScoringRequest":
        """This request with the batches ``data`` (required for a data-driven criterion)."""
        inputs = Inputs(example_inputs=self.inputs.example_inputs, data=data, loss_fn=self.inputs.loss_fn,
                        num_batches=num_batches)
        if self.criterion.needs_data:
            inputs.require_data(self.criterion.name, self.caller)
        return ScoringRequest(self.criterion, inputs, self.iterations, self.schedule, self.scope, self.progress,
                              self.caller, self.group)

    @property
    def rounds(self) -> int:
        """Pruning rounds: ``iterations``, else the criterion's default."""
        return self.iterations or self.criterion.default_iterations

    def __repr__(self) -> str:
        return (f"ScoringRequest({self.criterion!r}, rounds={self.rounds}, schedule={self.schedule!r}, "
                f"scope={self.scope!r})")


class ScoringSession:
    """The private scoring copy of ``model`` for the targets ``params`` of one request.

    Construction resolves and checks the targets (nothing is copied yet); entering the
    session copies the model, refuses NaN or infinite values in it, puts the copy in
    eval mode with gradients only for the targets, and runs the criterion's ``prepare``.
    Inside, gradients are enabled.

    Attributes:
        request: the :class:`ScoringRequest`.
        targets: the pruned tensors (:class:`~synflow_plugin.targets.Target`), in ``params``
            order; the uses of a tied weight (pairs whose modules hold the same parameter)
            are one target.
        uses: for each pair of ``params``, the index of its target (:meth:`per_pair`).
        start_masks: their ``torch.nn.utils.prune`` masks when the session began (an
            all-True read-only view for a tensor without one; a tied weight's uses combined).
        state: the :class:`~synflow_plugin.criteria.ScoringState` the criterion sees (inside the block).
    """

    def __init__(self, model: nn.Module, params: Iterable[tuple[nn.Module, str]], request: ScoringRequest) -> None:
        self.request = request
        params = list(params)
        self.targets, self.uses = resolve_targets(model, params, caller=request.caller)
        self.start_masks = [None] * len(self.targets)
        for (module, name), t in zip(params, self.uses):  # a tied weight: what all its uses keep
            mask, kept = _start_mask(module, name), self.start_masks[t]
            if kept is None or expanded_value(kept):
                self.start_masks[t] = mask
            elif not expanded_value(mask):
                self.start_masks[t] = kept & mask
        self._model = model
        self.state: ScoringState | None = None
        self._grad: torch.enable_grad | None = None
        # stream(): the hooks on the copy's targets, the parameters they are on, the taker of the pass
        self._hooks: list = []
        self._hooked: list = []
        self._take: Callable[[int, torch.Tensor], None] | None = None
        self._arrived: list[bool] = []

    @property
    def criterion(self) -> Criterion:
        return self.request.criterion

    @property
    def model(self) -> nn.Module:
        """The model the session scores (never changed)."""
        return self._model

    def weight_bytes(self, indices: Iterable[int]) -> int:
        """The bytes of the targets ``indices`` in the user's model: those of their
        gradients, unless the scoring copy is moved to float64 (then twice them)."""
        return sum(_user_tensor(self._model.get_submodule(t.module_name), t.name).nbytes
                   for t in (self.targets[i] for i in indices))

    def __enter__(self) -> "ScoringSession":
        if self.request.group is not None:  # before the copy: the user's own weights and masks
            weights = [_user_tensor(self._model.get_submodule(t.module_name), t.name) for t in self.targets]
            check_same_on_every_rank(
                weights + self.start_masks, self.request.group, "the pruned weights (or their existing masks)",
                "Initialise every rank with the same seed (torch.manual_seed before building the model), or "
                "load the same checkpoint on every rank, before pruning.", self.request.caller)
        self._grad = torch.enable_grad()
        self._grad.__enter__()
        try:
            self.state = _scoring_state(self._model, self.targets, self.request.inputs, self.criterion,
                                        self.request.progress)
        except BaseException:
            self._grad.__exit__(None, None, None)
            raise
        starts = self.start_masks
        self.state.survivors = lambda: [m.clone() for m in starts]
        self.state.group = self.request.group
        return self

    def __exit__(self, *exc: Any) -> None:
        self._unhook()
        self.state = None  # the copy goes with it
        self._grad.__exit__(*exc)

    def per_pair(self, values: list) -> list:
        """One value per target (scores, masks) as one per pair of ``params``: the uses
        of a tied weight get their target's (a copy each after the first, so that no two
        entries are one tensor)."""
        out, seen = [], set()
        for t in self.uses:
            value = values[t]
            out.append(value.clone() if t in seen and isinstance(value, torch.Tensor) else value)
            seen.add(t)
        return out

    def _live_state(self) -> ScoringState:
        if self.state is None:
            raise PruningError("a ScoringSession scores only inside its with-block: `with ScoringSession(...) as s:`")
        return self.state

    def scores(self) -> list[torch.Tensor]:
        """One round: what the criterion's ``score`` returns (before ``times_weight`` /
        ``ranks_magnitude``), checked to give one tensor per target, shaped like it."""
        state = self._live_state()
        scores = self.criterion.score(state)
        if len(scores) != len(state.targets):
            raise PruningError(
                f"criterion {self.criterion.name} returned {len(scores)} score tensors for "
                f"{len(state.targets)} targets"
            )
        for target, score in zip(state.targets, scores):
            if tuple(score.shape) != tuple(target.shape):
                raise PruningError(
                    f"criterion {self.criterion.name} returned scores of shape {tuple(score.shape)} for "
                    f"'{target.qualified_name}' of shape {tuple(target.shape)}"
                )
        return scores

    def stream(self, take: Callable[[int, torch.Tensor], None]) -> list[int]:
        """One round of a :class:`~synflow_plugin.criteria.GradientCriterion`'s scores,
        target by target: inside the backward pass of its objective, ``take(t, score)``
        is called as soon as target ``t``'s gradient is complete; the copy lets go of
        it then (it is freed unless ``take`` keeps it). The pass accumulates into the
        targets only: no other tensor's ``.grad`` (an input's, say) is touched.
        Returns the targets the objective does not depend on, whose scores are zero."""
        state = self._live_state()
        criterion = self.criterion
        if not isinstance(criterion, GradientCriterion):
            raise PruningError(f"criterion {criterion.name} is not a GradientCriterion: its scores are not "
                               "the gradient of one objective; use scores()")
        objective = criterion.objective(state)  # it may promote the copy: the targets are read after it
        params = list(state.params)
        if len(params) != len(self._hooked) or any(p is not q for p, q in zip(params, self._hooked)):
            self._unhook()
            self._hooks = [p.register_post_accumulate_grad_hook(self._hand_over(t)) for t, p in enumerate(params)]
            self._hooked = params
        for p in params:
            p.grad = None  # a gradient copied with the model would be added to
        self._take, self._arrived = take, [False] * len(params)
        try:
            torch.autograd.backward(objective, inputs=params)
        finally:
            self._take = None
            for p in params:
                p.grad = None
        return [t for t, came in enumerate(self._arrived) if not came]

    def _hand_over(self, t: int) -> Callable[[torch.Tensor], None]:
        """The hook of target ``t`` for :meth:`stream`: its gradient to ``take``, then freed."""
        def hand_over(param: torch.Tensor) -> None:
            if self._take is None:  # a backward pass of the criterion's own
                return
            self._arrived[t] = True
            gradient, param.grad = param.grad, None
            self._take(t, gradient)
        return hand_over

    def _unhook(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks, self._hooked = [], []

    def ranked_scores(self) -> list[torch.Tensor]:
        """One round of the scores that are ranked, for every weight (:meth:`Criterion.finish`)."""
        return self.criterion.finish(self._live_state(), self.scores())

    def warn_zero_flow(self, all_zero: list[bool]) -> None:
        """Warn about the targets whose every score is zero (``all_zero``, one flag per target)."""
        state = self._live_state()
        dead = [t.qualified_name for t, flag in zip(state.targets, all_zero) if flag]
        if not dead:
            return
        zero_bn = [
            name for name, m in state.model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and not m.weight.any()
        ]
        cause = (
            f" BatchNorm layers with an all-zero weight block the flow: {', '.join(zero_bn)} "
            "(e.g. zero_init_residual); pass batchnorm='identity' to score as if BatchNorm were identity."
            if zero_bn and "batchnorm" in vars(self.criterion)
            else " Nothing downstream depends on them at initialisation (zero weights or gradients)."
        )
        warnings.warn(
            f"{self.criterion.name}: every score of {', '.join(dead)} is zero, so "
            f"{'it' if len(dead) == 1 else 'they'} will be pruned first (layer collapse).{cause}",
            ZeroFlowWarning,
            stacklevel=5,
        )


def _user_tensor(module: nn.Module, name: str) -> torch.Tensor:
    """The target's values in the user's model (``<name>_orig`` under a prune hook)."""
    return module._parameters.get(f"{name}_orig", module._parameters.get(name)).detach()


def _start_mask(module: nn.Module, name: str) -> torch.Tensor:
    """The target's ``torch.nn.utils.prune`` mask, or, when it has none, an all-True view
    that takes no memory (read-only: an expanded scalar)."""
    if f"{name}_mask" in module._buffers:
        return current_mask(module, name)
    tensor = module._parameters[name]
    return torch.ones((), dtype=torch.bool, device=tensor.device).expand(tensor.shape)


def _check_finite(model: nn.Module) -> None:
    """Refuse a model holding NaN or infinite values: every criterion would rank garbage."""
    with torch.no_grad():
        for kind, named in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
            for name, tensor in named:
                # A sum is NaN or infinite when an entry is (or the sum overflows: then the
                # entries are checked one by one); it needs no tensor-sized temporary.
                if (tensor.is_floating_point() and not bool(torch.isfinite(tensor.sum()))
                        and not bool(torch.isfinite(tensor).all())):
                    bad = int((~torch.isfinite(tensor)).sum())
                    raise PruningError(
                        f"the model's {kind} '{name}' holds {bad} NaN or infinite value"
                        f"{'s' if bad > 1 else ''}; scores computed from it would be meaningless. "
                        "Re-initialise or repair that tensor before pruning."
                    )


def check_train_fn(criterion: Criterion, caller: str) -> None:
    """Refuse a criterion that ``needs_training`` without a callable ``train_fn``."""
    train_fn = getattr(criterion, "train_fn", None)
    title = type(criterion).__name__.removesuffix("Criterion") or criterion.name
    if train_fn is None:
        raise PruningError(
            f"{caller}: {title} trains the network: pass train_fn=<a function train_fn(model) that trains "
            "the model it is given in place> (it gets a copy; your model is never trained)."
        )
    if not callable(train_fn):
        raise PruningTypeError(
            f"{caller}: train_fn should be callable as train_fn(model), got {type(train_fn).__name__}"
        )


def _scoring_state(model: nn.Module, targets: list[Target], inputs: Inputs, criterion: Criterion,
                   progress: bool | None = False) -> ScoringState:
    copy = scoring_copy(model)
    _check_finite(copy)
    requires_grad = {name: p.requires_grad for name, p in copy.named_parameters()}
    modes = {name: m.training for name, m in copy.named_modules()}
    copy.eval()
    for p in copy.parameters():
        p.requires_grad_(False)
    params = [copy.get_submodule(t.module_name)._parameters[t.name] for t in targets]
    for p in params:
        p.requires_grad_(True)
        if not p.data.is_contiguous():  # e.g. channels_last: flat views must alias the data
            p.data = p.data.contiguous()
    state = ScoringState(model=copy, targets=targets, params=params, initial=[], inputs=inputs, progress=progress,
                         requires_grad=requires_grad, modes=modes)
    criterion.prepare(state)
    state.initial = [p.detach().clone() for p in params] if criterion.revives else [p.detach() for p in params]
    return state
