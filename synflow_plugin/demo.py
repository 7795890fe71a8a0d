"""``synflow-plugin demo``: the SynFlow paper's central result, measured on this machine.

Four experiments, each written to ``<out>/`` as numbers (``results.json``), pictures
(PNG) and a report (``report.md``) that puts the measured values beside the paper's:

1. **Layer collapse** (Tanaka et al. 2020, Fig. 1 / Table: critical compression).
   VGG-16-BN shaped for CIFAR-100 is pruned at initialisation by every criterion at
   compressions 10^x; the critical compression is the largest 10^x at which no layer
   has lost all its weights. The sweep is coarse-to-fine (:func:`collapse_sweep`).
2. **Accuracy vs compression** on a real, offline data set (scikit-learn's 8x8
   digits by default, or MNIST-1D): a small conv net pruned at init by each criterion
   at 10x, 100x, 1000x (and dense), then trained on the CPU, for several seeds.
3. **Sanity checks** of Frankle et al. (ICLR 2021): the SynFlow masks shuffled within
   each layer, the weights re-initialised, the scores inverted.
4. **Export**: the SynFlow-pruned VGG to ONNX, unstructured (sparse initialisers) and
   channel-compacted, benchmarked with ONNX Runtime against the dense model.
5. **Tickets at initialisation** (Sreenivasan et al., NeurIPS 2022, GemMiner): the
   tickets of GemMiner (scores trained with the weights frozen), IMP (lottery tickets,
   :mod:`~synflow_plugin.criteria.imp`, a stated level count), SynFlow, SNIP and random,
   and the dense network, on digits and MNIST-1D (CIFAR-10 with a root) at densities
   down to 1%, each trained the same way; accuracy vs density and the wall time to find
   each ticket (IMP's includes its level trainings). Run through :mod:`synflow_plugin.sweep`.

The newer criteria NTK-SAP, ProsPr and PHEW (:data:`NEWER_CRITERIA`) are in the accuracy
experiment, and in the layer-collapse sweep: PHEW in every mode, ProsPr (about a minute
per VGG-16-BN prune on 2 cores) in the full mode; NTK-SAP (seeded, so swept once per
seed: ~40 min) in none.

Nothing in the report is typed in by hand except the paper's reference values
(:data:`PAPER_CRITICAL_LOG10`); every measured value comes from this run.

>>> settings_for("quick").synflow_iterations
20
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune
from tqdm.auto import tqdm

from synflow_plugin import criteria as registry
from synflow_plugin.criteria import Criterion, get_criterion
from synflow_plugin.diagnostics import CollapseResult, critical_compression, layer_report
from synflow_plugin.errors import PruningError
from synflow_plugin.masking import LayerCollapseWarning, ZeroFlowWarning, compute_masks
from synflow_plugin.models import create_model
from synflow_plugin.sweep import CRITERION_COLORS
from synflow_plugin.targets import prunable_parameters

__all__ = [
    "PAPER_CRITICAL_LOG10",
    "PAPER_CITATION",
    "DemoSettings",
    "settings_for",
    "collapse_sweep",
    "collapse_calibration",
    "criterion_kwargs",
    "criterion_class",
    "run_demo",
    "render_demo",
    "auto_threads",
    "EXPERIMENTS",
    "CRITERIA",
    "NEWER_CRITERIA",
    "TICKET_CRITERIA",
]

#: log10 of the critical compression of VGG-16-BN on CIFAR-100 read off Tanaka et al.
#: (NeurIPS 2020), Fig. 1; the only numbers of the report not measured by the demo.
PAPER_CRITICAL_LOG10 = {"magnitude": 2.75, "random": 3.33, "snip": 3.58, "grasp": 3.58, "synflow": 5.92}
PAPER_CITATION = (
    "Tanaka, Kunin, Yamins, Ganguli. Pruning neural networks without any data by iteratively "
    "conserving synaptic flow. NeurIPS 2020, https://arxiv.org/abs/2006.05467"
)
EXPERIMENTS = ("collapse", "accuracy", "sanity", "export", "tickets")
#: The criteria of the SynFlow paper.
CRITERIA = ("magnitude", "random", "snip", "grasp", "synflow")
#: Criteria published after it: NTK-SAP (ICLR 2023), ProsPr (ICLR 2022), PHEW (ICML 2021).
NEWER_CRITERIA = ("ntksap", "prospr", "phew")
#: The tickets compared in experiment 5 (with the dense network).
TICKET_CRITERIA = ("gemminer", "imp", "synflow", "snip", "random")
MODES = ("full", "quick", "tiny")


@dataclass
class DemoSettings:
    """Everything that decides what the demo runs; the report prints all of it."""

    mode: str
    # 1. layer collapse
    collapse_model: str = "vgg16_bn"
    collapse_width: float = 1.0
    collapse_classes: int = 100
    #: ProsPr differentiates through 3 training steps (about a minute per VGG-16-BN prune
    #: here), so only the full mode sweeps it; PHEW (~3 s per prune) is in every mode.
    #: NTK-SAP (5 fresh initialisations in each of 20 rounds, ~27 s per prune, 6x SynFlow)
    #: is seeded, so its sweep would run once per seed of ``random_seeds``: ~40 min in
    #: the full mode; it is in the accuracy experiment only.
    collapse_criteria: tuple[str, ...] = CRITERIA + ("phew",)
    max_exponent: float = 6.0
    coarse_step: float = 1.0
    fine_step: float = 0.25
    #: Rounds of the iterative criteria (those whose ``default_iterations`` exceeds 1),
    #: at most: SynFlow's 100 in the paper, fewer in the quick and tiny modes.
    synflow_iterations: int = 100
    calibration_per_class: int = 10
    collapse_seed: int = 0
    #: A seeded criterion's critical compression is one draw of a wide distribution (Random's
    #: is set by the best-ranked of the first conv's 1,728 weights); its median over these
    #: seeds is reported.
    random_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    # 2. accuracy vs compression
    accuracy_dataset: str = "digits"
    accuracy_model: str = "conv"
    accuracy_model_options: dict[str, Any] = field(default_factory=lambda: {"depth": 3, "width": 32})
    accuracy_criteria: tuple[str, ...] = CRITERIA + NEWER_CRITERIA
    compressions_log10: tuple[float, ...] = (1.0, 2.0, 3.0)
    seeds: tuple[int, ...] = (0, 1)
    epochs: int = 15
    lr: float = 3e-3
    batch_size: int = 128
    mnist1d_samples: int | None = None
    # 3. sanity checks
    sanity_criteria: tuple[str, ...] = ("synflow",)
    sanity_compressions_log10: tuple[float, ...] = (2.0,)
    # 4. export
    export_compression_log10: float = 2.0
    bench_batch_sizes: tuple[int, ...] = (1, 8)
    bench_repeat: int = 20
    bench_warmup: int = 5
    # 5. tickets (run through synflow_plugin.sweep, one grid per data set)
    tickets_datasets: tuple[str, ...] = ("digits",)
    tickets_model: str = "conv"
    tickets_model_options: dict[str, Any] = field(default_factory=lambda: {"depth": 3, "width": 32})
    tickets_criteria: tuple[str, ...] = TICKET_CRITERIA
    tickets_densities: tuple[float, ...] = (0.1, 0.01)
    tickets_seeds: tuple[int, ...] = (0,)
    tickets_epochs: int = 15
    #: IMP prunes this fraction of the survivors per level (the paper's 0.2 would take 21
    #: trainings to reach 1%; 0.5 takes 7): the levels are ceil(log d / log(1 - rate)).
    imp_rate: float = 0.5
    #: GemMiner: rounds (flagging steps) and score-training epochs per round (the paper:
    #: 5 epochs per round over 150 epochs; 50 epochs here).
    gemminer_iterations: int = 10
    gemminer_epochs: int = 5

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def settings_for(mode: str) -> DemoSettings:
    """The settings of ``"full"`` (the paper's sweep), ``"quick"`` (a few minutes) or ``"tiny"`` (tests)."""
    if mode == "full":
        return DemoSettings(
            mode="full",
            compressions_log10=(0.5, 1.0, 1.5, 2.0, 2.5, 3.0),
            seeds=(0, 1, 2),
            random_seeds=tuple(range(10)),
            epochs=30,
            sanity_criteria=("synflow", "snip"),
            sanity_compressions_log10=(1.0, 2.0),
            bench_repeat=50,
            collapse_criteria=CRITERIA + ("prospr", "phew"),
            tickets_datasets=("digits", "mnist1d"),
            tickets_densities=(0.1, 0.05, 0.02, 0.01),
            tickets_seeds=(0, 1, 2),
        )
    if mode == "quick":
        return DemoSettings(mode="quick", fine_step=0.5, synflow_iterations=20)
    if mode == "tiny":
        return DemoSettings(
            mode="tiny", collapse_model="vgg11_bn", collapse_width=0.125, collapse_classes=10,
            max_exponent=3.0, coarse_step=1.0, fine_step=0.5, synflow_iterations=5,
            calibration_per_class=2, random_seeds=(0, 1),
            accuracy_model_options={"depth": 2, "width": 4}, compressions_log10=(1.0, 2.0),
            seeds=(0, 1), epochs=1, mnist1d_samples=200,
            export_compression_log10=1.0, bench_batch_sizes=(1,), bench_repeat=2, bench_warmup=1,
            collapse_criteria=CRITERIA, accuracy_criteria=CRITERIA,
            tickets_datasets=("digits",), tickets_model_options={"depth": 2, "width": 4},
            tickets_densities=(0.25, 0.1), tickets_epochs=1, gemminer_iterations=2, gemminer_epochs=1,
        )
    raise PruningError(f"mode={mode!r} is not valid; expected one of {MODES}")


# --------------------------------------------------------------------------- collapse
def _merge(coarse: CollapseResult, fine: CollapseResult | None, critical: float | None) -> CollapseResult:
    pairs = list(zip(coarse.points, coarse.densities))
    if fine is not None:
        pairs += list(zip(fine.points, fine.densities))
    pairs.sort(key=lambda pd: pd[0]["exponent"])
    return CollapseResult(coarse.criterion, critical, [p for p, _ in pairs], [d for _, d in pairs])


def collapse_sweep(
    model_fn: Callable[[], nn.Module],
    criterion: str,
    *,
    max_exponent: float = 6.0,
    coarse_step: float = 1.0,
    fine_step: float = 0.25,
    progress: bool | None = None,
    **prune_kwargs: Any,
) -> CollapseResult:
    """Critical compression on the grid of step ``fine_step``, found coarse-to-fine.

    The compressions 10^0, 10^coarse_step, ... are pruned in order until the first
    one that collapses a layer (:func:`~synflow_plugin.diagnostics.critical_compression`);
    then only the fine grid points between the last clean and the first collapsed
    coarse point are pruned, again stopping at the first collapse. With collapse
    monotone in the compression (checked on the coarse grid) this gives the linear
    sweep's answer at a fraction of its cost: for SynFlow on VGG-16-BN 10 prunes
    instead of 25.

    Args:
        model_fn: builds the freshly initialised model (fix the seed inside).
        criterion: a registry name.
        max_exponent: the largest compression tried is 10^max_exponent.
        coarse_step, fine_step: grid steps in log10; ``fine_step >= coarse_step``
            gives a plain linear sweep.
        progress: tqdm bars (``None``: only on a terminal).
        **prune_kwargs: for :func:`~synflow_plugin.compute_masks` (``example_inputs``,
            ``data``, ``iterations``, criterion options).

    Returns:
        A :class:`~synflow_plugin.diagnostics.CollapseResult` with every pruned point;
        ``critical_exponent`` is ``max_exponent`` when nothing collapsed (a lower bound).
    """
    for name, value in (("coarse_step", coarse_step), ("fine_step", fine_step)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise PruningError(f"collapse_sweep(): {name}={value!r} should be a positive number")
    coarse = critical_compression(model_fn, criterion, max_exponent=max_exponent, step=coarse_step,
                                  stop_at_collapse=True, progress=progress, **prune_kwargs)
    collapsed = [p["exponent"] for p in coarse.points if p["collapsed"]]
    if not collapsed or fine_step >= coarse_step:
        return coarse
    first = collapsed[0]
    low = first - coarse_step
    if low < 0:  # collapsed already at the first grid point
        return coarse
    start, stop = round(low + fine_step, 10), round(first - fine_step, 10)
    if start > stop + 1e-9:
        return coarse
    fine = critical_compression(model_fn, criterion, min_exponent=start, max_exponent=stop,
                                step=fine_step, stop_at_collapse=True, progress=progress, **prune_kwargs)
    # None: the first fine point collapses already, so the last clean coarse point is critical.
    critical = fine.critical_exponent if fine.critical_exponent is not None else coarse.critical_exponent
    return _merge(coarse, fine, critical)


def collapse_calibration(
    input_shape: Sequence[int], *, per_class: int = 10, cifar_root: str | os.PathLike | None = None,
    num_classes: int = 100, seed: int = 0,
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], str]:
    """The labelled batch SNIP and GraSP score on in the collapse experiment, and what it is.

    With ``cifar_root``: a class-balanced batch of ``per_class`` CIFAR-100 (or CIFAR-10)
    training images per class, the paper's data. Without it (CIFAR cannot be
    downloaded here): a class-balanced batch of real handwritten digits from
    scikit-learn, upsampled bilinearly from 8x8 to the model's input size and repeated
    over its channels; their labels 0-9 use 10 of the classifier's outputs. A proxy,
    and the report says so: SynFlow, magnitude and random do not look at it.
    """
    from synflow_plugin.data import DATASETS, calibration_batches, load_dataset

    if cifar_root is not None:
        name = "cifar100" if num_classes == 100 else "cifar10"
        train, _ = load_dataset(name, root=cifar_root)
        batches = calibration_batches(train, samples_per_class=per_class, seed=seed)
        x = batches[0][0]
        return batches, (f"{name.upper()} training images from {cifar_root}: one class-balanced batch of "
                         f"{per_class} per class ({len(x)} images), {DATASETS[name].source}")
    train, _ = load_dataset("digits")
    (x, y), = calibration_batches(train, samples_per_class=per_class, seed=seed)
    channels, *size = input_shape
    x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False).repeat(1, channels, 1, 1)
    description = (
        f"CIFAR-100 is not available offline, so SNIP and GraSP score on a proxy: {len(x)} real "
        f"handwritten digits from scikit-learn ({per_class} per class), upsampled bilinearly from 8x8 "
        f"to {size[0]}x{size[1]} and repeated over {channels} channels, labels 0-9 (10 of the "
        f"{num_classes} outputs). Pass --cifar-root DIR to use CIFAR-100 itself."
    )
    return [(x, y)], description


