"""The NNI 3.0 pruners: agreement with the core and the torch.prune adapter, every config
key, the evaluator's batches leaving the model as it was, and the way to a smaller model.

Tiny models (VGG-11-BN at 1/8 width on 16x16 inputs) and few rounds keep the file fast.
"""

from __future__ import annotations

import copy
import itertools
import logging
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.prune as prune
from torch import nn

nni = pytest.importorskip("nni")
from nni.compression import TorchEvaluator  # noqa: E402
from nni.compression.pruning import L1NormPruner, LevelPruner  # noqa: E402

from synflow_plugin import (  # noqa: E402
    FORCE,
    SNIP,
    GraSP,
    IterSNIP,
    Magnitude,
    PruningError,
    Random,
    SynFlow,
    compute_masks,
    compute_scores,
    prunable_parameters,
)
from synflow_plugin.export import apply_masks, make_permanent  # noqa: E402
from synflow_plugin import masking  # noqa: E402
from synflow_plugin.masking import drop_smallest  # noqa: E402
from synflow_plugin.models import create_model  # noqa: E402
from synflow_plugin.nni import (  # noqa: E402
    FORCEPruner,
    GraSPPruner,
    IterSNIPPruner,
    MagnitudePruner,
    RandomPruner,
    SNIPPruner,
    SynFlowPruner,
    complete_masks,
    speedup_model,
)

X = torch.randn(1, 3, 16, 16)
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "nni_config.py"
GLOBAL = [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.9, "global_group_id": 0}]


@pytest.fixture(autouse=True, scope="module")
def quiet_nni():
    logger = logging.getLogger("nni")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


def small_vgg(seed=0):
    torch.manual_seed(seed)
    return create_model("vgg11_bn", num_classes=10, width_multiplier=0.125, input_shape=(3, 16, 16))


def batches(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(n)]


def evaluator_for(model, data, fail_at=None):
    """A TorchEvaluator over ``data`` with an SGD optimizer (momentum, weight decay)."""
    optimizer = nni.trace(torch.optim.SGD)(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)

    def training_step(batch, model):
        inputs, labels = batch
        return F.cross_entropy(model(inputs), labels)

    def training_func(model, optimizers, training_step, lr_schedulers=None, max_steps=None, max_epochs=None):
        model.train()
        steps = 0
        for _ in range(max_epochs or 1):
            for batch in data:
                if fail_at is not None and steps == fail_at:
                    raise RuntimeError("injected failure")
                optimizers.zero_grad()
                training_step(batch, model).backward()
                optimizers.step()
                steps += 1
                if max_steps and steps >= max_steps:
                    return

    return TorchEvaluator(training_func, optimizer, training_step), optimizer


def weight_masks(masks):
    return {name: m["weight"] for name, m in masks.items()}


def prune_masks(model, params):
    names = {id(m): n for n, m in model.named_modules()}
    return {names[id(m)]: m.weight_mask for m, _ in params}


def assert_same_masks(sides, what):
    """Compare every pair of sides, naming both on a failure."""
    for (a, left), (b, right) in itertools.combinations(sides.items(), 2):
        assert set(left) == set(right), f"{what}: {a} and {b} mask different layers"
        for layer in left:
            differ = int((left[layer].bool() != right[layer].bool()).sum())
            assert differ == 0, f"{what}: {a} and {b} disagree on {differ} weights of '{layer}'"


def pruned(mask):
    return int((mask == 0).sum())


def wrapped(model):
    return [n for n, m in model.named_modules() if hasattr(m, "_nni_wrapper")]


# --------------------------------------------------------------------------- agreement
CASES = {
    "random": (RandomPruner, Random, {"seed": 0}),
    "magnitude": (MagnitudePruner, Magnitude, {}),
    "synflow": (SynFlowPruner, SynFlow, {"iterations": 4}),
    "snip": (SNIPPruner, SNIP, {}),
    "grasp": (GraSPPruner, GraSP, {}),
    "itersnip": (IterSNIPPruner, IterSNIP, {"iterations": 3}),
    "force": (FORCEPruner, FORCE, {"iterations": 3}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_global_group_masks_equal_torch_prune_and_core(name):
    pruner_cls, method, options = CASES[name]
    data = batches(2)
    nni_kwargs, prune_kwargs = dict(options), dict(options)
    nni_model = small_vgg()
    if pruner_cls in (SNIPPruner, GraSPPruner, IterSNIPPruner, FORCEPruner):
        nni_kwargs.update(evaluator=evaluator_for(nni_model, data)[0], num_batches=2)  # batches via NNI
        prune_kwargs["data"] = data
    elif name == "synflow":
        nni_kwargs["dummy_input"] = prune_kwargs["example_inputs"] = X
    _, masks = pruner_cls(nni_model, GLOBAL, **nni_kwargs).compress()

    prune_model = small_vgg()
    params = prunable_parameters(prune_model)
    prune.global_unstructured(params, pruning_method=method, amount=0.9, model=prune_model, **prune_kwargs)

    core_model = small_vgg()
    core_params = prunable_parameters(core_model)
    core = compute_masks(core_model, core_params, name, 0.9, **prune_kwargs)
    names = {id(m): n for n, m in core_model.named_modules()}

    sides = {
        f"{pruner_cls.__name__}": weight_masks(masks),
        f"torch.prune {method.__name__}": prune_masks(prune_model, params),
        f"compute_masks('{name}')": {names[id(m)]: k for (m, _), k in zip(core_params, core)},
    }
    assert_same_masks(sides, name)
    total = sum(m.numel() for m in sides[pruner_cls.__name__].values())
    assert sum(pruned(m) for m in sides[pruner_cls.__name__].values()) == round(0.9 * total)


def test_scores_and_metrics_agree_with_core_scores():
    config = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "granularity": "out_channel"},
              {"op_types": ["Linear"], "sparse_ratio": 0.5}]
    pruner = SynFlowPruner(small_vgg(), config, dummy_input=X)
    reference = small_vgg()
    params = prunable_parameters(reference)
    core = dict(zip([n for n, m in reference.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))],
                    compute_scores(reference, params, "synflow", example_inputs=X)))
    ours = pruner.scores()
    metrics = pruner._calculate_metrics(None)
    for layer, score in core.items():
        assert torch.equal(ours[layer]["weight"], score), f"SynFlowPruner.scores() and compute_scores differ on {layer}"
        expected = score.reshape(score.shape[0], -1).sum(1) if score.dim() == 4 else score
        got = metrics[layer]["weight"]
        assert got.shape == ((score.shape[0], 1, 1, 1) if score.dim() == 4 else score.shape)
        torch.testing.assert_close(got.reshape(expected.shape), expected, rtol=1e-6, atol=0)


