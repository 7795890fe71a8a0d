r"""The criteria as torch-pruning (>= 1.6) importances, for structured (channel) pruning.

torch-pruning removes whole channels together with everything coupled to them (a
*dependency group*: a conv's output channels, its BatchNorm, the next conv's input
channels, every layer tied by a residual sum). Its pruner asks an importance for
one score per channel of every group and removes the lowest. The classes here give
it the pruning-at-initialisation criteria::

    import torch_pruning as tp
    from synflow_plugin.torch_pruning import SynFlowImportance

    pruner = tp.pruner.MetaPruner(
        model, example_inputs, importance=SynFlowImportance(), pruning_ratio=0.5,
        global_pruning=True, iterative_steps=10, ignored_layers=[model.fc])
    for _ in range(10):
        pruner.step()

How a channel is scored
-----------------------
1. **Element scores, once per step.** On the first group of a pruning step the
   importance scores every conv and linear weight of the model with
   :func:`synflow_plugin.compute_scores` (on a private copy; the model is never
   changed, and gradients are enabled there even though torch-pruning calls
   importances under ``torch.no_grad()``). The scores are cached and every other
   group of the step reuses them. The cache is keyed by the identity, storage,
   shape and in-place version of every parameter and buffer, so it is invalidated
   exactly when the model changes: after a pruning step (torch-pruning builds new,
   smaller parameters), or after an optimiser step in between. :meth:`PaIImportance.reset`
   drops it by hand.
2. **Per layer.** For each layer of the group, the element scores of the pruned
   dimension are summed: a conv/linear output channel sums the scores of its filter,
   an input channel the scores of the weights that read it (grouped and transposed
   convolutions handled exactly), a BatchNorm channel is its affine weight's score
   (only if BatchNorm is in ``target_types``), ``bias=True`` adds the bias' scores.
   A sum is the saliency of removing the whole channel to first order, the
   structured analogue of each criterion's per-weight score.
3. **Per group.** The layers' channel scores are combined with ``group_reduction``
   and rescaled with ``normalizer``, with the meaning torch-pruning's own
   ``GroupMagnitudeImportance`` gives them (``"mean"`` divides the sum by the number
   of contributing layers; for one-to-one channel mappings the result is exactly
   torch-pruning's, which the tests check).
4. **No silent skips.** In global pruning torch-pruning computes one threshold over
   all channels, and a group whose channels *all* fall below it is skipped: its
   removal would empty a layer, so :meth:`DependencyGraph.check_pruning_group`
   rejects it and the group keeps every channel, silently, while the model ends up
   larger than requested. Layers are exactly what low PaI scores tend to single
   out (layer collapse, the failure SynFlow was designed against). So each group's
   ``min_channels`` best channels score ``+inf``: no threshold can reach them, the
   rest of the group is ranked normally, the requested number of channels is
   removed and every layer keeps at least ``min_channels`` channels.
   ``min_channels=0`` restores torch-pruning's behaviour. One case is beyond any
   importance: a step that asks for more channels than the groups hold beyond
   ``min_channels`` each makes the threshold ``+inf``, and torch-pruning then removes
   nothing from any group. :func:`check_pruned` compares what a global pruner removed
   with what it was asked to remove, and warns with the fix when it falls short.
5. **Collapse is reported.** Protection keeps a layer alive, not healthy: one global
   step can rank a whole layer below the threshold (a plain 4-stage conv net at 60%
   keeps 1 of its last stage's 512 channels), and the channel count then looks exactly
   right. The importance never sees the threshold, and torch-pruning has no hook after
   a step, so :func:`check_pruned` is where it shows: it names every layer left at the
   ``max(1, min_channels)`` floor with a
   :class:`~synflow_plugin.collapse.LayerCollapseWarning`, and returns them in
   ``.collapsed``. Call it after every ``pruner.step()``; more ``iterative_steps``
   (SynFlow's remedy), ``max_pruning_ratio`` or ``normalizer="mean"`` avoid the collapse.
6. **round_to.** ``MetaPruner(..., round_to=r)`` rounds the channels a group *keeps*
   down to a multiple of ``r``; a group whose only survivors are fewer than ``r``
   protected channels rounds to zero and is skipped whole. Pass ``min_channels=r`` (a
   multiple of ``r``) with ``round_to=r``; :func:`check_pruned` says so when it was not.
   Channel groupings (GroupNorm, grouped convs) are averaged by torch-pruning before
   ranking, so without ``round_to`` the protection holds in every channel group of such
   a layer. With ``round_to`` it does not: torch-pruning 1.6 rounds the layer's whole
   width but removes that many channels from *each* channel group, so a GroupNorm layer
   is usually emptied and skipped; :func:`check_pruned` names those layers, and the
   fix is to leave ``round_to`` out for such networks.

Attention and recurrent layers
------------------------------
``nn.MultiheadAttention`` needs its head count: the embedding dims must stay a
multiple of ``num_heads``, which torch-pruning keeps only when told::

    heads = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    pruner = tp.pruner.MetaPruner(model, x, importance=SynFlowImportance(example_inputs=x),
                                  pruning_ratio=0.5, global_pruning=True, num_heads=heads)

Without ``num_heads=`` the importance raises a :class:`~synflow_plugin.PruningError`
naming the attention layer before anything is pruned (torch-pruning would otherwise
fail half-way, with an AssertionError, after other layers were already cut). With it,
head dims are removed in whole multiples of the head count (the heads stay, each gets
narrower) and the feed-forward widths are pruned as usual; in local pruning
torch-pruning 1.6 leaves the embedding dims of an attention group alone (its own
importances too). ``prune_num_heads=True`` (removing whole heads) works in
torch-pruning 1.6 only for attention written with ``nn.Linear`` q/k/v projections
(timm, Hugging Face); with ``nn.MultiheadAttention`` it fails inside torch-pruning
(``'MultiheadAttention' object has no attribute 'out_features'``), whatever the importance.

Hugging Face attention (query/key/value ``nn.Linear`` layers under a module with
``num_attention_heads``, as in BERT and ViT) needs the same: without ``num_heads=`` for
those layers the importance raises before anything is pruned (the pruned model would
fail in its reshape to heads). The recipe removes whole heads and keeps their size::

    heads = {getattr(m, p): model.config.num_attention_heads for m in model.modules()
             for p in ("query", "key", "value") if isinstance(getattr(m, p, None), nn.Linear)}
    pruner = tp.pruner.MetaPruner(model, {"input_ids": ids}, importance=SynFlowImportance(
        example_inputs={"inputs_embeds": e}), pruning_ratio=0.5, global_pruning=True,
        ignored_layers=[model.classifier], num_heads=heads, prune_num_heads=True,
        prune_head_dims=False, head_pruning_ratio=0.5, output_transform=lambda out: out.logits)

GPT-2's blocks are Hugging Face ``Conv1D`` layers, which torch-pruning 1.6 cannot trace
(it fails while building its graph, before any importance is asked).

What the model returns. A layer whose output channels are channels of a tensor the
model returns (a classifier head, a returned feature) changes that tensor's shape when
pruned; the importance raises, naming the layer and ``ignored_layers=``, instead of
letting the output shrink (``prune_outputs=True`` scores such groups anyway).

Recurrent layers. torch-pruning 1.6 cannot remove the hidden units of ``nn.LSTM``
(its pruner indexes past the stacked gate weights): the importance raises a
:class:`~synflow_plugin.PruningError` naming the layer and ``ignored_layers=`` for that
group, before anything changes; with the LSTM in ``ignored_layers`` its input channels
are still pruned. ``nn.GRU`` has no pruner there at all, and building the pruner fails
with an ``IndexError`` in torch-pruning's index mapping before any importance is
asked; ``ignored_layers=[model.gru, <the layer feeding it>]`` avoids it.

Where the model comes from. ``importance=SynFlowImportance()`` takes no model: every
group that torch-pruning's ``DependencyGraph`` builds carries the graph
(``group._DG``), and the graph the traced model (``group._DG.model``), which is where
the importance finds it. Groups built by hand without a graph need ``model=``.

Iterative criteria. One step of a torch-pruning pruner is one round of the criterion:
``iterative_steps=k`` re-scores the thinned network k times (SynFlow's paper uses 100
rounds; IterSNIP/FORCE 10). In structured pruning a removed channel is gone, so
FORCE's revival of weights cannot happen and :class:`FORCEImportance` equals
:class:`IterSNIPImportance`, which equals :class:`SNIPImportance` re-scored each step.

Input for SynFlow. SynFlow feeds an all-ones tensor shaped like one input. It is
taken from, in order: ``example_inputs=`` of the constructor; the input the pruner's
``DependencyGraph`` traced the model with (read from the first conv or linear layer
of the traced graph, when the model's only inputs go straight to such layers); the
``input_shape`` attribute of the model (the models of :mod:`synflow_plugin.models`
have it), with a batch of one. If none applies, SynFlow raises and asks for
``example_inputs=``.

Scores are returned as float64 on the model's device (SynFlow's synaptic flow grows
geometrically with depth and may not fit float32).
"""

