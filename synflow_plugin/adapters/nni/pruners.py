"""The criteria as NNI 3.0 pruners: :class:`PaIPruner` and one subclass per criterion."""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Mapping

import torch
from torch import nn

from nni.compression.base.compressor import Pruner
from nni.compression.base.target_space import PruningTargetSpace, TargetType
from nni.compression.base.wrapper import ModuleWrapper
from nni.compression.pruning.tools.sparse_gen import _expand_masks, _generate_align_sparsity
from nni.compression.utils.evaluator import Evaluator
from schema import SchemaError

from synflow_plugin.adapters.nni.config import build_plan, check_config_list, merge_aliases, refuse_tied_targets
from synflow_plugin.adapters.nni.evaluator import collect_batches, plain_copy
from synflow_plugin.adapters.nni.speedup import _CONV_TRANSPOSE, _check_mask_format, _live_output_channels
from synflow_plugin.criteria import get_criterion
from synflow_plugin.errors import PruningError, PruningTypeError
from synflow_plugin.masking import run_plan
from synflow_plugin.session import ScoringRequest, ScoringSession

#: NNI's default ``align`` of a bias: follow dim 0 of the module's weight.
_NNI_BIAS_ALIGN = {"module_name": None, "target_name": "weight", "dims": [0]}

#: Arguments of NNI's own (training-aware) pruners, and why these pruners take none of them.
_NNI_ONLY_ARGUMENTS = {
    "training_steps": "TaylorPruner's / SlimPruner's number of training steps",
    "regular_scale": "SlimPruner's / MovementPruner's sparsity regulariser, applied while training",
    "warmup_step": "MovementPruner's fine-tuning schedule",
    "cooldown_begin_step": "MovementPruner's fine-tuning schedule",
    "interval_steps": "the step interval of NNI's scheduled pruners (AGPPruner, LinearPruner)",
    "total_times": "the number of mask updates of NNI's scheduled pruners (AGPPruner, LinearPruner)",
    "mode": "NNI 2.x's L1NormPruner(mode='dependency_aware')",
}

__all__ = [
    "PaIPruner",
    "RandomPruner",
    "MagnitudePruner",
    "SNIPPruner",
    "GraSPPruner",
    "SynFlowPruner",
    "IterSNIPPruner",
    "FORCEPruner",
    "GemMinerPruner",
    "IMPPruner",
    "EvaluatorTraining",
    "get_pruner",
]