def _seeded(factory: Callable[[], nn.Module], seed: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(seed)
        return factory()
    return build


def criterion_kwargs(
    criterion: str | Criterion | type[Criterion],
    *,
    example_inputs: Any = None,
    data: Any = None,
    iterations: int | None = None,
    max_iterations: int | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """The keyword arguments of :func:`~synflow_plugin.compute_masks` that ``criterion``
    takes, read from its capabilities, never from its name.

    ``example_inputs`` go to a criterion that ``needs_example_inputs`` (SynFlow), ``data``
    to one that ``needs_data`` (SNIP, GraSP), ``seed`` to a ``seeded`` one (Random).
    ``iterations`` (exactly) or ``max_iterations`` (at most, the criterion's own
    ``default_iterations`` otherwise) set the rounds of an iterative criterion, one
    whose ``default_iterations`` exceeds 1; a one-shot criterion stays one-shot.

    Args:
        criterion: a registry name, or a :class:`~synflow_plugin.criteria.Criterion`
            (an instance or a class).

    >>> criterion_kwargs("synflow", example_inputs="x", data="d", max_iterations=20, seed=3)
    {'example_inputs': 'x', 'iterations': 20}
    >>> criterion_kwargs("random", example_inputs="x", data="d", max_iterations=20, seed=3)
    {'seed': 3}
    """
    if isinstance(criterion, Criterion) or (isinstance(criterion, type) and issubclass(criterion, Criterion)):
        caps = criterion
    else:
        caps = criterion_class(criterion)
    kwargs: dict[str, Any] = {}
    if caps.needs_example_inputs:
        kwargs["example_inputs"] = example_inputs
    if caps.needs_data:
        kwargs["data"] = data
    if caps.default_iterations > 1:
        if iterations is not None:
            kwargs["iterations"] = iterations
        elif max_iterations is not None:
            kwargs["iterations"] = min(caps.default_iterations, max_iterations)
    if caps.seeded and seed is not None:
        kwargs["seed"] = seed
    return kwargs


def criterion_class(name: str) -> type[Criterion]:
    """The registered class of ``name`` (its capabilities are class attributes), read
    without building an instance, so a criterion whose options have no defaults works too.

    Raises:
        PruningError: unknown name; the message lists the registered ones.
    """
    if isinstance(name, str) and name.lower() in registry.list_criteria():
        return registry.CRITERIA[name.lower()]
    return type(get_criterion(name))  # an unknown name raises the registry's error


def _run_collapse(s: DemoSettings, cifar_root, log, progress) -> dict[str, Any]:
    def factory() -> nn.Module:
        return create_model(s.collapse_model, num_classes=s.collapse_classes, input_shape=(3, 32, 32),
                            width_multiplier=s.collapse_width)

    # compute_masks never changes the model it scores, so one initialisation serves every point.
    probe = _seeded(factory, s.collapse_seed)()

    def model_fn() -> nn.Module:
        return probe

    example = torch.randn(1, 3, 32, 32)
    batches, data_note = collapse_calibration((3, 32, 32), per_class=s.calibration_per_class,
                                              cifar_root=cifar_root, num_classes=s.collapse_classes,
                                              seed=s.collapse_seed)
    log(f"[collapse] {s.collapse_model} (width x{s.collapse_width}, {s.collapse_classes} classes, "
        f"{sum(r.size for r in layer_report(probe)):,} prunable weights in {len(layer_report(probe))} layers), "
        f"compression 10^0 .. 10^{s.max_exponent:g}, grid step {s.fine_step:g} (coarse {s.coarse_step:g})")
    log(f"[collapse] data for SNIP/GraSP: {data_note}")
    out: dict[str, Any] = {"data": data_note, "layers": [r.name for r in layer_report(probe)],
                           "layer_sizes": [r.size for r in layer_report(probe)], "criteria": {}}
    for criterion in tqdm(s.collapse_criteria, desc="layer collapse", unit="criterion",
                          disable=(not progress) if progress is not None else None):
        start = time.perf_counter()
        caps = criterion_class(criterion)
        seeds = s.random_seeds if caps.seeded else (s.collapse_seed,)
        sweeps = []
        for seed in seeds:
            kwargs = criterion_kwargs(criterion, example_inputs=example, data=batches,
                                      max_iterations=s.synflow_iterations, seed=seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ZeroFlowWarning)
                warnings.simplefilter("ignore", LayerCollapseWarning)
                sweeps.append(collapse_sweep(model_fn, criterion, max_exponent=s.max_exponent,
                                             coarse_step=s.coarse_step, fine_step=s.fine_step,
                                             progress=progress, **kwargs))
        seconds = time.perf_counter() - start
        exponents = [r.critical_exponent if r.critical_exponent is not None else -1.0 for r in sweeps]
        # the median seed's sweep (the lower median for an even count) stands for the criterion
        order = sorted(range(len(sweeps)), key=lambda i: exponents[i])
        result = sweeps[order[(len(order) - 1) // 2]]
        first = next((p for p in result.points if p["collapsed"]), None)
        paper = PAPER_CRITICAL_LOG10.get(criterion)
        out["criteria"][criterion] = {
            "seeds": list(seeds),
            "critical_exponents_per_seed": [r.critical_exponent for r in sweeps],
            "critical_exponent": result.critical_exponent,
            "bounded_by_grid": first is None,
            "first_collapse_exponent": None if first is None else first["exponent"],
            "first_collapsed_layers": [] if first is None else first["collapsed"],
            "paper_exponent": paper,
            "iterations": kwargs.get("iterations", caps.default_iterations),
            "points": result.points,
            "densities": result.densities,
            "prunes": sum(len(r.points) for r in sweeps),
            "seconds": seconds,
        }
        crit = "none" if result.critical_exponent is None else f"10^{result.critical_exponent:g}"
        if len(sweeps) > 1:
            crit += (f" (median of {len(sweeps)} seeds: "
                     f"{', '.join(_fmt_exp(r.critical_exponent) for r in sweeps)})")
        bound = " (nothing collapsed up to the grid's end)" if first is None else (
            f", first collapse at 10^{first['exponent']:g}: {', '.join(first['collapsed'][:3])}"
            f"{' ...' if len(first['collapsed']) > 3 else ''}")
        log(f"[collapse] {criterion:>9}: critical compression {crit}{bound}; "
            f"{'paper 10^' + str(paper) if paper is not None else 'not in the paper'}  "
            f"[{out['criteria'][criterion]['prunes']} prunes, {seconds:.1f} s]")
    return out


# --------------------------------------------------------------------------- accuracy
def _load_accuracy_data(s: DemoSettings):
    from synflow_plugin.data import DATASETS, calibration_batches, load_dataset

    kwargs = {}
    if s.accuracy_dataset == "mnist1d" and s.mnist1d_samples is not None:
        kwargs["num_samples"] = s.mnist1d_samples
    train, test = load_dataset(s.accuracy_dataset, **kwargs)
    info = DATASETS[s.accuracy_dataset]
    return train, test, info, calibration_batches


def _prune_and_train(s: DemoSettings, train, test, info, calibration_batches, *, criterion: str | None,
                     exponent: float, seed: int, sanity: str | None = None, progress=None) -> dict[str, Any]:
    from synflow_plugin import sanity as checks
    from synflow_plugin.train import train_model

    torch.manual_seed(seed)
    model = create_model(s.accuracy_model, num_classes=info.num_classes, input_shape=info.input_shape,
                         **s.accuracy_model_options)
    params = prunable_parameters(model)
    start = time.perf_counter()
    if criterion is not None and exponent > 0:
        calib = calibration_batches(train, samples_per_class=s.calibration_per_class, seed=seed)
        kwargs = criterion_kwargs(criterion, example_inputs=torch.randn(1, *info.input_shape), data=calib,
                                  seed=seed)
        method = criterion
        if sanity == "invert":  # the inverted criterion is built here, so its options go to it
            method = checks.inverted(criterion, **({"seed": kwargs.pop("seed")} if "seed" in kwargs else {}))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ZeroFlowWarning)
            warnings.simplefilter("ignore", LayerCollapseWarning)
            masks = compute_masks(model, params, method, 1.0 - 10.0 ** -exponent, **kwargs)
        for (module, name), mask in zip(params, masks):
            prune.custom_from_mask(module, name, mask)
        if sanity == "shuffle":
            checks.shuffle_masks_(model, seed=seed)
        elif sanity == "reinit":
            checks.reinitialize_(model, seed=seed + 1000)
    prune_seconds = time.perf_counter() - start
    rows = layer_report(model)
    result = train_model(model, train, test, epochs=s.epochs, lr=s.lr, batch_size=s.batch_size,
                         seed=seed, progress=False)
    return {
        "criterion": criterion or "dense", "sanity": sanity, "exponent": exponent,
        "compression": 10.0 ** exponent, "seed": seed,
        "density": sum(r.remaining for r in rows) / sum(r.size for r in rows),
        "remaining": sum(r.remaining for r in rows),
        "collapsed_layers": [r.name for r in rows if r.collapsed],
        "test_accuracy": result.test_accuracy, "test_loss": result.test_loss,
        "prune_seconds": prune_seconds, "train_seconds": result.seconds,
    }


def _summarise(runs: list[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(tuple(run[k] for k in keys), []).append(run)
    out = []
    for key, members in groups.items():
        accs = [m["test_accuracy"] for m in members]
        out.append({**dict(zip(keys, key)), "mean_accuracy": statistics.fmean(accs),
                    "std_accuracy": statistics.pstdev(accs),
                    "seeds": len(accs), "collapsed_runs": sum(bool(m["collapsed_layers"]) for m in members)})
    return out


def _run_accuracy(s: DemoSettings, log, progress) -> dict[str, Any]:
    train, test, info, calibration_batches = _load_accuracy_data(s)
    probe = create_model(s.accuracy_model, num_classes=info.num_classes, input_shape=info.input_shape,
                         **s.accuracy_model_options)
    weights = sum(r.size for r in layer_report(probe))
    log(f"[accuracy] {s.accuracy_dataset} ({len(train)} train / {len(test)} test, {info.source}); "
        f"model {s.accuracy_model} {s.accuracy_model_options} ({weights:,} prunable weights); "
        f"{s.epochs} epochs of Adam (lr {s.lr:g}, cosine), seeds {list(s.seeds)}")
    jobs = [(None, 0.0, seed) for seed in s.seeds]
    jobs += [(c, e, seed) for e in s.compressions_log10 for c in s.accuracy_criteria for seed in s.seeds]
    runs = []
    for criterion, exponent, seed in tqdm(jobs, desc="accuracy", unit="run",
                                          disable=(not progress) if progress is not None else None):
        runs.append(_prune_and_train(s, train, test, info, calibration_batches, criterion=criterion,
                                     exponent=exponent, seed=seed))
    summary = _summarise(runs, ("criterion", "exponent"))
    for row in summary:
        log(f"[accuracy] {row['criterion']:>9} at {10 ** row['exponent']:>6.0f}x: "
            f"{100 * row['mean_accuracy']:5.1f}% +- {100 * row['std_accuracy']:.1f} "
            f"({row['collapsed_runs']}/{row['seeds']} runs with a collapsed layer)")
    return {"dataset": s.accuracy_dataset, "dataset_source": info.source, "train_size": len(train),
            "test_size": len(test), "num_classes": info.num_classes, "chance": 1.0 / info.num_classes,
            "model": s.accuracy_model, "model_options": s.accuracy_model_options,
            "prunable_weights": weights, "runs": runs, "summary": summary}


def _run_sanity(s: DemoSettings, accuracy: dict[str, Any] | None, log, progress) -> dict[str, Any]:
    train, test, info, calibration_batches = _load_accuracy_data(s)
    runs = []
    jobs = [(c, e, v, seed) for c in s.sanity_criteria for e in s.sanity_compressions_log10
            for v in (None, "shuffle", "reinit", "invert") for seed in s.seeds]
    previous = {(r["criterion"], r["exponent"], r["seed"]): r for r in (accuracy or {}).get("runs", [])}
    for criterion, exponent, variant, seed in tqdm(jobs, desc="sanity checks", unit="run",
                                                   disable=(not progress) if progress is not None else None):
        if variant is None and (criterion, exponent, seed) in previous:
            runs.append(previous[(criterion, exponent, seed)])  # the same run, not repeated
            continue
        runs.append(_prune_and_train(s, train, test, info, calibration_batches, criterion=criterion,
                                     exponent=exponent, seed=seed, sanity=variant))
    summary = _summarise(runs, ("criterion", "exponent", "sanity"))
    for row in summary:
        log(f"[sanity] {row['criterion']:>8} at {10 ** row['exponent']:>5.0f}x, {row['sanity'] or 'as pruned':>9}: "
            f"{100 * row['mean_accuracy']:5.1f}% +- {100 * row['std_accuracy']:.1f}")
    return {"runs": runs, "summary": summary}


# --------------------------------------------------------------------------- tickets
def _ticket_options(s: DemoSettings) -> dict[str, dict[str, Any]]:
    """The options of the ticket criteria that train, read from their capabilities: a
    criterion trained with a ``train_fn`` (IMP) prunes ``imp_rate`` per level; one that
    trains on the training set (GemMiner) runs ``gemminer_iterations`` rounds of
    ``gemminer_epochs`` epochs."""
    options: dict[str, dict[str, Any]] = {}
    for name in s.tickets_criteria:
        caps = criterion_class(name)
        if caps.needs_training:
            options[name] = {"rate": s.imp_rate}
        elif caps.reads_training_set:
            options[name] = {"epochs": s.gemminer_epochs, "iterations": s.gemminer_iterations}
    return options


def _tickets_datasets(s: DemoSettings, cifar_root) -> list[str]:
    names = list(s.tickets_datasets)
    if cifar_root is not None and (Path(cifar_root) / "cifar-10-batches-py").is_dir() and "cifar10" not in names:
        names.append("cifar10")
    return names


def _summarise_tickets(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (criterion, density): accuracy and ticket-finding seconds over the seeds, and
    the rounds each ticket took (IMP's levels)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["criterion"], r["compression"]), []).append(r)
    out = []
    for (criterion, compression), members in groups.items():
        ok = [m for m in members if m.get("status") == "ok"]
        accs = [float(m["accuracy"]) for m in ok]
        secs = [float(m["times"]["prune"]) for m in ok]
        out.append({
            "criterion": criterion, "compression": compression, "density": 1.0 / compression,
            "mean_accuracy": statistics.fmean(accs) if accs else None,
            "std_accuracy": statistics.pstdev(accs) if accs else None,
            "mean_seconds": statistics.fmean(secs) if secs else None,
            "std_seconds": statistics.pstdev(secs) if secs else None,
            "rounds": sorted({m["iterations"] for m in ok if m.get("iterations") is not None}),
            "seeds": len(ok), "failed": len(members) - len(ok),
            "collapsed_runs": sum(bool(m.get("collapsed_layers")) for m in ok),
        })
    return out


def _run_tickets(s: DemoSettings, out: Path, cifar_root, log, progress) -> dict[str, Any]:
    from synflow_plugin.data import DATASETS
    from synflow_plugin.sweep import Grid, run_sweep

    options = _ticket_options(s)
    threads = torch.get_num_threads()
    result: dict[str, Any] = {
        "model": s.tickets_model, "model_options": s.tickets_model_options, "criteria": list(s.tickets_criteria),
        "densities": list(s.tickets_densities), "seeds": list(s.tickets_seeds), "epochs": s.tickets_epochs,
        "lr": s.lr, "batch_size": s.batch_size, "threads": threads, "criterion_options": options,
        "trains_with_train_fn": [n for n in s.tickets_criteria if criterion_class(n).needs_training],
        "trains_on_training_set": [n for n in s.tickets_criteria if criterion_class(n).reads_training_set],
        "datasets": {},
    }
    for dataset in _tickets_datasets(s, cifar_root):
        folder = out / "tickets" / dataset
        grid = Grid(model=s.tickets_model, dataset=dataset, criteria=list(s.tickets_criteria),
                    compressions=[1.0 / d for d in s.tickets_densities], seeds=list(s.tickets_seeds),
                    epochs=s.tickets_epochs, model_options=dict(s.tickets_model_options), dense=True, lr=s.lr,
                    batch_size=s.batch_size, calibration_per_class=s.calibration_per_class, threads=threads,
                    criterion_options=options,
                    data_root=os.fspath(cifar_root) if DATASETS[dataset].needs_root else None)
        log(f"[tickets] {dataset}: {len(grid.trials())} trials ({', '.join(s.tickets_criteria)} and dense; "
            f"densities {', '.join(f'{d:g}' for d in s.tickets_densities)}; seeds {list(s.tickets_seeds)}; "
            f"{s.tickets_epochs} epochs each) -> {folder}")
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ZeroFlowWarning)
            warnings.simplefilter("ignore", LayerCollapseWarning)
            swept = run_sweep(grid, folder, overwrite=True, progress=progress, plot=False,
                              log=lambda line: log(f"[tickets] {dataset} {line}"))
        records = [r for r in swept.records if r["trial"] in {t.key for t in grid.trials()}]
        info = DATASETS[dataset]
        ok = [r for r in records if r["status"] == "ok"]
        summary = _summarise_tickets(records)
        for row in summary:
            if row["mean_accuracy"] is None:
                log(f"[tickets] {dataset} {row['criterion']:>9} at density {row['density']:g}: failed")
                continue
            log(f"[tickets] {dataset} {row['criterion']:>9} at density {row['density']:<6g}: "
                f"{100 * row['mean_accuracy']:5.1f}% +- {100 * row['std_accuracy']:.1f}, ticket in "
                f"{row['mean_seconds']:.2f} s ({'/'.join(map(str, row['rounds'])) or '-'} rounds)")
        result["datasets"][dataset] = {
            "source": info.source, "num_classes": info.num_classes, "chance": 1.0 / info.num_classes,
            "prunable_weights": ok[0]["prunable"] if ok else None, "folder": str(folder.relative_to(out)),
            "seconds": time.perf_counter() - start, "failed": swept.failed,
            "records": [{k: r[k] for k in ("trial", "criterion", "compression", "seed", "status", "error",
                                           "accuracy", "density", "remaining", "iterations",
                                           "collapsed_layers", "times")} for r in records],
            "summary": summary,
        }
    return result


# --------------------------------------------------------------------------- export
def _run_export(s: DemoSettings, out: Path, log, progress) -> dict[str, Any]:
    try:
        from synflow_plugin.export import benchmark_onnx, export_onnx
    except ImportError as exc:
        log(f"[export] skipped: {exc}")
        return {"skipped": f"{type(exc).__name__}: {exc}"}
    from synflow_plugin import SynFlow

    def fresh() -> nn.Module:
        torch.manual_seed(s.collapse_seed)
        return create_model(s.collapse_model, num_classes=s.collapse_classes, input_shape=(3, 32, 32),
                            width_multiplier=s.collapse_width)

    x = torch.randn(1, 3, 32, 32)
    dense, model = fresh().eval(), fresh()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ZeroFlowWarning)
        warnings.simplefilter("ignore", LayerCollapseWarning)
        prune.global_unstructured(prunable_parameters(model), pruning_method=SynFlow,
                                  amount=1.0 - 10.0 ** -s.export_compression_log10, model=model,
                                  example_inputs=x, iterations=s.synflow_iterations, progress=progress)
    model.eval()
    prune_seconds = time.perf_counter() - start
    folder = out / "onnx"
    folder.mkdir(parents=True, exist_ok=True)
    files = {"dense": folder / "dense.onnx", "synflow unstructured": folder / "synflow_unstructured.onnx",
             "synflow compacted": folder / "synflow_compacted.onnx"}
    exports = {
        "dense": export_onnx(dense, x, files["dense"], compact=False, overwrite=True),
        "synflow unstructured": export_onnx(model, x, files["synflow unstructured"], compact=False,
                                            sparse_initializers=True, overwrite=True),
        "synflow compacted": export_onnx(model, x, files["synflow compacted"], compact=True, overwrite=True),
    }
    references = {"dense": dense, "synflow unstructured": model, "synflow compacted": model}
    report = benchmark_onnx({k: (str(files[k]), references[k]) for k in files}, batch_sizes=s.bench_batch_sizes,
                            repeat=s.bench_repeat, warmup=s.bench_warmup, verbose=False, progress=progress)
    table = report.table()
    (out / "benchmark.txt").write_text(table + "\n")
    removed = exports["synflow compacted"].removed_channels
    log(f"[export] SynFlow at 10^{s.export_compression_log10:g} ({s.synflow_iterations} rounds, "
        f"{prune_seconds:.1f} s); ONNX files in {folder}")
    for line in table.splitlines():
        log(f"[export] {line}")
    return {
        "compression_log10": s.export_compression_log10,
        "prune_seconds": prune_seconds,
        "files": {k: str(v.relative_to(out)) for k, v in files.items()},
        "exports": {k: {"file_bytes": r.file_bytes, "removed_channels": {n: list(c) for n, c in r.removed_channels.items()},
                        "sparse_initializers": len(r.sparse_initializers), "max_rel_diff": r.max_rel_diff}
                    for k, r in exports.items()},
        "channels_before": sum(b for b, _ in removed.values()),
        "channels_after": sum(a for _, a in removed.values()),
        "benchmark": report.to_dict(),
        "table": table,
    }


# --------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def MaxNLocator(**kwargs):  # noqa: N802 - matplotlib's name, imported lazily
    from matplotlib.ticker import MaxNLocator as locator

    return locator(**kwargs)


def _critical_axes(ax, collapse: dict[str, Any], s: DemoSettings) -> None:
    names = list(collapse["criteria"])
    xs = range(len(names))
    measured = [collapse["criteria"][n]["critical_exponent"] or 0.0 for n in names]
    paper = [collapse["criteria"][n]["paper_exponent"] or 0.0 for n in names]
    ax.bar([x - 0.2 for x in xs], measured, 0.4, color=[CRITERION_COLORS.get(n, "tab:cyan") for n in names],
           label="measured here")
    ax.bar([x + 0.2 for x in xs], paper, 0.4, color="none", edgecolor="black", hatch="//",
           label="paper (Tanaka et al. 2020)")
    for x, v, n in zip(xs, measured, names):
        bound = collapse["criteria"][n]["bounded_by_grid"]
        ax.text(x - 0.2, v + 0.08, f"{'>=' if bound else ''}{v:g}", ha="center", fontsize=8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names)
    ax.set_ylabel("critical compression (log10)")
    ax.set_ylim(0, s.max_exponent + 0.8)
    ax.set_title(f"Layer collapse: {s.collapse_model} (CIFAR-100 shape)")
    ax.legend(loc="upper left", fontsize=8)


def _accuracy_axes(ax, accuracy: dict[str, Any]) -> None:
    summary = accuracy["summary"]
    dense = [r for r in summary if r["criterion"] == "dense"]
    if dense:
        ax.axhline(100 * dense[0]["mean_accuracy"], color="black", ls="--", lw=1, label="dense")
    ax.axhline(100 * accuracy["chance"], color="black", ls=":", lw=1, label="chance")
    for criterion in dict.fromkeys(r["criterion"] for r in summary if r["criterion"] != "dense"):
        rows = sorted((r for r in summary if r["criterion"] == criterion), key=lambda r: r["exponent"])
        ax.errorbar([10 ** r["exponent"] for r in rows], [100 * r["mean_accuracy"] for r in rows],
                    yerr=[100 * r["std_accuracy"] for r in rows], marker="o", capsize=3,
                    color=CRITERION_COLORS.get(criterion), label=criterion)
    ax.set_xscale("log")
    ax.set_xlabel("compression (dense weights / kept weights)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Pruned at init, then trained: {accuracy['dataset']}, {accuracy['model']} net")
    ax.legend(fontsize=8, loc="lower left")


def _plot_layers(collapse: dict[str, Any], s: DemoSettings, path: Path) -> None:
    plt = _plt()
    names = list(collapse["criteria"])
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.6), sharey=True, squeeze=False)
    floor = 10.0 ** -(s.max_exponent + 1.5)
    cmap = plt.get_cmap("viridis")
    layers = collapse["layers"]
    for ax, name in zip(axes[0], names):
        info = collapse["criteria"][name]
        critical, first = info["critical_exponent"], info["first_collapse_exponent"]
        for point, dens in zip(info["points"], info["densities"]):
            values = [dens[layer] for layer in layers]
            shown = [v if v > 0 else floor for v in values]
            e = point["exponent"]
            idx = range(1, len(values) + 1)
            if e == critical:
                ax.plot(idx, shown, color="black", lw=2, label=f"10^{e:g} (critical)")
            elif e == first:
                ax.plot(idx, shown, color="red", lw=1.5, ls="--", label=f"10^{e:g} (collapse)")
                dead = [i for i, v in zip(idx, values) if v == 0]
                ax.plot(dead, [floor] * len(dead), "rx", ms=7)
            else:
                ax.plot(idx, shown, color=cmap(e / max(s.max_exponent, 1e-9)), lw=0.8, alpha=0.7)
        ax.set_yscale("log")
        ax.set_ylim(floor / 3, 1.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer (input -> output)")
        paper = info.get("paper_exponent")
        ax.set_title(f"{name}: critical 10^{'-' if critical is None else format(critical, 'g')}"
                     + ("" if paper is None else f" (paper 10^{paper:g})"), fontsize=9)
    axes[0][0].set_ylabel("fraction of weights kept")
    fig.suptitle(f"{s.collapse_model}: per-layer density after pruning at init to 10^x. Black: the critical "
                 "compression; red dashed: the first that collapses a layer (x: layers with no weight left); "
                 "thin: other grid points (colour = x)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_single(draw, path: Path, size=(6, 4)) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=size)
    draw(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_sanity(sanity: dict[str, Any], accuracy: dict[str, Any] | None, path: Path) -> None:
    plt = _plt()
    summary = sanity["summary"]
    groups = list(dict.fromkeys((r["criterion"], r["exponent"]) for r in summary))
    variants = ["as pruned", "shuffle", "reinit", "invert"]
    fig, ax = plt.subplots(figsize=(1.8 + 1.8 * len(groups), 3.8))
    for j, variant in enumerate(variants):
        vals, errs = [], []
        for criterion, e in groups:
            row = next((r for r in summary if (r["criterion"], r["exponent"]) == (criterion, e)
                        and (r["sanity"] or "as pruned") == variant), None)
            vals.append(100 * row["mean_accuracy"] if row else 0.0)
            errs.append(100 * row["std_accuracy"] if row else 0.0)
        ax.bar([i + (j - 1.5) * 0.2 for i in range(len(groups))], vals, 0.2, yerr=errs, capsize=2, label=variant)
    if accuracy:
        ax.axhline(100 * accuracy["chance"], color="black", ls=":", lw=1, label="chance")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{c} {10 ** e:.0f}x" for c, e in groups])
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 118)
    ax.set_yticks(range(0, 101, 20))
    ax.set_title("Sanity checks (Frankle et al. 2021)")
    ax.legend(fontsize=8, loc="upper center", ncol=5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_tickets(tickets: dict[str, Any], path: Path) -> None:
    plt = _plt()
    names = list(tickets["datasets"])
    fig, axes = plt.subplots(1, len(names), figsize=(5.6 * len(names), 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], names):
        info = tickets["datasets"][dataset]
        rows = [r for r in info["summary"] if r["mean_accuracy"] is not None]
        dense = [r for r in rows if r["criterion"] == "dense"]
        if dense:
            d = dense[0]
            ax.axhspan(100 * (d["mean_accuracy"] - d["std_accuracy"]), 100 * (d["mean_accuracy"] + d["std_accuracy"]),
                       color="black", alpha=0.08)
            ax.axhline(100 * d["mean_accuracy"], color="black", ls="--", lw=1, label="dense")
        ax.axhline(100 * info["chance"], color="black", ls=":", lw=1, label="chance")
        for criterion in dict.fromkeys(r["criterion"] for r in rows if r["criterion"] != "dense"):
            points = sorted((r for r in rows if r["criterion"] == criterion), key=lambda r: -r["density"])
            label = criterion
            if criterion in tickets.get("trains_with_train_fn", ()):
                label += f" (rate {tickets['criterion_options'][criterion]['rate']:g}/level)"
            ax.errorbar([100 * r["density"] for r in points], [100 * r["mean_accuracy"] for r in points],
                        yerr=[100 * r["std_accuracy"] for r in points], marker="o", capsize=3,
                        color=CRITERION_COLORS.get(criterion), label=label)
        ax.set_xscale("log")
        ax.set_xticks([100 * d for d in tickets["densities"]])
        ax.set_xticklabels([f"{100 * d:g}%" for d in tickets["densities"]])
        ax.minorticks_off()
        ax.invert_xaxis()
        ax.set_xlabel("density (weights kept), log scale")
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"{dataset}: {tickets['model']} net, {tickets['epochs']} epochs, "
                     f"{len(tickets['seeds'])} seed(s) (mean ± std)", fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_summary(results: dict[str, Any], s: DemoSettings, path: Path) -> None:
    plt = _plt()
    panels = [k for k in ("collapse", "accuracy") if k in results]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.2), squeeze=False)
    for ax, key in zip(axes[0], panels):
        if key == "collapse":
            _critical_axes(ax, results["collapse"], s)
        else:
            _accuracy_axes(ax, results["accuracy"])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- report
def _fmt_exp(value) -> str:
    return "-" if value is None else f"{value:g}"


def _tickets_tables(t: dict[str, Any]) -> list[str]:
    """The tickets' accuracy table and time table, per data set (markdown)."""
    lines: list[str] = []
    densities = sorted(t["densities"], reverse=True)
    for dataset, info in t["datasets"].items():
        rows = info["summary"]

        def cell(criterion: str, density: float, key: str, scale: float, digits: int) -> str:
            row = next((r for r in rows if r["criterion"] == criterion and math.isclose(r["density"], density)), None)
            if row is None or row["mean_" + key] is None:
                return "-" if row is None else "failed"
            mark = (f" ({row['collapsed_runs']}/{row['seeds']} collapsed)"
                    if row["collapsed_runs"] and key == "accuracy" else "")
            return f"{scale * row['mean_' + key]:.{digits}f} ± {scale * row['std_' + key]:.{digits}f}{mark}"

        def label(criterion: str) -> str:
            if criterion in t.get("trains_with_train_fn", ()):
                levels = sorted({lv for r in rows if r["criterion"] == criterion for lv in r["rounds"]})
                return (f"{criterion} (rate {t['criterion_options'][criterion]['rate']:g}: "
                        f"{'/'.join(map(str, levels))} levels)")
            if criterion in t.get("trains_on_training_set", ()):
                o = t["criterion_options"][criterion]
                return f"{criterion} ({o['iterations']} rounds x {o['epochs']} epochs)"
            return criterion

        header = "| ticket | " + " | ".join(f"{100 * d:g}%" for d in densities) + " |"
        rule = "|---|" + "---|" * len(densities)
        dense = next((r for r in rows if r["criterion"] == "dense" and r["mean_accuracy"] is not None), None)
        lines += [f"**{dataset}** ({info['source']}; {info['num_classes']} classes, "
                  f"{info['prunable_weights'] or 0:,} prunable weights). Test accuracy (%), mean ± std over "
                  f"{len(t['seeds'])} seed(s), by density:", "", header, rule]
        if dense:
            lines.append(f"| dense (100%) | {100 * dense['mean_accuracy']:.1f} ± {100 * dense['std_accuracy']:.1f} |"
                         + " — |" * (len(densities) - 1))
        for criterion in t["criteria"]:
            lines.append(f"| {label(criterion)} | "
                         + " | ".join(cell(criterion, d, "accuracy", 100, 1) for d in densities) + " |")
        lines += ["", f"Wall time to find each ticket on {dataset} (s, mean ± std; IMP's includes its level "
                      "trainings, GemMiner's its score training; the final training is not included):", "",
                  header, rule]
        for criterion in t["criteria"]:
            lines.append(f"| {label(criterion)} | "
                         + " | ".join(cell(criterion, d, "seconds", 1, 2) for d in densities) + " |")
        train = [r["times"]["train"] for r in info["records"] if r["status"] == "ok"]
        if train:
            lines += ["", f"One training of a ticket ({t['epochs']} epochs, then a test pass) took "
                          f"{statistics.median(train):.2f} s here (median over the trials)."]
        lines.append("")
    return lines


def _report(results: dict[str, Any], s: DemoSettings) -> str:
    env = results["environment"]
    lines = [
        "# synflow-plugin demo report",
        "",
        f"Mode **{s.mode}**, run {results['started']} on {env['machine']} "
        f"({env['cpu_count']} CPU cores, torch {env['torch']} using {env['torch_threads']} thread(s), "
        f"load average {env['load_before']} before / {env['load_after']} after). "
        f"Total wall time **{results['wall_seconds']:.0f} s**. Command: `{results['command']}`.",
        "",
        "Every number below was measured by this run; only the paper's values are quoted "
        f"(from {PAPER_CITATION}).",
        "",
    ]
    if "collapse" in results:
        c = results["collapse"]
        lines += [
            "## 1. Layer collapse: critical compression",
            "",
            f"Model: `{s.collapse_model}` (width x{s.collapse_width:g}, {s.collapse_classes} classes, input "
            f"3x32x32, {sum(c['layer_sizes']):,} prunable weights in {len(c['layers'])} conv/linear layers), "
            f"initialised with seed {s.collapse_seed} (kaiming normal, as the paper). Every criterion prunes this "
            f"initialisation (scoring runs on a copy) globally to compression 10^x, x on a grid of step {s.fine_step:g} up to "
            f"{s.max_exponent:g}, searched coarse-to-fine (step {s.coarse_step:g}, then {s.fine_step:g} between the "
            f"last clean and the first collapsed point). SynFlow: {s.synflow_iterations} rounds, exponential "
            "schedule (the paper: 100). One initialisation; random scores are drawn with "
            f"{len(s.random_seeds)} seeds and the median is shown (random's critical compression is set by the "
            "best-ranked weight of the smallest layer, so single draws spread widely; all are listed).",
            "",
            f"Data for SNIP and GraSP: {c['data']}",
            "",
        ]
        if s.mode != "full":
            lines += [f"*{s.mode.capitalize()} mode*: grid step {s.fine_step:g} and {s.synflow_iterations} SynFlow "
                      "rounds instead of the paper's 0.25 and 100; `synflow-plugin demo` runs those.", ""]
        lines += [
            "| criterion | measured log10 critical compression | paper | first collapse at | first layers to collapse | prunes | time |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, info in c["criteria"].items():
            measured = ("≥ " if info["bounded_by_grid"] else "") + _fmt_exp(info["critical_exponent"])
            layers = ", ".join(f"`{n}`" for n in info["first_collapsed_layers"][:3])
            if len(info["first_collapsed_layers"]) > 3:
                layers += f" (+{len(info['first_collapsed_layers']) - 3})"
            if len(info.get("seeds", [])) > 1:
                measured += (f" (median of seeds {info['seeds'][0]}-{info['seeds'][-1]}: "
                             f"{', '.join(_fmt_exp(v) for v in info['critical_exponents_per_seed'])})")
            lines.append(
                f"| {name} | **{measured}** | {_fmt_exp(info['paper_exponent'])} | "
                f"{'-' if info['first_collapse_exponent'] is None else '10^' + _fmt_exp(info['first_collapse_exponent'])} | "
                f"{layers or '-'} | {info['prunes']} | {info['seconds']:.1f} s |"
            )
        syn = c["criteria"].get("synflow", {}).get("critical_exponent")
        others = [v["critical_exponent"] for k, v in c["criteria"].items()
                  if k != "synflow" and v["critical_exponent"] is not None]
        paper_others = [PAPER_CRITICAL_LOG10[k] for k in c["criteria"] if k in PAPER_CRITICAL_LOG10 and k != "synflow"]
        if syn is not None and others:
            paper_gap = (f" (paper: {PAPER_CRITICAL_LOG10['synflow'] - max(paper_others):+.2f})"
                         if paper_others else "")
            lines += ["", f"SynFlow's critical compression is {syn - max(others):+g} orders of magnitude beyond the best "
                          f"other criterion's here{paper_gap}."]
        lines += ["", "![per-layer density](collapse_layers.png)", "",
                  "![critical compression](critical_compression.png)", ""]
    if "accuracy" in results:
        a = results["accuracy"]
        exps = sorted({r["exponent"] for r in a["summary"] if r["criterion"] != "dense"})
        lines += [
            "## 2. Accuracy vs compression",
            "",
            f"Data: `{a['dataset']}` ({a['dataset_source']}; {a['train_size']} train / {a['test_size']} test, "
            f"{a['num_classes']} classes, chance {100 * a['chance']:.0f}%). Model: `{a['model']}` "
            f"{a['model_options']} ({a['prunable_weights']:,} prunable weights), pruned at initialisation "
            f"(global scope, each criterion's default rounds: SynFlow 100) then trained {s.epochs} epochs with Adam "
            f"(lr {s.lr:g}, cosine, batch {s.batch_size}). Seeds {list(s.seeds)} (initialisation, data order, "
            f"calibration batch of {s.calibration_per_class} per class for SNIP/GraSP). Mean ± std test accuracy (%):",
            "",
            "| criterion | " + " | ".join(f"{10 ** e:.0f}x" for e in exps) + " |",
            "|---|" + "---|" * len(exps),
        ]
        dense = next((r for r in a["summary"] if r["criterion"] == "dense"), None)
        if dense:
            lines.append(f"| dense (1x) | {100 * dense['mean_accuracy']:.1f} ± {100 * dense['std_accuracy']:.1f} |"
                         + " — |" * (len(exps) - 1))
        for criterion in dict.fromkeys(r["criterion"] for r in a["summary"] if r["criterion"] != "dense"):
            cells = []
            for e in exps:
                row = next((r for r in a["summary"] if r["criterion"] == criterion and r["exponent"] == e), None)
                if row is None:
                    cells.append("-")
                    continue
                mark = f" ({row['collapsed_runs']}/{row['seeds']} collapsed)" if row["collapsed_runs"] else ""
                cells.append(f"{100 * row['mean_accuracy']:.1f} ± {100 * row['std_accuracy']:.1f}{mark}")
            lines.append(f"| {criterion} | " + " | ".join(cells) + " |")
        best = []
        for e in exps:
            rows = [r for r in a["summary"] if r["criterion"] != "dense" and r["exponent"] == e]
            if rows:
                top = max(rows, key=lambda r: r["mean_accuracy"])
                best.append(f"{10 ** e:.0f}x: {top['criterion']} ({100 * top['mean_accuracy']:.1f}%)")
        lines += ["", "Best criterion per compression: " + "; ".join(best) + "."]
        lines += ["", "![accuracy vs compression](accuracy.png)", ""]
    if "sanity" in results:
        lines += [
            "## 3. Sanity checks (Frankle et al., ICLR 2021)",
            "",
            "Same data, model and training as section 2. *shuffle*: each layer's mask permuted at random "
            "(density per layer kept); *reinit*: surviving weights re-drawn from the initial distribution; "
            "*invert*: the lowest-scoring weights kept (score → −score in every round). If shuffle or reinit "
            "leave the accuracy unchanged, the criterion's per-weight choices carried no information beyond "
            "the per-layer densities. Mean ± std test accuracy (%):",
            "",
            "| criterion | compression | as pruned | shuffle | reinit | invert |",
            "|---|---|---|---|---|---|",
        ]
        summary = results["sanity"]["summary"]
        for criterion, e in dict.fromkeys((r["criterion"], r["exponent"]) for r in summary):
            cells = []
            for v in (None, "shuffle", "reinit", "invert"):
                row = next((r for r in summary if (r["criterion"], r["exponent"], r["sanity"]) == (criterion, e, v)), None)
                cells.append("-" if row is None else f"{100 * row['mean_accuracy']:.1f} ± {100 * row['std_accuracy']:.1f}")
            lines.append(f"| {criterion} | {10 ** e:.0f}x | " + " | ".join(cells) + " |")
        lines += ["", "![sanity checks](sanity.png)", ""]
    if "export" in results:
        x = results["export"]
        lines += ["## 4. Export and benchmark", ""]
        if "skipped" in x:
            lines += [f"Skipped: {x['skipped']}", ""]
        else:
            lines += [
                f"`{s.collapse_model}` (width x{s.collapse_width:g}) pruned by SynFlow at initialisation to "
                f"compression 10^{x['compression_log10']:g} ({s.synflow_iterations} rounds), exported to ONNX three ways: the dense "
                "model, the pruned one with its zeros kept (weights as sparse initialisers), and the pruned one "
                f"with all-zero channels removed ({x['channels_before']} -> {x['channels_after']} channels in the "
                "compacted layers; at initialisation BatchNorm's running statistics are 0 and 1, so a channel "
                "whose weights are all pruned outputs exactly zero). Files in `onnx/`. ONNX Runtime on the CPU:",
                "",
                "```",
                x["table"],
                "```",
                "",
            ]
    if "tickets" in results:
        t = results["tickets"]
        lines += [
            "## 5. Tickets at initialisation: GemMiner, IMP and the data-free criteria",
            "",
            f"Model `{t['model']}` {t['model_options']}, pruned globally to each density, then trained "
            f"{t['epochs']} epochs with Adam (lr {t['lr']:g}, cosine, batch {t['batch_size']}), seeds {t['seeds']} "
            "(initialisation, data order, calibration batch). IMP's level trainings are that same training "
            "(rewound to the initialisation after each level); GemMiner trains its scores on the training set "
            "with the weights frozen (Sreenivasan et al., NeurIPS 2022, https://arxiv.org/abs/2202.12002). "
            "Run through `synflow_plugin.sweep`: the trial records are in "
            + ", ".join(f"`{info['folder']}/results.json`" for info in t["datasets"].values()) + ".",
            "",
        ]
        lines += _tickets_tables(t)
        lines += ["![tickets: accuracy vs density](tickets.png)", ""]
    lines += [
        "## Reproduce",
        "",
        f"`{results['command']}` (the full demo is `synflow-plugin demo`, the quick one "
        "`synflow-plugin demo --quick`). All numbers are in `results.json`.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- driver
def _environment() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": f"{platform.machine()} {platform.system()} ({platform.processor() or 'cpu'})",
        "python": platform.python_version(),
        "load_before": _load(),
    }


def auto_threads() -> int:
    """torch threads for the demo: all cores on a quiet machine, fewer when others are busy.

    On a shared machine torch's thread pool stalls whenever one of its threads waits for a
    busy core (measured here: a 15-epoch training of the demo's conv net took 1.6 s with
    one thread and 8-18 s with two while other jobs ran), so the demo uses only the cores
    the 1-minute load average leaves free.
    """
    cores = os.cpu_count() or 1
    try:
        free = cores - os.getloadavg()[0]
    except OSError:  # pragma: no cover - not on every platform
        free = cores
    return max(1, min(torch.get_num_threads(), round(free)))


def _load() -> str:
    try:
        return ", ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return "n/a"


def run_demo(
    out: str | os.PathLike = "runs/demo",
    *,
    mode: str = "full",
    cifar_root: str | os.PathLike | None = None,
    accuracy_dataset: str | None = None,
    seeds: Sequence[int] | None = None,
    skip: Sequence[str] = (),
    progress: bool | None = None,
    threads: int | None = None,
    log: Callable[[str], None] = print,
    command: str = "synflow-plugin demo",
) -> dict[str, Any]:
    """Run the demo and write ``report.md``, ``results.json`` and the PNGs into ``out``.

    Args:
        out: the output folder (created).
        mode: ``"full"`` (the paper's sweep; long), ``"quick"`` (a few minutes) or
            ``"tiny"`` (a reduced grid for tests).
        cifar_root: a folder with ``cifar-100-python/``: SNIP and GraSP then score on
            real CIFAR-100 images in the collapse experiment; with
            ``cifar-10-batches-py/`` in it, CIFAR-10 joins the tickets experiment.
        accuracy_dataset: ``"digits"`` (default) or ``"mnist1d"``.
        seeds: seeds of the accuracy experiment (default: the mode's).
        skip: experiments to leave out, from :data:`EXPERIMENTS`.
        progress: tqdm bars (``None``: only on a terminal).
        threads: torch threads while the demo runs (restored afterwards); ``None``:
            :func:`auto_threads`.
        log: where the progress lines go.
        command: the command line recorded in the report.

    Returns:
        The dict written to ``results.json``.
    """
    s = settings_for(mode)
    unknown = sorted(set(skip) - set(EXPERIMENTS))
    if unknown:
        raise PruningError(f"skip={unknown} is not valid; expected some of {EXPERIMENTS}")
    if accuracy_dataset is not None:
        if accuracy_dataset not in ("digits", "mnist1d"):
            raise PruningError(f"accuracy_dataset={accuracy_dataset!r} is not valid; expected one of ('digits', 'mnist1d')")
        s.accuracy_dataset = accuracy_dataset
    if seeds is not None:
        seeds = tuple(seeds)
        if not seeds or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in seeds):
            raise PruningError(f"seeds={seeds!r} should be non-negative ints")
        s.seeds = seeds
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise PruningError(f"threads={threads!r} should be a positive int or None")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or auto_threads())
    try:
        return _run(out, s, cifar_root, skip, progress, log, command)
    finally:
        torch.set_num_threads(previous_threads)


def _run(out: Path, s: DemoSettings, cifar_root, skip, progress, log, command) -> dict[str, Any]:
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    start = time.perf_counter()
    results: dict[str, Any] = {"started": started, "command": command, "environment": _environment(),
                               "settings": s.as_dict(), "paper_critical_log10": PAPER_CRITICAL_LOG10,
                               "sections_seconds": {}}
    log(f"synflow-plugin demo ({s.mode}) -> {out}/ : torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), {os.cpu_count()} cores")

    def timed(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        t = time.perf_counter()
        results[name] = fn()
        results["sections_seconds"][name] = time.perf_counter() - t

    if "collapse" not in skip:
        timed("collapse", lambda: _run_collapse(s, cifar_root, log, progress))
    if "accuracy" not in skip:
        timed("accuracy", lambda: _run_accuracy(s, log, progress))
    if "sanity" not in skip:
        timed("sanity", lambda: _run_sanity(s, results.get("accuracy"), log, progress))
    if "export" not in skip:
        timed("export", lambda: _run_export(s, out, log, progress))
    if "tickets" not in skip:
        timed("tickets", lambda: _run_tickets(s, out, cifar_root, log, progress))

    results["wall_seconds"] = time.perf_counter() - start  # plotting not included
    results["environment"]["load_after"] = _load()
    _render(out, results, s)
    log(f"done in {results['wall_seconds']:.0f} s: {out / 'report.md'}, {out / 'results.json'}, "
        f"{', '.join(str(out / p) for p in results['pictures'])}")
    return results


def _render(out: Path, results: dict[str, Any], s: DemoSettings) -> None:
    """Write the PNGs, ``results.json`` and ``report.md`` from ``results``."""
    pictures = []
    if "collapse" in results:
        _plot_layers(results["collapse"], s, out / "collapse_layers.png")
        _plot_single(lambda ax: _critical_axes(ax, results["collapse"], s), out / "critical_compression.png")
        pictures += ["collapse_layers.png", "critical_compression.png"]
    if "accuracy" in results:
        _plot_single(lambda ax: _accuracy_axes(ax, results["accuracy"]), out / "accuracy.png")
        pictures.append("accuracy.png")
    if "sanity" in results:
        _plot_sanity(results["sanity"], results.get("accuracy"), out / "sanity.png")
        pictures.append("sanity.png")
    if "tickets" in results and results["tickets"]["datasets"]:
        _plot_tickets(results["tickets"], out / "tickets.png")
        (out / "tickets.md").write_text("\n".join(_tickets_tables(results["tickets"])) + "\n")
        pictures.append("tickets.png")
    if "collapse" in results or "accuracy" in results:
        _plot_summary(results, s, out / "demo.png")
        pictures.append("demo.png")
    results["pictures"] = pictures
    (out / "results.json").write_text(json.dumps(results, indent=1, default=_json_default) + "\n")
    (out / "report.md").write_text(_report(results, s))


def render_demo(out: str | os.PathLike = "runs/demo") -> dict[str, Any]:
    """Redraw the pictures and rewrite ``report.md`` of a finished demo from its ``results.json``
    (nothing is re-measured).

    Raises:
        PruningError: ``out`` holds no ``results.json``, or one that is not a finished demo's.
    """
    out = Path(out)
    path = out / "results.json"
    if not path.is_file():
        raise PruningError(f"{str(path)!r} does not exist; run `synflow-plugin demo --out {out}` first")
    damaged = (f"{str(path)!r} is not the results file of a finished demo ({{}}); rerun "
               f"`synflow-plugin demo --out {out}` to write it again")
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PruningError(damaged.format(f"not JSON: {exc}")) from None
    if not isinstance(results, dict) or not isinstance(results.get("settings"), dict):
        raise PruningError(damaged.format("it has no 'settings' mapping"))
    fields = {f.name for f in dataclasses.fields(DemoSettings)}
    try:
        settings = DemoSettings(**{k: tuple(v) if isinstance(v, list) else v
                                   for k, v in results["settings"].items() if k in fields})
        _render(out, results, settings)
    except (KeyError, TypeError, IndexError) as exc:  # a field missing or of another type
        raise PruningError(damaged.format(f"{type(exc).__name__}: {exc}")) from exc
    return results


def _json_default(value: Any) -> Any:
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and math.isnan(value):  # pragma: no cover
        return None
    return str(value)
