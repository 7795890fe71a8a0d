"""Reliability: SynFlow exact in float32 at every round, mixed precision, and bad input as clear errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from synflow_plugin import SNIP, Magnitude, PruningError, PruningTypeError, SynFlow, compute_masks, compute_scores
from synflow_plugin import prunable_parameters, synflow_unstructured
from synflow_plugin.targets import TiedWeightWarning
from synflow_plugin.criteria.base import MAX_UNSIZED_BATCHES


def plain_mlp(depth, width, dtype=torch.float32, first=1.0, every=1.0, seed=0):
    """A bias-free ReLU MLP; ``first`` scales the first layer, ``every`` each layer."""
    torch.manual_seed(seed)
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width, bias=False), nn.ReLU()]
    model = nn.Sequential(*layers[:-1]).to(dtype)
    with torch.no_grad():
        for k, layer in enumerate(m for m in model if isinstance(m, nn.Linear)):
            layer.weight.mul_(every * (first if k == 0 else 1.0))
    return model


def synflow_masks(model, amount, iterations, width):
    dtype = next(model.parameters()).dtype
    return compute_masks(model, prunable_parameters(model), "synflow", amount,
                         example_inputs=torch.randn(1, width, dtype=dtype), iterations=iterations)


# --------------------------------------------------------------------------- precision
@pytest.mark.parametrize("depth,width,first,every,amount,iterations", [
    # R is in float32's range, but the first layer's gradients overflow to inf.
    (60, 128, 1e-30, 1.0, 0.9, 1),
    # R = 1.7e-28 at the start and underflows to exactly 0 from round 66 in float32.
    (30, 32, 1.0, 0.04, 0.99, 100),
])
def test_synflow_float32_masks_equal_float64_where_float32_fails(depth, width, first, every, amount, iterations):
    model = plain_mlp(depth, width, first=first, every=every)
    twin = plain_mlp(depth, width, torch.float64, first=first, every=every)
    masks = synflow_masks(model, amount, iterations, width)
    reference = synflow_masks(twin, amount, iterations, width)
    assert all(int(m.sum()) > 0 for m in reference)  # float64 collapses no layer
    assert all(torch.equal(a, b) for a, b in zip(masks, reference))
    assert next(model.parameters()).dtype == torch.float32  # the user's model is not promoted


def test_synflow_on_a_healthy_network_stays_in_float32():
    model = plain_mlp(6, 32)
    promoted = []
    from synflow_plugin.criteria.base import ScoringState

    original = ScoringState.promote
    ScoringState.promote = lambda self: promoted.append(self.round) or original(self)
    try:
        synflow_masks(model, 0.99, 20, 32)
    finally:
        ScoringState.promote = original
    assert promoted == []


class MixedHead(nn.Module):
    """A float32 body and a float64 head; the forward casts in between."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, 16)
        self.head = nn.Linear(16, 4).double()

    def forward(self, x):
        return self.head(torch.relu(self.body(x)).double())


def test_synflow_mixed_precision_model_with_the_float64_head_listed_first():
    torch.manual_seed(0)
    model = MixedHead()
    params = [(model.head, "weight"), (model.body, "weight")]
    masks = compute_masks(model, params, "synflow", 0.5, example_inputs=torch.randn(1, 8), iterations=3)
    assert sum(int(m.sum()) for m in masks) == 192 - 96
    assert model.head.weight.dtype == torch.float64 and model.body.weight.dtype == torch.float32


