"""The criterion contract: a scoring copy and its inputs in, one score per weight out."""

from __future__ import annotations

import abc
import itertools
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from synflow_plugin.distributed import all_reduce_sum
from synflow_plugin.errors import PruningError, PruningTypeError
from synflow_plugin.targets import Target

__all__ = ["Criterion", "GradientCriterion", "check_seed", "Inputs", "ScoringState", "primary_output", "flow_outputs", "describe", "to_device"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Batches read from a ``data=`` without a length before asking for ``num_batches=``.
MAX_UNSIZED_BATCHES = 1000


def primary_output(output: Any) -> torch.Tensor:
    """The tensor a loss is computed on: the output itself, the first element of a
    tuple/list, or ``output["logits"]`` (else the first value) of a dict."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and output:
        return primary_output(output["logits"] if "logits" in output else next(iter(output.values())))
    if isinstance(output, (tuple, list)) and output:
        return primary_output(output[0])
    raise PruningError(
        f"the model returned {type(output).__name__}, which holds no tensor to compute a "
        "loss on; return a tensor, a tuple whose first element is the logits, or a dict "
        "with a 'logits' entry."
    )


def flow_outputs(output: Any) -> list[torch.Tensor]:
    """Every floating tensor in a (nested) model output; SynFlow sums all of them."""
    if isinstance(output, torch.Tensor):
        return [output] if output.is_floating_point() else []
    if isinstance(output, Mapping):
        return [t for v in output.values() for t in flow_outputs(v)]
    if isinstance(output, (tuple, list)):
        return [t for v in output for t in flow_outputs(v)]
    return []


@dataclass
class Inputs:
    """What a criterion may feed the model: an example input and/or labelled batches.

    Args:
        example_inputs: a tensor, or a tuple of positional arguments, or a dict of
            keyword arguments, accepted by ``model(...)``.
        data: an iterable of ``(inputs, targets)`` batches, e.g. a DataLoader. A
            one-shot iterator is read once and kept; a re-iterable (a DataLoader, a
            list) is read again in every round.
        loss_fn: ``loss_fn(logits, targets) -> scalar``; cross-entropy by default.
        num_batches: use only the first ``num_batches`` batches (default: all).
    """

    example_inputs: Any = None
    data: Iterable | None = None
    loss_fn: LossFn | None = None
    num_batches: int | None = None
    _cached: list | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.num_batches is not None and (
            isinstance(self.num_batches, bool) or not isinstance(self.num_batches, int)
            or self.num_batches < 1
        ):
            raise PruningError(f"num_batches={self.num_batches!r} should be a positive int or None")
        if self.loss_fn is not None and not callable(self.loss_fn):
            raise PruningTypeError(
                f"loss_fn should be callable as loss_fn(logits, targets), got {type(self.loss_fn).__name__}"
            )
        if self.data is not None:
            if isinstance(self.data, (torch.Tensor, str, bytes)) or not isinstance(self.data, Iterable):
                raise PruningTypeError(
                    f"data should be a DataLoader or an iterable of (inputs, targets) batches, "
                    f"got {type(self.data).__name__}"
                )
            if iter(self.data) is self.data:  # a one-shot iterator: read it once
                self._cached = list(self._bounded(self.data))

    def _bounded(self, source: Iterable) -> Iterator:
        """The first ``num_batches`` batches of ``source``; without ``num_batches``, all of
        a source with a length, and a clear error for one without a length (an endless
        stream such as ``itertools.cycle``) past :data:`MAX_UNSIZED_BATCHES`."""
        if self.num_batches is not None:
            yield from itertools.islice(source, self.num_batches)
            return
        try:
            len(source)  # type: ignore[arg-type]
        except TypeError:
            sized = False
        else:
            sized = True
        for count, batch in enumerate(source):
            if not sized and count == MAX_UNSIZED_BATCHES:
                raise PruningError(
                    f"data has no length and yielded more than {MAX_UNSIZED_BATCHES} batches; it may be "
                    "endless (e.g. itertools.cycle). Pass num_batches=<how many batches to score on>; "
                    "every batch given is used."
                )
            yield batch

    def call(self, model: nn.Module, args: Any, what: str, weights: Mapping[str, torch.Tensor] | None = None) -> Any:
        """``model(args)`` with tuples as positional and dicts as keyword arguments;
        a failure inside the model becomes a :class:`PruningError` saying what was fed.
        ``weights``: parameters by name to run the model with instead of its own
        (:func:`torch.func.functional_call`; the model is not changed)."""
        if weights is not None:
            return self.call(lambda *a, **k: functional_call(model, weights, a, k), args, what)
        try:
            if isinstance(args, Mapping):
                return model(**args)
            if isinstance(args, (tuple, list)):
                return model(*args)
            return model(args)
        except PruningError:
            raise
        except Exception as exc:
            raise PruningError(
                f"the model failed on {what} ({type(exc).__name__}: {exc}). Pass inputs that "
                f"model(...) accepts: {describe(args)} was given."
            ) from exc

    @property
    def reusable_data(self) -> Iterable | None:
        """``data`` in a form every round can read again (a one-shot iterator, read once)."""
        return self._cached if self._cached is not None else self.data

    def require_data(self, criterion: str, caller: str | None = None) -> None:
        """Raise the error that tells a user of a data-driven criterion to pass ``data=``."""
        if self.data is None:
            raise PruningError(
                f"{caller + ': ' if caller else ''}{criterion} is data-driven: pass data=<a DataLoader "
                "or an iterable of (inputs, targets) batches>, e.g. a few batches of your training set."
            )

    def batches(self, criterion: str) -> Iterator[tuple[Any, torch.Tensor]]:
        """The labelled batches, checked; raises if there are none."""
        self.require_data(criterion)
        source = self._cached if self._cached is not None else self._bounded(self.data)
        count = 0
        for batch in source:
            if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
                raise PruningError(
                    f"{criterion}: each batch of data should be an (inputs, targets) pair, got "
                    f"{describe(batch)}"
                )
            count += 1
            yield batch[0], batch[1]
        if count == 0:
            raise PruningError(f"{criterion}: data yielded no batches; pass at least one (inputs, targets) batch.")

    def loss(self, output: Any, targets: Any, temperature: float = 1.0) -> torch.Tensor:
        """The scalar loss of one batch: ``loss_fn(logits, targets)``, by default
        cross-entropy over classes, or over tokens for (batch, time, classes) logits
        with (batch, time) targets. A failure names both shapes and ``loss_fn=``."""
        logits = primary_output(output)
        if temperature != 1.0:
            logits = logits / temperature
        try:
            loss = self.loss_fn(logits, targets) if self.loss_fn is not None else _cross_entropy(logits, targets)
        except PruningError:
            raise
        except Exception as exc:
            what = (f"loss_fn={getattr(self.loss_fn, '__name__', type(self.loss_fn).__name__)}"
                    if self.loss_fn is not None else "the default loss (cross-entropy)")
            raise PruningError(
                f"{what} failed on the model's output {describe(logits)} and the batch's targets "
                f"{describe(targets)} ({type(exc).__name__}: {exc}). "
                + ("Cross-entropy needs class indices in [0, classes) with one per output row; "
                   "pass loss_fn=<loss(logits, targets)> for other targets."
                   if self.loss_fn is None else "Check that loss_fn accepts these.")
            ) from exc
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise PruningError(
                f"loss_fn should return a scalar tensor, got {describe(loss)}; reduce it, e.g. with .mean()."
            )
        if isinstance(logits, torch.Tensor) and logits.requires_grad and not loss.requires_grad:
            raise PruningError(
                f"loss_fn returned a loss that does not depend on the model's output through autograd "
                f"({describe(loss)}, without a gradient: detached, or computed through .item(), numpy or "
                "torch.no_grad()), so the scores would have no gradient. Compute it from the logits with torch "
                "operations, e.g. loss_fn=lambda logits, targets: torch.nn.functional.mse_loss(logits, targets)."
            )
        return loss.reshape(())


def _cross_entropy(logits: torch.Tensor, targets: Any) -> torch.Tensor:
    """The default loss: cross-entropy on class indices, per token for sequence outputs."""
    if not isinstance(targets, torch.Tensor) or targets.is_floating_point() or targets.is_complex():
        raise PruningError(
            f"the default loss is cross-entropy on class indices, but the targets are "
            f"{describe(targets)}. For regression or reconstruction targets pass loss_fn= (e.g. "
            "torch.nn.functional.mse_loss); for soft labels pass loss_fn=torch.nn.functional.cross_entropy."
        )
    if logits.dim() == 3 and targets.dim() == 2 and logits.shape[:2] == targets.shape and (
        logits.shape[0], logits.shape[2]) != tuple(targets.shape):
        # (batch, time, classes) logits against (batch, time) targets: a loss per token.
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return F.cross_entropy(logits, targets)


def check_seed(seed: Any, criterion: str) -> int | None:
    """A criterion's ``seed=`` option checked: None, or an integer (numpy's too; not a
    bool), returned as an ``int``."""
    if seed is not None and (isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral)):
        raise PruningError(f"{criterion}: seed={seed!r} should be an int or None")
    return None if seed is None else int(seed)


def describe(value: Any) -> str:
    """A short description of a (nested) input for error messages."""
    if isinstance(value, torch.Tensor):
        return f"tensor(shape={tuple(value.shape)}, dtype={value.dtype})"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k!r}: {describe(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(describe(v) for v in value) + ")"
    return type(value).__name__


def to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    return value


@dataclass
class ScoringState:
    """Everything a criterion sees in one round.

    Attributes:
        model: the scoring copy (eval mode, hooks removed; see :func:`~synflow_plugin.targets.scoring_copy`).
        targets: the pruned tensors, in the caller's order.
        params: the copy's parameters for ``targets``; pruned entries hold zero.
        initial: the targets' values at the start of the call, before any round's
            masking (FORCE scores pruned weights with them). Only kept apart from
            ``params`` for criteria that revive weights; otherwise the same tensors.
        inputs: the example inputs / data / loss of the call.
        round: index of the round, starting at 0.
        cache: per-call scratch space of the criterion (e.g. SynFlow's all-ones input).
        promoted_from: the targets' dtype before :meth:`promote` moved the copy to
            float64 (None while it has not).
        rounds: the number of rounds of the call (1 outside the pruning loop).
        progress: whether the call shows progress bars (None: only on a terminal);
            criteria that train show theirs under the same rule.
        requires_grad: parameter name -> ``requires_grad`` in the user's model (the
            copy freezes every parameter but the targets).
        modes: module name -> ``training`` flag in the user's model (the copy is in eval mode).
        group: the ``torch.distributed`` process group of the call (None: this process alone).
        density: the fraction of the call's surviving weights the prune keeps in the end
            (set by the pruning loop; None when scores are asked for outside it).
        keeps: this round's budgets, set by the pruning loop before each round: pairs
            ``(target indices, weights they keep after the round)``, one per group of
            single weights ranked together (None outside the loop).
    """

    model: nn.Module
    targets: list[Target]
    params: list[nn.Parameter]
    initial: list[torch.Tensor]
    inputs: Inputs
    round: int = 0
    cache: dict = field(default_factory=dict)
    promoted_from: torch.dtype | None = None
    rounds: int = 1
    progress: bool | None = False
    requires_grad: dict = field(default_factory=dict)
    modes: dict = field(default_factory=dict)
    survivors: Callable[[], list[torch.Tensor]] | None = field(default=None, repr=False)
    group: Any = field(default=None, repr=False)
    density: float | None = None
    keeps: list[tuple[tuple[int, ...], int]] | None = None

    def all_reduce(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Sum ``tensors`` in place over the ranks of the call's process group (nothing
        without one) and return them: what a data-driven criterion accumulates over its
        batches (e.g. the gradients), so that every rank scores all ranks' batches."""
        all_reduce_sum(tensors, self.group)
        return tensors

    def alive(self) -> list[torch.Tensor]:
        """One boolean mask per target, True for the weights not pruned so far in this
        call (nor before it). Inside the pruning loop, the loop's own record; outside
        it, the weights of ``params`` that are not zero."""
        if self.survivors is not None:
            return [m.to(p.device) for m, p in zip(self.survivors(), self.params)]
        return [p.detach() != 0 for p in self.params]

    @property
    def device(self) -> torch.device:
        return self.params[0].device

    @property
    def model_dtype(self) -> torch.dtype | None:
        """The one floating dtype of every parameter and buffer of the copy, or None for
        a mixed-precision model (computed once; :meth:`promote` changes it)."""
        if "model_dtype" not in self.cache:
            dtypes = {t.dtype for t in itertools.chain(self.model.parameters(), self.model.buffers())
                      if t.is_floating_point()}
            self.cache["model_dtype"] = dtypes.pop() if len(dtypes) == 1 else None
        return self.cache["model_dtype"]

    @property
    def can_promote(self) -> bool:
        """Whether :meth:`promote` would widen anything."""
        return self.promoted_from is None and self.model_dtype != torch.float64

    def promote(self) -> bool:
        """Move the scoring copy (every floating parameter and buffer) to float64, for
        the rounds whose scores leave the range of the model's own dtype; ``params`` and
        ``initial`` follow. Returns False, and changes nothing, when there is nothing to widen."""
        if not self.can_promote:
            return False
        views = [i.data_ptr() == p.data_ptr() for i, p in zip(self.initial, self.params)]
        self.promoted_from = self.params[0].dtype
        self.model.to(torch.float64)
        self.cache["model_dtype"] = torch.float64
        self.params = [self.model.get_submodule(t.module_name)._parameters[t.name] for t in self.targets]
        self.initial = [p.detach() if view else i.to(torch.float64)
                        for i, p, view in zip(self.initial, self.params, views)]
        return True