from __future__ import annotations

import itertools
import math
import warnings
import weakref
from typing import Any, Callable, ClassVar, Iterable, Sequence

import torch
import torch_pruning as tp
from torch import nn

from synflow_plugin.collapse import LayerCollapseWarning
from synflow_plugin.criteria import Criterion, Inputs, get_criterion
from synflow_plugin.criteria.base import flow_outputs
from synflow_plugin.errors import PruningError, PruningTypeError
from synflow_plugin.masking import ZeroFlowWarning, compute_scores
from synflow_plugin.session import check_train_fn

__all__ = [
    # base class
    "PaIImportance",
    # one importance per criterion
    "RandomImportance",
    "MagnitudeImportance",
    "SNIPImportance",
    "GraSPImportance",
    "SynFlowImportance",
    "IterSNIPImportance",
    "FORCEImportance",
    "GemMinerImportance",
    "IMPImportance",
    "NTKSAPImportance",
    "ProsPrImportance",
    "PHEWImportance",
    # registry
    "IMPORTANCES",
    "get_importance",
    # checks
    "check_pruned",
    "PruneCheck",
    # option values
    "GROUP_REDUCTIONS",
    "NORMALIZERS",
    "DEFAULT_TARGET_TYPES",
]

#: How the channel scores of the layers of a group are combined (torch-pruning's names).
GROUP_REDUCTIONS = ("mean", "sum", "max", "prod", "first", "gate")
#: How a group's channel scores are rescaled (torch-pruning's names and spelling), or a
#: callable ``tensor -> tensor``.
NORMALIZERS = (None, "mean", "max", "sum", "standarization", "gaussian")
#: The layers whose element scores make up a channel's score: every conv and linear
#: weight, the tensors the SynFlow paper prunes.
DEFAULT_TARGET_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear)

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)