class HalfNet(nn.Module):
    """A float16 network whose forward casts its input."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 4)
        self.half()

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x.half())))


def test_synflow_float16_model_that_casts_its_input():
    torch.manual_seed(0)
    model = HalfNet()
    params = prunable_parameters(model)
    masks = compute_masks(model, params, "synflow", 0.5, example_inputs=torch.randn(1, 8), iterations=2)
    assert sum(int(m.sum()) for m in masks) == 96 - 48
    # Ranking the float16 flow gives the float32 ranking here (small values, no ties).
    twin = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    twin.load_state_dict({k.replace("fc1", "0").replace("fc2", "2"): v.float() for k, v in model.state_dict().items()})
    reference = compute_masks(twin, prunable_parameters(twin), "synflow", 0.5,
                              example_inputs=torch.randn(1, 8), iterations=2)
    assert sum(int((a != b).sum()) for a, b in zip(masks, reference)) <= 2


def test_synflow_says_what_is_wrong_instead_of_too_deep():
    model = plain_mlp(3, 8)
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    with pytest.raises(PruningError, match=r"parameter '2.weight' holds 1 NaN or infinite value"):
        synflow_masks(model, 0.5, 1, 8)

    model = plain_mlp(3, 8)
    with pytest.raises(PruningError, match=r"empty tensor .*shape=\(0, 8\)"):
        compute_masks(model, prunable_parameters(model), "synflow", 0.5, example_inputs=torch.randn(0, 8))

    prune.l1_unstructured(model[2], "weight", amount=1.0)  # an earlier prune disconnected the net
    with pytest.raises(PruningError, match=r"'2.weight' has no weight left .*pruned before this call"):
        synflow_masks(model, 0.5, 1, 8)


def test_synflow_overflow_in_float64_is_a_clear_error():
    model = plain_mlp(4, 8, torch.float64, every=1e120)
    with pytest.raises(PruningError, match="outside the range of torch.float64"):
        synflow_masks(model, 0.5, 1, 8)


def test_nan_parameters_are_named_for_every_criterion():
    model = plain_mlp(2, 4)
    with torch.no_grad():
        model[0].weight[1, 1] = float("inf")
    data = [(torch.randn(3, 4), torch.tensor([0, 1, 2]))]
    for criterion, kwargs in [("snip", {"data": data}), ("magnitude", {}), ("grasp", {"data": data})]:
        with pytest.raises(PruningError, match=r"'0.weight' holds 1 NaN or infinite"):
            compute_masks(model, prunable_parameters(model), criterion, 0.5, **kwargs)


# --------------------------------------------------------------------------- data and losses
def classifier():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize("labels,match", [
    (torch.tensor([0, 1, 7, 2]), r"cross-entropy.*targets tensor\(shape=\(4,\).*IndexError.*class indices"),
    (torch.tensor([0, 1, 2]), r"output tensor\(shape=\(4, 3\).*targets tensor\(shape=\(3,\)"),
    (torch.randn(4, 3), r"targets are tensor\(shape=\(4, 3\), dtype=torch.float32\).*loss_fn="),
])
@pytest.mark.parametrize("criterion", ["snip", "grasp"])
def test_bad_targets_with_the_default_loss_are_clear_errors(criterion, labels, match):
    model = classifier()
    with pytest.raises(PruningError, match=match):
        compute_masks(model, prunable_parameters(model), criterion, 0.5, data=[(torch.randn(4, 6), labels)])


def test_a_failing_loss_fn_is_named():
    model = classifier()

    def my_loss(logits, targets):
        raise RuntimeError("shapes disagree")

    with pytest.raises(PruningError, match=r"loss_fn=my_loss failed .*shapes disagree"):
        compute_masks(model, prunable_parameters(model), "snip", 0.5,
                      data=[(torch.randn(4, 6), torch.zeros(4, dtype=torch.long))], loss_fn=my_loss)


def test_float_targets_run_with_an_explicit_loss_fn():
    model = classifier()
    masks = compute_masks(model, prunable_parameters(model), "snip", 0.5,
                          data=[(torch.randn(4, 6), torch.randn(4, 3))], loss_fn=F.mse_loss)
    assert sum(int(m.sum()) for m in masks) == 72 - 36


class TokenHead(nn.Module):
    """(batch, time, features) in, (batch, time, vocabulary) logits out."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 7)

    def forward(self, x):
        return self.fc(x)


def test_default_loss_on_sequence_outputs_is_cross_entropy_over_tokens():
    torch.manual_seed(0)
    model = TokenHead()
    x, y = torch.randn(2, 4, 5), torch.randint(0, 7, (2, 4))
    (scores,) = compute_scores(model, [(model.fc, "weight")], "snip", data=[(x, y)])
    weight = model.fc.weight.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(F.linear(x, weight, model.fc.bias).reshape(-1, 7), y.reshape(-1))
    (grad,) = torch.autograd.grad(loss, weight)
    torch.testing.assert_close(scores, (grad * weight).abs().detach())