class Criterion(abc.ABC):
    """A pruning-at-initialisation criterion: a score per weight, higher means keep.

    Subclasses implement :meth:`score`; the iterative loop, the schedule, exact
    top-k masking and the host libraries are handled elsewhere, so a criterion is
    written once and used by every adapter.

    Class attributes:
        name: the registry name.
        summary: one line for listings (``synflow-plugin list``): what the score is, and the paper.
        needs_data: whether :meth:`score` reads labelled batches (``data=``).
        needs_example_inputs: whether :meth:`score` runs the model on ``example_inputs``
            (data-free criteria that still read the network, as SynFlow).
        seeded: whether the criterion draws random numbers and takes a ``seed=`` option.
        reads_network: whether scores depend on the network beyond the pruned tensors
            themselves (False for magnitude and random, which then need no ``model=``).
        default_iterations: pruning rounds the paper uses (1 = one shot).
        revives: whether weights pruned in an earlier round of the same call may come
            back (FORCE); weights pruned before the call never do.
        times_weight: :meth:`score` returns a gradient g and the score is θ ⊙ g, with θ
            the target's current (masked) value: the loop multiplies only the survivors,
            which spares a pass over every weight in each round.
        ranks_magnitude: the score is the absolute value, taken on the survivors only.
        reduces_across_ranks: under a ``torch.distributed`` process group, :meth:`score`
            sums what it accumulates over batches across the ranks
            (:meth:`ScoringState.all_reduce`), so every rank gets the scores of all
            ranks' batches. A data-driven criterion without it is refused under a group.
        wide_range: the scores are products along paths through the network and can
            leave the range of the model's dtype (SynFlow): the loop checks every
            round's ranked scores and, when one is infinite or near the subnormal
            range, scores the round again on a float64 copy (:meth:`ScoringState.promote`).
        needs_training: the criterion trains (a copy of) the network with the user's
            training function, held as its attribute ``train_fn`` (a callable
            ``train_fn(model)`` that trains the model it is given in place); a request
            without one is refused before any work.
        reads_training_set: the criterion trains on ``data=`` for epochs (GemMiner's
            scores): callers give it a training set (a shuffling DataLoader), not a
            calibration batch, and its training options by the names ``epochs``,
            ``lr``, ``optimizer`` and ``weight_decay``.
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    needs_data: ClassVar[bool] = False
    needs_example_inputs: ClassVar[bool] = False
    seeded: ClassVar[bool] = False
    reads_network: ClassVar[bool] = True
    default_iterations: ClassVar[int] = 1
    revives: ClassVar[bool] = False
    times_weight: ClassVar[bool] = False
    ranks_magnitude: ClassVar[bool] = False
    wide_range: ClassVar[bool] = False
    reduces_across_ranks: ClassVar[bool] = False
    needs_training: ClassVar[bool] = False
    reads_training_set: ClassVar[bool] = False
    train_fn: Callable[[nn.Module], Any] | None = None

    def prepare(self, state: ScoringState) -> None:
        """Called once on the fresh scoring copy before the first round (e.g. SynFlow
        takes absolute values there). The default does nothing."""

    @abc.abstractmethod
    def score(self, state: ScoringState) -> list[torch.Tensor]:
        """One score tensor per target, shaped like the target; higher is more important
        (after the ``times_weight`` and ``ranks_magnitude`` steps, where set)."""

    def keep_fractions(self, density: float, iterations: int | None) -> list[float] | None:
        """The rounds of a criterion whose schedule is its own (IMP: a fixed fraction of
        the survivors per level): the fraction of the call's starting survivors kept
        after each round, the last equal to ``density`` (the fraction the call keeps);
        its length is the number of rounds. ``iterations``: the rounds the caller asked
        for, or None. The default, None, leaves the rounds to the request
        (``iterations`` and ``schedule``)."""
        return None

    def finish(self, state: ScoringState, scores: list[torch.Tensor]) -> list[torch.Tensor]:
        """The scores ranked, for every weight, from what :meth:`score` returned: applies
        ``times_weight`` and ``ranks_magnitude`` (the pruning loop does this for the
        survivors only)."""
        if self.times_weight:
            scores = [s * p.detach() for s, p in zip(scores, state.params)]
        return [s.abs() for s in scores] if self.ranks_magnitude else scores

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({options})"


class GradientCriterion(Criterion):
    """A criterion whose round of scores is the gradient of one scalar, its
    :meth:`objective`, with respect to the targets (SynFlow: ∂R/∂θ of the flow R).

    Subclasses implement :meth:`objective` instead of :meth:`score`. Where holding
    every target's gradient at once would crowd memory, the pruning loop then ranks
    each gradient as the backward pass produces it and lets go of it
    (:meth:`~synflow_plugin.session.ScoringSession.stream`), so that a round holds one
    large gradient, or a batch of small ones, at a time. A subclass that overrides
    :meth:`score` as well is scored through :meth:`score`, the usual way.
    """

    @abc.abstractmethod
    def objective(self, state: ScoringState) -> torch.Tensor:
        """The scalar whose gradient with respect to ``state.params`` is this round's
        score (before the ``times_weight`` and ``ranks_magnitude`` steps, where set).
        It may :meth:`~ScoringState.promote` the copy; ``state.params`` is read after it."""

    def score(self, state: ScoringState) -> list[torch.Tensor]:
        """The gradient of :meth:`objective` (zero for a target it does not depend on)."""
        objective = self.objective(state)
        grads = torch.autograd.grad(objective, state.params, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(state.params, grads)]

    @property
    def streamable(self) -> bool:
        """Whether the scores are :meth:`objective`'s gradient (:meth:`score` not overridden)."""
        return type(self).score is GradientCriterion.score