BOUNDED = [{"op_types": ["Conv2d"], "sparse_ratio": 0.9, "global_group_id": 0, "max_sparse_ratio": 0.85,
            "min_sparse_ratio": 0.3},
           {"op_types": ["Linear"], "sparse_ratio": 0.9, "global_group_id": 0}]


@pytest.mark.parametrize("name,config", [
    ("synflow", GLOBAL),
    ("magnitude", [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.6}]),
    ("force", GLOBAL),
    ("synflow", BOUNDED),
    ("magnitude", BOUNDED),
    ("force", BOUNDED),
])
def test_kernel_and_unit_rankings_of_the_one_loop_agree(name, config, monkeypatch):
    # The loop ranks single unbounded weights with the compiled kernels and everything
    # else by units; forced onto the unit ranking, the same plan gives the same masks.
    pruner_cls, _, options = CASES[name]
    kwargs = dict(options)
    data = batches(2) if name == "force" else None
    if name == "force":
        kwargs.update(evaluator=evaluator_for(small_vgg(), data)[0])
    if name == "synflow":
        kwargs["dummy_input"] = X
    pruner = pruner_cls(small_vgg(), config, **kwargs)
    kernels = pruner._masks(data)
    monkeypatch.setattr(masking, "_on_kernels", lambda *args: False)
    units = pruner._masks(data)
    for tensor, a, b in zip(pruner._tensors, kernels, units):
        assert torch.equal(a, b), f"{name}: the kernel and unit rankings differ on {tensor.label}"


# --------------------------------------------------------------------------- config keys
def test_selection_keys_choose_the_pruned_layers():
    model = small_vgg()
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    config = [
        {"op_types": ["Conv2d"], "exclude_op_names": ["features.0"], "sparse_ratio": 0.5},
        {"op_names_re": ["classif.*"], "sparse_ratio": 0.25},
        {"op_names": ["features.0", "features.1"], "exclude_op_types": ["BatchNorm2d"], "sparse_ratio": 0.75},
    ]
    pruner = MagnitudePruner(model, config)
    _, masks = pruner.compress()
    assert set(masks) == set(convs) | {"classifier"}
    assert pruned(masks["features.0"]["weight"]) == round(0.75 * 216)
    for layer in convs[1:]:
        w = masks[layer]["weight"]
        assert pruned(w) == round(0.5 * w.numel()), layer
    assert pruned(masks["classifier"]["weight"]) == round(0.25 * 640)
    assert masks["features.4"]["bias"] is not None and int(masks["features.4"]["bias"].sum()) == 16
    pruner.unwrap_model()
    assert not wrapped(model) and isinstance(model.features[4].weight, nn.Parameter)


def test_layerwise_ratios_keep_the_largest_per_tensor():
    model = small_vgg()
    weights = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    config = [{"op_types": ["Conv2d"], "sparse_ratio": 0.3}, {"op_types": ["Linear"], "sparse_ratio": 0.7}]
    _, masks = MagnitudePruner(model, config).compress()
    for layer, w in weights.items():
        ratio = 0.7 if layer == "classifier" else 0.3
        expected = ~drop_smallest(w.abs().reshape(-1).numpy(), round(ratio * w.numel()))
        assert np.array_equal(masks[layer]["weight"].reshape(-1).bool().numpy(), expected), layer


def test_two_global_groups_rank_separately():
    model = small_vgg()
    config = [{"op_types": ["Conv2d"], "sparse_ratio": 0.8, "global_group_id": "convs"},
              {"op_types": ["Linear"], "sparse_ratio": 0.5, "global_group_id": "fc"}]
    weights = [m.weight.detach().abs().reshape(-1) for m in model.modules() if isinstance(m, nn.Conv2d)]
    _, masks = MagnitudePruner(model, config).compress()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    convs = [masks[n]["weight"].reshape(-1) for n in names]
    joined = torch.cat(weights).numpy()
    expected = ~drop_smallest(joined, round(0.8 * joined.size))
    assert np.array_equal(torch.cat(convs).bool().numpy(), expected)
    assert pruned(masks["classifier"]["weight"]) == 320


def bounded_reference(values, lo, hi, count):
    """Drop ``lo[i]`` smallest of every layer, then the smallest of the rest within ``hi``."""
    drops = []
    pool = []
    for i, v in enumerate(values):
        order = np.argsort(v, kind="stable")
        drops.append(set(order[: lo[i]].tolist()))
        pool += [(v[j], i, j) for j in order[lo[i]: hi[i]]]
    pool.sort()
    for _, i, j in pool[: count - sum(lo)]:
        drops[i].add(j)
    return drops