class PaIPruner(Pruner):
    """Base of the pruning-at-initialisation NNI pruners; subclasses name a criterion.

    Args:
        model: the model to prune; NNI wraps its selected modules (undo with
            :meth:`unwrap_model`).
        config_list: NNI's config list (see the module docstring for each key).
        evaluator: an NNI ``Evaluator`` (``TorchEvaluator``) whose ``training_step``
            batches feed the data-driven criteria; data-free pruners accept it (NNI's
            ``from_compressor`` passes one) and SynFlow takes its dummy input from it.
        dummy_input: an input the model accepts (SynFlow uses only its shape).
        num_batches: batches read from ``evaluator`` for data-driven criteria.
        loss_fn: ``loss_fn(logits, targets)`` for data-driven criteria; cross-entropy by default.
        iterations: pruning rounds; default: the criterion's (SynFlow 100, IterSNIP 10, ...).
        schedule: ``"exponential"`` (the paper) or ``"linear"``.
        progress: a tqdm bar over the rounds (default: on a terminal only).
        existed_wrappers: NNI's ``from_compressor`` passes the wrappers of another compressor.
        **options: the criterion's options (``seed=``, ``batchnorm=``, ``temperature=``).

    Raises:
        PruningError: a config key or argument that cannot be honoured, with what to use.
    """

    criterion: ClassVar[str]

    def __new__(cls, *args: Any, **kwargs: Any) -> "PaIPruner":
        # Checked here, before the subclasses' own signatures turn a swapped-in NNI
        # argument into a bare TypeError that does not say what to pass instead.
        foreign = [key for key in kwargs if key in _NNI_ONLY_ARGUMENTS]
        if foreign:
            raise PruningError(_nni_argument_message(cls, foreign[0], kwargs[foreign[0]]))
        return super().__new__(cls)

    def __init__(
        self,
        model: nn.Module,
        config_list: list[dict],
        evaluator: Evaluator | None = None,
        *,
        dummy_input: Any = None,
        num_batches: int = 1,
        loss_fn: Callable | None = None,
        iterations: int | None = None,
        schedule: str = "exponential",
        progress: bool | None = None,
        existed_wrappers: dict[str, ModuleWrapper] | None = None,
        process_group: Any = None,
        **options: Any,
    ) -> None:
        caller = type(self).__name__
        if not isinstance(getattr(type(self), "criterion", None), str):
            raise PruningTypeError(
                f"{caller} names no criterion; use SynFlowPruner, SNIPPruner, ... or subclass it with "
                "criterion = '<registry name>'."
            )
        if not isinstance(model, nn.Module):
            raise PruningTypeError(f"{caller}: model should be a torch.nn.Module, got {type(model).__name__}")
        if evaluator is not None and not isinstance(evaluator, Evaluator):
            raise PruningTypeError(
                f"{caller}: evaluator should be an NNI Evaluator such as nni.compression.TorchEvaluator, "
                f"got {type(evaluator).__name__}"
            )
        criterion = get_criterion(self.criterion, **options)  # bad options fail before any work
        if criterion.needs_data and evaluator is None:
            raise PruningError(
                f"{caller}: {criterion.name} is data-driven: pass evaluator=TorchEvaluator(training_func, "
                "optimizers, training_step) whose training_step receives (inputs, targets) batches, as for "
                "NNI's TaylorPruner."
            )
        if criterion.needs_example_inputs and dummy_input is None:
            dummy_input = evaluator.get_dummy_input() if evaluator is not None else None
            if dummy_input is None:
                raise PruningError(
                    f"{caller}: {criterion.name} needs dummy_input=<a tensor shaped like one input batch, e.g. "
                    "torch.randn(1, 3, 32, 32)>; it runs the model on an input of that shape."
                )
        if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
            raise PruningError(f"{caller}: num_batches={num_batches!r} should be a positive int")
        self._request = ScoringRequest.build(
            criterion, example_inputs=dummy_input, loss_fn=loss_fn, iterations=iterations, schedule=schedule,
            progress=progress, caller=caller, data_later=True, process_group=process_group)
        if existed_wrappers is None:
            wrapped = [name or "the model" for name, m in model.named_modules() if hasattr(m, "_nni_wrapper")]
            if wrapped:
                raise PruningError(
                    f"{caller}: the model is already wrapped by another NNI compressor ({', '.join(wrapped[:3])}"
                    f"{', ...' if len(wrapped) > 3 else ''}); call its unwrap_model() first, or build this "
                    f"pruner with {caller}.from_compressor(other, config_list, ...)."
                )
        check_config_list(model, config_list, caller)
        config_list = merge_aliases(model, config_list, existed_wrappers, caller)
        refuse_tied_targets(model, config_list, caller)

        self.dummy_input = dummy_input
        self.num_batches = num_batches
        self._compressed = False
        super().__init__(model, config_list, evaluator, existed_wrappers)
        try:
            self._tensors, self._plan = build_plan(self.bound_model, self._target_spaces, caller)
        except BaseException:
            self.unwrap_model()  # leave the model as it came
            raise

    # ---- NNI's scheduled pruners
    @property
    def interval_steps(self) -> int:
        """Not available: raises :class:`PruningError`. NNI's scheduled pruners
        (``AGPPruner``, ``LinearPruner``) read it from the pruner they drive; these
        pruners prune once, at initialisation, and take no schedule over training."""
        raise PruningError(_scheduled_message(type(self).__name__))

    @interval_steps.setter
    def interval_steps(self, value: int) -> None:
        raise PruningError(_scheduled_message(type(self).__name__))

    @property
    def total_times(self) -> int:
        """Not available: raises :class:`PruningError` (see :attr:`interval_steps`)."""
        raise PruningError(_scheduled_message(type(self).__name__))

    @total_times.setter
    def total_times(self, value: int) -> None:
        raise PruningError(_scheduled_message(type(self).__name__))

    # ---- NNI hooks
    def _validate_config(self) -> None:
        try:
            super()._validate_config()
        except SchemaError as exc:
            raise PruningError(f"{type(self).__name__}: config_list does not follow NNI's schema: {exc}") from None

    def _set_default_sparse_granularity(self, target_space: PruningTargetSpace) -> list[int] | str | None:
        # Element-wise by default, as NNI's LevelPruner: the criteria score single weights.
        if target_space.type is TargetType.PARAMETER:
            return None
        return super()._set_default_sparse_granularity(target_space)

    def _collect_data(self) -> list[tuple[Any, Any]] | None:
        """The ``(inputs, targets)`` batches the evaluator's ``training_step`` sees first
        (``None`` for data-free criteria). The model is put back exactly afterwards."""
        if not self._request.criterion.needs_data:
            return None
        return collect_batches(self.evaluator, self.bound_model,
                               self._get_param_names_map() if self._is_wrapped else None,
                               self.num_batches, type(self).__name__)

    def _calculate_metrics(self, data: list | None) -> dict[str, dict[str, torch.Tensor]]:
        """NNI's metrics: one round of the criterion's scores on the unpruned network, per
        element, or per channel (the sum over the channel, shaped ``[out, 1, ...]`` as
        NNI's) for ``out_channel`` tensors. The masks come from :meth:`generate_masks`,
        which re-scores between rounds."""
        scores = self._scores(data)
        metrics: dict[str, dict[str, torch.Tensor]] = {}
        for tensor in self._tensors:
            score = scores[tensor.module_name][tensor.name]
            if tensor.units != tensor.numel:
                score = score.reshape(tensor.units, -1).sum(dim=1).reshape(
                    (tensor.units,) + (1,) * (len(tensor.shape) - 1))
            metrics.setdefault(tensor.module_name, {})[tensor.name] = score
        return metrics

    def generate_masks(self) -> dict[str, dict[str, torch.Tensor]]:
        """Masks for every configured tensor in NNI's format, from the iterative loop.

        Returns:
            ``{module_name: {target_name: mask}}``, float masks shaped like the targets
            (biases and other ``align`` targets follow their weight, as in NNI).
        """
        masks: dict[str, dict[str, torch.Tensor]] = {}
        for tensor, mask in zip(self._tensors, self._masks(self._collect_data())):
            target = self._target_spaces[tensor.module_name][tensor.name].target
            masks.setdefault(tensor.module_name, {})[tensor.name] = mask.to(target.dtype).contiguous()
        aligned = {}
        for module_name, spaces in self._target_spaces.items():
            for target_name, space in spaces.items():
                if (space.sparse_ratio is None and space.sparse_threshold is None and space.align is not None
                        and space.target is not None
                        and (space.align["module_name"] or module_name) in masks
                        and space.align["target_name"] in masks[space.align["module_name"] or module_name]):
                    aligned.setdefault(module_name, {})[target_name] = space
        transposed = {}
        for module_name, spaces in aligned.items():
            for target_name, space in list(spaces.items()):
                module = space._wrapper.module
                if isinstance(module, _CONV_TRANSPOSE) and space.align == _NNI_BIAS_ALIGN:
                    # NNI aligns a bias with dim 0 of the weight, which for a transposed
                    # convolution holds its input channels: follow the output channels.
                    live = _live_output_channels(module, masks[module_name]["weight"])
                    transposed.setdefault(module_name, {})[target_name] = live.to(space.target.dtype)
                    del spaces[target_name]
        for module_name, module_masks in _expand_masks(_generate_align_sparsity(masks, aligned), aligned).items():
            for target_name, mask in module_masks.items():
                masks.setdefault(module_name, {})[target_name] = mask
        for module_name, module_masks in transposed.items():
            masks.setdefault(module_name, {}).update(module_masks)
        return masks

    def _single_compress(self, max_steps: int | None, max_epochs: int | None) -> None:
        if max_steps is not None or max_epochs is not None:
            raise PruningError(
                f"{type(self).__name__} prunes at initialisation and trains nothing: call compress() "
                f"without max_steps/max_epochs (got max_steps={max_steps}, max_epochs={max_epochs})."
            )
        self.update_masks(self.generate_masks())
        self._compressed = True

    def _fuse_preprocess(self, evaluator: Evaluator) -> None:
        # Fused with another compressor (from_compressor): prune before its training starts.
        if self._compressed:
            return
        if self._request.criterion.needs_data:
            raise PruningError(
                f"{type(self).__name__} reads batches through the evaluator, which the fused training "
                "holds: call compress() on it first, then build the other compressor with from_compressor()."
            )
        self.update_masks(self.generate_masks())
        self._compressed = True

    def _fuse_postprocess(self, evaluator: Evaluator) -> None:
        pass

    def update_masks(self, masks: Mapping[str, Mapping[str, torch.Tensor | None]]) -> None:
        """Install ``masks`` (``{module_name: {target_name: mask}}``) in the wrappers, as
        NNI's ``Pruner.update_masks``, after checking all of them: a module this pruner
        does not wrap is a :class:`PruningError` (NNI's own method would fail with a bare
        ``KeyError`` after installing the masks before it), and any name of a module
        registered under several names addresses that module's one wrapper.
        Targets that are not configured are ignored with NNI's warning.
        """
        caller = f"{type(self).__name__}.update_masks()"
        _check_mask_format(masks, caller)
        wrapper_of = {id(w.module): name for name, w in self._module_wrappers.items()}
        modules = dict(self.bound_model.named_modules(remove_duplicate=False))
        resolved: dict[str, dict[str, torch.Tensor | None]] = {}
        for module_name, per_target in masks.items():
            name = module_name if module_name in self._module_wrappers else wrapper_of.get(
                id(modules[module_name]) if module_name in modules else None)
            if name is None:
                raise PruningError(
                    f"{caller}: masks name module {module_name!r}, which this pruner does not wrap; it wraps "
                    f"{', '.join(repr(n) for n in sorted(self._module_wrappers)) or 'nothing'}. Masks must come from "
                    "this pruner's config_list."
                )
            for target_name, mask in per_target.items():
                if mask is not None and not isinstance(mask, torch.Tensor):
                    raise PruningTypeError(
                        f"{caller}: masks[{module_name!r}][{target_name!r}] should be a tensor or None, got "
                        f"{type(mask).__name__}"
                    )
                space = self._module_wrappers[name].pruning_target_spaces.get(target_name)
                target = getattr(space, "target", None)
                if mask is not None and isinstance(target, torch.Tensor):
                    try:
                        torch.broadcast_shapes(mask.shape, target.shape)
                    except RuntimeError as exc:
                        raise PruningError(
                            f"{caller}: masks[{module_name!r}][{target_name!r}] has shape {tuple(mask.shape)}, "
                            f"which does not fit '{name}.{target_name}' of shape {tuple(target.shape)}."
                        ) from exc
                resolved.setdefault(name, {})[target_name] = mask
        super().update_masks(resolved)

    def compress(self, max_steps: int | None = None, max_epochs: int | None = None):
        """Compute and install the masks.

        Returns:
            ``(model, masks)`` as NNI's pruners: the wrapped model (the masks applied in
            its forward) and ``{module_name: {"weight": mask, "bias": mask_or_None}}``.
        """
        if len(self.fused_compressors) > 1 and (self.evaluator is None or (max_steps is None and max_epochs is None)):
            raise PruningError(
                f"{type(self).__name__} is fused with {len(self.fused_compressors) - 1} other compressor(s) "
                "(from_compressor); NNI runs fused compressors together through the evaluator's training: "
                "pass evaluator=TorchEvaluator(...) and call compress(max_steps=..., max_epochs=...). Our "
                "pruners prune before that training starts."
            )
        return super().compress(max_steps, max_epochs)

    # ---- scoring
    def scores(self) -> dict[str, dict[str, torch.Tensor]]:
        """One round of the criterion's scores for every pruned tensor, per element, on
        the unpruned network (what :func:`synflow_plugin.compute_scores` gives)."""
        return self._scores(self._collect_data())

    def _session(self, data: list | None) -> ScoringSession:
        """A scoring session on a plain (unwrapped, unmasked) copy of the model."""
        plain = plain_copy(self.bound_model, self._module_wrappers)
        params = [(plain.get_submodule(t.module_name), t.name) for t in self._tensors]
        return ScoringSession(plain, params, self._request.with_data(data))

    def _scores(self, data: list | None) -> dict[str, dict[str, torch.Tensor]]:
        if not self._tensors:
            return {}
        with self._session(data) as session:
            scores = [s.detach() for s in session.ranked_scores()]
        out: dict[str, dict[str, torch.Tensor]] = {}
        for tensor, score in zip(self._tensors, scores):
            out.setdefault(tensor.module_name, {})[tensor.name] = score
        return out

    def _masks(self, data: list | None) -> list[torch.Tensor]:
        """One boolean mask per configured tensor, from the core's pruning loop."""
        if not self._tensors:
            return []
        return run_plan(self._session(data), self._plan)


