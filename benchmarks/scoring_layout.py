"""What a channels-last scoring copy would buy SynFlow, and what it would cost.

The SynFlow loop's time is mostly its scoring passes, which are the same computation
as the plain forward+backward passes of ``synflow_speed.py``'s floor, so only a faster
computation can take the loop below that floor. One candidate is the memory layout:
for each zoo model this times SynFlow's scoring pass (|θ| everywhere, BatchNorm on its
running statistics, an all-ones input of batch 1, the gradient of the summed output with
respect to the pruned weights) with the copy in torch's default layout and in
channels-last, and in channels-last with the gradients then made contiguous (the layout
the pruning loop's flat views need), beside each other in one process (CPU time,
median of ``--repeats``; the page faults of each are printed: a pass that faults
memory in is timing the allocator, not the layout).

It also prints what the layout does to the scores: the default layout's scores are
checked equal, bit for bit, to :func:`synflow_plugin.compute_scores`; the channels-last
ones are compared with them (largest difference relative to each tensor's largest
score, and how many of the weights a one-shot global prune to density 1e-3 keeps
change), and the layout of the gradients torch hands back is reported.

    python benchmarks/scoring_layout.py [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import resource
import time

import torch

from synflow_plugin import compute_scores, masking, prunable_parameters
from synflow_plugin.models import create_model

MODELS = [("vgg16_bn", 100), ("vgg11_bn", 10), ("resnet20", 10), ("resnet18", 10)]


def scoring_pass(model, memory_format):
    """SynFlow's scoring copy of ``model`` in ``memory_format``, and one pass on it."""
    copy_ = copy.deepcopy(model).eval()
    with torch.no_grad():
        for tensor in [*copy_.parameters(), *copy_.buffers()]:
            if tensor.is_floating_point():
                tensor.abs_()
    copy_ = copy_.to(memory_format=memory_format)
    params = [getattr(module, name) for module, name in prunable_parameters(copy_)]
    ones = torch.ones(1, 3, 32, 32).contiguous(memory_format=memory_format)

    def run():
        return torch.autograd.grad(copy_(ones).sum(), params)

    return run, params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--passes", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    masking._keep_freed_memory()  # the allocator setting the pruning loop runs with
    print(f"SynFlow scoring pass, batch 1, 32x32 input, {torch.get_num_threads()} threads, CPU time, "
          f"median of {args.repeats} x {args.passes} passes")
    for name, classes in MODELS:
        torch.manual_seed(0)
        model = create_model(name, num_classes=classes, input_shape=(3, 32, 32))
        passes = {fmt: scoring_pass(model, fmt) for fmt in (torch.contiguous_format, torch.channels_last)}
        reference = compute_scores(model, prunable_parameters(model), "synflow",
                                   example_inputs=torch.randn(1, 3, 32, 32))
        default, last = ([(p.detach() * g).abs() for p, g in zip(params, run())] for run, params in passes.values())
        gradients = passes[torch.channels_last][0]()
        assert all(torch.equal(a, b) for a, b in zip(default, reference)), "the default layout's scores differ"
        difference = max(float((a - b).abs().max() / a.abs().max()) for a, b in zip(default, last))
        kept = [torch.cat([t.reshape(-1) for t in scores]).topk(round(1e-3 * sum(t.numel() for t in scores))).indices
                for scores in (default, last)]
        moved = len(kept[0]) - len(set(kept[0].tolist()) & set(kept[1].tolist()))
        channels_last, gradient_count = sum(g.dim() == 4 and not g.is_contiguous() for g in gradients), len(gradients)
        # Nothing of the comparison stays alive while timing: freed and refaulted memory would be timed too.
        del reference, default, last, gradients
        channels_last_run = passes[torch.channels_last][0]
        runs = {"default": passes[torch.contiguous_format][0], "channels-last": channels_last_run,
                "made contiguous": lambda: [g.contiguous() for g in channels_last_run()]}
        times = {label: [] for label in runs}
        faults = {label: 0 for label in runs}
        for _ in range(args.repeats):
            for label, run in runs.items():
                start, before = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                for _ in range(args.passes):
                    run()
                times[label].append((time.process_time() - start) / args.passes)
                faults[label] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        default_time, last_time, contiguous_time = (sorted(t)[len(t) // 2] for t in times.values())
        per_pass = "/".join(f"{f / (args.repeats * args.passes):.0f}" for f in faults.values())
        print(f"  {name:9s} default {default_time * 1e3:6.1f} ms, channels-last {last_time * 1e3:6.1f} ms: "
              f"ratio {last_time / default_time:.2f} ({contiguous_time / default_time:.2f} with the gradients made "
              f"contiguous; page faults a pass {per_pass}); scores differ by up to {difference:.1e} (relative), "
              f"{channels_last} of {gradient_count} gradients come back channels-last; a one-shot prune to 1e-3 "
              f"keeps {moved} of {len(kept[0]):,} weights differently")


if __name__ == "__main__":
    main()