def test_max_and_min_sparse_ratio_bound_every_layer_of_a_global_group():
    model = small_vgg()
    layers = [(n, m.weight.detach().abs().reshape(-1).numpy()) for n, m in model.named_modules()
              if isinstance(m, (nn.Conv2d, nn.Linear))]
    config = [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.8, "global_group_id": 0,
               "max_sparse_ratio": 0.84, "min_sparse_ratio": 0.45}]
    _, masks = MagnitudePruner(model, config).compress()
    sizes = [v.size for _, v in layers]
    lo, hi = [int(np.ceil(0.45 * n)) for n in sizes], [int(np.floor(0.84 * n)) for n in sizes]
    count = round(0.8 * sum(sizes))
    counts = [pruned(masks[n]["weight"]) for n, _ in layers]
    assert sum(counts) == count
    assert all(a <= c <= b for a, c, b in zip(lo, counts, hi))
    assert any(c == b for c, b in zip(counts, hi)) and any(c == a for c, a in zip(counts, lo))  # both bind
    expected = bounded_reference([v for _, v in layers], lo, hi, count)
    for (layer, _), drop in zip(layers, expected):
        got = set(np.flatnonzero(masks[layer]["weight"].reshape(-1).numpy() == 0).tolist())
        assert got == drop, f"bounded global ranking and the greedy reference differ on {layer}"

    # the same bounds hold in SynFlow's iterative ranking
    _, masks = SynFlowPruner(small_vgg(), config, dummy_input=X, iterations=5).compress()
    counts = [pruned(masks[n]["weight"]) for n, _ in layers]
    assert sum(counts) == count and all(a <= c <= b for a, c, b in zip(lo, counts, hi))


def test_min_and_max_sparse_ratio_clamp_a_layer_ratio():
    config = [{"op_names": ["features.4"], "sparse_ratio": 0.1, "min_sparse_ratio": 0.4},
              {"op_names": ["classifier"], "sparse_ratio": 0.9, "max_sparse_ratio": 0.5}]
    _, masks = MagnitudePruner(small_vgg(), config).compress()
    assert pruned(masks["features.4"]["weight"]) == round(0.4 * 1152)
    assert pruned(masks["classifier"]["weight"]) == 320


def test_sparse_threshold_masks_scores_below_it_then_clamps():
    model = small_vgg()
    w4 = model.features[4].weight.detach().abs()
    wc = model.classifier.weight.detach().abs()
    threshold = float(w4.median())
    config = [{"op_names": ["features.4"], "sparse_threshold": threshold},
              {"op_names": ["classifier"], "sparse_threshold": 1e9, "max_sparse_ratio": 0.6}]
    _, masks = MagnitudePruner(model, config).compress()
    assert torch.equal(masks["features.4"]["weight"].bool(), w4 >= threshold)
    expected = ~drop_smallest(wc.reshape(-1).numpy(), int(0.6 * 640))
    assert np.array_equal(masks["classifier"]["weight"].reshape(-1).bool().numpy(), expected)


def test_out_channel_granularity_equals_nni_l1norm_pruner():
    config = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "granularity": "out_channel"}]
    _, ours = MagnitudePruner(small_vgg(), config).compress()
    _, theirs = L1NormPruner(small_vgg(), [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]).compress()
    for layer in theirs:
        for target in ("weight", "bias"):
            assert torch.equal(ours[layer][target], theirs[layer][target]), \
                f"MagnitudePruner(out_channel) and NNI's L1NormPruner differ on {layer}.{target}"


def test_element_wise_default_equals_nni_level_pruner():
    config = [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.5}]
    _, ours = MagnitudePruner(small_vgg(), config).compress()
    _, theirs = LevelPruner(small_vgg(), config).compress()
    assert_same_masks({"MagnitudePruner": weight_masks(ours), "NNI LevelPruner": weight_masks(theirs)}, "element-wise")


def test_out_channel_global_group_prunes_whole_channels_within_budget():
    config = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "granularity": "out_channel", "global_group_id": 0}]
    _, masks = SynFlowPruner(small_vgg(), config, dummy_input=X, iterations=5).compress()
    budget = round(0.5 * sum(m["weight"].numel() for m in masks.values()))
    removed, biggest = 0, 0
    for layer, m in masks.items():
        rows = m["weight"].reshape(m["weight"].shape[0], -1)
        assert torch.equal(rows.amin(1), rows.amax(1)), f"{layer}: a channel is partly masked"
        assert torch.equal(m["bias"], rows[:, 0]), f"{layer}: the bias does not follow its channels"
        removed += pruned(m["weight"])
        biggest = max(biggest, rows.shape[1])
    assert budget - biggest < removed <= budget


def test_dependency_group_shares_one_channel_mask_per_block():
    model = small_vgg()
    l1 = [model.features[i].weight.detach().abs().reshape(64, -1).sum(1) for i in (22, 25)]
    config = [{"op_names": ["features.22", "features.25"], "sparse_ratio": 0.5, "granularity": "out_channel",
               "dependency_group_id": "add", "internal_metric_block": 2}]
    _, masks = MagnitudePruner(model, config).compress()
    a, b = (masks[n]["weight"].reshape(64, -1)[:, 0] for n in ("features.22", "features.25"))
    assert torch.equal(a, b)
    mean = ((l1[0] + l1[1]) / 2).numpy()
    for block in (slice(0, 32), slice(32, 64)):
        expected = ~drop_smallest(mean[block].astype(np.float64), 16)
        assert np.array_equal(a[block].bool().numpy(), expected)


