"""ONNX export benchmark: what each kind of pruning buys on ONNX Runtime (CPU).

Three measurements, all from one run (the machine may be shared: only ratios taken
side by side in the same run mean anything, and the timed runs are interleaved):

1. Speed. VGG-16-BN (3x32x32, 100 classes) dense, with 50% of the channels of every
   convolution removed by torch-pruning + ``SynFlowImportance`` (target: batch-1
   latency >= 3.5x lower), with 50% of the channels zeroed by structured masks
   (``prune.ln_structured``) and removed by ``export_onnx``'s compaction, and with
   90% / 99% unstructured SynFlow masks, exported without compaction (expected: no
   speed-up) and with the defaults (compaction removes the channels SynFlow zeroed
   entirely).
2. Size. The same unstructured models stored with ONNX ``sparse_initializer`` s:
   file size vs the same model stored densely (targets: <= 0.35x at 90%, <= 0.06x at 99%).
3. Parity. Every zoo family (small widths) pruned to 90% by every criterion,
   exported and verified: max |onnxruntime - torch| / max |torch| (target <= 1e-4).
4. ImageNet ResNets (``--imagenet``). ``resnet18_imagenet`` and ``resnet50_imagenet``
   at 3x224x224, dense, and the CIFAR ``resnet18`` at 224x224 for contrast: export
   time, MACs (targets: 1.81 G / 4.09 G, as torchvision's models), parameters, and
   ONNX Runtime latency at batch 1 and 8.

    python benchmarks/export_bench.py            # quick: SynFlow with 10 rounds
    python benchmarks/export_bench.py --full     # the paper's 100 rounds
    python benchmarks/export_bench.py --json results.json --threads 1 --repeat 50
    python benchmarks/export_bench.py --imagenet --skip-speed --skip-parity   # section 4 only
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from torch.nn.utils import prune

from synflow_plugin import FORCE, SNIP, GraSP, IterSNIP, Magnitude, Random, SynFlow, get_criterion, prunable_parameters
from synflow_plugin.export import benchmark_onnx, export_onnx
from synflow_plugin.models import create_model

INPUT = (3, 32, 32)
CLASSES = 100


def vgg16_bn() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("vgg16_bn", num_classes=CLASSES, input_shape=INPUT)


def channel_pruned_vgg(x: torch.Tensor) -> tuple[torch.nn.Module, str]:
    """VGG-16-BN with 50% of every convolution's channels removed by torch-pruning."""
    import torch_pruning as tp

    model = vgg16_bn()
    try:
        from synflow_plugin.torch_pruning import SynFlowImportance

        importance, label = SynFlowImportance(), "SynFlowImportance"
    except Exception as exc:  # noqa: BLE001 - the adapter is optional here
        print(f"NOTE: synflow_plugin.torch_pruning.SynFlowImportance is not usable ({exc}); "
              "falling back to torch-pruning's MagnitudeImportance. The latency depends on the "
              "channel counts, not on which channels are kept.")
        importance, label = tp.importance.MagnitudeImportance(p=1), "tp.MagnitudeImportance"
    pruner = tp.pruner.MetaPruner(model, x, importance=importance, pruning_ratio=0.5,
                                  ignored_layers=[model.classifier])
    pruner.step()
    return model, label


def masked_channels_vgg() -> torch.nn.Module:
    """VGG-16-BN with 50% of every convolution's output channels zeroed by masks (L1 norm)."""
    model = vgg16_bn()
    for module, name in prunable_parameters(model)[:-1]:  # not the classifier
        prune.ln_structured(module, name, amount=0.5, n=1, dim=0)
    return model


def synflow_vgg(x: torch.Tensor, amount: float, rounds: int) -> torch.nn.Module:
    model = vgg16_bn()
    prune.global_unstructured(prunable_parameters(model), pruning_method=SynFlow, amount=amount,
                              model=model, example_inputs=x, iterations=rounds, progress=False)
    return model


