"""The criteria as torch.nn.utils.prune methods: contract, stacking, persistence, errors, nothing lost."""

from __future__ import annotations

import copy
import io
import pickle
from unittest import mock

import pytest
import torch
import torch.nn.utils.prune as prune
from torch import nn

import synflow_plugin
from synflow_plugin import (
    FORCE,
    SNIP,
    GraSP,
    IterSNIP,
    Magnitude,
    PruningError,
    PruningTypeError,
    Random,
    SynFlow,
    compute_masks,
    prunable_parameters,
    synflow_unstructured,
)
from synflow_plugin.criteria.synflow import SynFlowCriterion
from synflow_plugin.models import create_model

X = torch.randn(1, 3, 32, 32)


def small_vgg(seed=0):
    torch.manual_seed(seed)
    return create_model("vgg11_bn", num_classes=10, width_multiplier=0.125)


def small_resnet(seed=0):
    torch.manual_seed(seed)
    return create_model("resnet20", num_classes=10, width_multiplier=0.25)


def batches(n=2, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, classes, (4,), generator=g)) for _ in range(n)]


def kwargs_for(method):
    if method in (SNIP, GraSP, IterSNIP, FORCE):
        return {"data": batches(), "iterations": 2} if method in (IterSNIP, FORCE) else {"data": batches()}
    if method is SynFlow:
        return {"example_inputs": X, "iterations": 5}
    if method is Random:
        return {"seed": 0}
    return {}


def kept(params):
    return sum(int(m.weight_mask.sum()) for m, _ in params)


@pytest.mark.parametrize("method", [Random, Magnitude, SNIP, GraSP, SynFlow, IterSNIP, FORCE])
def test_global_unstructured_each_criterion_exact_count(method):
    model = small_resnet()
    params = prunable_parameters(model)
    total = sum(m.weight.numel() for m, _ in params)
    prune.global_unstructured(params, pruning_method=method, amount=0.9, model=model, **kwargs_for(method))
    assert kept(params) == total - round(0.9 * total)
    assert all(prune.is_pruned(m) for m, _ in params)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_global_unstructured_equals_core_masks_for_any_subset_and_order():
    model = small_vgg()
    params = prunable_parameters(model)
    subset = [params[3], params[0], params[5]]
    expected = compute_masks(model, subset, "synflow", amount=0.8, example_inputs=X, iterations=10)
    prune.global_unstructured(subset, pruning_method=SynFlow, amount=0.8, model=model, example_inputs=X,
                              iterations=10)
    for (module, _), mask in zip(subset, expected):
        assert torch.equal(module.weight_mask.bool(), mask)
    assert not prune.is_pruned(params[1][0])


def test_layerwise_apply_and_function_form_match_local_scope():
    model_a, model_b, model_c = small_vgg(), small_vgg(), small_vgg()
    params_a = prunable_parameters(model_a)
    expected = compute_masks(model_a, params_a, "synflow", amount=0.6, example_inputs=X, iterations=4,
                             scope="local")
    # Pruning the layers one at a time with .apply scores each inside the (partially pruned) model.
    method = SynFlow.apply(params_a[-1][0], "weight", amount=0.6, model=model_a, example_inputs=X, iterations=4)
    assert isinstance(method, prune.CustomFromMask)
    assert int(params_a[-1][0].weight_mask.sum()) == params_a[-1][0].weight.numel() - round(
        0.6 * params_a[-1][0].weight.numel())
    # On a fresh model, one layer alone: apply == function form == core with that single target.
    layer_b, layer_c = prunable_parameters(model_b)[2][0], prunable_parameters(model_c)[2][0]
    SynFlow.apply(layer_b, "weight", amount=0.6, model=model_b, example_inputs=X, iterations=4)
    returned = synflow_unstructured(layer_c, "weight", 0.6, model=model_c, example_inputs=X, iterations=4)
    assert returned is layer_c
    assert torch.equal(layer_b.weight_mask, layer_c.weight_mask)
    model_d = small_vgg()
    single = compute_masks(model_d, [prunable_parameters(model_d)[2]], "synflow", 0.6, example_inputs=X,
                           iterations=4)
    assert torch.equal(layer_b.weight_mask.bool(), single[0])
    # local scope keeps the per-layer fraction of a layer-wise prune.
    assert int(expected[2].sum()) == int(layer_b.weight_mask.sum())