class PaIImportance(tp.importance.Importance):
    r"""A torch-pruning importance from any criterion of :mod:`synflow_plugin.criteria`.

    The subclasses (:class:`SynFlowImportance`, :class:`SNIPImportance`, ...) fix the
    criterion; use this class directly for a criterion you registered yourself
    (``PaIImportance("mycriterion")``).

    Args:
        criterion: a registry name or a :class:`~synflow_plugin.criteria.Criterion`;
            only when using this class directly.
        example_inputs: an input the model accepts; SynFlow uses only its shape. If
            omitted, it is taken from the pruner's trace or ``model.input_shape`` (see
            the module documentation).
        data: ``(inputs, targets)`` batches for the data-driven criteria (SNIP, GraSP,
            IterSNIP, FORCE), e.g. a DataLoader or a list. A one-shot iterator is read
            once here and reused in every step.
        loss_fn: ``loss_fn(logits, targets) -> scalar``; cross-entropy by default.
        num_batches: use only the first ``num_batches`` batches of ``data``.
        group_reduction: ``"mean"`` (default), ``"sum"``, ``"max"``, ``"prod"``,
            ``"first"`` (the group's root layer only) or ``"gate"`` (the last layer only).
        normalizer: ``None`` (default), ``"mean"``, ``"max"``, ``"sum"``,
            ``"standarization"``, ``"gaussian"`` or a callable. ``None`` keeps the
            criterion's own scale across groups, which is what a global PaI ranking
            means (SynFlow's flow is conserved across layers, so its raw channel scores
            compare across layers); torch-pruning's own importances default to
            ``"mean"``, which equalises groups instead. GraSP scores can be negative:
            ``"mean"``/``"sum"``/``"max"`` may then flip a group's order. A group whose
            scores are all zero stays all zero under every normalizer (torch-pruning's
            own importances give it NaN, which its pruner ranks arbitrarily) and is
            reported once with a :class:`~synflow_plugin.ZeroFlowWarning`; a callable
            that returns NaN is an error.
        target_types: layer types whose element scores count (default: conv and
            linear). Add ``nn.modules.batchnorm._BatchNorm`` to include BatchNorm's
            affine weight.
        bias: also count the scores of the biases of the target layers.
        min_channels: the best ``min_channels`` channels of each group score
            ``+inf`` so that global pruning always keeps them and never skips a
            group (see the module documentation and :func:`check_pruned`); ``0`` for
            torch-pruning's behaviour. With the pruner's ``round_to=r``, use
            ``min_channels=r``: fewer protected channels are rounded away.
        model: the network; only needed for groups not built by a
            ``tp.DependencyGraph`` (those carry their model).
        prune_outputs: score groups that remove output channels of a layer whose output
            the model returns (a classifier head, a returned feature). Off by default:
            such a group raises a :class:`~synflow_plugin.PruningError` naming the layer,
            since pruning it would change the shape of what the model returns; put the
            layer in the pruner's ``ignored_layers``. Turn it on to score every group of
            a graph yourself.
        process_group: the ``torch.distributed`` group whose ranks must score alike
            (default: the default group when one is initialised; ``False``: this
            process alone); see :mod:`synflow_plugin.distributed`.
        **options: the criterion's options, e.g. ``seed=0`` (Random),
            ``temperature=200`` (GraSP), ``batchnorm="identity"`` (SynFlow).

    Raises:
        PruningError: invalid options, or a data-driven criterion without ``data``.
        PruningTypeError: an argument of the wrong type.

    Call with a dependency group; returns one float64 score per channel of the group
    (higher means keep), or ``None`` for a group without any target layer (which
    torch-pruning then leaves alone, as with its own importances).
    """

    criterion: ClassVar[str | None] = None

    def __init__(
        self,
        criterion: str | Criterion | None = None,
        *,
        example_inputs: Any = None,
        data: Iterable | None = None,
        loss_fn: Callable | None = None,
        num_batches: int | None = None,
        group_reduction: str = "mean",
        normalizer: str | Callable[[torch.Tensor], torch.Tensor] | None = None,
        target_types: Sequence[type[nn.Module]] = DEFAULT_TARGET_TYPES,
        bias: bool = False,
        min_channels: int = 1,
        model: nn.Module | None = None,
        prune_outputs: bool = False,
        process_group: Any = None,
        **options: Any,
    ) -> None:
        caller = type(self).__name__
        if type(self).criterion is not None:
            if criterion is not None:
                raise PruningTypeError(
                    f"{caller} always uses the {type(self).criterion!r} criterion; pass its "
                    f"arguments by keyword, e.g. {caller}(data=loader), not {criterion!r} positionally."
                )
            criterion = type(self).criterion
        elif criterion is None:
            raise PruningError(
                "PaIImportance needs a criterion: PaIImportance('synflow') or one of the "
                "ready-made classes, e.g. SynFlowImportance()."
            )
        self._criterion = get_criterion(criterion, **options)
        if self._criterion.needs_training:
            check_train_fn(self._criterion, caller)

        if group_reduction not in GROUP_REDUCTIONS:
            raise PruningError(
                f"{caller}: group_reduction={group_reduction!r} is not valid; expected one of {GROUP_REDUCTIONS}"
            )
        if not (callable(normalizer) or normalizer in NORMALIZERS):
            raise PruningError(
                f"{caller}: normalizer={normalizer!r} is not valid; expected one of {NORMALIZERS} "
                "or a callable taking and returning the group's channel scores"
            )
        target_types = tuple(target_types) if isinstance(target_types, (list, tuple)) else target_types
        if not (
            isinstance(target_types, tuple) and target_types
            and all(isinstance(t, type) and issubclass(t, nn.Module) for t in target_types)
        ):
            raise PruningTypeError(
                f"{caller}: target_types should be a non-empty sequence of nn.Module subclasses, "
                f"got {target_types!r}"
            )
        if not isinstance(bias, bool):
            raise PruningTypeError(f"{caller}: bias should be a bool, got {type(bias).__name__}")
        if not isinstance(prune_outputs, bool):
            raise PruningTypeError(f"{caller}: prune_outputs should be a bool, got {type(prune_outputs).__name__}")
        if isinstance(min_channels, bool) or not isinstance(min_channels, int) or min_channels < 0:
            raise PruningError(
                f"{caller}: min_channels={min_channels!r} should be an int >= 0 (channels every "
                "group keeps; 0 lets torch-pruning skip groups whose channels all fall below the threshold)"
            )
        if model is not None and not isinstance(model, nn.Module):
            raise PruningTypeError(f"{caller}: model should be a torch.nn.Module, got {type(model).__name__}")
        inputs = Inputs(data=data, num_batches=num_batches)  # checks data, reads a one-shot iterator once
        if self._criterion.needs_data:
            inputs.require_data(self._criterion.name, caller)
        data = inputs.reusable_data  # a one-shot iterator would be empty from the second step on

        self.example_inputs = example_inputs
        self.data = data
        self.loss_fn = loss_fn
        self.num_batches = num_batches
        self.group_reduction = group_reduction
        self.normalizer = normalizer
        self.target_types = target_types
        self.bias = bias
        self.min_channels = min_channels
        self.model = model
        self.prune_outputs = prune_outputs
        self.process_group = process_group
        self._cache: tuple | None = None
        self._warned: set[type] = set()
        self._warned_zero: set[str] = set()
        self._returned: dict[int, tuple] = {}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(criterion={self._criterion!r}, group_reduction={self.group_reduction!r}, "
            f"normalizer={self.normalizer!r}, min_channels={self.min_channels})"
        )

    # ------------------------------------------------------------------ the contract
    def __call__(self, group: tp.dependency.Group) -> torch.Tensor | None:
        """One score per channel of ``group`` (``len(group[0].idxs)`` values, float64)."""
        graph = _graph_of(group)
        model = self._model_of(group)
        self._refuse_unprunable(group, graph)
        table = self.element_scores(model, graph)
        root_idxs = list(group[0].root_idxs if group[0].root_idxs is not None else group[0].idxs)
        position = {r: i for i, r in enumerate(root_idxs)}
        length = len(root_idxs)

        local_scores, local_positions = [], []
        for item in group:
            dep, idxs = item.dep, item.idxs
            module = dep.target.module
            if not isinstance(module, self.target_types) or id(module) not in table:
                continue
            roots = item.root_idxs if item.root_idxs is not None else idxs
            if len(idxs) == 0 or any(r is None or r not in position for r in roots):
                continue  # as torch-pruning: a layer that cannot be mapped to the root is left out
            direction = _direction(dep, graph)
            if direction is None:
                continue
            for name, scores in table[id(module)].items():
                channels = _channel_scores(module, name, scores, direction)
                if channels is None:
                    self._warn_unsupported(module, name, direction)
                    continue
                index = list(idxs)
                if index and max(index) >= channels.numel():  # checked on the host: no device sync
                    self._refuse_mapping(group, graph, module, direction, channels.numel(), max(index))
                index = torch.as_tensor(index, dtype=torch.long, device=channels.device)
                local_scores.append(channels.index_select(0, index))
                local_positions.append(torch.as_tensor([position[r] for r in roots], dtype=torch.long,
                                                       device=channels.device))
        if not local_scores:
            return None
        importance = self._reduce(local_scores, local_positions, length)
        if length and not importance.any():
            self._warn_all_zero(group, graph)
        importance = self._normalize(importance, group, graph)
        if self.min_channels and length:
            # a stable sort: among tied channels (an all-zero group) the first ones are kept
            best = torch.argsort(importance, descending=True, stable=True)[: min(self.min_channels, length)]
            importance[best] = math.inf
        return importance

    def _refuse_unprunable(self, group: Any, graph: Any) -> None:
        """Raise before torch-pruning changes anything for groups it would prune wrongly.

        torch-pruning asks for every group's scores before it removes any channel, so an
        error here leaves the model untouched; the same groups fail inside torch-pruning
        only after earlier groups of the step were already removed."""
        caller = type(self).__name__
        returned = {} if self.prune_outputs else self._returned_layers(group, graph)
        for item in group:
            module = item.dep.target.module
            if id(module) in returned and _direction(item.dep, graph) == "out":
                name = getattr(graph, "_module2name", {}).get(module, type(module).__name__)
                raise PruningError(
                    f"{caller}: the group of {_group_label(group, graph)} removes output channels of "
                    f"'{name}' ({type(module).__name__}), whose output the model returns (as "
                    f"{returned[id(module)]}): pruning it would shrink what the model returns, silently. "
                    f"Add it to the pruner's ignored_layers=[{_module_ref(name)}] (as for a classifier "
                    "head); nothing was pruned."
                )
        root_dep = group[0].dep
        if _direction(root_dep, graph) != "out":
            # a pruner given num_heads= re-roots an attention group at a downstream layer's
            # input channels, and then removes whole multiples of the head count
            return
        for item in group:
            module = item.dep.target.module
            if isinstance(module, nn.MultiheadAttention) and _direction(item.dep, graph) == "out":
                name = getattr(graph, "_module2name", {}).get(module, "the attention layer")
                raise PruningError(
                    f"{caller}: the group of {_group_label(group, graph)} removes embedding dims of "
                    f"nn.MultiheadAttention '{name}' (embed_dim={module.embed_dim}, num_heads={module.num_heads}), "
                    "but the pruner was not told its heads: torch-pruning would remove a number of dims "
                    "num_heads need not divide and fail after other layers were already pruned. Pass "
                    f"num_heads={{{_module_ref(name)}: {module.num_heads}}} to the pruner, e.g. "
                    "tp.pruner.MetaPruner(..., num_heads={m: m.num_heads for m in model.modules() "
                    "if isinstance(m, nn.MultiheadAttention)}); nothing was pruned."
                )
        for item in group:
            heads = _attention_heads(item.dep.target.module, graph)
            if heads is not None and _direction(item.dep, graph) == "out":
                module = item.dep.target.module
                name = getattr(graph, "_module2name", {}).get(module, type(module).__name__)
                raise PruningError(
                    f"{caller}: the group of {_group_label(group, graph)} removes output channels of "
                    f"'{name}', a query/key/value projection of an attention layer with {heads} heads, but the "
                    "pruner was not told its heads: the pruned model would fail in its reshape to heads. Pass "
                    "num_heads={<each q/k/v nn.Linear>: <its attention's head count>} to the pruner, e.g. "
                    "for Hugging Face models num_heads={m.query: model.config.num_attention_heads for m in "
                    "model.modules() if hasattr(m, 'query')} (q_proj/k_proj/v_proj alike), with "
                    "prune_num_heads=True, prune_head_dims=False to remove whole heads; nothing was pruned."
                )
        root = root_dep.target.module
        if isinstance(root, nn.LSTM):
            name = getattr(graph, "_module2name", {}).get(root, type(root).__name__.lower())
            raise PruningError(
                f"{caller}: the group of {_group_label(group, graph)} removes hidden units of a recurrent "
                f"layer ({type(root).__name__}, hidden_size={root.hidden_size}); torch-pruning 1.6 cannot "
                "(its LSTM pruner indexes past the stacked gate weights and fails after other layers "
                f"were already pruned). Add it to the pruner's ignored_layers=[{_module_ref(name)}] (its input "
                "channels are still pruned); nothing was pruned."
            )

    def _returned_layers(self, group: Any, graph: Any) -> dict[int, str]:
        """``id(layer) -> 'a tensor of shape ...'`` for the layers whose output channels are
        channels of a tensor the model returns (a head, a returned feature), reached
        through nothing but width-preserving steps (activations, norms, pooling, views);
        found once per dependency graph."""
        key = id(graph)
        cached = self._returned.get(key)
        if cached is not None and cached[0]() is graph:
            return cached[1]
        model = self._model_of(group)
        inputs = self.example_inputs
        if inputs is None:
            inputs = _default_inputs(model, graph)[0]
        if inputs is None and self.data is not None:
            inputs = next((batch[0] for batch in Inputs(data=self.data, num_batches=1).batches("importance")), None)
        found = _returned_layers(model, graph, inputs)
        self._returned[key] = (weakref.ref(graph) if graph is not None else (lambda: None), found)
        return found

    def _refuse_mapping(self, group: Any, graph: Any, module: nn.Module, direction: str, count: int,
                        largest: int) -> None:
        name = getattr(graph, "_module2name", {}).get(module, type(module).__name__)
        raise PruningError(
            f"{type(self).__name__}: torch-pruning maps the group of {_group_label(group, graph)} to "
            f"{'output' if direction == 'out' else 'input'} channels up to {largest} of '{name}' "
            f"({type(module).__name__}), which has {count}: its dependency graph cannot prune this group "
            "(seen with fused query/key/value layers split by heads, e.g. GPT-2's c_attn). Add the layers of "
            "that group to ignored_layers, or prune without num_heads= for them; nothing was pruned."
        )

    # ------------------------------------------------------------------ element scores
    def element_scores(self, model: nn.Module, graph: Any = None) -> dict[int, dict[str, torch.Tensor]]:
        """The criterion's element scores of every target tensor of ``model``, keyed by
        ``id(module)`` then parameter name; computed once per model state (cached)."""
        fingerprint = _fingerprint(model)
        if self._cache is not None and self._cache[0]() is model and self._cache[1] == fingerprint:
            return self._cache[2]
        pairs = self._targets(model)
        if not pairs:
            raise PruningError(
                f"{type(self).__name__}: the model has no parameters of target_types "
                f"{[t.__name__ for t in self.target_types]} to score."
            )
        example_inputs, source = self.example_inputs, None
        if example_inputs is None:
            example_inputs, source = _default_inputs(model, graph)
        try:
            scores = compute_scores(
                model, pairs, self._criterion, example_inputs=example_inputs, data=self.data,
                loss_fn=self.loss_fn, num_batches=self.num_batches, process_group=self.process_group,
            )
        except PruningError as exc:
            if source is not None:
                raise PruningError(
                    f"{exc} (the input was {source}; pass {type(self).__name__}(example_inputs=x) "
                    "with an input your model accepts)"
                ) from exc
            raise
        table: dict[int, dict[str, torch.Tensor]] = {}
        for (module, name), score in zip(pairs, scores):
            table.setdefault(id(module), {})[name] = score.to(torch.float64)
        self._cache = (weakref.ref(model), fingerprint, table)
        return table

    def reset(self) -> None:
        """Forget the cached scores (the next call scores the model again)."""
        self._cache = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"] = None  # holds a weak reference; scores are recomputed after unpickling
        state["_returned"] = {}
        if state["process_group"] is not False:  # False (this process alone) pickles; a group does not,
            state["process_group"] = None  # and the default group is found again
        return state

    def _targets(self, model: nn.Module) -> list[tuple[nn.Module, str]]:
        pairs = []
        names = ("weight", "bias") if self.bias else ("weight",)
        for module in model.modules():
            if not isinstance(module, self.target_types):
                continue
            for name in names:
                tensor = module._parameters.get(f"{name}_orig", module._parameters.get(name))
                if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
                    pairs.append((module, name))
        return pairs

    def _model_of(self, group: Any) -> nn.Module:
        graph_model = getattr(_graph_of(group), "model", None)
        if self.model is not None:
            if isinstance(graph_model, nn.Module) and graph_model is not self.model:
                raise PruningError(
                    f"{type(self).__name__}: this group belongs to a {type(graph_model).__name__} "
                    f"traced by torch-pruning, not to the model given as model=; drop model=..."
                )
            return self.model
        if not isinstance(graph_model, nn.Module):
            raise PruningError(
                f"{type(self).__name__} scores the whole network but cannot find it: groups built "
                "by a tp.DependencyGraph (as every torch-pruning pruner builds them) carry their "
                f"model; for other groups pass {type(self).__name__}(model=<your network>)."
            )
        return graph_model

    # ------------------------------------------------------------------ reduction
    def _reduce(self, scores: list[torch.Tensor], positions: list[torch.Tensor], length: int) -> torch.Tensor:
        device = scores[0].device
        how = self.group_reduction
        if how == "first":
            scores, positions = scores[:1], positions[:1]
        elif how == "gate":
            scores, positions = scores[-1:], positions[-1:]
        if how == "prod":
            total = torch.ones(length, dtype=torch.float64, device=device)
        elif how == "max":
            total = torch.full((length,), -math.inf, dtype=torch.float64, device=device)
        else:
            total = torch.zeros(length, dtype=torch.float64, device=device)
        for score, pos in zip(scores, positions):
            if how in ("sum", "mean", "first", "gate"):
                total.index_add_(0, pos, score)
            elif how == "max":
                total.scatter_reduce_(0, pos, score, reduce="amax")
            else:
                total.scatter_reduce_(0, pos, score, reduce="prod")
        if how == "max":
            total = torch.where(torch.isinf(total) & (total < 0), torch.zeros_like(total), total)
        if how == "mean":
            total /= len(scores)
        return total

    def _normalize(self, scores: torch.Tensor, group: Any = None, graph: Any = None) -> torch.Tensor:
        """``scores`` rescaled by ``normalizer``; never NaN.

        ``"sum"``, ``"mean"`` and ``"max"`` divide by that statistic, except where it is
        zero (an all-zero group, or signed GraSP scores that cancel): there torch-pruning
        divides 0 by 0, and its pruner ranks the resulting NaN arbitrarily; here the
        scores stay as they are, so an all-zero group normalises to zeros. ``"gaussian"``
        of a one-channel group is 0 (torch-pruning: the NaN standard deviation of one value).
        """
        how = self.normalizer
        if how is None:
            return scores
        if callable(how):
            return self._checked_normalizer(how(scores), scores, group, graph)
        if how in ("sum", "mean", "max"):
            scale = {"sum": torch.sum, "mean": torch.mean, "max": torch.amax}[how](scores)
            return scores / scale if scale != 0 else scores.clone()
        if how == "standarization":
            return (scores - scores.min()) / (scores.max() - scores.min() + 1e-8)
        spread = scores.std() if scores.numel() > 1 else scores.new_zeros(())
        return (scores - scores.mean()) / (spread + 1e-8)  # gaussian

    def _checked_normalizer(self, result: Any, scores: torch.Tensor, group: Any, graph: Any) -> torch.Tensor:
        caller, name = type(self).__name__, getattr(self.normalizer, "__name__", repr(self.normalizer))
        if not isinstance(result, torch.Tensor) or result.shape != scores.shape:
            got = f"shape {tuple(result.shape)}" if isinstance(result, torch.Tensor) else type(result).__name__
            raise PruningTypeError(
                f"{caller}: normalizer {name} returned {got} for the group of {_group_label(group, graph)}; "
                f"it should return a tensor of the {scores.numel()} channel scores it was given."
            )
        if torch.isnan(result).any():
            raise PruningError(
                f"{caller}: normalizer {name} returned NaN for the group of {_group_label(group, graph)} "
                f"(channel scores {_preview(scores)}); torch-pruning would rank NaN arbitrarily. Make it "
                "handle a group whose scores are all zero, or use a named normalizer."
            )
        return result.to(scores.dtype)

    def _warn_all_zero(self, group: Any, graph: Any) -> None:
        label = _group_label(group, graph)
        warned = self.__dict__.setdefault("_warned_zero", set())
        if label in warned:
            return
        warned.add(label)
        keeps = (f"it keeps its first {self.min_channels} channel(s) (min_channels) and the rest tie for removal"
                 if self.min_channels else "all its channels tie for removal")
        warnings.warn(
            f"{type(self).__name__}: every channel score of the group of {label} is zero ({self._criterion.name} "
            f"sees nothing there: zero weights, or no flow or gradient reaching them), so {keeps}. Check that "
            "layer's weights, or leave it out with torch-pruning's ignored_layers.",
            ZeroFlowWarning,
            stacklevel=3,
        )

    def _warn_unsupported(self, module: nn.Module, name: str, direction: str) -> None:
        if type(module) in self._warned:
            return
        self._warned.add(type(module))
        warnings.warn(
            f"{type(self).__name__}: cannot map the element scores of {type(module).__name__}.{name} "
            f"to its {direction}put channels; this layer type does not count towards the channel "
            "scores (remove it from target_types to silence this warning).",
            stacklevel=3,
        )


