"""GemMiner and IMP (lottery tickets with rewinding): the pieces checked by hand, the
loop's counts per round, rewinding bit for bit, the user's model untouched, the same
masks through every entry point, and the errors."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.prune as prune
from torch import nn

from synflow_plugin import PruningError, PruningTypeError, compute_masks, compute_scores, pruning_method
from synflow_plugin.criteria import GemMinerCriterion, IMPCriterion, get_criterion
from synflow_plugin.criteria.gemminer import straight_through_mask
from synflow_plugin.criteria.imp import IMPWarning, imp_keep_fractions
from synflow_plugin.masking import keep_schedule
from synflow_plugin.testing import check_case, random_case


def mlp(seed: int = 0, bn: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(10, 20)] + ([nn.BatchNorm1d(20)] if bn else []) + [nn.ReLU(), nn.Linear(20, 3)]
    return nn.Sequential(*layers)


def pairs(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, nn.Linear)]


def batches(n: int = 3, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 10, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


DATA = batches()


def sgd_train_fn(model: nn.Module, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.05) -> None:
    """A deterministic training: two passes of SGD (momentum, weight decay) over DATA."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    model.train()
    for _ in range(2):
        for x, y in DATA:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()


def fingerprint(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "modes": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "keys": sorted(model.state_dict()),
    }


def assert_same(before: dict, after: dict) -> None:
    assert before["keys"] == after["keys"] and before["modes"] == after["modes"]
    assert before["requires_grad"] == after["requires_grad"]
    for key, value in before["state"].items():
        assert torch.equal(value, after["state"][key]), key


# ---------------------------------------------------------------------------- GemMiner
def test_straight_through_mask_rounds_forward_and_passes_the_gradient():
    scores = torch.tensor([0.2, 0.5, 0.51, 0.9], requires_grad=True)
    mask = straight_through_mask(scores, 0.5)
    assert mask.tolist() == [0.0, 0.0, 1.0, 1.0]  # strictly above 0.5, as the paper's torch.gt
    (mask * torch.tensor([1.0, -2.0, 3.0, 4.0])).sum().backward()
    assert scores.grad.tolist() == [1.0, -2.0, 3.0, 4.0]  # d mask / d s := 1


def test_one_gemminer_step_is_the_hand_computed_update():
    torch.manual_seed(0)
    model = nn.Linear(4, 3, bias=False)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    lr, lam = 0.3, 1e-2
    scores = compute_scores(model, [(model, "weight")], "gemminer", data=[(x, y)], epochs=1, lr=lr, momentum=0.0,
                            lmbda=lam, lr_schedule="constant", seed=7)[0]
    s0 = torch.rand((3, 4), generator=torch.Generator().manual_seed(7), dtype=torch.float64).float()
    w_eff = (model.weight.detach() * (s0 > 0.5)).requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(x @ w_eff.T, y), w_eff)
    # ∂L/∂s = ∂L/∂w_eff ⊙ θ (straight through) + 2λs, one SGD step, then the clamp to [0, 1].
    expected = (s0 - lr * (g * model.weight.detach() + 2 * lam * s0)).clamp(0, 1)
    torch.testing.assert_close(scores, expected, rtol=1e-6, atol=1e-7)


def test_scores_are_clamped_to_the_unit_interval():
    model = mlp()
    scores = compute_scores(model, pairs(model), "gemminer", data=DATA, epochs=2, lr=500.0, seed=0)
    flat = torch.cat([s.reshape(-1) for s in scores])
    assert float(flat.min()) == 0.0 and float(flat.max()) == 1.0  # pushed past both ends, clamped back
    assert bool(((flat >= 0) & (flat <= 1)).all())


class RecordingGemMiner(GemMinerCriterion):
    """GemMiner that records, per round, the survivors it trains and the scores it returns."""

    def score(self, state):
        self.alive = getattr(self, "alive", []) + [[m.clone() for m in state.alive()]]
        out = super().score(state)
        self.returned = getattr(self, "returned", []) + [[s.clone() for s in out]]
        return out