def test_global_differs_from_local():
    model = small_vgg()
    params = prunable_parameters(model)
    global_masks = compute_masks(model, params, "synflow", amount=0.9, example_inputs=X, iterations=5)
    local_masks = compute_masks(model, params, "synflow", amount=0.9, example_inputs=X, iterations=5, scope="local")
    assert [int(m.sum()) for m in global_masks] != [int(m.sum()) for m in local_masks]
    total = sum(m.numel() for m in global_masks)
    assert sum(int(m.sum()) for m in global_masks) == total - round(0.9 * total)


@pytest.mark.parametrize("method", [SynFlow, Magnitude, IterSNIP])
def test_stacking_on_existing_masks_follows_container_semantics(method):
    model = small_vgg()
    params = prunable_parameters(model)
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=0.5)
    before = [m.weight_mask.clone() for m, _ in params]
    survivors = kept(params)
    prune.global_unstructured(params, pruning_method=method, amount=0.5, model=model, **kwargs_for(method))
    assert kept(params) == survivors - round(0.5 * survivors)
    for (m, _), old in zip(params, before):
        assert not (m.weight_mask.bool() & ~old.bool()).any()  # nothing revived
        assert isinstance(m._forward_pre_hooks[next(iter(m._forward_pre_hooks))], prune.PruningContainer)
    # The pruned weights are really zero in the forward pass.
    for m, _ in params:
        assert torch.equal(m.weight, m.weight_orig * m.weight_mask)


def test_layerwise_apply_on_pruned_layer_prunes_survivors_only():
    model = small_vgg()
    layer = prunable_parameters(model)[1][0]
    prune.random_unstructured(layer, "weight", amount=0.5)
    old = layer.weight_mask.clone()
    SynFlow.apply(layer, "weight", amount=0.5, model=model, example_inputs=X, iterations=3)
    survivors = int(old.sum())
    assert int(layer.weight_mask.sum()) == survivors - round(0.5 * survivors)
    assert not (layer.weight_mask.bool() & ~old.bool()).any()


def test_remove_pickle_deepcopy_and_state_dict_round_trip():
    model = small_resnet()
    params = prunable_parameters(model)
    prune.global_unstructured(params, pruning_method=SynFlow, amount=0.95, model=model, example_inputs=X,
                              iterations=5)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    expected = model(x)

    # A pruned model pickles and its state_dict loads into an identically pruned model.
    clone = pickle.loads(pickle.dumps(model))
    torch.testing.assert_close(clone(x), expected)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    target = small_resnet(seed=1)
    for m, n in prunable_parameters(target):
        prune.identity(m, n)
    target.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    target.eval()
    torch.testing.assert_close(target(x), expected)

    # copy.deepcopy refuses a module that holds prune's hooks (a torch limitation);
    # clone_model copies it, still pruned, and the copy trains with its mask applied.
    with pytest.raises(RuntimeError):
        copy.deepcopy(model)
    twin = synflow_plugin.clone_model(model)
    torch.testing.assert_close(twin(x), expected)
    twin.train()
    twin(x).sum().backward()
    conv = prunable_parameters(twin)[1][0]
    assert conv.weight_orig.grad is not None
    assert torch.all(conv.weight_orig.grad[conv.weight_mask == 0] == 0)
    assert twin.conv1.weight_orig.data_ptr() != model.conv1.weight_orig.data_ptr()

    # prune.remove makes the masks permanent; the result deep-copies.
    for m, n in params:
        prune.remove(m, n)
    assert not any(prune.is_pruned(m) for m, _ in params)
    zeros = sum(int((m.weight == 0).sum()) for m, _ in params)
    total = sum(m.weight.numel() for m, _ in params)
    assert zeros >= round(0.95 * total)
    torch.testing.assert_close(copy.deepcopy(model)(x), expected)


def snapshot(model):
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "grads": {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()},
        "modes": {k: m.training for k, m in model.named_modules()},
        "hooks": {k: (list(m._forward_pre_hooks), list(m._forward_hooks)) for k, m in model.named_modules()},
        "dtypes": {k: v.dtype for k, v in model.state_dict().items()},
    }


def assert_unchanged(model, before):
    after = snapshot(model)
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key
        assert after["state"][key].dtype == value.dtype, key
    assert after["requires_grad"] == before["requires_grad"]
    assert after["modes"] == before["modes"]
    assert after["hooks"] == before["hooks"]
    for key, grad in before["grads"].items():
        assert (grad is None and after["grads"][key] is None) or torch.equal(grad, after["grads"][key]), key


def prepared_model():
    """A model in train mode with a frozen layer, gradients, a user hook and existing masks."""
    model = small_resnet()
    model.train()
    model.fc.weight.requires_grad_(False)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    calls = []
    model.conv1.register_forward_hook(lambda *args: calls.append(1))
    prune.l1_unstructured(model.stages[0][0].conv1, "weight", amount=0.3)
    return model, calls