# ---------------------------------------------------------------------------- helpers
def _graph_of(group: Any) -> Any:
    return getattr(group, "_DG", None)


def _group_label(group: Any, graph: Any) -> str:
    """The group's root layer, as ``'name' (Type)``."""
    try:
        module = group[0].dep.target.module
    except (AttributeError, IndexError, TypeError):
        return "a group"
    name = getattr(graph, "_module2name", {}).get(module)
    if name is None:
        name = getattr(group[0].dep.target, "_name", None)
    return f"'{name}' ({type(module).__name__})" if name else type(module).__name__


def _module_ref(name: str) -> str:
    """How user code reaches the submodule ``name`` of ``model``."""
    if all(part.isidentifier() for part in name.split(".")):
        return f"model.{name}"
    return f"model.get_submodule({name!r})"


def _preview(scores: torch.Tensor, count: int = 4) -> str:
    values = ", ".join(f"{v:.3g}" for v in scores.flatten()[:count].tolist())
    return f"[{values}{', ...' if scores.numel() > count else ''}]"


def _direction(dep: Any, graph: Any) -> str | None:
    """``"out"`` or ``"in"``: which dimension of its target layer a dependency prunes."""
    handler = dep.handler
    if graph is not None:
        if graph.is_out_channel_pruning_fn(handler):
            return "out"
        if graph.is_in_channel_pruning_fn(handler):
            return "in"
        return None
    return {"prune_out_channels": "out", "prune_in_channels": "in"}.get(getattr(handler, "__name__", ""))