def _scheduled_message(caller: str) -> str:
    return (
        f"{caller} cannot be driven by NNI's scheduled pruners (AGPPruner, LinearPruner): they raise the "
        "sparsity step by step while the model trains and re-run the bound pruner's criterion on the "
        f"trained weights, but {caller} prunes at initialisation, before any training, and already "
        "reaches its sparsity in rounds of its own (iterations=). Prune first with "
        f"{caller}(model, config_list, ...).compress(), then train the masked model (the wrapped model "
        "keeps the masks in its forward); for a schedule during training, bind NNI's own LevelPruner, "
        "L1NormPruner or TaylorPruner to AGPPruner."
    )


def _nni_argument_message(cls: type, key: str, value: Any) -> str:
    caller = cls.__name__
    criterion = getattr(cls, "criterion", None)
    needs_data = isinstance(criterion, str) and get_criterion(criterion).needs_data
    what = _NNI_ONLY_ARGUMENTS[key]
    if key == "training_steps" and needs_data:
        return (
            f"{caller}: training_steps={value!r} is {what}; {caller} does not train: it reads its "
            f"batches from the evaluator's training_step. Use num_batches={value!r} (the 4th positional "
            "argument, where TaylorPruner takes training_steps)."
        )
    if key == "training_steps":
        return (
            f"{caller}: training_steps={value!r} is {what}; {caller} is data-free and reads no batches: "
            "drop training_steps (or, to score with data, use SNIPPruner(..., num_batches=...))."
        )
    if key in ("interval_steps", "total_times"):
        return f"{caller}: {key}={value!r} is {what}. " + _scheduled_message(caller)
    if key == "mode":
        return (
            f"{caller}: mode={value!r} is {what}, gone in NNI 3.0. To prune coupled channels together, "
            "give the config_list dependency groups: config_list = nni.compression.utils."
            "auto_set_denpendency_group_ids(model, config_list, dummy_input), with "
            "\"granularity\": \"out_channel\" in the configs."
        )
    return (
        f"{caller}: {key}={value!r} is {what}; {caller} prunes at initialisation and trains nothing: drop "
        "it (the pruning rounds are set with iterations= and schedule=)."
    )


