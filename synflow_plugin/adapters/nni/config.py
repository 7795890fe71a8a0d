"""NNI's config_list, translated: which tensors are pruned, and the core plan that prunes them."""

from __future__ import annotations

import copy
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from nni.compression.base.config import (
    default_config_schema,
    select_modules_by_config,
    trans_legacy_config_list,
)
from nni.compression.base.setting import PruningSetting
from nni.compression.base.target_space import PruningTargetSpace, TargetType
from nni.compression.base.wrapper import ModuleWrapper
from schema import SchemaError

from synflow_plugin.errors import PruningError, PruningTypeError
from synflow_plugin.plan import Group, Member, Plan
from synflow_plugin.targets import tensor_uses

__all__ = ["CONFIG_KEYS", "GRANULARITIES", "NNITensor", "build_plan", "check_config_list", "merge_aliases"]

_SELECTION_KEYS = ("op_types", "op_names", "op_names_re", "exclude_op_names", "exclude_op_types",
                   "exclude_op_names_re")
_SETTING_KEYS = ("sparse_ratio", "sparse_threshold", "max_sparse_ratio", "min_sparse_ratio", "global_group_id",
                 "dependency_group_id", "internal_metric_block", "granularity", "apply_method", "align")
#: Every key an NNI 3.0 pruning config may hold (after NNI translates the legacy v2 keys).
CONFIG_KEYS: tuple[str, ...] = _SELECTION_KEYS + ("target_names", "target_settings") + _SETTING_KEYS
#: The granularities the pruners rank: ``None`` (element-wise) and ``"out_channel"``.
GRANULARITIES: tuple[str | None, ...] = (None, "out_channel")
_EPS = 1e-9


@dataclass(frozen=True)
class NNITensor:
    """A tensor NNI configures for pruning: where it lives and its units (elements or channels)."""

    module_name: str
    name: str
    shape: torch.Size
    units: int

    @property
    def label(self) -> str:
        return f"{self.module_name}.{self.name}"

    @property
    def numel(self) -> int:
        return self.shape.numel()


def _prune_bounds(space: PruningTargetSpace, units: int) -> tuple[int, int]:
    """Fewest and most units ``min_sparse_ratio`` / ``max_sparse_ratio`` allow to prune."""
    low = space.min_sparse_ratio or 0.0
    high = space.max_sparse_ratio if space.max_sparse_ratio is not None else 1.0
    return math.ceil(low * units - _EPS), math.floor(high * units + _EPS)


def _clamped_count(ratio: float, units: int, lo: int, hi: int) -> int:
    return min(hi, max(lo, round(ratio * units)))