@pytest.mark.parametrize("config,match", [
    ([{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "granularity": "in_channel"}], "granularity='in_channel'"),
    ([{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "granularity": "per_channel"}], "granularity='per_channel'"),
    ([{"op_types": ["Conv2d"], "total_sparsity": 0.5}], "'sparse_ratio': 0.5, 'global_group_id': 0"),
    ([{"op_names_re": ["features.[0"], "sparse_ratio": 0.5}], "not a regular expression"),
    ([{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "sparsity_ratio": 0.5}], "sparsity_ratio"),
    ([{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "internal_metric_block": 2}], "internal_metric_block"),
    ([{"op_types": ["Conv2d"], "sparse_threshold": 0.5, "global_group_id": 0}], "sparse_threshold"),
    ([{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "global_group_id": 0},
      {"op_types": ["Linear"], "sparse_ratio": 0.7, "global_group_id": 0}], "same sparse_ratio"),
    ([{"op_names": ["features.22", "features.25"], "sparse_ratio": 0.5, "global_group_id": 0,
       "dependency_group_id": 1}], "global_group_id and dependency_group_id"),
    ([{"op_names": ["features.4", "features.8"], "sparse_ratio": 0.5, "granularity": "out_channel",
       "dependency_group_id": 1}], "16 units"),
    ([{"op_types": ["Conv2d"], "target_names": ["_input_"], "sparse_ratio": 0.5}], "inputs/outputs"),
    ([{"op_types": ["Conv"], "sparse_ratio": 0.5}], "selects no module"),
    ([{"op_names": ["features"], "sparse_ratio": 0.5}], "NNI cannot prune"),
    ([{"op_types": ["Conv2d"], "sparse_ratio": 1}], "schema"),
    ([{"op_types": "Conv2d", "sparse_ratio": 0.5}], "schema"),
    ([{"op_types": ["Conv2d"], "sparse_ratio": 1.5}], r"in \[0, 1\]"),
    ([{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "min_sparse_ratio": 0.6, "max_sparse_ratio": 0.55}],
     "min_sparse_ratio"),
])
def test_keys_that_cannot_be_honoured_are_errors_and_leave_the_model(config, match):
    model = small_vgg()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(PruningError, match=match):
        MagnitudePruner(model, config)
    assert not wrapped(model)
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_argument_errors():
    with pytest.raises(PruningError, match="dummy_input"):
        SynFlowPruner(small_vgg(), GLOBAL)
    with pytest.raises(PruningError, match="evaluator"):
        SNIPPruner(small_vgg(), GLOBAL)
    with pytest.raises(PruningError, match="iterations=0"):
        SynFlowPruner(small_vgg(), GLOBAL, dummy_input=X, iterations=0)
    with pytest.raises(PruningError, match="max_steps"):
        MagnitudePruner(small_vgg(), GLOBAL).compress(max_steps=1)