@pytest.mark.parametrize("criterion", ["synflow", "snip", "grasp", "force", "random", "magnitude"])
def test_scoring_leaves_the_model_exactly_as_it_was(criterion):
    model, calls = prepared_model()
    before = snapshot(model)
    kwargs = {"example_inputs": X} if criterion == "synflow" else {"data": batches()}
    compute_masks(model, prunable_parameters(model), criterion, amount=0.5, iterations=2, **kwargs)
    assert_unchanged(model, before)
    assert calls == []  # the user's hooks did not fire on the scoring copy


def test_scoring_failure_leaves_the_model_exactly_as_it_was():
    model, _ = prepared_model()
    before = snapshot(model)
    calls = {"n": 0}
    original = SynFlowCriterion.score

    def failing(self, state):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("injected failure")
        return original(self, state)

    with mock.patch.object(SynFlowCriterion, "score", failing):
        with pytest.raises(RuntimeError, match="injected failure"):
            prune.global_unstructured(prunable_parameters(model), pruning_method=SynFlow, amount=0.9,
                                      model=model, example_inputs=X, iterations=5)
    assert calls["n"] == 3
    assert_unchanged(model, before)
    assert not prune.is_pruned(model.stages[1][0].conv1)


def test_apply_failure_restores_the_module():
    model = small_vgg()
    layer = prunable_parameters(model)[0][0]
    weight = layer.weight.detach().clone()
    with pytest.raises(PruningError, match="the model failed on SynFlow's all-ones input"):
        SynFlow.apply(layer, "weight", amount=0.5, model=model, example_inputs=torch.randn(1, 5, 32, 32))
    assert not prune.is_pruned(layer)
    assert isinstance(layer.weight, nn.Parameter) and torch.equal(layer.weight, weight)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("amount,match,error", [
    (1.5, r"amount=1.5 should either be a float in the range \[0, 1\]", PruningError),
    (-0.1, r"amount=-0.1 should either be a float", PruningError),
    (-3, r"amount=-3 should either be", PruningError),
    ("0.5", r"amount='0.5' should either be a float .* got str", PruningTypeError),
    (True, r"amount=True", PruningTypeError),
    (10**9, r"amount=1000000000 should be at most the number of weights that can still be pruned", PruningError),
])
def test_bad_amount(amount, match, error):
    model = small_vgg()
    with pytest.raises(error, match=match):
        prune.global_unstructured(prunable_parameters(model), pruning_method=SynFlow, amount=amount,
                                  model=model, example_inputs=X)


def test_error_messages_say_what_to_fix():
    model = small_vgg()
    params = prunable_parameters(model)
    with pytest.raises(PruningError, match="there are no parameters to prune"):
        compute_masks(model, [], "synflow", 0.5, example_inputs=X)
    with pytest.raises(PruningError, match="pass model=<the nn.Module"):
        prune.global_unstructured(params, pruning_method=SynFlow, amount=0.5, example_inputs=X)
    with pytest.raises(PruningError, match=r"the model failed on SynFlow's all-ones input .*tensor\(shape=\(1, 3, 7\)"):
        prune.global_unstructured(params, pruning_method=SynFlow, amount=0.5, model=model,
                                  example_inputs=torch.randn(1, 3, 7))
    with pytest.raises(PruningError, match="SynFlow needs example_inputs"):
        prune.global_unstructured(params, pruning_method=SynFlow, amount=0.5, model=model)
    with pytest.raises(PruningError, match="snip is data-driven: pass data="):
        prune.global_unstructured(params, pruning_method=SNIP, amount=0.5, model=model)
    with pytest.raises(PruningError, match="yielded no batches"):
        prune.global_unstructured(params, pruning_method=SNIP, amount=0.5, model=model, data=[])
    with pytest.raises(PruningError, match=r"an \(inputs, targets\) pair"):
        prune.global_unstructured(params, pruning_method=SNIP, amount=0.5, model=model, data=[X])
    with pytest.raises(PruningTypeError, match="data should be a DataLoader"):
        prune.global_unstructured(params, pruning_method=SNIP, amount=0.5, model=model, data=X)
    with pytest.raises(PruningError, match="is not part of the VGG passed as model="):
        compute_masks(model, [(nn.Linear(2, 2), "weight")], "magnitude", 0.5)
    with pytest.raises(PruningError, match=r"has no parameter named 'weights' \(its parameters: weight, bias\)"):
        compute_masks(model, [(params[0][0], "weights")], "magnitude", 0.5)
    with pytest.raises(PruningError, match="listed twice"):
        compute_masks(model, [params[0], params[0]], "magnitude", 0.5)
    with pytest.raises(PruningError, match="scope='layer'"):
        compute_masks(model, params, "magnitude", 0.5, scope="layer")
    with pytest.raises(PruningError, match="iterations=0"):
        compute_masks(model, params, "magnitude", 0.5, iterations=0)
    with pytest.raises(PruningError, match="computes its own importance scores"):
        prune.global_unstructured(params, pruning_method=Magnitude, amount=0.5, model=model,
                                  importance_scores={params[0]: torch.ones_like(params[0][0].weight)})
    with pytest.raises(PruningError, match="needs to know which tensors it prunes"):
        Magnitude(0.5, model=model).compute_mask(torch.ones(3), torch.ones(3))


