"""One rank of the two-process gloo job of tests/test_distributed.py."""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torch.nn.utils.prune as prune
from torch import nn

from synflow_plugin import SNIP, PruningError, compute_masks, prunable_parameters


def network(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10))


def halves() -> list:
    """The job's data: one batch per rank (rank r scores halves()[r] only)."""
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(6, 3, 8, 8, generator=g), torch.randint(0, 10, (6,), generator=g)) for _ in range(2)]


def masks_of(model: nn.Module) -> list[torch.Tensor]:
    return [getattr(m, "weight_mask").bool() for m, _ in prunable_parameters(model)]


def results(data: list, group_kwargs: dict) -> dict:
    """Masks through every host for ``data``; the same calls run in one process (on both
    batches) and on each rank (on its own batch)."""
    out = {}
    model = network()
    params = prunable_parameters(model)
    out["core snip"] = compute_masks(model, params, "snip", 0.8, data=data, **group_kwargs)
    out["core grasp"] = compute_masks(model, params, "grasp", 0.8, data=data, **group_kwargs)
    out["core synflow"] = compute_masks(model, params, "synflow", 0.8, example_inputs=torch.randn(1, 3, 8, 8),
                                        iterations=5, **group_kwargs)
    pruned = network()
    prune.global_unstructured(prunable_parameters(pruned), pruning_method=SNIP, amount=0.8, model=pruned, data=data,
                              **group_kwargs)
    out["torch.prune SNIP"] = masks_of(pruned)

    import nni
    from nni.compression import TorchEvaluator

    from synflow_plugin.nni import SNIPPruner

    nni_model = network()
    optimizer = nni.trace(torch.optim.SGD)(nni_model.parameters(), lr=0.1)

    def training_step(batch, model):
        return F.cross_entropy(model(batch[0]), batch[1])

    def training_func(model, optimizers, training_step, lr_schedulers=None, max_steps=None, max_epochs=None):
        for step, batch in enumerate(data):
            optimizers.zero_grad()
            training_step(batch, model).backward()
            optimizers.step()
            if max_steps and step + 1 >= max_steps:
                return

    config = [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.8, "global_group_id": 0}]
    pruner = SNIPPruner(nni_model, config, TorchEvaluator(training_func, optimizer, training_step),
                        num_batches=len(data), **group_kwargs)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    out["NNI SNIP"] = [masks[name]["weight"].bool() for name in ("0", "2", "6")]

    import torch_pruning as tp

    from synflow_plugin.torch_pruning import SNIPImportance

    structured = network()
    graph = tp.DependencyGraph().build_dependency(structured, example_inputs=torch.randn(1, 3, 8, 8))
    group = graph.get_pruning_group(structured[0], tp.prune_conv_out_channels, list(range(8)))
    out["torch-pruning SNIP"] = [SNIPImportance(data=data, min_channels=0, **group_kwargs)(group)]
    return out


def run(rank: int, world: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    try:
        # the group passed explicitly here; the calls below find the default group themselves
        record = {"masks": results([halves()[rank]], {"process_group": dist.group.WORLD})}
        # different weights on one rank: a clear error on every rank, before any mask
        model = network(seed=rank)
        try:
            compute_masks(model, prunable_parameters(model), "synflow", 0.5, example_inputs=torch.randn(1, 3, 8, 8))
        except PruningError as exc:
            record["different weights"] = str(exc)
        # different seeds of a random criterion: the masks differ, an error after the last round
        model = network()
        try:
            compute_masks(model, prunable_parameters(model), "random", 0.5, seed=rank)
        except PruningError as exc:
            record["different masks"] = str(exc)
        # a data-driven criterion that cannot reduce across ranks is refused before scoring
        try:
            compute_masks(model, prunable_parameters(model), "prospr", 0.5, data=[halves()[rank]])
        except PruningError as exc:
            record["no reduction"] = str(exc)
        # process_group=False: each rank alone, on its own batch
        model = network()
        record["alone"] = compute_masks(model, prunable_parameters(model), "snip", 0.8, data=[halves()[rank]],
                                        process_group=False)
        torch.save(record, out_file)
    finally:
        dist.destroy_process_group()