class RandomPruner(PaIPruner):
    """Random pruning: Gaussian scores (the paper's baseline); ``seed=`` makes the mask
    reproducible and equal to :class:`synflow_plugin.Random` with the same seed.

    >>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> _, masks = RandomPruner(model, [{"op_types": ["Linear"], "sparse_ratio": 0.5}], seed=0).compress()
    >>> int(masks["0"]["weight"].sum()), int(masks["2"]["weight"].sum())
    (32, 8)
    """

    criterion = "random"

    def __init__(self, model: nn.Module, config_list: list[dict], evaluator: Evaluator | None = None, *,
                 seed: int | None = None, progress: bool | None = None,
                 existed_wrappers: dict[str, ModuleWrapper] | None = None, process_group: Any = None) -> None:
        super().__init__(model, config_list, evaluator, seed=seed, progress=progress,
                         existed_wrappers=existed_wrappers, process_group=process_group)


class MagnitudePruner(PaIPruner):
    """Magnitude pruning at initialisation: keep the largest |θ| (per element, or the
    largest L1 norm per channel with ``granularity: 'out_channel'``, i.e. NNI's
    L1NormPruner ranking)."""

    criterion = "magnitude"

    def __init__(self, model: nn.Module, config_list: list[dict], evaluator: Evaluator | None = None, *,
                 progress: bool | None = None, existed_wrappers: dict[str, ModuleWrapper] | None = None,
                 process_group: Any = None) -> None:
        super().__init__(model, config_list, evaluator, progress=progress, existed_wrappers=existed_wrappers,
                         process_group=process_group)