# --------------------------------------------------------------------------- the evaluator
def model_state(model):
    return {
        "params": {n: (p.detach().clone(), None if p.grad is None else p.grad.clone())
                   for n, p in model.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "modes": {n: m.training for n, m in model.named_modules()},
    }


def assert_same_state(before, after):
    assert before["modes"] == after["modes"]
    assert set(before["params"]) == set(after["params"]) and set(before["buffers"]) == set(after["buffers"])
    for name, (value, grad) in before["params"].items():
        value2, grad2 = after["params"][name]
        assert torch.equal(value, value2), f"parameter {name} changed"
        same_grad = grad is None and grad2 is None or grad is not None and grad2 is not None and torch.equal(grad, grad2)
        assert same_grad, f"grad of {name} changed"
    for name, value in before["buffers"].items():
        # compress() installs the masks; NNI re-sets a wrapped module's weight buffer in every forward
        if not name.endswith(("_mask", ".weight")):
            assert torch.equal(value, after["buffers"][name]), f"buffer {name} changed"


def optimizer_state(optimizer):
    return copy.deepcopy(optimizer.state_dict())


@pytest.mark.parametrize("pruner_cls", [SNIPPruner, FORCEPruner])
def test_data_driven_pruners_leave_weights_and_optimizer_state(pruner_cls):
    data = batches(3)
    model = small_vgg()
    evaluator, optimizer = evaluator_for(model, data)
    F.cross_entropy(model(data[0][0]), data[0][1]).backward()
    optimizer.step()  # momentum buffers to keep
    model.eval()
    opt_before = optimizer_state(optimizer)
    pruner = pruner_cls(model, GLOBAL, evaluator, num_batches=2)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = model_state(model)
    _, masks = pruner.compress()
    assert_same_state(before, model_state(model))
    opt_after = optimizer.state_dict()
    assert opt_after["param_groups"] == opt_before["param_groups"]
    for key, state in opt_before["state"].items():
        assert torch.equal(state["momentum_buffer"], opt_after["state"][key]["momentum_buffer"])
    assert evaluator.model is None  # unbound again
    total = sum(m["weight"].numel() for m in masks.values())
    assert sum(pruned(m["weight"]) for m in masks.values()) == round(0.9 * total)


@pytest.mark.parametrize("pruner_cls", [SynFlowPruner, MagnitudePruner, RandomPruner])
def test_the_plain_copy_shares_the_model_tensors_and_scoring_never_writes_them(pruner_cls):
    # (The data-driven pruners read their batches through the model and put it back
    # before scoring: test_data_driven_pruners_leave_weights_and_optimizer_state.)
    from synflow_plugin.adapters.nni.evaluator import plain_copy

    model = small_vgg()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    pruner = pruner_cls(model, GLOBAL, **({"dummy_input": X} if pruner_cls is SynFlowPruner else {}))
    plain = plain_copy(pruner.bound_model, pruner._module_wrappers)
    held = {t.data_ptr() for t in itertools.chain(model.parameters(), model.buffers())}
    shared = list(itertools.chain(plain.parameters(), plain.buffers()))
    assert not wrapped(plain)
    assert all(t.data_ptr() in held for t in shared)
    versions, grads, before = [t._version for t in shared], [t.grad for t in shared], model_state(model)
    pruner.compress()  # SynFlow takes |θ| of its scoring copy in place: a copy of its own
    assert [t._version for t in shared] == versions, "a tensor the plain copy shares was written in place"
    assert all(t.grad is g for t, g in zip(shared, grads))
    assert_same_state(before, model_state(model))


def test_a_tied_weight_is_refused_before_nni_wraps_anything():
    model = nn.Sequential(nn.Linear(8, 8, bias=False), nn.ReLU(), nn.Linear(8, 8, bias=False), nn.ReLU(), nn.Linear(8, 2))
    model[2].weight = model[0].weight
    with pytest.raises(PruningError, match=r"'0.weight' and '2.weight' are one tensor \(tied\).*Nothing was wrapped"):
        SynFlowPruner(model, GLOBAL, dummy_input=torch.randn(1, 8))
    assert not wrapped(model) and model[2].weight is model[0].weight
    SynFlowPruner(model, [{**GLOBAL[0], "exclude_op_names": ["0", "2"]}], dummy_input=torch.randn(1, 8)).compress()


def test_failure_inside_the_evaluator_restores_the_model():
    data = batches(3)
    model = small_vgg()
    evaluator, _ = evaluator_for(model, data, fail_at=1)  # the first batch trains, the second fails
    pruner = SNIPPruner(model, GLOBAL, evaluator, num_batches=3)
    model.eval()
    before = model_state(model)
    with pytest.raises(RuntimeError, match="injected failure"):
        pruner.compress()
    assert_same_state(before, model_state(model))
    assert evaluator.model is None


def test_batches_that_are_not_input_target_pairs_are_an_error():
    data = [{"x": x, "y": y} for x, y in batches(1)]
    model = small_vgg()
    optimizer = nni.trace(torch.optim.SGD)(model.parameters(), lr=0.1)

    def training_step(batch, model):
        return F.cross_entropy(model(batch["x"]), batch["y"])

    def training_func(model, optimizers, training_step, *args, **kwargs):
        for batch in data:
            training_step(batch, model).backward()

    evaluator = TorchEvaluator(training_func, optimizer, training_step)
    with pytest.raises(PruningError, match=r"\(inputs, targets\)"):
        SNIPPruner(model, GLOBAL, evaluator).compress()


# --------------------------------------------------------------------------- downstream
def test_masks_feed_unwrap_and_make_permanent():
    model = small_vgg().eval()
    x = torch.randn(2, 3, 16, 16)
    pruner = SynFlowPruner(model, GLOBAL, dummy_input=X, iterations=4)
    _, masks = pruner.compress()
    with torch.no_grad():
        masked = model(x)
    pruner.unwrap_model()
    assert not wrapped(model)
    permanent = make_permanent(model, masks=masks)
    for layer, m in masks.items():
        zeros = permanent.get_submodule(layer).weight == 0
        assert torch.equal(zeros, m["weight"] == 0), layer
    with torch.no_grad():
        torch.testing.assert_close(permanent(x), masked, rtol=1e-5, atol=1e-6)


def randomise_batchnorm(model):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


def test_speedup_of_out_channel_masks_gives_a_smaller_model_with_the_same_outputs():
    model = randomise_batchnorm(small_vgg())
    config = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "granularity": "out_channel", "global_group_id": 0,
               "max_sparse_ratio": 0.75}, {"op_names": ["classifier"], "sparse_ratio": 0.5}]
    pruner = SynFlowPruner(model, config, dummy_input=X, iterations=5)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    x = torch.randn(3, 3, 16, 16)
    reference = apply_masks(copy.deepcopy(model), complete_masks(model, masks))
    small = speedup_model(copy.deepcopy(model), masks, X)
    assert not small.training
    with torch.no_grad():
        expected, got = reference(x), small(x)
    assert got.shape == expected.shape == (3, 10)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    kept = {layer: int(m["weight"].reshape(m["weight"].shape[0], -1).amax(1).sum()) for layer, m in masks.items()
            if layer != "classifier"}
    for layer, channels in kept.items():
        assert small.get_submodule(layer).out_channels == channels, layer
    assert sum(p.numel() for p in small.parameters()) < 0.5 * sum(p.numel() for p in model.parameters())


def test_speedup_keeps_the_output_layer_shape():
    torch.manual_seed(0)
    model = create_model("conv", num_classes=10, width=8, input_shape=(3, 16, 16)).eval()
    config = [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.5, "granularity": "out_channel"}]
    pruner = MagnitudePruner(model, config)
    _, masks = pruner.compress()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        masked = model(x)  # the NNI-wrapped model applies its masks
    pruner.unwrap_model()
    small = speedup_model(copy.deepcopy(model), masks, X)
    assert small.classifier.out_features == 10 and small.features[0].out_channels == 4
    with torch.no_grad():
        torch.testing.assert_close(small(x), masked, rtol=1e-5, atol=1e-6)
    with pytest.raises(PruningError, match="unwrap_model"):
        wrapped_model = create_model("conv", num_classes=10, width=8, input_shape=(3, 16, 16))
        MagnitudePruner(wrapped_model, config)
        speedup_model(wrapped_model, masks, X)


