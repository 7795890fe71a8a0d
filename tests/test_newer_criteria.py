"""NTK-SAP, ProsPr, PHEW and SynFlow-L2: hand-worked scores, identities, seeds, hosts and errors."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.utils import prune

import synflow_plugin
from synflow_plugin import PruningError, PruningTypeError, compute_masks, compute_scores, prunable_parameters
from synflow_plugin.criteria import get_criterion
from synflow_plugin.criteria.ntk_sap import NTKSAPWarning, _batch_statistics
from synflow_plugin.criteria.phew import PHEWCriterion, PHEWWarning, _Layer
from synflow_plugin.criteria.prospr import ProsPrWarning
from synflow_plugin.session import ScoringRequest, ScoringSession


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 3))


def batches(n: int = 2, shape=(6,), classes: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, *shape, generator=g), torch.randint(0, classes, (4,), generator=g)) for _ in range(n)]


def snapshot(model: nn.Module):
    return ({k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()],
            [p.requires_grad for p in model.parameters()])


def assert_untouched(model: nn.Module, before) -> None:
    state, modes, grads = before
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == grads
    now = model.state_dict()
    assert now.keys() == state.keys()
    assert all(torch.equal(now[k], v) for k, v in state.items())


# ============================================================================ NTK-SAP
def test_ntksap_on_one_linear_layer_matches_the_closed_form():
    """f = (W ⊙ m)x + b: the perturbed distance is ε²‖Δx‖², whose mask gradient is
    2ε² Σ_b (Δx_b)_i Δ_ij x_bj, whatever W is (and W is re-drawn anyway)."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 3))
    example = torch.zeros(2, 4)
    torch.manual_seed(11)
    score = compute_scores(model, prunable_parameters(model), "ntksap", example_inputs=example,
                           seed=None, draws=1, epsilon=0.1)[0]
    twin = copy.deepcopy(model)
    torch.manual_seed(11)
    twin[0].reset_parameters()  # the same draws, in the same order
    x = torch.randn(2, 4)
    delta = torch.randn(3, 4)
    expected = (2 * 0.1 ** 2 * torch.einsum("bi,ij,bj->ij", x @ delta.T, delta, x)).abs()
    torch.testing.assert_close(score, expected, rtol=1e-4, atol=1e-9)


def test_ntksap_mask_gradient_matches_finite_differences_on_a_two_layer_net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    example = torch.zeros(5, 3, dtype=torch.float64)
    eps = 0.05
    torch.manual_seed(7)
    scores = compute_scores(model, prunable_parameters(model), "ntksap", example_inputs=example,
                            seed=None, draws=1, epsilon=eps)
    twin = copy.deepcopy(model)
    torch.manual_seed(7)
    for module in twin.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    x = torch.randn(5, 3, dtype=torch.float64)
    deltas = [torch.randn_like(twin[0].weight), torch.randn_like(twin[2].weight)]
    weights = [twin[0].weight.detach(), twin[2].weight.detach()]

    @torch.no_grad()
    def distance(masks):
        plain = {"0.weight": weights[0] * masks[0], "2.weight": weights[1] * masks[1]}
        moved = {"0.weight": (weights[0] + eps * deltas[0]) * masks[0],
                 "2.weight": (weights[1] + eps * deltas[1]) * masks[1]}
        return float((functional_call(twin, plain, (x,)) - functional_call(twin, moved, (x,))).square().sum())

    h = 1e-6
    for layer, (i, j) in ((0, (1, 2)), (0, (3, 0)), (1, (0, 3)), (1, (1, 1))):
        up = [torch.ones_like(w) for w in weights]
        down = [torch.ones_like(w) for w in weights]
        up[layer][i, j] += h
        down[layer][i, j] -= h
        numeric = abs(distance(up) - distance(down)) / (2 * h)
        assert math.isclose(float(scores[layer][i, j]), numeric, rel_tol=1e-5, abs_tol=1e-12)