class SynFlowPruner(PaIPruner):
    """SynFlow (Tanaka et al., 2020, https://arxiv.org/abs/2006.05467): iterative
    synaptic flow, data-free.

    Args:
        dummy_input: an input the model accepts (only its shape is used); taken from
            ``evaluator.get_dummy_input()`` when not given.
        iterations: rounds (default 100); ``schedule``: ``"exponential"`` or ``"linear"``.
        batchnorm: ``"eval"`` (the paper) or ``"identity"`` (see :class:`~synflow_plugin.criteria.SynFlowCriterion`).
        power: 1 (SynFlow) or 2 (SynFlow-L2, θ² everywhere).

    >>> model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    >>> config_list = [{"op_types": ["Linear"], "sparse_ratio": 0.9, "global_group_id": 0}]
    >>> pruner = SynFlowPruner(model, config_list, dummy_input=torch.randn(1, 16), iterations=10)
    >>> _, masks = pruner.compress()
    >>> sum(int(m["weight"].sum()) for m in masks.values())
    32
    """

    criterion = "synflow"

    def __init__(self, model: nn.Module, config_list: list[dict], dummy_input: Any = None, *,
                 iterations: int | None = None, schedule: str = "exponential", batchnorm: str = "eval", power: int = 1,
                 evaluator: Evaluator | None = None, progress: bool | None = None,
                 existed_wrappers: dict[str, ModuleWrapper] | None = None, process_group: Any = None) -> None:
        super().__init__(model, config_list, evaluator, dummy_input=dummy_input, iterations=iterations,
                         schedule=schedule, batchnorm=batchnorm, power=power, progress=progress,
                         existed_wrappers=existed_wrappers, process_group=process_group)