def test_example_runs_on_small_inputs(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), "--model", "vgg11_bn", "--width", "0.125", "--input-size", "16",
                                      "--iterations", "3"])
    result = runpy.run_path(str(EXAMPLE), run_name="not_main")["main"]()
    assert result["small_parameters"] < result["dense_parameters"]
    assert result["max_abs_difference"] < 1e-4
    assert result["output_shape"] == [8, 100]  # CIFAR-100 classes by default
    assert "parameters" in capsys.readouterr().out


def test_a_model_wrapped_by_another_compressor_is_refused():
    model = small_vgg()
    MagnitudePruner(model, GLOBAL)
    with pytest.raises(PruningError, match="already wrapped"):
        SynFlowPruner(model, GLOBAL, dummy_input=X)


class SharedLinear(nn.Module):
    """One Linear registered as ``a`` and ``b`` and applied twice, then a head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(6, 6)
        self.b = self.a
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))))


def test_a_module_under_two_names_is_pruned_once_under_its_first():
    model, x = SharedLinear(), torch.randn(1, 6)
    config = [{"op_types": ["Linear"], "sparse_ratio": 0.5, "global_group_id": 0}]
    with pytest.warns(UserWarning, match="'b' is the same module as 'a'.*under the second name"):
        pruner = SynFlowPruner(model, config, dummy_input=x, iterations=3)
    _, masks = pruner.compress()
    assert sorted(masks) == ["a", "head"] and wrapped(model) == ["a", "head"]
    assert sum(pruned(m["weight"]) for m in masks.values()) == (36 + 18) // 2  # the shared weight counted once
    reference = SharedLinear()
    core = compute_masks(reference, [(reference.a, "weight"), (reference.head, "weight")], "synflow", 0.5,
                         example_inputs=x, iterations=3)
    assert_same_masks({"SynFlowPruner": weight_masks(masks), "compute_masks": {"a": core[0], "head": core[1]}},
                      "shared Linear")
    with torch.no_grad():
        masked = model(x)
    pruner.unwrap_model()
    assert not wrapped(model)
    with torch.no_grad():  # the mask acts on both uses of the module
        torch.testing.assert_close(make_permanent(model, masks=masks)(x), masked)
        torch.testing.assert_close(make_permanent(model, masks={"b": masks["a"], "head": masks["head"]})(x), masked)


def test_a_second_name_selected_alone_or_by_another_config_keeps_one_wrapper(recwarn):
    model = SharedLinear()
    pruner = MagnitudePruner(model, [{"op_names": ["b"], "sparse_ratio": 0.5}])
    _, masks = pruner.compress()
    assert list(masks) == ["b"] and list(pruner._module_wrappers) == ["b"] and pruned(masks["b"]["weight"]) == 18
    assert not recwarn.list  # nothing was renamed

    model = SharedLinear()
    config = [{"op_names": ["a"], "sparse_ratio": 0.25}, {"op_names": ["b", "head"], "sparse_ratio": 0.5}]
    with pytest.warns(UserWarning, match="'b' is the same module as 'a'"):
        pruner = MagnitudePruner(model, config)
    _, masks = pruner.compress()
    # as in NNI when two configs select one module: the first config's setting holds
    assert sorted(masks) == ["a", "head"] and pruned(masks["a"]["weight"]) == 9
    assert pruned(masks["head"]["weight"]) == 9


def test_update_masks_checks_every_mask_before_installing_any():
    model = SharedLinear()
    with pytest.warns(UserWarning, match="same module"):
        pruner = MagnitudePruner(model, [{"op_types": ["Linear"], "sparse_ratio": 0.5}])
    _, masks = pruner.compress()
    ones = {"weight": torch.ones(6, 6)}
    with pytest.raises(PruningError, match=r"module 'nope', which this pruner does not wrap; it wraps 'a', 'head'"):
        pruner.update_masks({"a": ones, "nope": ones})
    with pytest.raises(PruningError, match=r"masks\['b'\]\['weight'\] has shape \(3, 3\).*'a.weight' of shape"):
        pruner.update_masks({"b": {"weight": torch.ones(3, 3)}})
    assert torch.equal(pruner.get_masks()["a"]["weight"], masks["a"]["weight"])  # nothing installed
    pruner.update_masks({"b": ones})  # the second name reaches the one wrapper
    assert pruned(pruner.get_masks()["a"]["weight"]) == 0


def test_speedup_refuses_bad_arguments_before_changing_the_model():
    model = small_vgg().train()
    config = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "granularity": "out_channel"}]
    pruner = MagnitudePruner(model, config)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(PruningError, match=r"does not run on dummy_input \(RuntimeError") as info:
        speedup_model(model, masks, torch.randn(1, 5, 16, 16))
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(PruningError, match="masks should be a dict .* got list"):
        speedup_model(model, [masks], X)
    with pytest.raises(PruningError, match="module\\(s\\) 'features.99', which the VGG model does not have"):
        complete_masks(model, {**masks, "features.99": masks["features.0"]})
    after = model.state_dict()
    assert model.training and all(torch.equal(after[k], before[k]) for k in before)


def test_a_tensor_with_a_torch_prune_mask_is_refused():
    model = small_vgg()
    prune.l1_unstructured(model.features[4], "weight", amount=0.5)
    with pytest.raises(PruningError, match="prune.remove"):
        MagnitudePruner(model, GLOBAL)
    assert not wrapped(model)


def test_min_sparse_ratio_prunes_even_at_a_zero_group_ratio():
    config = [{"op_types": ["Linear"], "sparse_ratio": 0.0, "global_group_id": 0, "min_sparse_ratio": 0.25}]
    _, masks = MagnitudePruner(small_vgg(), config).compress()
    assert pruned(masks["classifier"]["weight"]) == 160


def test_from_compressor_prunes_before_the_fused_training():
    def chain(model, evaluator=None):
        first = MagnitudePruner(model, [{"op_types": ["Linear"], "sparse_ratio": 0.5}])
        convs = [{"op_types": ["Conv2d"], "sparse_ratio": 0.9, "global_group_id": 0}]
        return SynFlowPruner.from_compressor(first, convs, dummy_input=X, iterations=3, evaluator=evaluator)

    with pytest.raises(PruningError, match="fused"):
        chain(small_vgg()).compress()
    model = small_vgg()
    fused = chain(model, evaluator_for(model, batches(2))[0])
    _, masks = fused.compress(max_steps=1, max_epochs=None)
    convs = [m["weight"] for name, m in masks.items() if name != "classifier"]
    assert sum(pruned(m) for m in convs) == round(0.9 * sum(m.numel() for m in convs))
    assert pruned(masks["classifier"]["weight"]) == 320
    fused.unwrap_model()
    assert not wrapped(model)


def test_fewer_batches_than_asked_is_a_warning():
    model = small_vgg()
    pruner = SNIPPruner(model, GLOBAL, evaluator_for(model, batches(1))[0], num_batches=3)
    with pytest.warns(UserWarning, match="1 of num_batches=3"):
        pruner.compress()


def test_out_channel_masks_on_a_residual_net_compact_to_a_smaller_model():
    # NNI's own speedup cannot rebuild the residual shortcuts; our compaction, through
    # torch-pruning's dependency graph, removes the channels that every coupled layer
    # masks, and the smaller model computes what the masked one does.
    from synflow_plugin.export import compact_channels

    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, width_multiplier=0.5)
    config = [{"op_types": ["Conv2d"], "exclude_op_names": ["conv1"], "sparse_ratio": 0.5,
               "granularity": "out_channel"}]
    pruner = SynFlowPruner(model, config, dummy_input=torch.randn(1, 3, 32, 32), iterations=5)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    masked = apply_masks(copy.deepcopy(model), complete_masks(model, masks)).eval()
    x = torch.randn(4, 3, 32, 32)
    small = compact_channels(masked, x).eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), masked(x), rtol=1e-4, atol=1e-5)
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in small.parameters())
    assert after < 0.6 * before
    # Inside each block the first conv is free of the shortcut: exactly half its channels go.
    first = small.stages[0][0].conv1
    assert first.out_channels == masked.stages[0][0].conv1.out_channels // 2


# --------------------------------------------------------------------------- NNI's own workflows
def transposed_net(groups=1):
    """A Conv2d, then a 4 -> 6 transposed convolution whose last output channel has the smallest weights."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.ConvTranspose2d(4, 6, 1, groups=groups),
                          nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 2, 1))
    with torch.no_grad():
        weight = model[2].weight  # (in, out / groups, 1, 1)
        weight.copy_(torch.arange(1.0, weight.numel() + 1).reshape(weight.shape))
        if groups == 1:
            weight[:, 5] = 0.01  # output channel 5: column 5 of every row
        else:
            weight[2:, 2] = 0.01  # groups=2: output channel 5 is column 2 of the rows of group 1
    return model