def test_ntksap_is_seeded_leaves_the_global_rng_and_the_model_alone():
    model, x = cnn(), torch.randn(1, 3, 4, 4)
    params = prunable_parameters(model)
    before, rng = snapshot(model), torch.get_rng_state()
    a = compute_masks(model, params, "ntksap", 0.8, example_inputs=x, iterations=3, seed=4)
    b = compute_masks(model, params, "ntksap", 0.8, example_inputs=x, iterations=3, seed=4)
    c = compute_scores(model, params, "ntksap", example_inputs=x, seed=5)
    d = compute_scores(model, params, "ntksap", example_inputs=x, seed=4)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(c[0], d[0])
    assert torch.equal(torch.get_rng_state(), rng)
    assert_untouched(model, before)
    assert sum(int(m.sum()) for m in a) == sum(p.numel() for p in (m.weight for m, _ in params)) - round(
        0.8 * sum(m.weight.numel() for m, _ in params))


def test_ntksap_redrawn_weights_keep_earlier_pruning():
    model, x = mlp(), torch.randn(2, 6)
    prune.random_unstructured(model[2], "weight", amount=0.5)
    pruned = ~model[2].weight_mask.bool()
    before = snapshot(model)
    scores = compute_scores(model, prunable_parameters(model), "ntksap", example_inputs=x)
    assert bool(scores[1][pruned].eq(0).all()) and bool(scores[1][~pruned].gt(0).any())
    masks = compute_masks(model, prunable_parameters(model), "ntksap", 0.5, example_inputs=x, iterations=4)
    assert not bool((masks[1] & pruned).any())
    assert_untouched(model, before)


def test_ntksap_names_the_pruned_tensors_it_cannot_redraw():
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.attn, self.out = nn.Linear(6, 8), nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 3)

        def forward(self, x):
            h = self.inp(x)
            return self.out(self.attn(h, h, h, need_weights=False)[0].mean(dim=1))

    torch.manual_seed(0)
    model = Attention()
    x = torch.randn(2, 4, 6)
    with pytest.warns(NTKSAPWarning, match=r"attn\.in_proj_weight is not re-drawn") as record:
        compute_masks(model, prunable_parameters(model), "ntksap", 0.5, example_inputs=x, iterations=1)
    assert "inp.weight" not in str(record[0].message)  # nn.Linear re-draws its own
    plain = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error", NTKSAPWarning)
        compute_masks(plain, prunable_parameters(plain), "ntksap", 0.5, example_inputs=torch.randn(2, 6), iterations=1)

    class Scaled(nn.Linear):  # inherits nn.Linear's reset_parameters, which knows nothing of `gain`
        def __init__(self, *args):
            super().__init__(*args)
            self.gain = nn.Parameter(torch.ones(self.out_features, self.in_features))

        def forward(self, x):
            return F.linear(x, self.weight * self.gain, self.bias)

    class Owner(nn.Module):  # re-draws its child's weight itself
        def __init__(self):
            super().__init__()
            self.child = Scaled(6, 8)
            self.child.reset_parameters = None
            self.out = nn.Linear(8, 3)

        def reset_parameters(self):
            nn.init.normal_(self.child.weight)

        def forward(self, x):
            return self.out(self.child(x))

    model = Owner()
    params = [(model.child, "weight"), (model.child, "gain"), (model.out, "weight")]
    with pytest.warns(NTKSAPWarning) as record:
        compute_masks(model, params, "ntksap", 0.5, example_inputs=torch.randn(2, 6), iterations=1)
    message = str(record[0].message)
    assert message.startswith("ntksap: child.gain is not re-drawn") and "child.weight" not in message


def test_ntksap_batch_statistics_are_those_of_a_momentum_one_train_pass():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 16, 5), nn.BatchNorm1d(5))
    x = torch.randn(4, 2, 6, 6)
    reference = copy.deepcopy(model).train()
    for m in reference.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 1.0
    with torch.no_grad():
        reference(x)
    model.eval()
    _batch_statistics(model, lambda: model(x))
    for ours, theirs in ((model[1], reference[1]), (model[5], reference[5])):
        torch.testing.assert_close(ours.running_mean, theirs.running_mean)
        torch.testing.assert_close(ours.running_var, theirs.running_var)
    # One value per channel (batch 1 into BatchNorm1d) is accepted: variance 0, no error.
    _batch_statistics(model, lambda: model(x[:1]))
    assert bool(model[5].running_var.eq(0).all())


