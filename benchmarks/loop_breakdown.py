"""Where the time of a SynFlow prune goes, as fractions of the floor.

A 100-round SynFlow prune of VGG-16-BN (CIFAR-100 shape, density 1e-3, the setting of
``synflow_speed.py``) through the core loop :func:`synflow_plugin.compute_masks`, with
each part timed: the scoring passes (forward and backward of the scoring copy), the
kernels' scans of the survivors' scores, the samples that bracket each round's
threshold, the zeroing of the pruned weights, and everything else (the copy, the
ranking of the bracket, the masks, Python). The floor, 100 plain forward+backward
passes of the same model, is timed before and after each run (CPU time; use
``--threads 1`` on a busy machine).

    python benchmarks/loop_breakdown.py [--repeats 5] [--threads 1] [--streamed]
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections import defaultdict

import torch

from synflow_plugin import _kernels, compute_masks, masking, prunable_parameters, selection, session
from synflow_plugin.models import create_model

PARTS = {
    "scoring passes": (session.ScoringSession, "scores"),
    "streamed passes": (session.ScoringSession, "stream"),  # their scans and samples are taken out below
    "scans": (selection.Survivors, "_scan"),
    "samples": (_kernels, "sample_many"),
    "zeroing": (_kernels, "apply_many"),
}
INSIDE = {"streamed passes"}  # parts whose time includes that of the others


def timed(spent: dict, name: str, function, inside: list):
    def run(*args, **kwargs):
        start = time.process_time()
        if name in INSIDE:
            inside.append(name)
        try:
            return function(*args, **kwargs)
        finally:
            elapsed = time.process_time() - start
            spent[name] += elapsed
            if name in INSIDE:
                inside.pop()
            elif inside:
                spent["(inside a streamed pass)"] += elapsed
    return run


def floor(model, x, rounds) -> float:
    start = time.process_time()
    for _ in range(rounds):
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vgg16_bn")
    parser.add_argument("--density", type=float, default=1e-3)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--streamed", action="store_true",
                        help="stream the gradients, as the loop does when memory is short")
    args = parser.parse_args()
    if args.streamed:
        masking._available_memory = lambda: 1
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # the short warm-up prune collapses layers, as expected

    torch.manual_seed(0)
    build = lambda: create_model(args.model, num_classes=100, input_shape=(3, 32, 32))  # noqa: E731
    x = torch.randn(1, 3, 32, 32)
    reference = build()
    floor(reference, x, 5)
    warm = build()
    compute_masks(warm, prunable_parameters(warm), "synflow", 1 - args.density, example_inputs=x, iterations=2)

    spent: dict[str, float] = defaultdict(float)
    originals = {name: getattr(owner, attr) for name, (owner, attr) in PARTS.items()}
    inside: list[str] = []
    for name, (owner, attr) in PARTS.items():
        setattr(owner, attr, timed(spent, name, originals[name], inside))
    fractions = defaultdict(list)
    try:
        for i in range(args.repeats):
            spent.clear()
            before = floor(reference, x, args.rounds)
            model = build()
            start = time.process_time()
            compute_masks(model, prunable_parameters(model), "synflow", 1 - args.density, example_inputs=x,
                          iterations=args.rounds)
            total = time.process_time() - start
            after = floor(reference, x, args.rounds)
            base = (before + after) / 2
            parts = dict(spent)
            # A streamed pass scans and samples each gradient inside the backward pass:
            # the scoring passes are the streamed passes without those.
            parts["scoring passes"] = (parts.get("scoring passes", 0.0) + parts.pop("streamed passes", 0.0)
                                       - parts.pop("(inside a streamed pass)", 0.0))
            parts["everything else"] = total - sum(parts.values())
            parts["total"] = total
            for name, value in parts.items():
                fractions[name].append(value / base)
            print(f"  run {i + 1}: floor {base:5.2f} s, prune {total:5.2f} s: "
                  + ", ".join(f"{name} {value:4.2f} s" for name, value in parts.items() if name != "total"))
    finally:
        for name, (owner, attr) in PARTS.items():
            setattr(owner, attr, originals[name])
    median = lambda values: sorted(values)[len(values) // 2]  # noqa: E731
    print(f"{args.model}, density {args.density:g}, {args.rounds} rounds, {torch.get_num_threads()} threads; "
          "median fraction of the floor (CPU time):")
    for name, values in fractions.items():
        print(f"  {name:<16} {median(values):5.3f}")


if __name__ == "__main__":
    main()