@pytest.mark.parametrize("groups", [1, 2])
def test_a_transposed_convolution_prunes_element_wise_and_its_bias_follows_its_output_channels(groups):
    # NNI aligns a bias with dim 0 of the weight, the input channels of a transposed
    # convolution: its own LevelPruner fails here with a shape mismatch (4 vs 6).
    model = transposed_net(groups)
    config = [{"op_types": ["ConvTranspose2d"], "sparse_ratio": 1 / 6}]
    pruner = MagnitudePruner(model, config)
    _, masks = pruner.compress()
    weight = masks["2"]["weight"]
    assert pruned(weight) == weight.numel() // 6
    assert torch.equal(masks["2"]["bias"], torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.0]))
    smallest = weight[:, 5] if groups == 1 else weight[2:, 2]
    assert (smallest == 0).all()
    pruner.unwrap_model()
    # the BatchNorm after it follows its output channels, not the rows of its weight
    full = complete_masks(model, masks)
    assert torch.equal(full["3"]["weight"], torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.0]))


def test_out_channel_granularity_on_a_transposed_convolution_is_refused_before_wrapping():
    model = transposed_net()
    for config in ([{"op_types": ["ConvTranspose2d"], "sparse_ratio": 0.5, "granularity": "out_channel"}],
                   [{"op_names": ["2"], "target_settings": {"weight": {"sparse_ratio": 0.5,
                                                                      "granularity": "out_channel"}}}]):
        with pytest.raises(PruningError, match=r"transposed convolution.*'2'.*element-wise"):
            MagnitudePruner(model, config)
        assert not wrapped(model)
    # the other layers of the same model still take out_channel
    _, masks = MagnitudePruner(model, [{"op_names": ["0"], "sparse_ratio": 0.5,
                                        "granularity": "out_channel"}]).compress()
    assert int((masks["0"]["weight"].reshape(4, -1).sum(dim=1) == 0).sum()) == 2


def test_speedup_refuses_masks_of_a_transposed_convolution():
    model = transposed_net()
    pruner = MagnitudePruner(model, [{"op_types": ["ConvTranspose2d"], "sparse_ratio": 1 / 6}])
    _, masks = pruner.compress()
    pruner.unwrap_model()
    with pytest.raises(PruningError, match="compact_channels"):
        speedup_model(model, masks, torch.randn(1, 3, 4, 4))


