"""The criteria's scores against hand-worked values and the paper's conservation law."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from synflow_plugin import PruningError, compute_scores, get_criterion, list_criteria, prunable_parameters
from synflow_plugin.criteria import CRITERIA, Criterion, register_criterion
from synflow_plugin.diagnostics import conservation_gap
from synflow_plugin.models import create_model


def two_layer_linear() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
        model[1].weight.copy_(torch.tensor([[-4.0, 2.0]]))
    return model


def test_synflow_two_layer_linear_by_hand():
    # R = 1ᵀ|W2||W1|1 = 4*(1+2) + 2*(3+0.5) = 19.
    # Score of W1[i,j] = |W1[i,j]| * |W2[0,i]|; score of W2[0,i] = |W2[0,i]| * sum_j |W1[i,j]|.
    model = two_layer_linear()
    s1, s2 = compute_scores(model, prunable_parameters(model), "synflow", example_inputs=torch.randn(1, 2))
    torch.testing.assert_close(s1, torch.tensor([[4.0, 8.0], [6.0, 1.0]]))
    torch.testing.assert_close(s2, torch.tensor([[12.0, 7.0]]))
    assert s1.sum().item() == s2.sum().item() == 19.0


def test_magnitude_snip_and_grasp_by_hand():
    model = two_layer_linear()
    x, y = torch.tensor([[1.0, 1.0]]), torch.tensor([0.5])
    loss_fn = lambda out, t: 0.5 * ((out.squeeze(1) - t) ** 2).sum()  # noqa: E731
    params = prunable_parameters(model)
    (m1, m2) = compute_scores(model, params, "magnitude")
    torch.testing.assert_close(m1, model[0].weight.abs().detach())

    # out = W2 W1 x = -4*(-1) + 2*(3.5) = 11; dL/dout = 10.5.
    # dL/dW2 = 10.5 * (W1 x) = 10.5 * [-1, 3.5]; dL/dW1[i,:] = 10.5 * W2[0,i] * x.
    s1, s2 = compute_scores(model, params, "snip", data=[(x, y)], loss_fn=loss_fn)
    torch.testing.assert_close(s2, (model[1].weight * 10.5 * torch.tensor([[-1.0, 3.5]])).abs().detach())
    torch.testing.assert_close(s1, (model[0].weight * 10.5 * torch.tensor([[-4.0], [2.0]])).abs().detach())

    # GraSP: θ ⊙ Hg with H the Hessian of L (T = 1 here), checked with autograd.functional.hvp.
    g1, g2 = compute_scores(model, params, "grasp", data=[(x, y)], loss_fn=loss_fn, temperature=1.0)
    w = torch.cat([p.detach().reshape(-1) for p, _ in ((model[0].weight, 0), (model[1].weight, 0))])

    def loss_of(flat):
        w1, w2 = flat[:4].reshape(2, 2), flat[4:].reshape(1, 2)
        return loss_fn(x @ w1.T @ w2.T, y)

    grad = torch.autograd.functional.jacobian(loss_of, w)
    _, hg = torch.autograd.functional.hvp(loss_of, w, grad)
    expected = w * hg
    torch.testing.assert_close(torch.cat([g1.reshape(-1), g2.reshape(-1)]), expected)


def test_grasp_temperature_changes_the_scores_and_is_validated():
    torch.manual_seed(0)
    model = create_model("mlp", num_classes=3, input_shape=(4,), depth=3, width=8)
    data = [(torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2]))]
    a = compute_scores(model, prunable_parameters(model), "grasp", data=data)
    b = compute_scores(model, prunable_parameters(model), "grasp", data=data, temperature=1.0)
    assert not torch.allclose(a[0], b[0])
    with pytest.raises(PruningError, match="temperature=-1"):
        compute_scores(model, prunable_parameters(model), "grasp", data=data, temperature=-1)


@pytest.mark.parametrize("depth", [3, 8])
def test_synflow_conservation_law_bias_free_relu(depth):
    torch.manual_seed(depth)
    model = create_model("mlp", num_classes=10, input_shape=(32,), depth=depth, width=64, bias=False)
    scores = compute_scores(model, prunable_parameters(model), "synflow", example_inputs=torch.randn(1, 32))
    assert conservation_gap(scores) < 1e-4


def test_synflow_conservation_law_conv_net():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.ReLU(), nn.Conv2d(8, 8, 3, bias=False),
                          nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5, bias=False))
    scores = compute_scores(model, prunable_parameters(model), "synflow", example_inputs=torch.randn(1, 3, 8, 8))
    assert conservation_gap(scores) < 1e-4
    # The gap is not trivially zero: a network with biases breaks the law.
    model_b = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    with torch.no_grad():
        model_b[2].bias.fill_(3.0)
        model_b[0].bias.fill_(3.0)
    gap = conservation_gap(compute_scores(model_b, prunable_parameters(model_b), "synflow",
                                          example_inputs=torch.randn(1, 8)))
    assert gap > 1e-2


def test_synflow_handles_tuple_and_dict_outputs():
    class TwoHeads(nn.Module):
        def __init__(self, as_dict):
            super().__init__()
            self.body, self.a, self.b, self.as_dict = nn.Linear(4, 4, bias=False), nn.Linear(4, 2, bias=False), \
                nn.Linear(4, 3, bias=False), as_dict

        def forward(self, x):
            h = torch.relu(self.body(x))
            return {"logits": self.a(h), "aux": self.b(h)} if self.as_dict else (self.a(h), self.b(h))

    torch.manual_seed(0)
    tup = TwoHeads(False)
    dic = TwoHeads(True)
    dic.load_state_dict(tup.state_dict())
    s_tup = compute_scores(tup, prunable_parameters(tup), "synflow", example_inputs=torch.randn(1, 4))
    s_dic = compute_scores(dic, prunable_parameters(dic), "synflow", example_inputs=torch.randn(1, 4))
    for a, b in zip(s_tup, s_dic):
        torch.testing.assert_close(a, b)
    # R sums both heads: the body carries the flow of both.
    torch.testing.assert_close(s_tup[0].sum(), s_tup[1].sum() + s_tup[2].sum())
    # SNIP on a dict output uses the 'logits' entry.
    snip = compute_scores(dic, prunable_parameters(dic), "snip", data=[(torch.randn(3, 4), torch.tensor([0, 1, 1]))])
    assert snip[2].abs().sum() == 0 and snip[1].abs().sum() > 0


def test_registry_lists_every_criterion_and_rejects_unknown_names():
    assert list_criteria() == ["random", "magnitude", "snip", "itersnip", "force", "grasp", "synflow", "gemminer", "imp", "ntksap", "prospr", "phew"]
    assert get_criterion("SynFlow").name == "synflow"
    with pytest.raises(PruningError, match=r"unknown criterion 'synflw'; expected one of: random, magnitude"):
        get_criterion("synflw")
    with pytest.raises(PruningError, match="batchnorm='train'"):
        get_criterion("synflow", batchnorm="train")
    with pytest.raises(PruningError, match="invalid options"):
        get_criterion("magnitude", seed=3)


def test_register_custom_criterion():
    class Ones(Criterion):
        name = "ones-test"

        def score(self, state):
            return [torch.ones_like(p) for p in state.params]

    register_criterion(Ones)
    try:
        model = two_layer_linear()
        scores = compute_scores(model, prunable_parameters(model), "ones-test")
        assert [int(s.sum()) for s in scores] == [4, 2]
        with pytest.raises(PruningError, match="already registered"):
            register_criterion(type("Other", (Ones,), {}))
        with pytest.raises(PruningError, match=r"Upper.name = 'Ones-Test': registry names are lower case.*"
                                               r"use name = 'ones-test'"):
            register_criterion(type("Upper", (Ones,), {"name": "Ones-Test"}))
    finally:
        from synflow_plugin.criteria import CRITERIA
        CRITERIA.pop("ones-test")


def test_random_is_seeded_and_leaves_global_rng_alone():
    model = two_layer_linear()
    state = torch.random.get_rng_state()
    a = compute_scores(model, prunable_parameters(model), "random", seed=7)
    b = compute_scores(model, prunable_parameters(model), "random", seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = compute_scores(model, prunable_parameters(model), "random", seed=8)
    assert not torch.equal(a[0], c[0])


def test_scores_of_pruned_weights_are_zero_for_weight_proportional_criteria():
    model = two_layer_linear()
    torch.nn.utils.prune.custom_from_mask(model[0], "weight", torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    s1, _ = compute_scores(model, prunable_parameters(model), "synflow", example_inputs=torch.randn(1, 2))
    assert s1[0, 1] == 0 and s1[0, 0] > 0
    m1, _ = compute_scores(model, prunable_parameters(model), "magnitude")
    assert m1[0, 1] == 0 and math.isclose(m1[1, 0].item(), 3.0)


@pytest.mark.parametrize("name", sorted(n for n, cls in CRITERIA.items() if cls.seeded))
def test_every_seeded_criterion_reads_seed_alike(name):
    import numpy as np

    assert get_criterion(name, seed=np.int64(3)).seed == 3 and type(get_criterion(name, seed=np.int64(3)).seed) is int
    assert get_criterion(name, seed=None).seed is None
    for bad in (True, np.bool_(False), 1.5, "3"):
        with pytest.raises(PruningError, match=rf"{name}: seed={bad!r} should be an int or None"):
            get_criterion(name, seed=bad)