def test_ntksap_errors_name_what_to_pass():
    model = mlp()
    with pytest.raises(PruningError, match="NTKSAP needs example_inputs="):
        compute_masks(model, prunable_parameters(model), "ntksap", 0.5)
    with pytest.raises(PruningTypeError, match="floating-point example_inputs"):
        compute_masks(model, prunable_parameters(model), "ntksap", 0.5,
                      example_inputs=torch.ones(1, 6, dtype=torch.long))
    with pytest.raises(PruningError, match="epsilon=0 should be a positive"):
        get_criterion("ntksap", epsilon=0)
    with pytest.raises(PruningError, match="draws=0 should be a positive int"):
        get_criterion("ntksap", draws=0)
    assert get_criterion("ntksap").default_iterations == 20


# ============================================================================ ProsPr
def test_prospr_with_no_inner_step_is_snip_on_the_first_batch():
    model, data = mlp(), batches(2)
    params = prunable_parameters(model)
    prospr = compute_scores(model, params, "prospr", data=data, steps=0)
    snip = compute_scores(model, params, "snip", data=data[:1])
    for a, b in zip(prospr, snip):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)


def test_prospr_one_step_on_a_linear_unit_matches_the_hand_formula():
    """L = ½(w·x − y)²; one step w₁ = θ⊙m − η(θ·x − y)x; ∂L(w₁)/∂m_i = r₁ θ_i x_i (1 − η|x|²)
    with r₁ = (1 − η|x|²)(θ·x − y)."""
    model = nn.Linear(3, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, -1.0, 2.0]]))
    x, y = torch.tensor([[1.0, 2.0, -0.5]], dtype=torch.float64), torch.tensor([[0.25]], dtype=torch.float64)
    lr = 0.1
    score = compute_scores(model, [(model, "weight")], "prospr", data=[(x, y)], steps=1, lr=lr, momentum=0.9,
                           loss_fn=lambda out, t: 0.5 * (out - t).square().sum())[0]
    theta, shrink = model.weight.detach()[0], 1 - lr * float(x.square().sum())
    residual = float(theta @ x[0]) - 0.25
    expected = (theta * x[0] * shrink ** 2 * residual).abs()
    torch.testing.assert_close(score[0], expected)


def test_prospr_meta_gradient_through_two_momentum_steps_matches_finite_differences():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    data = [(torch.randn(5, 3, dtype=torch.float64), torch.randint(0, 2, (5,))) for _ in range(2)]
    lr, mu = 0.3, 0.9
    scores = compute_scores(model, prunable_parameters(model), "prospr", data=data, steps=2, lr=lr, momentum=mu)

    def loss_after_steps(masks):
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
        params["0.weight"] = params["0.weight"] * masks[0]
        params["2.weight"] = params["2.weight"] * masks[1]
        buffers = {}
        for k in range(2):  # batch 0, then batch 1; the meta-loss cycles back to batch 0
            params = {n: p.requires_grad_(True) for n, p in params.items()}
            x, y = data[k]
            loss = F.cross_entropy(functional_call(model, params, (x,)), y)
            grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
            with torch.no_grad():
                for n in params:
                    buffers[n] = grads[n] if k == 0 else mu * buffers[n] + grads[n]
                params = {n: (p - lr * buffers[n]).detach() for n, p in params.items()}
        x, y = data[0]
        return float(F.cross_entropy(functional_call(model, params, (x,)), y))

    h = 1e-6
    for layer, (i, j) in ((0, (2, 1)), (1, (1, 3))):
        up = [torch.ones(4, 3, dtype=torch.float64), torch.ones(2, 4, dtype=torch.float64)]
        down = [u.clone() for u in up]
        up[layer][i, j] += h
        down[layer][i, j] -= h
        numeric = abs(loss_after_steps(up) - loss_after_steps(down)) / (2 * h)
        assert math.isclose(float(scores[layer][i, j]), numeric, rel_tol=1e-5, abs_tol=1e-10)


