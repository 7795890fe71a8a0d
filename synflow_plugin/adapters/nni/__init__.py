r"""The criteria as NNI 3.0 pruners.

A drop-in beside NNI's own pruners: swap ``L1NormPruner(model, config_list)`` for
``SynFlowPruner(model, config_list, dummy_input=x)`` and the rest of an NNI script
stays as it is::

    from synflow_plugin.nni import SynFlowPruner

    config_list = [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.99, "global_group_id": 0}]
    pruner = SynFlowPruner(model, config_list, dummy_input=torch.randn(1, 3, 32, 32))
    _, masks = pruner.compress()   # {module_name: {"weight": mask, "bias": mask_or_None}}
    pruner.unwrap_model()

How it fits NNI. The pruners subclass NNI's ``Pruner``, so parsing the config_list,
wrapping the model, ``update_masks``, ``get_masks``, ``unwrap_model`` and
``from_compressor`` are NNI's own. What changes is where the masks come from: NNI's
``_collect_data -> _calculate_metrics -> _generate_sparsity`` computes one metric and
thresholds it once, while pruning at initialisation re-scores the network between
rounds (SynFlow: 100). So :meth:`PaIPruner.generate_masks` translates the config_list
into the core's :class:`~synflow_plugin.plan.Plan` (:mod:`.config`) and runs the
core's one pruning loop, :func:`synflow_plugin.masking.run_plan`, on a private,
unwrapped copy of the model (:mod:`.evaluator`); all groups thin together, round after
round, each on its own schedule. An element-wise ``global_group_id`` group (or
layer-wise ratios) is ranked by the same compiled kernels as the
``torch.nn.utils.prune`` adapter, so their masks are equal element for element.

The package is split as NNI splits its own code: :mod:`.pruners` (the classes and
:func:`get_pruner`), :mod:`.config` (config_list to plan), :mod:`.evaluator` (batches
from NNI's evaluator, the plain copy), :mod:`.speedup` (masks to a smaller model).

Rankings are exact and vectorised: counts are those asked for, ties go to the earlier
weight. (NNI's own global ranking pushes every element through a Python heap: 6.5 s
of CPU for the 2.3M weights of a half-width VGG-11-BN, against 0.1 s here, and it kept
2331 weights where 2330 were asked for.)

Config keys, as NNI defines them:

* ``op_types``, ``op_names``, ``op_names_re``, ``exclude_op_names``,
  ``exclude_op_types``, ``exclude_op_names_re``, ``target_names``,
  ``target_settings``, ``apply_method``: NNI's own code handles them.
* ``sparse_ratio``: the fraction of a tensor's elements (of a global group's elements,
  or of a dependency group's shared channels) that is masked, rounded as
  ``torch.nn.utils.prune`` rounds (NNI's own pruners truncate, so where the count is
  not whole they may mask one weight fewer). Masks are computed from the unmasked
  weights, as NNI's pruners do: a second ``compress()`` replaces, not stacks.
* ``global_group_id``: one ranking over the group; every member needs the same
  ``sparse_ratio``. With ``out_channel`` members, channels are masked lowest score
  first while the masked elements stay within the group's budget (as NNI counts them).
* ``max_sparse_ratio`` / ``min_sparse_ratio``: per-tensor bounds, kept exactly, also
  inside a global group and in every round (NNI itself only applies them when the
  group's ratio is out of reach). Where the bounds and the ratio conflict, the bounds
  win, as in NNI.
* ``sparse_threshold``: units whose score (one round, on the unpruned network) is below
  it are masked, then the min/max bounds apply, as NNI does.
* ``dependency_group_id`` (with ``internal_metric_block``): the members' channel
  scores are averaged and one mask is shared by all, per block.
* ``granularity``: ``None`` (element-wise, the default, as LevelPruner: the criteria
  score single weights) or ``"out_channel"`` (a channel's score is the sum of its
  weights' scores, i.e. their L1 norm for the non-negative criteria). NNI's
  L1NormPruner defaults to ``out_channel``: a config_list written for it without a
  ``granularity`` gets element-wise masks here, so add ``"granularity":
  "out_channel"`` to keep channel masks. ``in_channel``, ``per_channel`` and block
  kernels are rejected.

Transposed convolutions (``ConvTranspose1d/2d/3d``, weight ``(in, out / groups,
*kernel)``) are pruned element-wise, and their bias follows their output channels
(NNI aligns a bias with dim 0, their input channels, and fails or misaligns);
``"granularity": "out_channel"`` on them is refused. A dependency group made by
``auto_set_denpendency_group_ids`` from a config without ``granularity`` is refused
with the fix (``"granularity": "out_channel"``) when its tensors differ in shape.

NNI's scheduled pruners (``AGPPruner``, ``LinearPruner``) raise the sparsity step by
step during training; these pruners prune once, at initialisation, so binding one
to a scheduler raises :class:`~synflow_plugin.errors.PruningError` (prune, then
train; or schedule NNI's own pruners). Arguments of NNI's training-aware pruners
(``training_steps``: use ``num_batches``; ``regular_scale``, ``warmup_step``, ...)
are refused with what to pass instead.

Anything that cannot be honoured raises :class:`~synflow_plugin.errors.PruningError`
naming the key, never a silent fallback.

A module registered under several names (``model.b = model.a``, a block used twice)
is one set of weights, and NNI cannot wrap it twice (its own pruners stop with a bare
``AssertionError``). Here it is wrapped and pruned once, under the first of its
selected names in ``model.named_modules()`` order (or the name another compressor's
wrapper already uses), and a ``UserWarning`` names the names dropped. Its mask acts on
every use of the module and is returned under that one name, because NNI's own
``update_masks`` and ``ModelSpeedup`` know no second name; this pruner's
``update_masks`` and :func:`synflow_plugin.export.make_permanent` /
``apply_masks`` accept any of its names.

Data-driven pruners (SNIP, GraSP, IterSNIP, FORCE) take NNI's ``evaluator`` (a
``TorchEvaluator``, as NNI's TaylorPruner) and read their ``(inputs, targets)``
batches from it: the evaluator's training function runs until ``num_batches``
batches have passed through ``training_step``, then stops; every parameter, gradient,
buffer and train/eval flag of the model is put back exactly afterwards, and the
optimizers the evaluator builds for that run are thrown away.

From ``out_channel`` masks to a physically smaller model: NNI's ``ModelSpeedup``
fails on torch 2.13 inside its ``concrete_trace``; :func:`speedup_model` runs it on a
``torch.fx.symbolic_trace`` graph instead, after masking the BatchNorm channels that
follow removed channels, so the small model computes what the masked model computes.
"""

from __future__ import annotations

from synflow_plugin.adapters.nni.config import CONFIG_KEYS, GRANULARITIES
from synflow_plugin.adapters.nni.pruners import (
    EvaluatorTraining,
    FORCEPruner,
    GemMinerPruner,
    GraSPPruner,
    IMPPruner,
    IterSNIPPruner,
    MagnitudePruner,
    PaIPruner,
    RandomPruner,
    SNIPPruner,
    SynFlowPruner,
    get_pruner,
)
from synflow_plugin.adapters.nni.speedup import complete_masks, speedup_model

__all__ = [
    # pruners
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
    # from masks to a model
    "complete_masks",
    "speedup_model",
    # what the config_list may hold
    "CONFIG_KEYS",
    "GRANULARITIES",
]
