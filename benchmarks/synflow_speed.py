"""SynFlow's cost on VGG-16-BN (CIFAR-100 shape) against its floor.

SynFlow at density 1e-3 runs 100 rounds of one forward and one backward pass. The
floor is 100 plain forward+backward passes of the same model on the same input,
timed just before and just after it in the same run (the machine is shared, so
only side-by-side ratios mean anything). Target: ratio <= 1.3.

Three SynFlow timings are printed: through ``prune.global_unstructured`` (as users
call it), the core loop ``compute_masks`` alone, and the core loop with the gradients
streamed (as it runs when holding them all would crowd the machine's memory; see
``synflow_plugin.masking.STREAM_FRACTION``). The first two differ by torch's own
flattening and mask bookkeeping, which every ``global_unstructured`` call pays
whatever the method; it is timed on its own too, with a method that hands back a
ready mask. Wall and CPU time are both reported: with ``--threads 1`` the CPU time
is the steadier measure on a busy machine.

    python benchmarks/synflow_speed.py [--repeats 3] [--model vgg16_bn]
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings

import torch
from torch.nn.utils import prune

from synflow_plugin import LayerCollapseWarning, SynFlow, compute_masks, masking, prunable_parameters
from synflow_plugin.models import create_model


class Clock:
    """Wall time and this process's CPU time; on a busy machine the CPU time of a
    single-threaded run is the steadier of the two."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    @staticmethod
    def mean(a: "Clock", b: "Clock") -> "Clock":
        clock = Clock()
        clock.wall, clock.cpu = (a.wall + b.wall) / 2, (a.cpu + b.cpu) / 2
        return clock


def plain_passes(model, x, rounds):
    with Clock() as clock:
        for _ in range(rounds):
            model.zero_grad(set_to_none=True)
            model(x).sum().backward()
    return clock


def synflow_prune(model_fn, x, density, rounds):
    """Through torch.nn.utils.prune, as users call it."""
    model = model_fn()
    with Clock() as elapsed:
        prune.global_unstructured(prunable_parameters(model), pruning_method=SynFlow, amount=1 - density,
                                  model=model, example_inputs=x, iterations=rounds, progress=False)
    kept = sum(int(m.weight_mask.sum()) for m, _ in prunable_parameters(model))
    total = sum(m.weight_mask.numel() for m, _ in prunable_parameters(model))
    return elapsed, kept / total


class ReadyMask(prune.BasePruningMethod):
    """A pruning method that returns a mask computed beforehand: what is left of a
    ``global_unstructured`` call is torch's own bookkeeping."""

    PRUNING_TYPE = "unstructured"

    def __init__(self, mask):
        self.mask = mask

    def compute_mask(self, t, default_mask):
        return self.mask.to(default_mask.dtype)


def torch_bookkeeping(model_fn, mask):
    """``prune.global_unstructured`` with a ready mask of the same density."""
    model = model_fn()
    with Clock() as elapsed:
        prune.global_unstructured(prunable_parameters(model), pruning_method=ReadyMask, mask=mask)
    return elapsed


def synflow_core(model_fn, x, density, rounds, streamed=False):
    """The core loop alone, without prune's own flattening and mask bookkeeping;
    ``streamed``: as if memory were short, so that each gradient is ranked as it comes."""
    model = model_fn()
    available = masking._available_memory
    if streamed:
        masking._available_memory = lambda: 1
    try:
        with Clock() as elapsed:
            compute_masks(model, prunable_parameters(model), "synflow", 1 - density, example_inputs=x,
                          iterations=rounds, progress=False)
    finally:
        masking._available_memory = available
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vgg16_bn")
    parser.add_argument("--density", type=float, default=1e-3)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice); 1 is steadier on a busy machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model_fn = lambda: create_model(args.model, num_classes=100, input_shape=(3, 32, 32))  # noqa: E731
    x = torch.randn(1, 3, 32, 32)
    floor_model = model_fn()
    plain_passes(floor_model, x, 5)  # warm-up of every path, so that no run pays first-call costs
    with warnings.catch_warnings():  # two rounds to 1e-3 collapse layers, as expected
        warnings.simplefilter("ignore", LayerCollapseWarning)
        synflow_prune(model_fn, x, args.density, 2)
        synflow_core(model_fn, x, args.density, 2)
        synflow_core(model_fn, x, args.density, 2, streamed=True)
        ready = torch.cat([m.reshape(-1) for m in compute_masks(
            floor_model, prunable_parameters(floor_model), "synflow", 1 - args.density, example_inputs=x,
            iterations=2)])
    torch_bookkeeping(model_fn, ready)
    print(f"{args.model}, {sum(p.numel() for p in floor_model.parameters()):,} parameters, "
          f"density {args.density:g}, {args.rounds} rounds, {torch.get_num_threads()} threads")
    ratios = {"prune wall": [], "prune cpu": [], "core wall": [], "core cpu": [],
              "streamed core wall": [], "streamed core cpu": [],
              "torch's bookkeeping wall": [], "torch's bookkeeping cpu": []}
    for i in range(args.repeats):
        # The floor is timed before, between and after, so drifting load hits every side.
        first = plain_passes(floor_model, x, args.rounds)
        ours, density = synflow_prune(model_fn, x, args.density, args.rounds)
        second = plain_passes(floor_model, x, args.rounds)
        core = synflow_core(model_fn, x, args.density, args.rounds)
        bookkeeping = torch_bookkeeping(model_fn, ready)
        third = plain_passes(floor_model, x, args.rounds)
        streamed = synflow_core(model_fn, x, args.density, args.rounds, streamed=True)
        fourth = plain_passes(floor_model, x, args.rounds)
        floor1 = Clock.mean(first, second)
        floor2 = Clock.mean(second, third)
        floor3 = Clock.mean(third, fourth)
        ratios["streamed core wall"].append(streamed.wall / floor3.wall)
        ratios["streamed core cpu"].append(streamed.cpu / floor3.cpu)
        ratios["prune wall"].append(ours.wall / floor1.wall)
        ratios["prune cpu"].append(ours.cpu / floor1.cpu)
        ratios["core wall"].append(core.wall / floor2.wall)
        ratios["core cpu"].append(core.cpu / floor2.cpu)
        ratios["torch's bookkeeping wall"].append(bookkeeping.wall / floor2.wall)
        ratios["torch's bookkeeping cpu"].append(bookkeeping.cpu / floor2.cpu)
        print(f"  run {i + 1}: prune.global_unstructured {ours.wall:5.2f} s wall {ours.cpu:5.2f} s cpu "
              f"(floor {floor1.wall:5.2f} / {floor1.cpu:5.2f}) | compute_masks {core.wall:5.2f} s wall "
              f"{core.cpu:5.2f} s cpu (floor {floor2.wall:5.2f} / {floor2.cpu:5.2f}) | torch's bookkeeping "
              f"{bookkeeping.wall:4.2f} s wall | streamed {streamed.wall:5.2f} s wall (floor {floor3.wall:5.2f}) | "
              f"density {density:.6f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    median = lambda values: sorted(values)[len(values) // 2]  # noqa: E731
    print("median ratio to the floor (target <= 1.3): " + ", ".join(
        f"{name} {median(values):.2f}" for name, values in ratios.items() if "bookkeeping" not in name))
    print("of which torch's global_unstructured bookkeeping (any method pays it): " + ", ".join(
        f"{name.split()[-1]} {median(values):.2f}" for name, values in ratios.items() if "bookkeeping" in name))
    print(f"peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