class _DataPruner(PaIPruner):
    def __init__(self, model: nn.Module, config_list: list[dict], evaluator: Evaluator | None = None,
                 num_batches: int = 1, *, loss_fn: Callable | None = None, iterations: int | None = None,
                 schedule: str = "exponential", progress: bool | None = None,
                 existed_wrappers: dict[str, ModuleWrapper] | None = None, **options: Any) -> None:
        super().__init__(model, config_list, evaluator, num_batches=num_batches, loss_fn=loss_fn,
                         iterations=iterations, schedule=schedule, progress=progress,
                         existed_wrappers=existed_wrappers, **options)


class SNIPPruner(_DataPruner):
    """SNIP (Lee et al., 2019, https://arxiv.org/abs/1810.02340): |θ ⊙ ∂L/∂θ| on the first
    ``num_batches`` batches of ``evaluator``'s training step; one shot.

    Args:
        evaluator: an NNI ``TorchEvaluator`` whose ``training_step(batch, model)`` gets
            ``batch = (inputs, targets)``.
        num_batches: batches read (default 1); ``loss_fn(logits, targets)``: cross-entropy by default.
    """

    criterion = "snip"


class GraSPPruner(_DataPruner):
    """GraSP (Wang et al., 2020, https://arxiv.org/abs/2002.07376): keeps the largest θ ⊙ Hg;
    batches from ``evaluator`` as :class:`SNIPPruner`; ``temperature=`` (default 200)."""

    criterion = "grasp"

    def __init__(self, model: nn.Module, config_list: list[dict], evaluator: Evaluator | None = None,
                 num_batches: int = 1, *, loss_fn: Callable | None = None, temperature: float = 200.0,
                 progress: bool | None = None, existed_wrappers: dict[str, ModuleWrapper] | None = None,
                 process_group: Any = None) -> None:
        super().__init__(model, config_list, evaluator, num_batches, loss_fn=loss_fn, temperature=temperature,
                         progress=progress, existed_wrappers=existed_wrappers, process_group=process_group)