def test_integer_inputs_to_synflow_are_explained():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.fc = nn.Embedding(10, 4), nn.Linear(4, 2)

        def forward(self, ids):
            return self.fc(self.embed(ids))

    model = Tokens()
    with pytest.raises(PruningTypeError, match="token ids index an embedding"):
        prune.global_unstructured([(model.fc, "weight")], pruning_method=SynFlow, amount=0.5, model=model,
                                  example_inputs=torch.tensor([[1, 2, 3]]))
    # A data-driven criterion works on the same model.
    ids, labels = torch.tensor([[1, 2], [3, 4]]), torch.tensor([[0, 1], [1, 0]])
    loss = lambda out, y: nn.functional.cross_entropy(out.reshape(-1, 2), y.reshape(-1))  # noqa: E731
    prune.global_unstructured([(model.fc, "weight")], pruning_method=SNIP, amount=0.5, model=model,
                              data=[(ids, labels)], loss_fn=loss)
    assert int(model.fc.weight_mask.sum()) == 4


def test_non_prunable_parameters_and_buffers_are_allowed():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(6, 6), nn.Linear(6, 3)
            self.scale = nn.Parameter(torch.tensor(2.0))
            self.register_buffer("offset", torch.full((6,), -1.0))
            self.register_buffer("steps", torch.tensor(3))

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x) + self.offset) * self.scale)

    torch.manual_seed(0)
    model = Scaled()
    params = prunable_parameters(model)
    prune.global_unstructured(params, pruning_method=SynFlow, amount=0.5, model=model,
                              example_inputs=torch.randn(1, 6), iterations=3)
    assert kept(params) == 27 and model.scale.item() == 2.0 and model.offset[0].item() == -1.0


def test_import_without_optional_hosts():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for name in ('nni', 'torch_pruning', 'onnx', 'onnxruntime'):\n"
        "    sys.modules[name] = None\n"
        "import synflow_plugin, synflow_plugin.diagnostics, synflow_plugin.models, synflow_plugin.masking\n"
        "print(synflow_plugin.__version__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == synflow_plugin.__version__


# --------------------------------------------------------------------------- any registered criterion
def test_pruning_method_returns_the_built_in_classes():
    built_in = [Random, Magnitude, SNIP, GraSP, SynFlow, IterSNIP, FORCE]
    assert [synflow_plugin.pruning_method(m.criterion) for m in built_in] == built_in
    assert synflow_plugin.pruning_method("SynFlow") is SynFlow
    assert "pruning_method" in synflow_plugin.__all__
    assert synflow_plugin.synflow_unstructured.__name__ == "synflow_unstructured"  # function forms as before


def test_pruning_method_refuses_an_unknown_name_with_the_valid_ones():
    with pytest.raises(PruningError, match="unknown criterion 'synflw'; expected one of: random, magnitude, snip"):
        synflow_plugin.pruning_method("synflw")
    with pytest.raises(PruningTypeError, match=r"name should be a registry name \(a str, one of: random, .*\), "
                                               "got SynFlowCriterion"):
        synflow_plugin.pruning_method(SynFlowCriterion())


def test_a_method_class_without_a_criterion_says_what_to_set():
    class Forgot(synflow_plugin.PaIPruningMethod):
        pass

    model = small_vgg()
    params = prunable_parameters(model)
    what = r"criterion = '<registry name>' \(one of: random, .*\); or use synflow_plugin.pruning_method\(name\)"
    with pytest.raises(PruningTypeError, match="PaIPruningMethod names no criterion: .*" + what):
        synflow_plugin.PaIPruningMethod(0.5, model=model)
    with pytest.raises(PruningTypeError, match="Forgot names no criterion"):
        prune.global_unstructured(params, pruning_method=Forgot, amount=0.5, model=model)
    with pytest.raises(TypeError, match="Forgot names no criterion"):  # a TypeError, as prune keeps them apart
        Forgot.apply(params[0][0], "weight", amount=0.5, model=model)
    Forgot.criterion = 3
    with pytest.raises(PruningTypeError, match="Forgot has criterion=3, not a registry name"):
        Forgot(0.5, model=model)
    assert not any(prune.is_pruned(m) for m, _ in params)