def test_prospr_trains_nothing_in_place_and_leaves_the_model_alone():
    model, data = mlp(), batches(3)
    model.train()
    before = snapshot(model)
    request = ScoringRequest.build("prospr", data=data)
    with ScoringSession(model, prunable_parameters(model), request) as session:
        copy_state = {k: v.clone() for k, v in session.state.model.state_dict().items()}
        first, second = session.scores(), session.scores()
        assert all(torch.equal(v, session.state.model.state_dict()[k]) for k, v in copy_state.items())
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert_untouched(model, before)


def test_prospr_steps_that_overflow_go_to_float64_then_to_a_smaller_rate_and_say_so():
    model, data = mlp(), batches(2)
    with torch.no_grad():
        model[0].weight.mul_(1e20)  # the steps overflow float32, not float64
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = compute_scores(model, prunable_parameters(model), "prospr", data=data)
    assert all(s.dtype == torch.float64 and bool(torch.isfinite(s).all()) for s in scores)
    model = mlp()
    with pytest.warns(ProsPrWarning, match=r"diverge with lr=1e\+40 .* taken with lr=1.0e\+35"):
        scores = compute_scores(model, prunable_parameters(model), "prospr", data=data, lr=1e40)
    assert all(bool(torch.isfinite(s).all()) for s in scores) and all(bool(s.gt(0).any()) for s in scores)
    with pytest.raises(PruningError, match=r"diverge \(the loss before step 3 is nan\) with lr=1e\+80"):
        compute_scores(model, prunable_parameters(model), "prospr", data=data, lr=1e80)


def test_prospr_errors_name_what_to_pass():
    model = mlp()
    with pytest.raises(PruningError, match="prospr is data-driven: pass data="):
        compute_masks(model, prunable_parameters(model), "prospr", 0.5)
    with pytest.raises(PruningError, match="steps=-1 should be an int >= 0"):
        get_criterion("prospr", steps=-1)
    with pytest.raises(PruningError, match=r"momentum=1 should be in \[0, 1\)"):
        get_criterion("prospr", momentum=1)


# ============================================================================ PHEW
def test_phew_walk_probabilities_are_proportional_to_weight_magnitudes(monkeypatch):
    import synflow_plugin.criteria.phew as phew

    weight = torch.tensor([[1.0, -3.0], [2.0, 0.0], [-1.0, 1.0]])  # (out=3, in=2)
    crossings: list[torch.Tensor] = []
    monkeypatch.setattr(phew, "_record", lambda first, flat, times: crossings.append(flat))
    walks = 30000
    starts = torch.arange(walks)
    PHEWCriterion()._forward([_Layer(weight)], [None], starts, starts, torch.Generator().manual_seed(0))
    counts = torch.bincount(crossings[0], minlength=6).reshape(3, 2)
    # Forward walks start at input units 0, 1, 0, 1, ... and pick the output i ∝ |W[i, j]|.
    expected = (weight.abs() / weight.abs().sum(0)).double()
    torch.testing.assert_close(counts.double() / (walks / 2), expected, atol=0.02, rtol=0)
    assert counts[1, 1] == 0  # a zero weight is never crossed


def test_phew_scores_follow_the_first_crossings_on_a_one_path_network():
    model = nn.Sequential(nn.Linear(1, 2, bias=False), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[3.0], [0.0]]))
        model[1].weight.copy_(torch.tensor([[2.0, 0.0]]))
    s0, s1 = compute_scores(model, prunable_parameters(model), "phew")
    # Walk 0 (forward) crosses W0[0,0] at time 0 and W1[0,0] at time 1: nothing else has mass.
    assert float(s0[0, 0]) > float(s1[0, 0]) > 2 and float(s0[1, 0]) == float(s1[0, 1]) == 0
    masks = compute_masks(model, prunable_parameters(model), "phew", 2)
    assert masks[0].tolist() == [[True], [False]] and masks[1].tolist() == [[True, False]]


