"""SynFlowPruner (NNI) against the torch.nn.utils.prune adapter on VGG-16-BN.

Both prune VGG-16-BN (CIFAR-100 shape, 15M weights) to density 1e-3 with SynFlow in
``--rounds`` rounds, one global ranking over every conv and linear weight; the NNI
side counts building the pruner (NNI wraps the model) and ``compress()``. Runs
alternate in one process, in alternating order, and the masks are checked equal.
Target: NNI time / torch.prune time <= 1.2.

The machine this was written on is shared: the same SynFlow call took from 6 s to 66 s
of wall time depending on the neighbours' load. Both sides run the same computation
(:func:`synflow_plugin.compute_masks` on an identical copy of the model), so the
verdict uses the process's CPU time (``time.process_time``) with torch on one thread
(``--threads 1``): with two, a thread spin-waits whenever the other core is taken,
and the CPU time of the same call varied 3x. A short warm-up of both sides comes first.
Wall time is printed beside it.

NNI's own global ranking pushes every element through a Python heap; ``--nni-level``
also times NNI's LevelPruner (magnitude, one shot) on the same global group beside our
MagnitudePruner, to show that cost (about a minute on this model).

    python benchmarks/nni_speed.py [--rounds 100] [--repeats 3] [--threads 1] [--nni-level]
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
from torch.nn.utils import prune

from synflow_plugin import SynFlow, prunable_parameters
from synflow_plugin.models import create_model
from synflow_plugin.nni import MagnitudePruner, SynFlowPruner


def model_fn(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=100, input_shape=(3, 32, 32))


def config(density: float) -> list[dict]:
    return [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 1 - density, "global_group_id": 0}]


def torch_prune(name, x, density, rounds):
    model = model_fn(name)
    wall, cpu = time.perf_counter(), time.process_time()
    params = prunable_parameters(model)
    prune.global_unstructured(params, pruning_method=SynFlow, amount=1 - density, model=model,
                              example_inputs=x, iterations=rounds, progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    names = {id(m): n for n, m in model.named_modules()}
    return wall, cpu, {names[id(m)]: m.weight_mask.bool() for m, _ in params}


def nni_prune(name, x, density, rounds):
    model = model_fn(name)
    wall, cpu = time.perf_counter(), time.process_time()
    pruner = SynFlowPruner(model, config(density), dummy_input=x, iterations=rounds, progress=False)
    _, masks = pruner.compress()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    pruner.unwrap_model()
    return wall, cpu, {n: m["weight"].bool() for n, m in masks.items()}


def level_comparison(name: str, density: float) -> None:
    from nni.compression.pruning import LevelPruner

    for label, cls in (("MagnitudePruner (ours)", MagnitudePruner), ("NNI LevelPruner", LevelPruner)):
        model = model_fn(name)
        start = time.perf_counter()
        cls(model, config(density)).compress()
        print(f"  {label:<24} global magnitude ranking {time.perf_counter() - start:7.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vgg16_bn")
    parser.add_argument("--density", type=float, default=1e-3)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable CPU times)")
    parser.add_argument("--nni-level", action="store_true", help="also time NNI's LevelPruner (slow)")
    args = parser.parse_args()
    logging.getLogger("nni").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)

    x = torch.randn(1, 3, 32, 32)
    weights = sum(m.weight.numel() for m, _ in prunable_parameters(model_fn(args.model)))
    print(f"{args.model}, {weights:,} prunable weights, density {args.density:g}, SynFlow {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads")
    nni_prune(args.model, x, args.density, 2)  # warm-up: allocator, oneDNN primitives
    torch_prune(args.model, x, args.density, 2)
    cpu_ratios, wall_ratios = [], []
    for i in range(args.repeats):
        if i % 2 == 0:
            ours = nni_prune(args.model, x, args.density, args.rounds)
            base = torch_prune(args.model, x, args.density, args.rounds)
        else:
            base = torch_prune(args.model, x, args.density, args.rounds)
            ours = nni_prune(args.model, x, args.density, args.rounds)
        same = ours[2].keys() == base[2].keys() and all(torch.equal(ours[2][k], base[2][k]) for k in base[2])
        kept = sum(int(m.sum()) for m in ours[2].values())
        cpu_ratios.append(ours[1] / base[1])
        wall_ratios.append(ours[0] / base[0])
        print(f"  run {i + 1}: SynFlowPruner {ours[1]:6.2f} s CPU ({ours[0]:6.2f} s wall)   torch.prune SynFlow "
              f"{base[1]:6.2f} s CPU ({base[0]:6.2f} s wall)   ratio {cpu_ratios[-1]:5.2f} CPU "
              f"({wall_ratios[-1]:5.2f} wall)   kept {kept:,}   masks equal: {same}")
    cpu_ratios.sort()
    wall_ratios.sort()
    print(f"median ratio {cpu_ratios[len(cpu_ratios) // 2]:.2f} CPU time (target <= 1.2), "
          f"{wall_ratios[len(wall_ratios) // 2]:.2f} wall time")
    if args.nni_level:
        level_comparison(args.model, args.density)


if __name__ == "__main__":
    main()