def test_a_model_pruned_by_an_unpicklable_method_class_pickles():
    def local_method():
        class Local(synflow_plugin.PaIPruningMethod):
            criterion = "magnitude"

        return Local

    method = local_method()
    with pytest.raises((AttributeError, pickle.PicklingError)):
        pickle.dumps(method)
    model = small_vgg()
    prune.global_unstructured(prunable_parameters(model), pruning_method=method, amount=0.5, model=model)
    x = torch.randn(1, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(pickle.loads(pickle.dumps(model))(x), model(x))


# --------------------------------------------------------------------------- torch's internals, pinned
def test_global_unstructured_signature_is_the_one_the_frame_lookup_reads():
    import inspect

    signature = inspect.signature(prune.global_unstructured)
    assert list(signature.parameters)[:3] == ["parameters", "pruning_method", "importance_scores"]
    assert signature.parameters["importance_scores"].default is None
    assert {"parameters", "importance_scores"} <= set(prune.global_unstructured.__code__.co_varnames)


def test_the_frame_lookup_reads_the_call_locals(monkeypatch):
    from synflow_plugin.adapters import torch_prune

    seen = []
    original = torch_prune._call_arguments

    def spy(local_vars, caller):
        seen.append((sorted(local_vars), caller))
        return original(local_vars, caller)

    monkeypatch.setattr(torch_prune, "_call_arguments", spy)
    model = small_vgg()
    subset = prunable_parameters(model)[:2]
    prune.global_unstructured(tuple(subset), pruning_method=Magnitude, amount=0.5, model=model)
    assert len(seen) == 1 and seen[0][1] == "Magnitude"
    assert all(prune.is_pruned(m) for m, _ in subset) and not prune.is_pruned(prunable_parameters(model)[2][0])
    assert {"parameters", "importance_scores", "kwargs"} <= set(seen[0][0])
    assert original({"parameters": iter(subset), "importance_scores": {}}, "Magnitude") == (subset, {})


def test_a_renamed_torch_local_is_a_clear_error(monkeypatch):
    from synflow_plugin.adapters import torch_prune

    with pytest.raises(PruningError) as info:
        torch_prune._call_arguments({"params": [], "importance_scores": None, "kwargs": {}}, "SynFlow")
    message = str(info.value)
    assert f"checked on torch {torch_prune.CHECKED_TORCH_VERSION}" in message
    assert f"torch.nn.utils.prune.global_unstructured (torch {torch.__version__})" in message
    assert "SynFlow.apply(module, 'weight', amount=..., model=...)" in message
    assert "synflow_plugin.compute_masks(model, params, criterion, amount, ...)" in message
    assert "its locals here: importance_scores, kwargs, params" in message

    # A global_unstructured whose tensors are held under another name: the method says so.
    def renamed(params, pruning_method, importance_scores=None, **kwargs):
        pruning_method(**kwargs)

    monkeypatch.setattr(prune, "global_unstructured", renamed)
    model = small_vgg()
    params = prunable_parameters(model)
    with pytest.raises(PruningError, match="no longer keeps the tensors it prunes in a local variable named"):
        prune.global_unstructured(params, pruning_method=Magnitude, amount=0.5, model=model)
    # and the way out it names works
    Magnitude.apply(params[0][0], "weight", amount=0.5, model=model)
    assert int(params[0][0].weight_mask.sum()) == params[0][0].weight.numel() // 2


def test_magnitude_and_random_need_no_model_as_torch_l1_unstructured():
    model = small_vgg()
    params = prunable_parameters(model)
    reference = compute_masks(model, params, "magnitude", 0.7)
    prune.global_unstructured(params, pruning_method=Magnitude, amount=0.7)
    assert all(torch.equal(m.weight_mask.bool(), r) for (m, _), r in zip(params, reference))
    layer = prunable_parameters(small_vgg())[0][0]
    Random.apply(layer, "weight", amount=0.5, seed=0)
    assert int(layer.weight_mask.sum()) == layer.weight.numel() - round(0.5 * layer.weight.numel())
    with pytest.raises(PruningError, match="SynFlow scores the whole network: pass model="):
        prune.global_unstructured(prunable_parameters(small_vgg()), pruning_method=SynFlow, amount=0.5,
                                  example_inputs=X)