def test_phew_keeps_an_exact_count_of_nested_walked_masks_and_is_seeded():
    model, x = cnn(), torch.randn(1, 3, 4, 4)
    params = prunable_parameters(model)
    total = sum(m.weight.numel() for m, _ in params)
    before, rng = snapshot(model), torch.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a conv-conv-flatten-linear chain: no break to warn about
        scores = compute_scores(model, params, "phew", seed=3)
        sparse = compute_masks(model, params, "phew", 0.95, seed=3)
        dense = compute_masks(model, params, "phew", 0.92, seed=3)
        again = compute_masks(model, params, "phew", 0.95, seed=3)
        other = compute_masks(model, params, "phew", 0.95, seed=4)
    assert sum(int(m.sum()) for m in sparse) == total - round(0.95 * total)
    assert all(torch.equal(a, b) for a, b in zip(sparse, again))
    assert not all(torch.equal(a, b) for a, b in zip(sparse, other))
    assert all(bool((a <= b).all()) for a, b in zip(sparse, dense))  # the first k crossings are nested
    assert all(bool(s[m].gt(2).all()) for s, m in zip(scores, dense))  # every kept weight was walked
    assert torch.equal(torch.get_rng_state(), rng)
    assert_untouched(model, before)


def test_phew_never_walks_a_pruned_weight():
    model = cnn()
    prune.random_unstructured(model[3], "weight", amount=0.7)
    pruned = ~model[3].weight_mask.bool()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PHEWWarning)  # every weight asked for: the cap may stop the walks first
        scores = compute_scores(model, prunable_parameters(model), "phew", coverage=1.0)
    assert bool(scores[1][pruned].eq(0).all()) and int(scores[1][~pruned].gt(2).sum()) > 0.8 * int((~pruned).sum())


def test_phew_refuses_layers_it_cannot_walk_and_warns_at_chain_breaks():
    attention = nn.MultiheadAttention(4, 2)
    with pytest.raises(PruningError, match=r"'in_proj_weight' belongs to a MultiheadAttention"):
        compute_masks(attention, prunable_parameters(attention), "phew", 0.5)
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(PruningError, match="Conv2d with groups=2, which it cannot walk"):
        compute_masks(grouped, prunable_parameters(grouped), "phew", 0.5)
    model = mlp()
    with pytest.warns(PHEWWarning, match=r"'2.weight' \(8 outputs\) -> '0.weight' \(6 inputs\)"):
        compute_masks(model, [(model[2], "weight"), (model[0], "weight")], "phew", 0.5)
    with pytest.raises(PruningError, match=r"coverage=0 should be a number in \(0, 1\]"):
        get_criterion("phew", coverage=0)


# ============================================================================ SynFlow-L2
def test_synflow_l2_scores_squares_and_conserves_per_layer():
    """Two bias-free linear layers, all-ones input: R₂ = Σ_k (W₂²)_k (W₁² 1)_k and the
    score θ² ⊙ ∂R₂/∂θ² is W₁²_kj · (W₂²)_k for layer 1 and W₂²_k · (W₁² 1)_k for layer 2."""
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 3.0]]))
        model[1].weight.copy_(torch.tensor([[-1.5, 2.0]]))
    s1, s2 = compute_scores(model, prunable_parameters(model), "synflow", example_inputs=torch.zeros(1, 2), power=2)
    w1, w2 = model[0].weight.detach() ** 2, model[1].weight.detach() ** 2
    torch.testing.assert_close(s1, (w1 * w2[0][:, None]).to(s1.dtype))
    torch.testing.assert_close(s2, (w2 * w1.sum(1)[None, :]).to(s2.dtype))
    torch.testing.assert_close(s1.sum(), s2.sum())
    assert repr(get_criterion("synflow", power=2)) == "SynFlowCriterion(batchnorm='eval', power=2)"
    assert repr(get_criterion("synflow")) == "SynFlowCriterion(batchnorm='eval')"
    with pytest.raises(PruningError, match="power=3 is not valid"):
        get_criterion("synflow", power=3)