def speed_and_size(out: Path, args) -> dict:
    x = torch.randn(1, *INPUT)
    rounds = 100 if args.full else 10
    print(f"== 1-2. VGG-16-BN {INPUT}, {CLASSES} classes: speed and size "
          f"(SynFlow with {rounds} rounds{'' if args.full else ': quick mode, --full for the paper`s 100'})")
    models: dict[str, object] = {}
    exports: dict[str, dict] = {}

    def export(name, model, **kw):
        start = time.perf_counter()
        result = export_onnx(model, x, out / f"{name}.onnx", overwrite=True, **kw)
        exports[name] = {"file_bytes": result.file_bytes, "max_rel_diff": result.max_rel_diff,
                         "compacted_layers": len(result.removed_channels),
                         "channels": [sum(b for b, _ in result.removed_channels.values()),
                                      sum(a for _, a in result.removed_channels.values())],
                         "sparse_initializers": len(result.sparse_initializers)}
        print(f"  exported {name}: {result} [{time.perf_counter() - start:.1f} s]")
        models[name] = (out / f"{name}.onnx", model)

    export("dense", vgg16_bn())
    pruned, label = channel_pruned_vgg(x)
    export(f"channels50-{label}", pruned)
    export("channels50-masks+compact", masked_channels_vgg())
    for amount in (0.9, 0.99):
        start = time.perf_counter()
        model = synflow_vgg(x, amount, rounds)
        print(f"  SynFlow {amount:.0%} unstructured: {time.perf_counter() - start:.1f} s")
        tag = f"synflow{round(amount * 100)}"
        export(f"{tag}-dense-storage", model, compact=False)
        export(f"{tag}-sparse-init", model, compact=False, sparse_initializers=True)
        # the defaults compact channels SynFlow zeroed entirely (many at 99%)
        export(f"{tag}-compact+sparse", model, sparse_initializers=True)

    report = benchmark_onnx(
        {name: pair for name, pair in models.items()}, batch_sizes=(1, 8), threads=args.threads,
        warmup=args.warmup, repeat=args.repeat, baseline="dense", json_path=out / "benchmark_onnx.json",
    )
    rows = {m["name"]: m for m in report.models}

    def ratio(name, batch="1", key="p50_ms"):
        return rows["dense"]["latency"][batch][key] / rows[name]["latency"][batch][key]

    speed = ratio(f"channels50-{label}")
    speed_masks = ratio("channels50-masks+compact")
    size90 = exports["synflow90-sparse-init"]["file_bytes"] / exports["synflow90-dense-storage"]["file_bytes"]
    size99 = exports["synflow99-sparse-init"]["file_bytes"] / exports["synflow99-dense-storage"]["file_bytes"]
    vs_dense90 = exports["synflow90-sparse-init"]["file_bytes"] / exports["dense"]["file_bytes"]
    vs_dense99 = exports["synflow99-sparse-init"]["file_bytes"] / exports["dense"]["file_bytes"]
    print()
    print("  speed-ups vs dense, p50 (min) latency; the machine may be shared, min is the least disturbed run:")
    for name, note in ((f"channels50-{label}", "target >= 3.5x at batch 1"),
                       ("channels50-masks+compact", "structured masks, compacted by export_onnx"),
                       ("synflow90-dense-storage", "unstructured: no gain expected"),
                       ("synflow99-dense-storage", "unstructured: no gain expected"),
                       ("synflow99-sparse-init", "unstructured: no gain expected"),
                       ("synflow90-compact+sparse", "channels SynFlow zeroed entirely, compacted"),
                       ("synflow99-compact+sparse", "channels SynFlow zeroed entirely, compacted")):
        print(f"    {name:<30} batch 1: {ratio(name):.2f}x ({ratio(name, key='min_ms'):.2f}x)   "
              f"batch 8: {ratio(name, '8'):.2f}x ({ratio(name, '8', 'min_ms'):.2f}x)   [{note}]")
    print(f"  sparse-initializer file vs same model stored densely: 90%: {size90:.3f}x (target <= 0.35), "
          f"99%: {size99:.3f}x (target <= 0.06)")
    print(f"  sparse-initializer file vs the unpruned dense file: 90%: {vs_dense90:.3f}x, 99%: {vs_dense99:.3f}x")
    return {"importance": label, "synflow_rounds": rounds, "exports": exports, "report": report.to_dict(),
            "speedup_b1_channels50": speed, "speedup_b1_masks_compact": speed_masks,
            "size_ratio_90": size90, "size_ratio_99": size99,
            "size_ratio_90_vs_unpruned": vs_dense90, "size_ratio_99_vs_unpruned": vs_dense99}