def test_gemminer_flags_the_bottom_k_survivors_each_round_on_the_exponential_schedule():
    model = mlp()
    total = sum(m.weight.numel() for m, _ in pairs(model))  # 260
    crit = RecordingGemMiner(epochs=1, lmbda=0.0, momentum=0.0, seed=0)
    masks = compute_masks(model, pairs(model), crit, 0.9, data=DATA, iterations=3)
    keeps = keep_schedule(total, total - round(0.9 * total), 3)
    assert [sum(int(m.sum()) for m in alive) for alive in crit.alive] == [total] + keeps[:2]
    assert sum(int(m.sum()) for m in masks) == keeps[-1] == 26
    # Each round removes exactly the lowest-scoring survivors of that round's scores (ties: earlier first).
    rounds = crit.alive[1:] + [masks]
    for before, after, scores in zip(crit.alive, rounds, crit.returned):
        alive = torch.cat([m.reshape(-1) for m in before])
        kept = torch.cat([m.reshape(-1) for m in after])
        flat = torch.cat([s.reshape(-1) for s in scores])
        lost = flat[alive & ~kept]
        assert float(lost.max()) <= float(flat[kept].min())
    # A flagged weight is zero in the scoring copy: its score gets no gradient any more (λ = 0, no momentum).
    flagged = ~torch.cat([m.reshape(-1) for m in crit.alive[1]])
    second, third = (torch.cat([s.reshape(-1) for s in r]) for r in crit.returned[1:3])
    assert flagged.sum() > 0 and torch.equal(second[flagged], third[flagged])


def test_gemminer_one_round_mask_is_the_top_k_of_its_scores_and_the_model_is_untouched():
    model = mlp(bn=True)
    model.train()
    before = fingerprint(model)
    options = dict(data=DATA, epochs=1, seed=3, init="signed_constant", batchnorm="non_affine")
    scores = torch.cat([s.reshape(-1) for s in compute_scores(model, pairs(model), "gemminer", **options)])
    masks = compute_masks(model, pairs(model), "gemminer", 0.75, iterations=1, **options)
    kept = torch.cat([m.reshape(-1) for m in masks])
    assert int(kept.sum()) == scores.numel() - round(0.75 * scores.numel())
    assert float(scores[~kept].max()) <= float(scores[kept].min())
    assert_same(before, fingerprint(model))


def test_gemminer_signed_constant_init_scores_on_sign_times_kaiming_constant():
    model = nn.Linear(8, 2, bias=False)
    x, y = torch.randn(4, 8), torch.tensor([0, 1, 1, 0])
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.weight.copy_(twin.weight.sign() * math.sqrt(2) / math.sqrt(8))
    a = compute_scores(model, [(model, "weight")], "gemminer", data=[(x, y)], epochs=1, seed=0,
                       init="signed_constant")[0]
    b = compute_scores(twin, [(twin, "weight")], "gemminer", data=[(x, y)], epochs=1, seed=0)[0]
    torch.testing.assert_close(a, b)


def test_gemminer_needs_data_and_checks_its_options():
    model = mlp()
    with pytest.raises(PruningError, match="data-driven: pass data="):
        compute_masks(model, pairs(model), "gemminer", 0.5)
    with pytest.raises(PruningError, match="epochs=0 should be a positive int"):
        get_criterion("gemminer", epochs=0)
    with pytest.raises(PruningError, match=r"optimizer='rmsprop' is not valid; expected one of \('sgd', 'adam'\)"):
        get_criterion("gemminer", optimizer="rmsprop")
    with pytest.raises(PruningError, match=r"momentum=0.5 applies to optimizer='sgd' only"):
        get_criterion("gemminer", optimizer="adam", momentum=0.5)  # Adam would never read it
    adam = get_criterion("gemminer", optimizer="adam")
    assert adam.optimizer == "adam" and "momentum=None" in repr(adam)  # the repr stays a valid call
    assert get_criterion("gemminer").momentum == 0.9 and get_criterion("gemminer", momentum=0.0).momentum == 0.0