class IterSNIPPruner(_DataPruner):
    """Iterative SNIP (de Jorge et al., 2021, https://arxiv.org/abs/2006.09081): SNIP
    re-scored over ``iterations`` rounds (default 10); batches from ``evaluator``."""

    criterion = "itersnip"

    def __init__(self, model: nn.Module, config_list: list[dict], evaluator: Evaluator | None = None,
                 num_batches: int = 1, *, loss_fn: Callable | None = None, iterations: int | None = None,
                 schedule: str = "exponential", progress: bool | None = None,
                 existed_wrappers: dict[str, ModuleWrapper] | None = None, process_group: Any = None) -> None:
        super().__init__(model, config_list, evaluator, num_batches, loss_fn=loss_fn, iterations=iterations,
                         schedule=schedule, progress=progress, existed_wrappers=existed_wrappers,
                         process_group=process_group)


class FORCEPruner(IterSNIPPruner):
    """FORCE (de Jorge et al., 2021): iterative SNIP in which weights pruned in an earlier
    round may come back; ``iterations`` rounds (default 10); batches from ``evaluator``."""

    criterion = "force"


class GemMinerPruner(_DataPruner):
    """GemMiner (Sreenivasan et al., NeurIPS 2022, https://arxiv.org/abs/2202.12002): scores
    trained with the weights frozen through the mask 1[s > 0.5], the lowest-scoring
    survivors flagged off every ``epochs`` epochs (see
    :class:`~synflow_plugin.criteria.GemMinerCriterion`).

    The scores train on the first ``num_batches`` batches of ``evaluator``'s training
    step, read once and held (one "epoch" is one pass over them): pass the number of
    batches of an epoch of your loader, e.g. ``num_batches=len(train_loader)``.

    Args:
        evaluator: an NNI ``TorchEvaluator`` whose ``training_step(batch, model)`` gets
            ``batch = (inputs, targets)``.
        num_batches: batches read (default 1).
        iterations: rounds (default 29); ``epochs``: epochs per round (default 5).
        **options: the criterion's options (``lr``, ``optimizer``, ``momentum``, ``lmbda``,
            ``lr_schedule``, ``threshold``, ``init``, ``batchnorm``, ``train_mode``, ``seed``).
    """

    criterion = "gemminer"