PARITY_MODELS = {
    "vgg11_bn": dict(width_multiplier=0.125),
    "vgg16": dict(width_multiplier=0.125),
    "resnet20": dict(width_multiplier=0.5),
    "resnet18": dict(width_multiplier=0.125),
    "mlp": dict(input_shape=(1, 28, 28), width=64, depth=4),
    "conv": dict(input_shape=(1, 40), width=16),
}


def parity(out: Path, args) -> dict:
    rounds = 100 if args.full else 10
    print(f"\n== 3. parity: every zoo family x every criterion, 90% unstructured (SynFlow {rounds} rounds, "
          "IterSNIP/FORCE their defaults); max |onnxruntime - torch| / max |torch| on a batch of 4")
    results: dict[str, dict[str, float]] = {}
    methods = {m.criterion: m for m in (Random, Magnitude, SNIP, GraSP, SynFlow, IterSNIP, FORCE)}
    for name, options in PARITY_MODELS.items():
        results[name] = {}
        for criterion, method in methods.items():
            torch.manual_seed(0)
            model = create_model(name, num_classes=10, **options)
            shape = model.input_shape
            x = torch.randn(4, *shape)
            data = [(torch.randn(8, *shape), torch.randint(0, 10, (8,))) for _ in range(2)]
            kwargs = dict(model=model, example_inputs=x, progress=False)
            if get_criterion(criterion).needs_data:
                kwargs["data"] = data
            if criterion == "synflow":
                kwargs["iterations"] = rounds
            prune.global_unstructured(prunable_parameters(model), pruning_method=method, amount=0.9, **kwargs)
            result = export_onnx(model, x, out / f"parity-{name}-{criterion}.onnx", overwrite=True)
            results[name][criterion] = result.max_rel_diff
            os.remove(result.path)
        print(f"  {name:<9} " + "  ".join(f"{c}={v:.1e}" for c, v in results[name].items()))
    worst = max(v for r in results.values() for v in r.values())
    print(f"  worst relative difference: {worst:.2e} (target <= 1e-4)")
    return {"rounds": rounds, "max_rel_diff": results, "worst": worst}


def imagenet(out: Path, args) -> dict:
    """Section 4: the ImageNet-stem ResNets (and the CIFAR ResNet-18) at 3x224x224."""
    x = torch.randn(1, 3, 224, 224)
    entries, timings = {}, {}
    for name in ("resnet18_imagenet", "resnet50_imagenet", "resnet18"):
        torch.manual_seed(0)
        model = create_model(name, num_classes=1000, input_shape=(3, 224, 224)).eval()
        start = time.perf_counter()
        result = export_onnx(model, x, out / f"{name}-224.onnx", overwrite=True, compact=False)
        timings[name] = time.perf_counter() - start
        print(f"  {name:<18} export {timings[name]:5.1f} s  {result}")
        entries[f"{name} @224"] = (result.path, model)
    report = benchmark_onnx(entries, batch_sizes=(1, 8), threads=args.threads, warmup=max(1, args.warmup // 5),
                            repeat=max(3, args.repeat // 5), verbose=True)
    rows = {m["name"]: m for m in report.models}
    for name in ("resnet18_imagenet", "resnet50_imagenet", "resnet18"):
        row = rows[f"{name} @224"]
        print(f"  {name:<18} {row['macs_dense'] / 1e9:6.3f} GMACs  {row['params'] / 1e6:6.2f} M params (BN folded)")
    return {"export_seconds": timings, "report": report.to_dict()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="SynFlow with the paper's 100 rounds")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None, help="keep the .onnx files here (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="write all results here")
    parser.add_argument("--skip-parity", action="store_true")
    parser.add_argument("--skip-speed", action="store_true", help="skip sections 1 and 2 (VGG-16-BN)")
    parser.add_argument("--imagenet", action="store_true", help="section 4: ImageNet ResNets at 224x224")
    args = parser.parse_args()
    torch.set_num_threads(max(1, args.threads))

    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        results = {}
        if not args.skip_speed:
            results["speed_and_size"] = speed_and_size(out, args)
        if not args.skip_parity:
            results["parity"] = parity(out, args)
        if args.imagenet:
            print("\nImageNet ResNets, 3x224x224, dense:")
            results["imagenet"] = imagenet(out, args)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
            print(f"\nresults written to {args.json}")


if __name__ == "__main__":
    main()