def test_synflow_l2_differs_from_synflow_and_keeps_exact_counts():
    model, x = mlp(), torch.randn(1, 6)
    params = prunable_parameters(model)
    l1 = compute_masks(model, params, "synflow", 0.9, example_inputs=x, iterations=20)
    l2 = compute_masks(model, params, "synflow", 0.9, example_inputs=x, iterations=20, power=2)
    total = sum(m.weight.numel() for m, _ in params)
    assert sum(int(m.sum()) for m in l2) == total - round(0.9 * total)
    assert not all(torch.equal(a, b) for a, b in zip(l1, l2))


# ============================================================================ every host
@pytest.mark.parametrize(("criterion", "options"), [
    ("ntksap", {"seed": 2}), ("phew", {"seed": 2}),
])
def test_data_free_criteria_agree_in_torch_prune_and_nni(criterion, options):
    pytest.importorskip("nni")
    from synflow_plugin.nni import get_pruner

    x = torch.randn(1, 6)
    kwargs = dict(options, iterations=3) if criterion != "phew" else dict(options)
    model = mlp()
    core = compute_masks(model, prunable_parameters(model), criterion, 0.7, example_inputs=x, **kwargs)
    model = mlp()
    prune.global_unstructured(prunable_parameters(model), pruning_method=synflow_plugin.pruning_method(criterion),
                              amount=0.7, model=model, example_inputs=x, **kwargs)
    via_prune = [m.weight_mask.bool() for m, _ in prunable_parameters(model)]
    model = mlp()
    config = [{"op_types": ["Linear"], "sparse_ratio": 0.7, "global_group_id": 0}]
    pruner = get_pruner(criterion)(model, config, dummy_input=x, **kwargs)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    via_nni = [masks[name]["weight"].bool() for name in ("0", "2", "4")]
    for a, b, c in zip(core, via_prune, via_nni):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_prospr_agrees_in_torch_prune_and_the_core():
    data = batches(2)
    model = mlp()
    core = compute_masks(model, prunable_parameters(model), "prospr", 0.6, data=data)
    model = mlp()
    prune.global_unstructured(prunable_parameters(model), pruning_method=synflow_plugin.pruning_method("prospr"),
                              amount=0.6, model=model, data=data)
    assert all(torch.equal(a, m.weight_mask.bool()) for a, (m, _) in zip(core, prunable_parameters(model)))


def test_phew_walks_every_weight_a_low_amount_keeps():
    """At amount 0.5 the walks go on until they crossed half the weights: none is kept by the
    magnitude fallback (walked weights score at least 2, the fallback at most 1)."""
    model = mlp()
    params = prunable_parameters(model)
    total = sum(m.weight.numel() for m, _ in params)
    request = ScoringRequest.build("phew", seed=0)
    with ScoringSession(model, params, request) as session:
        session.state.density = 0.5
        with warnings.catch_warnings():
            warnings.simplefilter("error", PHEWWarning)
            scores = session.ranked_scores()
    assert sum(int((s >= 2).sum()) for s in scores) >= math.ceil(0.5 * total)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PHEWWarning)
        masks = compute_masks(model, params, "phew", 0.5, seed=0)
    assert sum(int(m.sum()) for m in masks) == total - round(0.5 * total)


@pytest.mark.parametrize("request_", [{"iterations": 3}, {"scope": "local"}, {"scope": "erk"}, {}])
def test_phew_walks_every_weight_each_round_keeps(request_, monkeypatch):
    """Walked weights score >= 2, magnitude fall-backs below 1: no kept weight may be a fall-back."""
    last = {}
    score = PHEWCriterion.score

    def recording(self, state):
        last["scores"] = score(self, state)
        return last["scores"]

    monkeypatch.setattr(PHEWCriterion, "score", recording)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("error", PHEWWarning)  # and nothing to warn about
        masks = compute_masks(model, prunable_parameters(model), "phew", 0.9, seed=0, **request_)
    total = sum(m.numel() for m in masks)
    assert abs(sum(int(m.sum()) for m in masks) - 0.1 * total) <= len(masks)  # per-tensor rounding when local
    assert all(not (m & (s < 2)).any() for m, s in zip(masks, last["scores"]))