class EvaluatorTraining:
    """``train_fn(model)`` from an NNI evaluator: binds ``model`` (its optimizers and
    schedulers are built anew for it, from the evaluator's traced ones), runs the
    evaluator's training function for ``max_steps`` / ``max_epochs``, and unbinds it."""

    def __init__(self, evaluator: Evaluator, max_steps: int | None = None, max_epochs: int | None = None) -> None:
        for key, value in (("max_steps", max_steps), ("max_epochs", max_epochs)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise PruningError(f"IMPPruner: {key}={value!r} should be a positive int or None")
        self.evaluator, self.max_steps, self.max_epochs = evaluator, max_steps, max_epochs
        func = getattr(evaluator, "training_func", None)
        self.__qualname__ = f"(the evaluator's training_func {getattr(func, '__qualname__', type(func).__name__)})"

    def __call__(self, model: nn.Module) -> None:
        self.evaluator.bind_model(model, None)
        try:
            self.evaluator.train(max_steps=self.max_steps, max_epochs=self.max_epochs)
        finally:
            self.evaluator.unbind_model()


class IMPPruner(PaIPruner):
    """IMP, the lottery-ticket procedure with rewinding (Frankle & Carbin, ICLR 2019,
    https://arxiv.org/abs/1803.03635; Frankle et al. 2020): train, prune ``rate`` of the
    survivors by trained magnitude, rewind, for ``levels`` levels (see
    :class:`~synflow_plugin.criteria.IMPCriterion`).

    Each level trains a copy of the model with ``evaluator``'s training function (NNI's
    ``TorchEvaluator``: its optimizers are rebuilt for the copy, as NNI's movement and
    Taylor pruners train through it), for ``max_steps`` / ``max_epochs``; or with
    ``train_fn(model)`` when given. The pruned weights stay zero during that training.

    Args:
        evaluator: a ``TorchEvaluator`` whose ``training_func`` trains the model it is given.
        levels, rate, rewind_step: as for :class:`~synflow_plugin.criteria.IMPCriterion`.
        max_steps, max_epochs: passed to ``evaluator.train`` (None: the training function's own).
        train_fn: instead of the evaluator, a ``train_fn(model)`` that trains in place.

    With ``rewind_step > 0``, :attr:`rewound_state` holds the rewound weights (plain
    parameter names) after ``compress()``; the model's own weights are not changed.
    """

    criterion = "imp"

    def __init__(self, model: nn.Module, config_list: list[dict], evaluator: Evaluator | None = None, *,
                 levels: int | None = None, rate: float | None = None, rewind_step: int = 0,
                 max_steps: int | None = None, max_epochs: int | None = None,
                 train_fn: Callable[[nn.Module], Any] | None = None, progress: bool | None = None,
                 existed_wrappers: dict[str, ModuleWrapper] | None = None, process_group: Any = None) -> None:
        if train_fn is None:
            if evaluator is None:
                raise PruningError(
                    "IMPPruner trains the network at every level: pass evaluator=TorchEvaluator(training_func, "
                    "optimizers, training_step), whose training_func trains the model it is given, or "
                    "train_fn=<train_fn(model) that trains it in place>."
                )
            if not isinstance(evaluator, Evaluator):
                raise PruningTypeError(
                    f"IMPPruner: evaluator should be an NNI Evaluator such as nni.compression.TorchEvaluator, "
                    f"got {type(evaluator).__name__}"
                )
            train_fn = EvaluatorTraining(evaluator, max_steps, max_epochs)
        elif max_steps is not None or max_epochs is not None:
            raise PruningError("IMPPruner: max_steps/max_epochs go to the evaluator's training; with train_fn= "
                               "your function decides how long it trains: drop them.")
        super().__init__(model, config_list, evaluator, levels=levels, rate=rate, rewind_step=rewind_step,
                         train_fn=train_fn, progress=progress, existed_wrappers=existed_wrappers,
                         process_group=process_group)

    @property
    def rewound_state(self) -> dict[str, torch.Tensor] | None:
        """The weights after ``rewind_step`` optimizer steps of the first level (after
        ``compress()``, with ``rewind_step > 0``), keyed by plain parameter names."""
        return self._request.criterion.rewound_state

    @property
    def history(self) -> list[dict]:
        """Seconds and starting weights of each level of the last ``compress()``."""
        return self._request.criterion.history


_BUILT_IN: dict[str, type[PaIPruner]] = {}
_MADE: dict[str, type[PaIPruner]] = {}


def get_pruner(name: str) -> type[PaIPruner]:
    """The NNI pruner class of a registered criterion: the built-in one (``"synflow"``
    gives :class:`SynFlowPruner`), or, for any other criterion in the registry (a plugin
    or your own), a :class:`PaIPruner` subclass made once and reused.

    >>> get_pruner("synflow") is SynFlowPruner
    True
    """
    criterion = get_criterion(name)  # unknown names: the registry's error, listing the valid ones
    if not _BUILT_IN:
        _BUILT_IN.update({cls.criterion: cls for cls in (RandomPruner, MagnitudePruner, SNIPPruner, GraSPPruner,
                                                           SynFlowPruner, IterSNIPPruner, FORCEPruner,
                                                           GemMinerPruner, IMPPruner)})
    if criterion.name in _BUILT_IN:
        return _BUILT_IN[criterion.name]
    if criterion.name not in _MADE:
        title = "".join(part.capitalize() for part in criterion.name.replace("-", "_").split("_"))
        _MADE[criterion.name] = type(f"{title}Pruner", (PaIPruner,), {
            "criterion": criterion.name,
            "__doc__": f"NNI pruner of the registered criterion {criterion.name!r}: {criterion.summary}",
            "__module__": __name__,
        })
    return _MADE[criterion.name]