@pytest.mark.parametrize("scheduler", ["AGPPruner", "LinearPruner"])
def test_nni_scheduled_pruners_refuse_ours_and_say_what_to_do(scheduler):
    import nni.compression.pruning as nni_pruning

    model = small_vgg()
    pruner = SynFlowPruner(model, GLOBAL, dummy_input=X, iterations=2)
    evaluator = evaluator_for(model, batches(2))[0]
    with pytest.raises(PruningError, match=r"AGPPruner, LinearPruner.*prunes at initialisation.*then train"):
        getattr(nni_pruning, scheduler)(pruner, interval_steps=1, total_times=2, evaluator=evaluator)
    assert wrapped(model)  # NNI stopped before unwrapping our pruner: it still works
    _, masks = pruner.compress()
    total = sum(m["weight"].numel() for m in masks.values())
    assert sum(pruned(m["weight"]) for m in masks.values()) == round(0.9 * total)
    with pytest.raises(PruningError, match="scheduled pruners"):
        pruner.interval_steps = 5  # what the scheduler does next, were the check skipped (python -O)


@pytest.mark.parametrize("pruner_cls", [SNIPPruner, GraSPPruner, IterSNIPPruner, FORCEPruner])
def test_taylor_pruner_training_steps_points_to_num_batches(pruner_cls):
    model = small_vgg()
    evaluator = evaluator_for(model, batches(2))[0]
    with pytest.raises(PruningError, match=r"training_steps=2 .*Use num_batches=2"):
        pruner_cls(model, GLOBAL, evaluator, training_steps=2)
    with pytest.raises(PruningError, match="training_steps=2 .*Use num_batches=2"):
        pruner_cls.from_compressor(MagnitudePruner(small_vgg(), GLOBAL), GLOBAL, training_steps=2,
                                   evaluator=evaluator)
    assert not wrapped(model)
    # TaylorPruner's positional training_steps lands on num_batches
    with pytest.warns(UserWarning, match="2 of num_batches=3"):
        pruner_cls(model, GLOBAL, evaluator, 3).compress()


@pytest.mark.parametrize("pruner_cls, kwargs, match", [
    (SynFlowPruner, {"dummy_input": X, "training_steps": 2}, "data-free and reads no batches"),
    (MagnitudePruner, {"regular_scale": 1.0}, "SlimPruner.*drop it"),
    (RandomPruner, {"warmup_step": 1}, "MovementPruner"),
    (MagnitudePruner, {"mode": "dependency_aware"}, r"auto_set_denpendency_group_ids.*\"out_channel\""),
    (SNIPPruner, {"interval_steps": 1}, "AGPPruner"),
])
def test_other_nni_pruner_arguments_say_what_to_do(pruner_cls, kwargs, match):
    model = small_vgg()
    with pytest.raises(PruningError, match=match):
        pruner_cls(model, GLOBAL, **kwargs)
    assert not wrapped(model)


def test_auto_dependency_groups_without_granularity_name_the_missing_out_channel():
    # NNI's own example: auto_set_denpendency_group_ids on a conv config written for
    # L1NormPruner, which ranks output channels by default. (The fx version, from
    # nni.compression.speedup; nni.compression.utils' version needs tensorboard.)
    from nni.compression.speedup import auto_set_denpendency_group_ids

    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, width_multiplier=0.25)
    graph = torch.fx.symbolic_trace(model)
    config_list = auto_set_denpendency_group_ids(graph, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}])
    with pytest.raises(PruningError, match=r"config_list\[\d+\].*dependency_group_id=.*\"granularity\": "
                                           r"\"out_channel\""):
        MagnitudePruner(model, config_list)
    assert not wrapped(model)

    config_list = auto_set_denpendency_group_ids(
        graph, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "granularity": "out_channel"}])
    groups = {}
    for config in config_list:
        groups.setdefault(config.get("dependency_group_id"), []).extend(config["op_names"])
    coupled = next(names for gid, names in groups.items() if gid is not None and len(names) > 1)
    _, masks = MagnitudePruner(model, config_list).compress()
    dead = {name: masks[name]["weight"].flatten(1).sum(dim=1) == 0 for name in coupled}
    first = dead[coupled[0]]
    assert int(first.sum()) == first.numel() // 2
    assert all(torch.equal(d, first) for d in dead.values()), "a dependency group shares one channel mask"


def test_synflow_through_nni_on_a_transposed_convolution_equals_torch_prune():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.ConvTranspose2d(4, 6, 3), nn.ReLU(), nn.Conv2d(6, 2, 1))
    reference = copy.deepcopy(model)
    x = torch.randn(1, 3, 8, 8)
    config = [{"op_types": ["Conv2d", "ConvTranspose2d"], "sparse_ratio": 0.8, "global_group_id": 0}]
    _, masks = SynFlowPruner(model, config, dummy_input=x, iterations=5).compress()
    params = [(reference[i], "weight") for i in (0, 2, 4)]
    prune.global_unstructured(params, pruning_method=SynFlow, amount=0.8, model=reference, example_inputs=x,
                              iterations=5)
    assert_same_masks({"nni": weight_masks(masks), "torch.prune": prune_masks(reference, params)}, "SynFlow")
    live = (masks["2"]["weight"].sum(dim=(0, 2, 3)) > 0).float()  # (in, out, k, k): out is dim 1
    assert torch.equal(masks["2"]["bias"], live)