# ---------------------------------------------------------------------------- IMP
def test_imp_keep_fractions_by_hand():
    assert imp_keep_fractions(0.512, rate=0.2) == pytest.approx([0.8, 0.64, 0.512])
    assert len(imp_keep_fractions(0.1)) == 11  # ceil(log 0.1 / log 0.8) = ceil(10.32)
    assert imp_keep_fractions(0.1)[-1] == 0.1 and imp_keep_fractions(0.1)[-2] == pytest.approx(0.8 ** 10)
    assert imp_keep_fractions(0.25, levels=2) == pytest.approx([0.5, 0.25])
    assert imp_keep_fractions(0.3, levels=3, rate=0.2) == pytest.approx([0.8, 0.64, 0.3])
    with pytest.raises(PruningError, match="reached after 2 levels, not 4"):
        imp_keep_fractions(0.7, levels=4, rate=0.2)


class RecordingIMP(IMPCriterion):
    def score(self, state):
        self.alive = getattr(self, "alive", []) + [sum(int(m.sum()) for m in state.alive())]
        return super().score(state)


def test_imp_prunes_twenty_percent_of_the_survivors_per_level():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(25, 40))  # 1000 weights
    crit = RecordingIMP(train_fn=sgd_train_fn_wide)
    masks = compute_masks(model, [(model[0], "weight")], crit, 1 - 0.8 ** 3)
    assert crit.alive == [1000, 800, 640] and int(masks[0].sum()) == 512  # 1000 * 0.8^L per level
    assert [h["weights"] for h in crit.history] == [1000, 800, 640]
    assert all(h["seconds"] >= 0 for h in crit.history)