def test_an_endless_data_stream_needs_num_batches():
    model = classifier()
    batch = (torch.randn(4, 6), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(PruningError, match=rf"more than {MAX_UNSIZED_BATCHES} batches.*num_batches="):
        compute_masks(model, prunable_parameters(model), "snip", 0.5, data=itertools.cycle([batch]))
    masks = compute_masks(model, prunable_parameters(model), "snip", 0.5,
                          data=itertools.cycle([batch]), num_batches=3)
    reference = compute_masks(model, prunable_parameters(model), "snip", 0.5, data=[batch] * 3)
    assert all(torch.equal(a, b) for a, b in zip(masks, reference))


# --------------------------------------------------------------------------- arguments
def test_numpy_amounts_are_accepted_as_torch_does():
    model = classifier()
    params = prunable_parameters(model)
    x = torch.randn(1, 6)
    for amount, plain in [(np.int64(20), 20), (np.float32(0.5), 0.5), (np.float64(0.25), 0.25)]:
        a = compute_masks(model, params, "synflow", amount, example_inputs=x, iterations=2)
        b = compute_masks(model, params, "synflow", plain, example_inputs=x, iterations=2)
        assert all(torch.equal(u, v) for u, v in zip(a, b))
    prune.global_unstructured(params, pruning_method=SynFlow, amount=np.int64(10), model=model, example_inputs=x)
    assert sum(int((m.weight_mask == 0).sum()) for m, _ in params) == 10


@pytest.mark.parametrize("value", ["yes", 1, 0.5])
def test_progress_must_be_a_bool_or_none(value):
    model = classifier()
    with pytest.raises(PruningTypeError, match=rf"progress={value!r} should be True, False or None"):
        compute_masks(model, prunable_parameters(model), "magnitude", 0.5, progress=value)


@pytest.mark.parametrize("temperature", [float("inf"), float("nan"), 0, -1])
def test_grasp_temperature_must_be_positive_and_finite(temperature):
    model = classifier()
    with pytest.raises(PruningError, match="temperature=.* should be a positive finite number"):
        compute_masks(model, prunable_parameters(model), "grasp", 0.5, temperature=temperature,
                      data=[(torch.randn(2, 6), torch.tensor([0, 1]))])


class TiedLM(nn.Module):
    """An output layer that shares its weight with another linear layer."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(4, 6, bias=False)
        self.hidden = nn.Linear(6, 6)
        self.decoder = nn.Linear(6, 4, bias=False)
        self.decoder.weight = nn.Parameter(self.encoder.weight.detach().t().contiguous())
        self.tied = nn.Linear(4, 6, bias=False)
        self.tied.weight = self.encoder.weight

    def forward(self, x):
        return self.decoder(torch.relu(self.hidden(self.encoder(x)))) + self.tied(x).sum()


@pytest.mark.parametrize("method", [SNIP, SynFlow])
def test_a_tied_weight_is_ranked_once_and_every_use_gets_its_mask(method, recwarn):
    model = TiedLM()
    params = prunable_parameters(model)
    assert [m for m, _ in params] == [model.encoder, model.hidden, model.decoder, model.tied]
    x = torch.randn(3, 4)
    kwargs = dict(data=[(x, torch.tensor([0, 1, 3]))]) if method is SNIP else dict(example_inputs=x)
    prune.global_unstructured(params, pruning_method=method, amount=0.5, model=model, **kwargs)
    assert not [w for w in recwarn if issubclass(w.category, TiedWeightWarning)]
    assert torch.equal(model.encoder.weight_mask, model.tied.weight_mask)
    assert model.encoder.weight_orig is model.tied.weight_orig
    unique = [model.encoder, model.hidden, model.decoder]  # the tied tensor counts once
    assert sum(int((m.weight_mask == 0).sum()) for m in unique) == round(0.5 * (24 + 36 + 24))
    with torch.no_grad():
        masked = model(x)
        for m, n in params:
            prune.remove(m, n)
        assert torch.equal(model(x), masked)  # every use was masked: removing the masks changes nothing
    # The core agrees: one mask per pair, the same for both uses.
    fresh = TiedLM()
    masks = compute_masks(fresh, prunable_parameters(fresh), "magnitude", 0.5)
    assert len(masks) == 4 and torch.equal(masks[0], masks[3]) and masks[0] is not masks[3]


def test_a_tied_weight_pruned_through_one_use_is_warned_about():
    model = TiedLM()
    with pytest.warns(TiedWeightWarning, match=r"'encoder.weight' is tied: 'tied.weight' reads the same tensor"):
        prune.global_unstructured([(model.encoder, "weight"), (model.hidden, "weight")], pruning_method=Magnitude,
                                  amount=0.5, model=model)
    model = TiedLM()
    with pytest.warns(TiedWeightWarning, match=r"'tied.weight' is tied: 'encoder.weight'"):
        synflow_unstructured(model.tied, "weight", 0.5, model=model, example_inputs=torch.randn(1, 4))


def test_scores_near_float64s_smallest_normal_are_warned_about():
    # A float64 net whose flow is ~1e-306: nothing wider to move to, so the ranking may
    # be inexact there, and that is said (once per call), not hidden.
    from synflow_plugin.masking import PrecisionWarning

    model = plain_mlp(2, 2, torch.float64)
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64) * 1e-154)
    with pytest.warns(PrecisionWarning, match=r"'0.weight'.*smallest normal torch.float64") as record:
        masks = synflow_masks(model, 0.5, 2, 2)
    assert sum(int(m.sum()) for m in masks) == 4
    assert sum(issubclass(w.category, PrecisionWarning) for w in record) == 1


def test_a_round_promoted_by_synflow_itself_still_prunes_its_count():
    # The flow of this float32 net leaves float32, so SynFlow moves the copy to float64
    # while scoring; some float64 scores then lie near its smallest normal. The round
    # cannot widen further: it must prune (and warn), not hold back and keep every weight.
    from synflow_plugin.masking import PrecisionWarning

    torch.manual_seed(4)
    model = nn.Sequential(*[m for _ in range(40) for m in (nn.Linear(64, 64, bias=False), nn.ReLU())])
    with torch.no_grad():
        for layer in model[::2]:
            layer.weight.mul_(5e-9)
    with pytest.warns(PrecisionWarning):
        masks = compute_masks(model, prunable_parameters(model), "synflow", 0.9, example_inputs=torch.randn(1, 64),
                              iterations=1)
    assert sum(int(m.sum()) for m in masks) == round(0.1 * 40 * 64 * 64)


def test_reports_and_sanity_checks_treat_a_tied_weight_as_one_tensor():
    from synflow_plugin.diagnostics import layer_report
    from synflow_plugin.sanity import reinitialize_, shuffle_masks_

    model = TiedLM()
    params = prunable_parameters(model)
    prune.global_unstructured(params, pruning_method=Magnitude, amount=0.5)
    rows = layer_report(model)
    assert [r.name for r in rows] == ["encoder.weight", "hidden.weight", "decoder.weight"]  # 'tied' is encoder's
    assert sum(r.size for r in rows) == 24 + 36 + 24
    shuffle_masks_(model, seed=0)
    assert torch.equal(model.encoder.weight_mask, model.tied.weight_mask)
    assert torch.equal(model.encoder.weight, model.tied.weight)
    reinitialize_(model, seed=0)
    assert model.encoder.weight_orig is model.tied.weight_orig
    assert torch.equal(model.encoder.weight, model.tied.weight)


def test_a_computed_weight_is_named_not_silently_left_out():
    from torch.nn.utils import parametrizations

    from synflow_plugin.targets import ComputedWeightWarning

    model = nn.Sequential(parametrizations.weight_norm(nn.Linear(8, 16)), nn.ReLU(), nn.Linear(16, 4),
                          nn.utils.spectral_norm(nn.Linear(4, 4)))
    with pytest.warns(ComputedWeightWarning, match=r"'0.weight', '3.weight' are computed from other tensors"):
        params = prunable_parameters(model)
    assert params == [(model[2], "weight")]


def test_bad_requests_get_errors_that_name_the_fix():
    x, y = torch.randn(2, 8), torch.tensor([0, 1])
    model = nn.Sequential(nn.Linear(8, 13), nn.ReLU(), nn.Linear(13, 7), nn.ReLU(), nn.Linear(7, 3))
    params = prunable_parameters(model)
    with pytest.raises(PruningError, match="does not depend on the model's output through autograd"):
        compute_masks(model, params, "snip", 0.5, data=[(x, y)], loss_fn=lambda out, t: out.sum().detach())
    with pytest.raises(PruningError, match=r"amount=100 weights from each tensor .*'4.weight' has only 21"):
        compute_masks(model, params, "magnitude", 100, scope="local")
    lazy = nn.Sequential(nn.LazyLinear(16), nn.ReLU(), nn.Linear(16, 4))
    with pytest.raises(PruningError, match=r"'0.weight' is not initialised yet .*LazyLinear.*Run the model once"):
        compute_masks(lazy, prunable_parameters(lazy), "synflow", 0.5, example_inputs=x)
    depthwise = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8), nn.ReLU(),
                              nn.Flatten(), nn.Linear(128, 4))
    inputs = torch.randn(1, 3, 8, 8)
    with pytest.raises(PruningError, match="groups=8, which it cannot walk") as error:
        compute_masks(depthwise, prunable_parameters(depthwise), "phew", 0.5, example_inputs=inputs)
    advice = str(error.value).split("e.g. ", 1)[1].split(", or use", 1)[0]  # the list it suggests works
    walkable = eval(advice, {"prunable_parameters": prunable_parameters, "model": depthwise, "nn": nn})
    assert len(compute_masks(depthwise, walkable, "phew", 0.5, example_inputs=inputs)) == 2


def test_making_masks_permanent_refuses_a_tied_weight_masked_on_one_use_only():
    from synflow_plugin.export import make_permanent

    model = TiedLM()
    prune.l1_unstructured(model.encoder, "weight", amount=0.9)  # torch's own: 'tied' keeps every weight
    with pytest.raises(PruningError, match=r"'encoder.weight' and 'tied.weight' are one tensor \(tied\) but masked "
                                           r"differently \('encoder.weight' keeps 8.3%, 'tied.weight' keeps 100.0%\)"):
        make_permanent(model)
    assert prune.is_pruned(model.encoder)  # nothing changed
    prune.l1_unstructured(model.tied, "weight", amount=0.9)  # now both uses are masked alike
    plain = make_permanent(model)
    assert plain.encoder.weight is plain.tied.weight


def test_a_diverged_training_is_said_and_its_json_stays_strict(tmp_path):
    import json

    from synflow_plugin._files import write_json_atomic
    from synflow_plugin.train import train_model

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 8), torch.randint(0, 3, (32,)))
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    with pytest.warns(RuntimeWarning, match=r"the training diverged .*'0.weight'.*smaller lr \(lr=1e\+30\)"):
        result = train_model(model, data, data, epochs=3, lr=1e30, progress=False)
    write_json_atomic(tmp_path / "history.json", {"history": result.history, "inf": float("inf")})
    saved = json.loads((tmp_path / "history.json").read_text(),
                       parse_constant=lambda token: pytest.fail(f"non-JSON token {token}"))
    assert saved["inf"] is None


def test_a_tied_weight_masked_before_stays_one_tensor_in_the_scoring_copy():
    from synflow_plugin.export import make_permanent
    from synflow_plugin.targets import scoring_copy

    x = torch.randn(1, 4)
    model = TiedLM()
    prune.global_unstructured(prunable_parameters(model), pruning_method=SynFlow, amount=0.5, model=model,
                              example_inputs=x)
    copy = scoring_copy(model)
    assert copy.encoder.weight is copy.tied.weight
    # The second round's scores are those of the same network with its masks baked in.
    baked = make_permanent(model)
    again = compute_scores(model, prunable_parameters(model), "synflow", example_inputs=x)
    assert all(torch.equal(a, b) for a, b in zip(again, compute_scores(baked, prunable_parameters(baked), "synflow",
                                                                         example_inputs=x)))
    # One use masked (torch's own method), the other not: the copy reads one tensor, masked.
    model = TiedLM()
    prune.l1_unstructured(model.encoder, "weight", amount=0.5)
    copy = scoring_copy(model)
    assert copy.encoder.weight is copy.tied.weight and int((copy.tied.weight == 0).sum()) == 12


def test_a_tied_embedding_a_view_replaces_gets_the_mask_of_its_output_layer():
    from synflow_plugin import embeddings_as_inputs

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.hid, self.out = nn.Embedding(10, 4), nn.Linear(4, 4), nn.Linear(4, 10, bias=False)
            self.out.weight = self.embed.weight

        def forward(self, tokens):
            return self.out(torch.relu(self.hid(self.embed(tokens))))

    lm = LM()
    params = prunable_parameters(lm)
    prune.global_unstructured(params, pruning_method=SynFlow, amount=0.5, model=embeddings_as_inputs(lm, "embed"),
                              example_inputs=torch.randn(1, 3, 4))
    assert torch.equal(lm.embed.weight_mask, lm.out.weight_mask)
    with pytest.raises(PruningError, match="a Linear module in the list is not part of"):
        compute_masks(lm.hid, [(lm.out, "weight")], "magnitude", 0.5)


def test_collapse_sweeps_and_reports_count_a_tied_weight_once_and_computed_weights_each():
    from torch.nn.utils import parametrizations

    from synflow_plugin.diagnostics import critical_compression, layer_report

    result = critical_compression(TiedLM, "magnitude", max_exponent=0.5, step=0.5, progress=False)
    assert list(result.densities[-1]) == ["encoder.weight", "hidden.weight", "decoder.weight"]
    assert result.points[-1]["density"] == (84 - round((1 - 10 ** -0.5) * 84)) / 84
    model = nn.Sequential(parametrizations.weight_norm(nn.Linear(4, 4)), nn.ReLU(),
                          parametrizations.weight_norm(nn.Linear(4, 4)))
    assert [r.name for r in layer_report(model, [(model[0], "weight"), (model[2], "weight")])] == \
        ["0.weight", "2.weight"]