def build_plan(model: nn.Module, target_spaces: Mapping[str, Mapping[str, PruningTargetSpace]],
               caller: str) -> tuple[list[NNITensor], Plan]:
    """The tensors NNI's target spaces configure, and the core :class:`~synflow_plugin.plan.Plan`
    that prunes them as the config_list says (every key checked; see the package docstring)."""
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    entries = sorted(
        ((module_name, target_name, space) for module_name, spaces in target_spaces.items()
         for target_name, space in spaces.items()),
        key=lambda e: order.get(e[0], len(order)),
    )
    tensors: list[NNITensor] = []
    plan = Plan([])
    global_groups: dict[Any, list] = {}
    dependency_groups: dict[Any, list] = {}
    for module_name, target_name, space in entries:
        label = f"'{module_name}.{target_name}'"
        active = space.sparse_ratio is not None or space.sparse_threshold is not None
        if not active:
            for key in ("global_group_id", "dependency_group_id"):
                if getattr(space, key) is not None:
                    raise PruningError(
                        f"{caller}: {label} has {key}={getattr(space, key)!r} but no sparse_ratio; give "
                        "every config of the group the same sparse_ratio."
                    )
            continue
        if space.type is not TargetType.PARAMETER:
            raise PruningError(
                f"{caller}: {label} is a module input/output; the criteria score parameters only. "
                "Use target_names=['weight'] (or 'bias')."
            )
        target = space.target
        if target is None:
            continue  # e.g. a bias=False layer configured with target_names=['bias']
        module = space._wrapper.module
        if f"{target_name}_orig" in module._parameters:
            raise PruningError(
                f"{caller}: {label} carries a torch.nn.utils.prune mask; NNI cannot wrap it. Call "
                f"torch.nn.utils.prune.remove(model.get_submodule({module_name!r}), {target_name!r}) first."
            )
        if not target.is_floating_point():
            raise PruningError(
                f"{caller}: {label} has dtype {target.dtype}; only floating-point tensors are pruned."
            )
        if space.granularity not in GRANULARITIES:
            raise PruningError(
                f"{caller}: {label} has granularity={space.granularity!r}; the criteria rank single "
                "weights (granularity None, the default) or output channels ('out_channel'). For "
                "input channels or blocks use NNI's own pruners."
            )
        if space.align is not None:
            raise PruningError(
                f"{caller}: {label} has both align and a sparsity setting; align is for targets without "
                "sparse_ratio (NNI aligns biases with their weights). Drop one."
            )
        if space.internal_metric_block is not None and space.dependency_group_id is None:
            raise PruningError(
                f"{caller}: {label} has internal_metric_block={space.internal_metric_block!r} without a "
                "dependency_group_id; NNI only uses it inside a dependency group."
            )
        if space.global_group_id is not None and space.dependency_group_id is not None:
            raise PruningError(
                f"{caller}: {label} has both global_group_id and dependency_group_id; NNI ranks a "
                "dependency group on its own and would ignore global_group_id. Drop one."
            )
        if space.sparse_threshold is not None and (space.global_group_id is not None
                                                   or space.dependency_group_id is not None):
            raise PruningError(
                f"{caller}: {label} combines sparse_threshold with a group id; groups are pruned to a "
                "sparse_ratio. Use sparse_ratio, or drop the group id."
            )
        ratio = space.sparse_ratio
        for key in ("sparse_ratio", "min_sparse_ratio", "max_sparse_ratio"):
            value = getattr(space, key)
            if value is not None and not 0.0 <= value <= 1.0:
                raise PruningError(f"{caller}: {label} has {key}={value}; expected a float in [0, 1].")
        most = space.max_sparse_ratio if space.max_sparse_ratio is not None else 1.0
        if (space.min_sparse_ratio or 0.0) > most:
            raise PruningError(
                f"{caller}: {label} has min_sparse_ratio={space.min_sparse_ratio} > "
                f"max_sparse_ratio={space.max_sparse_ratio}."
            )
        shape = target.shape
        units = shape[0] if space.granularity == "out_channel" and len(shape) > 0 else shape.numel()
        index = len(tensors)
        tensors.append(NNITensor(module_name, target_name, shape, units))
        plan.units.append(units)
        lo, hi = _prune_bounds(space, units)
        if space.sparse_threshold is not None:
            member = Member((index,), 0, units, 1, lo, hi, threshold=float(space.sparse_threshold))
            plan.groups.append(Group(label, [member], 0))
        elif space.global_group_id is not None:
            global_groups.setdefault(space.global_group_id, []).append((index, space, lo, hi))
        elif space.dependency_group_id is not None:
            dependency_groups.setdefault(space.dependency_group_id, []).append((index, space))
        else:
            low = space.min_sparse_ratio or 0.0
            high = space.max_sparse_ratio if space.max_sparse_ratio is not None else 1.0
            count = _clamped_count(min(high, max(low, ratio)), units, lo, hi)
            # One tensor to an exact count: its bounds are in the count already.
            plan.groups.append(Group(label, [Member((index,), 0, units)], count))

    for group_id, members in global_groups.items():
        ratios = {space.sparse_ratio for _, space, _, _ in members}
        names = ", ".join(tensors[i].label for i, *_ in members)
        if len(ratios) > 1:
            raise PruningError(
                f"{caller}: global group {group_id!r} ({names}) has sparse_ratio values {sorted(ratios)}; "
                "a global group is ranked to one ratio: give all its configs the same sparse_ratio."
            )
        ratio = ratios.pop()
        group_members = []
        for index, _, lo, hi in members:
            tensor = tensors[index]
            group_members.append(Member((index,), 0, tensor.units, tensor.numel // tensor.units, lo, hi))
        group = Group(f"global group {group_id!r}", group_members, 0)
        # where the bounds and the ratio conflict, the bounds win (as in NNI)
        least = sum(m.lo * m.size for m in group_members)
        group.budget = min(max(round(ratio * group.cost), least), sum(m.hi * m.size for m in group_members))
        plan.groups.append(group)

    for group_id, members in dependency_groups.items():
        label = f"dependency group {group_id!r}"
        first = tensors[members[0][0]]
        ratios = {space.sparse_ratio for _, space in members}
        if len(ratios) > 1:
            raise PruningError(
                f"{caller}: {label} has sparse_ratio values {sorted(ratios)}; its members share one mask: "
                "give them the same sparse_ratio."
            )
        for index, _ in members:
            if tensors[index].units != first.units:
                raise PruningError(
                    f"{caller}: {label} shares one mask, but '{first.label}' has {first.units} units and "
                    f"'{tensors[index].label}' has {tensors[index].units} (granularity "
                    "'out_channel' ranks output channels); put tensors of equal shape in a group."
                )
        blocks = math.lcm(*[space.internal_metric_block or 1 for _, space in members])
        if first.units % blocks:
            raise PruningError(
                f"{caller}: {label} has {first.units} units, not divisible into internal_metric_block="
                f"{blocks} blocks."
            )
        ratio = ratios.pop()
        low = max(space.min_sparse_ratio or 0.0 for _, space in members)
        high = min(space.max_sparse_ratio if space.max_sparse_ratio is not None else 1.0 for _, space in members)
        per_block = first.units // blocks
        lo, hi = math.ceil(low * per_block - _EPS), math.floor(high * per_block + _EPS)
        count = _clamped_count(min(high, max(low, ratio)), per_block, lo, hi)
        tied = tuple(index for index, _ in members)
        group_members = [Member(tied, b * per_block, (b + 1) * per_block, 1, count, count)
                         for b in range(blocks)]
        plan.groups.append(Group(label, group_members, count * blocks))
    return tensors, plan


def merge_aliases(model: nn.Module, config_list: list[dict], existed_wrappers: Mapping[str, ModuleWrapper] | None,
                   caller: str) -> list[dict]:
    """``config_list`` with every module that is registered under several names (``model.b
    = model.a``, a block used twice) selected under one name only.

    NNI selects by name and wraps each selected name, and a module cannot be wrapped
    twice. The name kept is the one an existing wrapper uses (``from_compressor``), else
    the first of the selected names in ``model.named_modules()`` order. Configs that
    select no second name are returned unchanged; the others select the same modules by
    ``op_names``. Warns when a selected name is dropped: its mask is under the kept name.
    """
    names_of: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names_of.setdefault(id(module), []).append(name)
    if all(len(names) == 1 for names in names_of.values()):
        return config_list
    order = {name: i for i, (name, _) in enumerate(model.named_modules(remove_duplicate=False))}
    ident = {name: key for key, names in names_of.items() for name in names}
    configs = trans_legacy_config_list(copy.deepcopy(list(config_list)))
    selections = [select_modules_by_config(model, c)[0] if any(k in c for k in ("op_types", "op_names", "op_names_re"))
                  else {} for c in configs]
    chosen: dict[int, set[str]] = {}
    for selected in selections:
        for name in selected:
            chosen.setdefault(ident[name], set()).add(name)
    wrapper_names = {id(w.module): name for name, w in (existed_wrappers or {}).items()}
    home = {key: wrapper_names.get(key, min(names, key=order.__getitem__)) for key, names in chosen.items()
            if len(names) > 1 or wrapper_names.get(key, next(iter(names))) not in names}
    if not home:
        return config_list
    merged = []
    for config, selected in zip(configs, selections):
        if not any(ident[n] in home and home[ident[n]] != n for n in selected):
            merged.append(config)
            continue
        names = {home.get(ident[n], n) for n in selected}
        rewritten = {k: v for k, v in config.items() if k not in _SELECTION_KEYS}
        rewritten["op_names"] = sorted(names, key=order.__getitem__)
        merged.append(rewritten)
    pairs = sorted({(n, home[ident[n]]) for selected in selections for n in selected
                    if ident[n] in home and home[ident[n]] != n}, key=lambda p: order[p[0]])
    warnings.warn(
        f"{caller}: {', '.join(f'{a!r} is the same module as {b!r}' for a, b in pairs)}; each such module "
        "is pruned once and its mask is given under the second name (the mask acts wherever the module "
        "is used). Exclude the first name with exclude_op_names to silence this.",
        UserWarning,
        stacklevel=4,
    )
    return merged


def refuse_tied_targets(model: nn.Module, config_list: list[dict], caller: str) -> None:
    """Refuse a configuration that selects a tied weight (a parameter other modules hold
    too): NNI's wrappers copy each target (``TargetSpace._register_target``, and again
    on unwrap), so the uses would come apart for good, and each would get a mask of its
    own. NNI's own pruners do the same."""
    uses = tensor_uses(model)
    tied: dict[int, list[str]] = {}
    for config in trans_legacy_config_list(copy.deepcopy(list(config_list))):
        if not any(k in config for k in ("op_types", "op_names", "op_names_re")):
            continue
        for module in select_modules_by_config(model, config)[0].values():
            for target in config.get("target_names", ("weight", "bias")):
                tensor = module._parameters.get(target)
                if isinstance(tensor, nn.Parameter) and len(uses.get(id(tensor), ())) > 1:
                    tied[id(tensor)] = [label for label, _, _ in uses[id(tensor)]]
    if tied:
        sets = "; ".join(" and ".join(map(repr, names)) for names in tied.values())
        are = "are" if len(tied) == 1 else "are each"
        raise PruningError(
            f"{caller}: {sets} {are} one tensor (tied). NNI's wrappers copy each pruned weight, so the tied "
            "uses would come apart for good and get masks of their own (NNI's own pruners do the same). Exclude "
            "them (exclude_op_names), or prune with torch.nn.utils.prune, which masks every use of a tied weight "
            "alike: prune.global_unstructured(synflow_plugin.prunable_parameters(model), pruning_method=SynFlow, "
            "...). Nothing was wrapped."
        )


def check_config_list(model: nn.Module, config_list: Any, caller: str) -> None:
    """Reject, before NNI wraps anything, what NNI would silently ignore or fail on
    obscurely: unknown keys, configs that select no module, modules NNI has no pruning
    setting for, output-channel granularity on a transposed convolution, and dependency
    groups of element-wise tensors that cannot share a mask."""
    if not isinstance(config_list, (list, tuple)) or not config_list:
        raise PruningTypeError(
            f"{caller}: config_list should be a non-empty list of dicts, e.g. "
            "[{'op_types': ['Conv2d', 'Linear'], 'sparse_ratio': 0.9}], got "
            f"{config_list!r:.80}"
        )
    for i, config in enumerate(config_list):
        if not isinstance(config, dict):
            raise PruningTypeError(f"{caller}: config_list[{i}] should be a dict, got {type(config).__name__}")
    for i, config in enumerate(config_list):
        if "total_sparsity" in config:
            # NNI 3.0 translates it into a 'group_id' setting that its pruners do not define.
            raise PruningError(
                f"{caller}: config_list[{i}] uses NNI 2.x's total_sparsity={config['total_sparsity']!r}, which "
                "NNI 3.0 translates into an undefined 'group_id'; write it as 'sparse_ratio': "
                f"{config['total_sparsity']!r}, 'global_group_id': 0."
            )
        patterns = config.get("op_names_re")
        for j, pattern in enumerate(patterns if isinstance(patterns, (list, tuple)) else []):
            try:
                re.compile(pattern)
            except (re.error, TypeError) as exc:
                raise PruningError(
                    f"{caller}: config_list[{i}]['op_names_re'][{j}]={pattern!r} is not a regular expression "
                    f"({exc}); escape literal names with re.escape, or list them in op_names."
                ) from None
    last_config: dict[str, tuple[int, Mapping[str, Any], nn.Module]] = {}  # a later config overrides, as in NNI
    for i, config in enumerate(trans_legacy_config_list(copy.deepcopy(list(config_list)))):
        unknown = sorted(set(config) - set(CONFIG_KEYS))
        if unknown:
            raise PruningError(
                f"{caller}: config_list[{i}] has key(s) {unknown} that NNI's pruning config does not define "
                f"(or NNI translates only when the first config uses legacy keys); valid keys: "
                f"{', '.join(CONFIG_KEYS)}."
            )
        for target_name, setting in (config.get("target_settings") or {}).items():
            unknown = sorted(set(setting) - set(_SETTING_KEYS)) if isinstance(setting, dict) else []
            if unknown:
                raise PruningError(
                    f"{caller}: config_list[{i}]['target_settings'][{target_name!r}] has key(s) {unknown}; "
                    f"valid keys: {', '.join(_SETTING_KEYS)}."
                )
        for target_name in config.get("target_names") or []:
            if str(target_name).startswith(("_input_", "_output_")):
                raise PruningError(
                    f"{caller}: config_list[{i}] has target_names={config['target_names']!r}; the criteria "
                    "score parameters, not module inputs/outputs: use target_names=['weight'] (or 'bias')."
                )
            if target_name not in ("weight", "bias") and target_name not in (config.get("target_settings") or {}):
                raise PruningError(
                    f"{caller}: config_list[{i}] names target {target_name!r}, for which NNI has no pruning "
                    f"setting; give one in target_settings={{{target_name!r}: {{'sparse_ratio': ...}}}}."
                )
        granularities = [("", config.get("granularity", "default"))] + [
            (f"['target_settings'][{t!r}]", v.get("granularity", "default"))
            for t, v in (config.get("target_settings") or {}).items() if isinstance(v, dict)]
        for where, granularity in granularities:
            if isinstance(granularity, str) and granularity not in ("default", "out_channel"):
                # NNI asserts on 'per_channel' (module outputs only) deep in its wrapping
                raise PruningError(
                    f"{caller}: config_list[{i}]{where} has granularity={granularity!r}; the criteria rank "
                    "single weights (no granularity, the default) or output channels ('out_channel'). For "
                    "input channels use NNI's own pruners."
                )
        if "sparse_ratio" in config and "sparse_threshold" in config:
            raise PruningError(f"{caller}: config_list[{i}] sets both sparse_ratio and sparse_threshold; keep one.")
        try:
            default_config_schema("pruning").validate(config)
        except SchemaError as exc:
            raise PruningError(f"{caller}: config_list[{i}] does not follow NNI's config schema: {exc}") from None
        if not any(k in config for k in ("op_types", "op_names", "op_names_re")):
            continue  # NNI's schema reports it
        selected, _, _ = select_modules_by_config(model, config)
        asks = any(k in config for k in ("sparse_ratio", "sparse_threshold")) or any(
            isinstance(v, dict) and ("sparse_ratio" in v or "sparse_threshold" in v)
            for v in (config.get("target_settings") or {}).values())
        if not selected and asks:  # (a translated legacy 'exclude' config selects nothing and asks nothing)
            types = sorted({type(m).__name__ for m in model.modules()})
            raise PruningError(
                f"{caller}: config_list[{i}] selects no module of the model "
                f"({', '.join(f'{k}={config[k]!r}' for k in _SELECTION_KEYS if k in config)}); "
                f"its module types are {', '.join(types)}."
            )
        unregistered = sorted(f"'{name}' ({type(m).__name__})" for name, m in selected.items()
                              if type(m).__name__ not in PruningSetting.registry)
        if unregistered:
            raise PruningError(
                f"{caller}: config_list[{i}] selects {', '.join(unregistered)}, which NNI cannot prune; select "
                f"layers of the types {', '.join(sorted(PruningSetting.registry))}, e.g. op_types=['Conv2d', "
                "'Linear']."
            )
        granularity = _weight_setting(config, "granularity")
        transposed = sorted(f"'{name}'" for name, m in selected.items() if isinstance(m, _CONV_TRANSPOSE))
        if transposed and asks and granularity not in (None, "default"):
            raise PruningError(
                f"{caller}: config_list[{i}] selects the transposed convolution(s) {', '.join(transposed)} with "
                f"granularity={granularity!r}; NNI reads dim 0 of a weight as its output channels, but a "
                "transposed convolution stores (in_channels, out_channels / groups, *kernel), so NNI would "
                "mask input channels and misalign the bias. Prune it element-wise (drop granularity), or "
                "exclude it from this config (exclude_op_types=['ConvTranspose2d'])."
            )
        for name, module in selected.items():
            last_config[name] = (i, config, module)
    _check_dependency_groups(last_config, caller)


_CONV_TRANSPOSE = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _weight_setting(config: Mapping[str, Any], key: str) -> Any:
    """The ``key`` setting a config gives its modules' weights: ``target_settings['weight']``
    overrides the config's own value, as in NNI."""
    weight = (config.get("target_settings") or {}).get("weight")
    if isinstance(weight, dict) and key in weight:
        return weight[key]
    return config.get(key)


def _check_dependency_groups(last_config: Mapping[str, tuple[int, Mapping[str, Any], nn.Module]],
                             caller: str) -> None:
    """Refuse, before NNI wraps anything, a dependency group whose weights cannot share
    one mask because some of them are ranked element-wise.

    ``nni.compression.utils.auto_set_denpendency_group_ids`` ties layers of different
    shapes (a residual net's convolutions that feed one sum), to share an output-channel
    mask. NNI's L1NormPruner ranks output channels by default, these pruners rank single
    weights (as LevelPruner): a config written for L1NormPruner needs
    ``"granularity": "out_channel"`` here.
    """
    groups: dict[Any, list[tuple[str, int, Any, int]]] = {}
    for name, (index, config, module) in last_config.items():
        group_id = _weight_setting(config, "dependency_group_id")
        weight = getattr(module, "weight", None)
        if group_id is None or not isinstance(weight, torch.Tensor) or weight.dim() == 0:
            continue
        granularity = _weight_setting(config, "granularity")
        units = weight.shape[0] if granularity == "out_channel" else weight.numel()
        groups.setdefault(group_id, []).append((name, index, granularity, units))
    for group_id, members in groups.items():
        element_wise = [m for m in members if m[2] in (None, "default")]
        if not element_wise or len({m[3] for m in members}) == 1:
            continue  # equal units share a mask; out_channel mismatches are build_plan's to report
        name, index, _, units = element_wise[0]
        other = next(m for m in members if m[3] != units)
        configs = sorted({m[1] for m in element_wise})
        shown = ", ".join(f"config_list[{k}]" for k in configs[:4]) + (", ..." if len(configs) > 4 else "")
        raise PruningError(
            f"{caller}: config_list[{index}] ('{name}.weight', {units} units) and config_list[{other[1]}] "
            f"('{other[0]}.weight', {other[3]} units) share dependency_group_id={group_id!r}, but {shown} "
            "set no granularity, so they are ranked element-wise (these pruners' default, as NNI's "
            "LevelPruner; NNI's L1NormPruner defaults to output channels), and a dependency group shares "
            "one mask. Add \"granularity\": \"out_channel\" to those configs (or to the config_list you "
            "passed to auto_set_denpendency_group_ids) to share one output-channel mask."
        )