def sgd_train_fn_wide(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 25, generator=g), torch.randint(0, 40, (16,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def reference_imp(model: nn.Module, levels: int, amount: float) -> list[torch.Tensor]:
    """IMP written out independently: torch.nn.utils.prune masks on a fresh copy of the
    initial model per level, trained, global magnitude pruning of the survivors."""
    fractions = imp_keep_fractions(1 - amount, levels=levels)
    total = sum(m.weight.numel() for m, _ in pairs(model))
    masks = [torch.ones_like(m.weight, dtype=torch.bool) for m, _ in pairs(model)]
    for fraction in fractions:
        net = copy.deepcopy(model)
        for (layer, _), mask in zip(pairs(net), masks):
            prune.custom_from_mask(layer, "weight", mask)
        sgd_train_fn(net)
        # weight_orig * weight_mask: the attribute `weight` is recomputed only at the next forward
        magnitude = torch.cat([(l.weight_orig * l.weight_mask).detach().abs().reshape(-1) for l, _ in pairs(net)])
        alive = torch.cat([m.reshape(-1) for m in masks])
        keep = round(total * fraction)
        order = torch.argsort(torch.where(alive, magnitude, torch.tensor(-1.0)), descending=True, stable=True)
        flat = torch.zeros(total, dtype=torch.bool)
        flat[order[:keep]] = True
        masks = [part.reshape(m.shape) for part, m in zip(flat.split([m.numel() for m in masks]), masks)]
    return masks


def test_imp_masks_equal_an_independent_imp_with_prune_masks_while_training():
    model = mlp(seed=2)
    before = fingerprint(model)
    ours = compute_masks(model, pairs(model), "imp", 0.7, train_fn=sgd_train_fn, levels=3)
    theirs = reference_imp(model, 3, 0.7)
    assert [int(m.sum()) for m in ours] == [int(m.sum()) for m in theirs]
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert_same(before, fingerprint(model))


def test_imp_rewinds_every_level_to_theta0_bit_for_bit_and_pruned_weights_stay_zero():
    model = mlp(seed=1, bn=True)
    model.train()
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    seen, violations = [], []

    def train_fn(net):
        assert net is not model
        seen.append({k: v.clone() for k, v in net.state_dict().items()})
        zero = {name: p.detach() == 0 for name, p in net.named_parameters() if name.endswith("weight")}

        def check(module, args):
            for name, p in module.named_parameters():
                if name in zero and not bool((p.detach()[zero[name]] == 0).all()):
                    violations.append(name)

        handle = net.register_forward_pre_hook(check)
        sgd_train_fn(net, weight_decay=0.5)  # weight decay and momentum push every weight
        handle.remove()

    masks = compute_masks(model, pairs(model), "imp", 0.6, train_fn=train_fn, levels=3)
    assert len(seen) == 3 and not violations
    names = {f"{i}.weight": mask for i, mask in zip((0, 3), masks)}
    for level in seen:
        assert level.keys() == theta0.keys()
        for key, value in level.items():
            if key in names:  # the survivors of that level hold θ0, the pruned weights 0
                assert torch.equal(value[value != 0], theta0[key][value != 0])
            else:  # biases, BatchNorm affine and running statistics: θ0 exactly
                assert torch.equal(value, theta0[key]), key
    # Level 2 trains exactly the survivors of level 1's pruning, at their initial values.
    assert int((seen[1]["0.weight"] != 0).sum()) < int((seen[0]["0.weight"] != 0).sum())
    assert all(torch.equal(v, theta0[k]) for k, v in model.state_dict().items())


def test_rewind_step_returns_the_weights_after_k_steps_and_writes_them_only_when_asked():
    model = mlp(seed=4)
    after = {}

    def train_fn(net):
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        for step, (x, y) in enumerate(DATA * 2, start=1):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
            if step == 2 and not after:
                after.update({k: v.clone() for k, v in net.state_dict().items()})

    crit = IMPCriterion(train_fn=train_fn, levels=2, rewind_step=2)
    before = fingerprint(model)
    with pytest.warns(IMPWarning, match="rewind_step=2.*rewound_state"):
        compute_masks(model, pairs(model), crit, 0.5)
    assert_same(before, fingerprint(model))
    assert crit.rewound_state.keys() == after.keys()
    assert all(torch.equal(crit.rewound_state[k], after[k]) for k in after)
    assert not torch.equal(after["0.weight"], model[0].weight)  # a step > 0 changes the weights

    prune.global_unstructured(pairs(model), pruning_method=pruning_method("imp"), amount=0.5, model=model,
                              train_fn=train_fn, levels=2, rewind_step=2, rewind_into=model)
    assert torch.equal(model[0].weight_orig, after["0.weight"]) and torch.equal(model[0].bias, after["0.bias"])
    other = mlp()
    with pytest.raises(PruningError, match="made only 0 torch.optim optimizer step"):
        compute_masks(other, pairs(other), "imp", 0.5, train_fn=lambda m: None, rewind_step=3)


def test_imp_errors_name_what_to_pass_and_leave_the_model_untouched():
    model = mlp()
    before = fingerprint(model)
    with pytest.raises(PruningError, match="IMP trains the network: pass train_fn="):
        compute_masks(model, pairs(model), "imp", 0.5)
    with pytest.raises(PruningTypeError, match="train_fn should be callable as train_fn\\(model\\), got int"):
        compute_masks(model, pairs(model), "imp", 0.5, train_fn=3)

    def exploding(net):
        raise RuntimeError("CUDA out of memory (simulated)")

    with pytest.raises(PruningError, match=r"train_fn .*exploding raised RuntimeError at level 1 of 3: CUDA out"):
        prune.global_unstructured(pairs(model), pruning_method=pruning_method("imp"), amount=0.5, model=model,
                                  train_fn=exploding, levels=3)
    assert not prune.is_pruned(model)
    assert_same(before, fingerprint(model))
    with pytest.raises(PruningError, match="returned another module"):
        compute_masks(model, pairs(model), "imp", 0.5, train_fn=lambda net: mlp())
    with pytest.warns(IMPWarning, match="did not change any pruned tensor"):
        compute_masks(model, pairs(model), "imp", 0.5, train_fn=lambda net: None, levels=1)
    with pytest.raises(PruningError, match="iterations=2 and levels=3 disagree"):
        compute_masks(model, pairs(model), "imp", 0.5, train_fn=sgd_train_fn, levels=3, iterations=2)
    with pytest.raises(PruningError, match="schedule='linear' does not apply to IMP"):
        compute_masks(model, pairs(model), "imp", 0.5, train_fn=sgd_train_fn, schedule="linear")


def test_random_networks_keep_the_pruning_contract_with_imp():
    rng = np.random.default_rng(5)
    for entry_point in ("compute_masks", "global_unstructured"):
        for _ in range(4):
            case = random_case(rng, "imp", entry_point)
            shape = case.kwargs["example_inputs"].shape[1:]

            def train_fn(net, shape=shape):
                opt = torch.optim.SGD(net.parameters(), lr=1e-3)
                out = net(torch.randn(2, *shape))
                loss = out.float().pow(2).mean()
                if torch.isfinite(loss):
                    opt.zero_grad()
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                    opt.step()

            case.kwargs["train_fn"] = train_fn
            case.iterations = min(case.iterations, 3)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                check_case(case)


# ---------------------------------------------------------------------------- every entry point
@pytest.mark.parametrize("name", ["gemminer", "imp"])
def test_the_same_masks_through_compute_masks_torch_prune_and_nni(name):
    nni = pytest.importorskip("nni")
    from nni.compression import TorchEvaluator

    from synflow_plugin.adapters.nni import get_pruner

    options = (dict(data=DATA, epochs=1, seed=0, iterations=2) if name == "gemminer"
               else dict(train_fn=lambda m: sgd_train_fn(m, momentum=0.0, weight_decay=0.0), levels=2))
    model = mlp()
    core = compute_masks(model, pairs(model), name, 0.6, **options)
    model = mlp()
    prune.global_unstructured(pairs(model), pruning_method=pruning_method(name), amount=0.6, model=model, **options)
    assert all(torch.equal(a, l.weight_mask.bool()) for a, (l, _) in zip(core, pairs(model)))

    def training_step(batch, net):
        return F.cross_entropy(net(batch[0]), batch[1])

    def training_func(net, optimizers, step, lr_schedulers=None, max_steps=None, max_epochs=None):
        net.train()
        for _ in range(2):
            for batch in DATA:
                optimizers.zero_grad()
                step(batch, net).backward()
                optimizers.step()

    model = mlp()
    evaluator = TorchEvaluator(training_func, nni.trace(torch.optim.SGD)(model.parameters(), lr=0.1), training_step)
    config = [{"op_types": ["Linear"], "sparse_ratio": 0.6, "global_group_id": 0}]
    if name == "gemminer":
        pruner = get_pruner(name)(model, config, evaluator, num_batches=len(DATA), epochs=1, seed=0, iterations=2)
    else:
        pruner = get_pruner(name)(model, config, evaluator, levels=2)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    assert all(torch.equal(a, masks[k]["weight"].bool()) for a, k in zip(core, ["0", "2"]))
    assert type(pruner).__name__ == {"gemminer": "GemMinerPruner", "imp": "IMPPruner"}[name]


def test_imp_pruner_needs_an_evaluator_or_a_train_fn():
    pytest.importorskip("nni")
    from synflow_plugin.adapters.nni import IMPPruner

    config = [{"op_types": ["Linear"], "sparse_ratio": 0.5}]
    with pytest.raises(PruningError, match="IMPPruner trains the network at every level: pass evaluator="):
        IMPPruner(mlp(), config)
    _, masks = IMPPruner(mlp(), config, train_fn=sgd_train_fn, levels=2).compress()
    assert int(masks["0"]["weight"].sum()) == 100


@pytest.mark.parametrize("name", ["gemminer", "imp"])
def test_torch_pruning_importance_ranks_channels_by_the_summed_core_scores(name):
    tp = pytest.importorskip("torch_pruning")
    from synflow_plugin.torch_pruning import get_importance

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 12), nn.ReLU(), nn.Linear(12, 3))
    options = dict(data=DATA, seed=0, epochs=1) if name == "gemminer" else dict(train_fn=sgd_train_fn)
    x = torch.randn(2, 10)
    scores = compute_scores(model, pairs(model), name, **options)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    group = graph.get_pruning_group(model[0], tp.prune_linear_out_channels, list(range(12)))
    importance = get_importance(name, example_inputs=x, min_channels=0, **options)(group)
    expected = (scores[0].sum(1) + scores[1].sum(0)) / 2
    torch.testing.assert_close(importance, expected.double(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- command line and docs
def test_imp_docstring_examples_run():
    import doctest

    from synflow_plugin.criteria import imp

    result = doctest.testmod(imp)
    assert (result.attempted, result.failed) == (2, 0)


CONV = ["conv", "--dataset", "digits", "--threads", "1", "--no-progress"]


def test_cli_prunes_with_imp_and_gemminer_and_train_runs_afterwards(tmp_path, capsys):
    from synflow_plugin.checkpoint import load_checkpoint
    from synflow_plugin.cli import main

    out = tmp_path / "imp.pt"
    assert main(["prune", *CONV, "-c", "imp", "--amount", "0.5", "--levels", "2", "--epochs", "1", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "imp: kept" in text and "2 round(s)" in text and "time per round: " in text
    model, blob = load_checkpoint(out)
    assert blob["pruning"]["training"]["epochs"] == 1 and len(blob["pruning"]["round_seconds"]) == 2
    assert main(["train", str(out), "--dataset", "digits", "--epochs", "1", "--threads", "1", "--no-progress"]) == 0
    assert "test accuracy" in capsys.readouterr().out

    gm = tmp_path / "gm.pt"
    assert main(["prune", *CONV, "-c", "gemminer", "--amount", "0.9", "--iterations", "2", "--epochs", "1",
                 "--lr", "0.05", "-o", str(gm)]) == 0
    _, blob = load_checkpoint(gm)
    assert blob["pruning"]["criterion_options"] == {"seed": 0} and blob["pruning"]["training"]["lr"] == 0.05
    assert blob["pruning"]["density"] == pytest.approx(0.1, abs=1e-4)

    rewound = tmp_path / "rw.pt"
    assert main(["prune", *CONV, "-c", "imp", "--amount", "0.5", "--levels", "1", "--epochs", "1",
                 "--rewind-step", "3", "--optimizer", "sgd", "-o", str(rewound)]) == 0
    assert "rewound to step 3" in capsys.readouterr().out
    dense, _ = load_checkpoint(out)
    moved, _ = load_checkpoint(rewound)
    first = next(k for k in dense.state_dict() if k.endswith("weight_orig"))
    assert not torch.equal(dense.state_dict()[first], moved.state_dict()[first])  # θ_3, not θ_0


@pytest.mark.parametrize("argv, message", [
    (["-c", "snip", "--amount", "0.5", "--epochs", "2"], "argument --epochs: applies to criteria that train"),
    (["-c", "gemminer", "--amount", "0.5", "--levels", "2"], "argument --levels: applies to criteria trained with"),
])
def test_cli_refuses_training_options_a_criterion_does_not_use(argv, message, tmp_path, capsys):
    from synflow_plugin.cli import main

    with pytest.raises(SystemExit):
        main(["prune", *CONV, *argv, "-o", str(tmp_path / "x.pt")])
    assert message in capsys.readouterr().err


def test_cli_collapse_refuses_a_criterion_that_trains_at_every_prune(capsys):
    from synflow_plugin.cli import main

    with pytest.raises(SystemExit):
        main(["collapse", "mlp", "--input-shape", "1,8", "--criteria", "magnitude,imp", "--no-progress"])
    assert "argument --criteria: imp trains the network with a train_fn at every prune" in capsys.readouterr().err
