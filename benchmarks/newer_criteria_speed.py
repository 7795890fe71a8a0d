"""NTK-SAP's and PHEW's cost on VGG-16-BN (CIFAR shape, 3x32x32) as a ratio to SynFlow's.

Each criterion prunes the same VGG-16-BN to compression 1e3 (amount 0.999) through
``compute_masks`` with its paper defaults: SynFlow 100 rounds, NTK-SAP 20 rounds of
R = 5 draws (each: re-initialisation, a BatchNorm statistics pass, two forward passes
and one backward pass), PHEW one round of random walks. The runs are interleaved
(SynFlow, NTK-SAP, PHEW, SynFlow, ...) so that a busy machine slows them alike; the
median of ``--repeats`` runs is reported, and the ratios are of medians taken in the
same run (only side-by-side ratios mean anything on a shared machine).

    python benchmarks/newer_criteria_speed.py [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from synflow_plugin import compute_masks, prunable_parameters
from synflow_plugin.models import create_model

CRITERIA = ("synflow", "ntksap", "phew")


def one_run(name: str, x: torch.Tensor, amount: float, num_classes: int) -> tuple[float, int]:
    torch.manual_seed(0)
    model = create_model("vgg16_bn", num_classes=num_classes, input_shape=tuple(x.shape[1:]))
    params = prunable_parameters(model)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # collapse reports are not what is timed here
        masks = compute_masks(model, params, name, amount, example_inputs=x)
    return time.perf_counter() - start, sum(int(m.sum()) for m in masks)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--amount", type=float, default=0.999)
    parser.add_argument("--classes", type=int, default=100)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    x = torch.randn(1, 3, 32, 32)
    times: dict[str, list[float]] = {name: [] for name in CRITERIA}
    kept: dict[str, int] = {}
    for _ in range(args.repeats):
        for name in CRITERIA:
            seconds, kept[name] = one_run(name, x, args.amount, args.classes)
            times[name].append(seconds)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"VGG-16-BN, input 3x32x32, amount={args.amount}, torch threads={args.threads}, "
          f"median of {args.repeats} runs")
    for name in CRITERIA:
        runs = ", ".join(f"{t:.2f}" for t in times[name])
        print(f"  {name:<8} {medians[name]:7.2f} s  (runs: {runs}; kept {kept[name]} weights)  "
              f"ratio to synflow: {medians[name] / medians['synflow']:.2f}")
    return {name: medians[name] / medians["synflow"] for name in CRITERIA}


if __name__ == "__main__":
    main()