def _channel_scores(module: nn.Module, name: str, scores: torch.Tensor, direction: str) -> torch.Tensor | None:
    """Element scores of ``module.<name>`` summed per output or input channel (None if unknown)."""
    if name == "bias":
        return scores if direction == "out" and scores.dim() == 1 else None
    if isinstance(module, nn.modules.conv._ConvNd):
        groups = module.groups
        if module.transposed:  # weight: (in, out / groups, *kernel)
            if direction == "in":
                return scores.flatten(1).sum(1)
            per_group = scores.reshape(groups, scores.shape[0] // groups, scores.shape[1], -1)
            return per_group.sum(dim=(1, 3)).reshape(-1)
        if direction == "out":  # weight: (out, in / groups, *kernel)
            return scores.flatten(1).sum(1)
        # input channel c of group g is column c mod (in/groups) of that group's filters only
        per_group = scores.reshape(groups, scores.shape[0] // groups, scores.shape[1], -1)
        return per_group.sum(dim=(1, 3)).reshape(-1)
    if isinstance(module, nn.Linear):
        return scores.sum(1) if direction == "out" else scores.sum(0)
    if isinstance(module, _NORM_TYPES) and scores.dim() == 1 and direction == "out":
        return scores
    return None


def _fingerprint(model: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer is replaced, resized or modified in place."""
    return tuple(
        (name, id(t), t.data_ptr(), tuple(t.shape), t._version)
        for name, t in itertools.chain(model.named_parameters(), model.named_buffers())
    )


def _traced_inputs(graph: Any) -> torch.Tensor | None:
    """All ones shaped like the input the DependencyGraph traced, if it can be read.

    The graph keeps the autograd nodes of its trace; a conv saves its input and a 2-D
    linear layer (addmm, or mm without bias) its input matrix. Used only when every layer that reads the
    model's input directly is such a layer and all of them saw the same shape."""
    module2node = getattr(graph, "module2node", None)
    if not module2node:
        return None
    found = set()
    for module, node in module2node.items():
        # A linear layer's weight transpose is a node of its own, with no inputs: it
        # does not make the layer a reader of another layer's output.
        readers = [n for n in node.inputs if n.inputs or type(getattr(n, "grad_fn", None)).__name__ != "TBackward0"]
        if readers or not isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            continue
        saved = None
        for attr in ("_saved_input", "_saved_mat1", "_saved_self"):  # conv, addmm, mm
            try:
                saved = getattr(node.grad_fn, attr, None)
            except RuntimeError:  # the saved tensor was freed
                saved = None
            if isinstance(saved, torch.Tensor):
                break
        if not isinstance(saved, torch.Tensor):
            return None
        found.add((tuple(saved.shape), saved.dtype, saved.device))
    if len(found) != 1:
        return None
    shape, dtype, device = found.pop()
    return torch.ones(shape, dtype=dtype, device=device)


_PROJECTIONS = ("query", "key", "value", "q_proj", "k_proj", "v_proj")


def _attention_heads(module: nn.Module, graph: Any) -> int | None:
    """The head count of the attention layer whose query/key/value ``nn.Linear`` this is
    (Hugging Face's BERT, ViT, ... layout: the projections are children named ``query``,
    ``q_proj``, ... of a module with ``num_attention_heads`` or ``num_heads``), else None."""
    if not isinstance(module, nn.Linear):
        return None
    name = getattr(graph, "_module2name", {}).get(module)
    if not name or name.rsplit(".", 1)[-1] not in _PROJECTIONS:
        return None
    parent = graph.model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else graph.model
    for attribute in ("num_attention_heads", "num_heads"):
        heads = getattr(parent, attribute, None)
        if heads is None:
            heads = getattr(getattr(parent, "config", None), attribute, None)
        if isinstance(heads, int) and heads > 1:
            return heads
    return None


#: Layers that set the width of their output; every other step (activations, norms,
#: pooling, dropout, views, element-wise arithmetic) passes its input's channels on.
_WIDTH_SETTING = (nn.modules.conv._ConvNd, nn.Linear, nn.Embedding, nn.MultiheadAttention, nn.RNNBase)


def _returned_layers(model: nn.Module, graph: Any, inputs: Any) -> dict[int, str]:
    """The width-setting layers whose output channels reach a tensor ``model`` returns.

    The layers whose traced node feeds nothing else (the graph's own ends) always count.
    With ``inputs``, the model also runs once (in eval mode, restored afterwards; no
    backward) and each returned floating tensor's autograd graph is walked back to the
    first width-setting layers; such a layer counts when its output width is one of that
    tensor's non-batch dims (a returned feature that later layers read as well)."""
    nodes = getattr(graph, "module2node", None) or {}
    width = {}
    for module in model.modules():
        if module in nodes and (isinstance(module, _WIDTH_SETTING) or type(module).__name__ == "Conv1D"):
            channels = graph.get_out_channels(module)
            if channels is not None:
                width[id(module)] = channels
    found = {id(m): "a model output" for m, node in nodes.items() if id(m) in width and not node.outputs}
    if inputs is None or not width:
        return found

    producers: dict[int, nn.Module] = {}

    def record(module, _args, output):
        first = output[0] if isinstance(output, (tuple, list)) and output else output
        if isinstance(first, torch.Tensor) and first.grad_fn is not None:
            producers[id(first.grad_fn)] = module

    modes = {module: module.training for module in model.modules()}
    hooks = [m.register_forward_hook(record) for m in model.modules() if id(m) in width]
    try:
        model.eval()
        with torch.enable_grad():
            output = Inputs().call(model, inputs, "the example input (checking which layers it returns)")
    except PruningError:
        return found  # the graph's ends still count; scoring will name the failing input
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in modes.items():
            module.training = training

    for tensor in flow_outputs(output):
        if tensor.grad_fn is None:
            continue
        stack, seen = [tensor.grad_fn], set()
        while stack:
            fn = stack.pop()
            if fn is None or id(fn) in seen:
                continue
            seen.add(id(fn))
            module = producers.get(id(fn))
            if module is not None:
                if width[id(module)] in tuple(tensor.shape[1:]):
                    found[id(module)] = f"a tensor of shape {tuple(tensor.shape)}"
                continue
            stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return found


def _default_inputs(model: nn.Module, graph: Any) -> tuple[Any, str | None]:
    traced = _traced_inputs(graph)
    if traced is not None:
        return traced, f"inferred from torch-pruning's trace, shape {tuple(traced.shape)}"
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, (tuple, list, torch.Size)) and shape and all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape
    ):
        parameter = next(model.parameters(), None)
        kwargs = {} if parameter is None else {"dtype": parameter.dtype, "device": parameter.device}
        return torch.ones((1, *shape), **kwargs), f"built from model.input_shape={tuple(shape)}"
    return None, None


# ---------------------------------------------------------------------------- one class per criterion
class RandomImportance(PaIImportance):
    """Random channel scores (sums of Gaussian element scores): the baseline of the SynFlow
    paper (https://arxiv.org/abs/2006.05467). ``seed=`` makes every step reproducible."""

    criterion = "random"


class MagnitudeImportance(PaIImportance):
    """Magnitude at initialisation, PaI flavour: a channel scores the sum of |θ| of its
    weights (p = 1), on conv/linear weights only and without normalisation by default.
    ``MagnitudeImportance(target_types=(ConvNd, Linear, BatchNorm), normalizer="mean",
    min_channels=0)`` equals torch-pruning's ``GroupMagnitudeImportance(p=1)`` on
    conv/BatchNorm/linear networks (up to float32 rounding, which torch-pruning sums in)."""

    criterion = "magnitude"


class SNIPImportance(PaIImportance):
    """SNIP, connection sensitivity (Lee et al., ICLR 2019, https://arxiv.org/abs/1810.02340):
    a channel scores Σ|θ ⊙ ∂L/∂θ| over its weights; needs ``data=``."""

    criterion = "snip"


class GraSPImportance(PaIImportance):
    """GraSP, gradient signal preservation (Wang et al., ICLR 2020,
    https://arxiv.org/abs/2002.07376): a channel scores Σ θ ⊙ Hg (higher = keep, the
    paper's sign convention flipped); scores can be negative. Needs ``data=``;
    ``temperature=`` (default 200) divides the logits."""

    criterion = "grasp"


class SynFlowImportance(PaIImportance):
    """SynFlow, iterative synaptic flow (Tanaka et al., NeurIPS 2020,
    https://arxiv.org/abs/2006.05467): a channel scores the synaptic flow Σ|θ ⊙ ∂R/∂θ|
    through its weights, R = 1ᵀ(∏|θˡ|)1 on an all-ones input. Data-free. Each pruning
    step is one SynFlow round, so ``iterative_steps`` plays the role of the paper's
    100 rounds. ``example_inputs=`` is optional (see the module documentation);
    ``batchnorm="identity"`` scores as if BatchNorm were absent."""

    criterion = "synflow"


class IterSNIPImportance(PaIImportance):
    """Iterative SNIP (de Jorge et al., ICLR 2021, https://arxiv.org/abs/2006.09081):
    SNIP re-scored at every pruning step (one round per step); needs ``data=``."""

    criterion = "itersnip"


class FORCEImportance(PaIImportance):
    """FORCE (de Jorge et al., ICLR 2021, https://arxiv.org/abs/2006.09081), one round per
    step. A removed channel cannot come back, so in structured pruning FORCE's scores
    are IterSNIP's; the class exists so every criterion has an importance. Needs ``data=``."""

    criterion = "force"


class GemMinerImportance(PaIImportance):
    """GemMiner (Sreenivasan et al., NeurIPS 2022, https://arxiv.org/abs/2202.12002): a
    channel's score is the sum of its weights' trained GemMiner scores; needs ``data=``
    (a training loader). Each pruning step trains the scores again on the thinned network."""

    criterion = "gemminer"


class IMPImportance(PaIImportance):
    """IMP (Frankle & Carbin, ICLR 2019, https://arxiv.org/abs/1803.03635): a channel's score
    is the L1 norm of its weights after ``train_fn`` trained a copy (one level per pruning
    step, each from the model's own weights: rewinding to init); needs ``train_fn=``."""

    criterion = "imp"


class NTKSAPImportance(PaIImportance):
    """NTK-SAP (Wang et al., ICLR 2023, https://arxiv.org/abs/2304.02840) summed per channel;
    data-free, one round per pruning step."""

    criterion = "ntksap"


class ProsPrImportance(PaIImportance):
    """ProsPr (Alizadeh et al., ICLR 2022, https://arxiv.org/abs/2202.08132): |∂L/∂m| through
    a few inner training steps, summed per channel; needs ``data=``."""

    criterion = "prospr"


class PHEWImportance(PaIImportance):
    """PHEW (Patil & Dovrolis, ICML 2021, https://arxiv.org/abs/2010.11354): the random-walk
    scores summed per channel; data-free, ``seed=`` for reproducible steps."""

    criterion = "phew"


#: Registry name -> importance class, one per criterion of :data:`synflow_plugin.CRITERIA`.
IMPORTANCES: dict[str, type[PaIImportance]] = {
    cls.criterion: cls
    for cls in (RandomImportance, MagnitudeImportance, SNIPImportance, GraSPImportance,
                SynFlowImportance, IterSNIPImportance, FORCEImportance, GemMinerImportance,
                IMPImportance, NTKSAPImportance, ProsPrImportance, PHEWImportance)
}


def get_importance(criterion: str, **kwargs: Any) -> PaIImportance:
    """The importance of a criterion by registry name (case-insensitive), e.g.
    ``get_importance("snip", data=loader)``; a criterion registered by the user without
    a class here gets a :class:`PaIImportance`.

    Raises:
        PruningError: unknown name (the message lists the valid ones) or bad options.
    """
    if isinstance(criterion, str) and criterion.lower() in IMPORTANCES:
        return IMPORTANCES[criterion.lower()](**kwargs)
    return PaIImportance(criterion, **kwargs)


# ---------------------------------------------------------------------------- checks
class PruneCheck(int):
    """What :func:`check_pruned` found: an ``int``, ``remaining - requested`` channels (as
    before), that also carries the layers the step left collapsed.

    Attributes:
        collapsed: ``'name' (Type): k of n channels`` for each prunable layer left with
            ``max(1, min_channels)`` channels or fewer of more than that at the start; a
            layer at that floor was kept alive only by the importance's protection (or by
            torch-pruning's own refusal to empty it), so the ranking wanted it gone.
        ok: ``True`` when the request was met and no layer collapsed.
    """

    collapsed: tuple[str, ...]

    def __new__(cls, shortfall: int, collapsed: Sequence[str] = ()) -> "PruneCheck":
        obj = super().__new__(cls, shortfall)
        obj.collapsed = tuple(collapsed)
        return obj

    @property
    def shortfall(self) -> int:
        return int(self)

    @property
    def ok(self) -> bool:
        return int(self) <= 0 and not self.collapsed

    def __repr__(self) -> str:
        return f"PruneCheck(shortfall={int(self)}, collapsed={list(self.collapsed)})"

    def __reduce__(self):
        return (PruneCheck, (int(self), self.collapsed))


def check_pruned(pruner: tp.pruner.BasePruner, *, warn: bool = True) -> PruneCheck:
    """What a global torch-pruning pruner did that its request did not say: channels kept
    beyond the request, and layers collapsed to a single channel.

    Call this after ``pruner.step()``. torch-pruning skips a group without a word when its
    removal would empty a layer (see the module documentation); with ``round_to`` it also
    rounds each group's remaining channels *down* to a multiple of ``round_to``, so a group
    whose protected channels are fewer than ``round_to`` rounds to zero and is skipped whole.
    And a step can remove all but the protected channels of a layer: the model runs, but
    every path goes through that one channel (layer collapse, what SynFlow's iterative
    schedule exists to avoid). This compares the channels left in the prunable groups with
    ``pruning_ratio`` of the current step, and looks at every prunable layer's width.

    Args:
        pruner: a ``tp.pruner.BasePruner`` (e.g. ``MetaPruner``) built with
            ``global_pruning=True`` and one ``pruning_ratio``.
        warn: emit a ``UserWarning`` naming the causes and the fixes when the request was
            not met, and a :class:`~synflow_plugin.collapse.LayerCollapseWarning` naming
            each collapsed layer.

    Returns:
        A :class:`PruneCheck`: the int ``remaining - requested`` channels (``0`` when
        exactly the requested channels were removed, positive when groups were skipped,
        negative when ties at the threshold or ``round_to`` removed a few more), with
        ``.collapsed`` (the collapsed layers) and ``.ok``. A collapse can hide behind
        ``0``: the protected channels were counted as kept, as they were.

    Raises:
        PruningTypeError: ``pruner`` is not a torch-pruning pruner.
        PruningError: local, isomorphic or per-layer-ratio pruning, where no single
            request exists to compare with.
    """
    if not isinstance(pruner, tp.pruner.BasePruner):
        raise PruningTypeError(f"check_pruned() expects a torch-pruning pruner, got {type(pruner).__name__}")
    if not pruner.global_pruning or pruner.pruning_ratio_dict or pruner.isomorphic:
        raise PruningError(
            "check_pruned() checks global pruning with a single pruning_ratio (global_pruning=True, "
            "no pruning_ratio_dict, isomorphic=False); in local pruning each layer loses its own "
            "share and torch-pruning never skips a layer for another one's threshold."
        )
    step = min(pruner.current_step, pruner.iterative_steps)
    ratio = pruner.per_step_pruning_ratio[step]
    # the channel count torch-pruning ranked in its first step, else its own initial count
    initial_channels = getattr(pruner, "_scope_initial_channels", {}).get("DEFAULT_SCOPE",
                                                                         pruner.initial_total_channels)
    requested = int(initial_channels * (1 - ratio))
    channel_groups = getattr(pruner, "_get_channel_groups", lambda group: 1)
    importance = getattr(pruner, "importance", None)
    protected = importance.min_channels if isinstance(importance, PaIImportance) else 0
    floor = max(1, protected)
    round_to = getattr(pruner, "round_to", None) or 0
    names = getattr(pruner.DG, "_module2name", {})
    initial = getattr(pruner, "layer_init_out_ch", {})

    is_attention = getattr(pruner, "_is_atten_group", lambda group: (False, None))
    remaining, collapsed, grouped, head_dims_kept = 0, [], [], 0
    for group in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                          root_module_types=pruner.root_module_types):
        module = group[0].dep.target.module
        now = pruner.DG.get_out_channels(module)
        if now is None:
            continue
        ch_groups = max(1, channel_groups(group))
        if is_attention(group)[0]:
            # counted as torch-pruning ranks it: re-rooted at the layer after the attention
            ranked = pruner._downstream_node_as_root_if_attention(group)
            if ranked is None:
                continue
            width = len(ranked[0].idxs) // max(1, channel_groups(ranked))
            if pruner.prune_num_heads and not pruner.prune_head_dims:
                head_dims_kept += width
            remaining += width
        else:
            remaining += now // ch_groups
        if ch_groups > 1:
            grouped.append(f"'{names.get(module, type(module).__name__)}'")
        before = initial.get(module)
        # per channel group: a GroupNorm/grouped layer keeps `floor` channels in each group
        if before is not None and now // ch_groups <= floor < before // ch_groups:
            name = names.get(module, type(module).__name__)
            collapsed.append(f"'{name}' ({type(module).__name__}): {now} of {before} channels")
    shortfall = remaining - requested

    if warn and not initial_channels and ratio > 0:
        param_names = getattr(pruner.DG, "_param_to_name", {})
        unwrapped = sorted({param_names[p].rsplit(".", 1)[0]
                            for p, _ in getattr(pruner.DG, "unwrapped_parameters", None) or [] if p in param_names})
        warnings.warn(
            f"torch-pruning found nothing to prune for pruning_ratio={ratio:.3g}: every layer it can prune is in "
            "ignored_layers" + (f", and it cannot prune {', '.join(repr(n) for n in unwrapped)} (parameters outside "
                                "the layers it knows, e.g. nn.GRU)" if unwrapped else "")
            + "; the model is unchanged.",
            stacklevel=2,
        )

    if warn and shortfall > 0:
        if head_dims_kept:
            cause = (
                f"with prune_head_dims=False the {head_dims_kept} head dims of the attention layers count in "
                "torch-pruning's global ranking, but only whole heads are removed (head_pruning_ratio), so "
                "fewer channels go than pruning_ratio asks. Expected with that setting; for the exact count "
                "pass prune_head_dims=True, or leave the attention layers out with ignored_layers."
            )
        elif round_to > 1 and grouped:
            cause = (
                f"round_to={round_to} and channel groups (GroupNorm, grouped convs, num_heads) do not mix "
                f"in torch-pruning 1.6: for the groups of {', '.join(grouped)} it rounds the whole layer's "
                "width but then removes that many channels from every channel group, so a removal there "
                "often takes the whole layer, which it then refuses and skips; no min_channels prevents "
                "it. Leave round_to out, or put those layers in ignored_layers."
            )
        elif round_to > 1 and protected < round_to:
            cause = (
                f"round_to={round_to} rounds the channels each group keeps down to a multiple of {round_to}, "
                f"so a group left with fewer than {round_to} (here: its {protected} protected channel(s), "
                f"min_channels={protected}) rounds to 0 and torch-pruning skips it whole. Pass "
                f"min_channels={round_to} (a multiple of round_to) to the importance, e.g. "
                f"{type(importance).__name__ if isinstance(importance, PaIImportance) else 'SynFlowImportance'}"
                f"(min_channels={round_to}), so the protection survives the rounding."
            )
        else:
            cause = (
                "it skipped every group whose channels all fell below the global threshold. Use an "
                "importance that protects a few channels per group (the importances of "
                "synflow_plugin.torch_pruning do, min_channels=1), and ask for no more than the groups "
                "can give while keeping them (a lower pruning_ratio or max_pruning_ratio, or more "
                "iterative_steps)."
            )
        warnings.warn(
            f"torch-pruning kept {remaining} channels where pruning_ratio={ratio:.3g} asks for "
            f"{requested} (step {step} of {pruner.iterative_steps}): {cause}",
            stacklevel=2,
        )
    if warn and collapsed:
        keeper = (f"only the importance's protection (min_channels={protected}) kept"
                  if protected else "torch-pruning's refusal to empty a layer kept")
        warnings.warn(
            f"layer collapse after step {step} of {pruner.iterative_steps} (pruning_ratio={ratio:.3g}): "
            f"{'; '.join(collapsed)}. The global ranking wanted these layers gone; {keeper} them alive, "
            "and every path through each now runs through its remaining channel(s). Prune in more "
            "iterative_steps (SynFlow's paper uses 100 rounds), lower pruning_ratio or set "
            "max_pruning_ratio, use a normalizer (e.g. normalizer='mean'), or leave the layer out "
            "with ignored_layers.",
            LayerCollapseWarning,
            stacklevel=2,
        )
    return PruneCheck(shortfall, collapsed)
