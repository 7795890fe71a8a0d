r"""The ``synflow-plugin`` command line (also ``python -m synflow_plugin``).

::

    synflow-plugin list [--json]
    synflow-plugin prune MODEL -c CRITERION (--amount A | --compression C) -o OUT.pt [options]
    synflow-plugin collapse MODEL [--criteria C,C,...] [--max-exponent 6] [--step 0.25] [options]
    synflow-plugin train (CHECKPOINT | MODEL) --dataset NAME [--epochs 10] [-o OUT.pt] [--factory F] [options]
    synflow-plugin export CHECKPOINT -o OUT.onnx [--compact] [--sparse-initializers] [--factory F]
    synflow-plugin bench FILE.onnx|CHECKPOINT ... [--batch-sizes 1,8] [--factory F]
    synflow-plugin demo [--quick] [--out runs/demo] [--cifar-root DIR]
    synflow-plugin sweep (--config FILE.json | --model M --dataset D --criteria C,C --compressions 10,100)
                         [--seeds 0,1] [--epochs E] [--engine local|ray] [--out runs/sweep]

MODEL is a zoo name (``synflow-plugin list``) or ``package.module:factory`` for your
own network (a callable returning an ``nn.Module``; ``--model-option k=v`` are passed
to it). Compression is the ratio of all weights to the weights kept: ``--compression
100`` (also ``100x``, ``1e2`` or ``10^2``) is ``--amount 0.99``.

A factory named on the command line (MODEL of ``prune`` / ``collapse``, ``--factory``)
is imported from ``sys.path`` and, as ``python -m`` would, the working directory, for
that import only. A checkpoint that names a factory is data: ``train``, ``export`` and
``bench`` import its factory only when ``--factory`` names that same factory.

Checkpoints are plain dicts that load with ``torch.load(path, weights_only=True)``
(see :mod:`synflow_plugin.checkpoint`). No command replaces an existing file unless
``--overwrite`` is given. Exit status: 0 on success, 2 for a bad argument (with
argparse's usage line and the valid choices), 1 when stdout is closed early (``| head``).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import json
import math
import os
import re
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from synflow_plugin._files import write_json_atomic
from synflow_plugin.errors import PruningError

__all__ = ["main", "build_parser", "parse_compression"]

PROG = "synflow-plugin"
DATASET_CHOICES = ("cifar10", "cifar100", "digits", "mnist1d")


# --------------------------------------------------------------------------- argument types
def parse_compression(text: str) -> float:
    """``"100"``, ``"100x"``, ``"1e3"``, ``"10^2.5"`` or ``"10**3"`` -> the compression ratio (>= 1).

    >>> parse_compression("10^3"), parse_compression("50x")
    (1000.0, 50.0)
    """
    raw = str(text).strip().lower().replace(" ", "")
    match = re.fullmatch(r"10(?:\^|\*\*)([-+]?\d*\.?\d+)", raw)
    try:
        value = 10.0 ** float(match.group(1)) if match else float(raw[:-1] if raw.endswith("x") else raw)
    except OverflowError:
        value = math.inf
    except ValueError:
        value = float("nan")
    if value == math.inf:
        raise argparse.ArgumentTypeError(
            f"invalid compression {text!r}: too large for a float; any compression above the number of "
            "weights already prunes every weight (give e.g. 10^6)"
        )
    if not (math.isfinite(value) and value >= 1.0):
        raise argparse.ArgumentTypeError(
            f"invalid compression {text!r}: give a ratio >= 1 of all weights to kept weights, "
            "e.g. 100, 100x, 1e2 or 10^2 (= --amount 0.99)"
        )
    return value


def _amount(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(
            f"invalid amount {text!r}: give the fraction of weights to prune, a float in [0, 1] "
            "(0.99 = compression 100)"
        )
    return value


def _number(convert: Callable[[str], Any], valid: Callable[[Any], bool], expected: str, name: str):
    """An argparse type: ``convert(text)``, refused unless ``valid``, with the error
    ``invalid value 'TEXT': should be EXPECTED``."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not valid(value):
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: should be {expected}")
        return value
    parse.__name__ = parse.__qualname__ = name
    return parse


_positive_int = _number(int, lambda v: v >= 1, "a positive integer", "_positive_int")
_nonnegative_int = _number(int, lambda v: v >= 0, "an integer >= 0", "_nonnegative_int")
_positive_float = _number(float, lambda v: math.isfinite(v) and v > 0, "a positive number", "_positive_float")
_nonnegative_float = _number(float, lambda v: math.isfinite(v) and v >= 0, "a number >= 0", "_nonnegative_float")


def _int_list(text: str) -> tuple[int, ...]:
    # every item must be an integer: "1,x" or "1,,8" are refused, not read as (1,) or (1, 8)
    items = re.split(r"\s*[,x]\s*|\s+", text.strip())
    try:
        values = tuple(int(v) for v in items)
    except ValueError:
        values = ()
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"invalid list {text!r}: give comma-separated integers, e.g. 1,8")
    return values


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        values = _int_list(text)
    except argparse.ArgumentTypeError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"invalid batch sizes {text!r}: give comma-separated positive integers, "
                                         "e.g. 1,8")
    return values


def _shape(text: str) -> tuple[int, ...]:
    try:
        values = _int_list(text)
    except argparse.ArgumentTypeError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"invalid shape {text!r}: give positive integers, e.g. 3,32,32")
    return values


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"invalid option {text!r}: write NAME=VALUE, e.g. width_multiplier=0.5")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        try:
            value = json.loads(raw)  # JSON's true, false and null too
        except json.JSONDecodeError:
            value = raw  # a bare word is a string
    return key, value


def _progress(args) -> bool | None:
    return False if args.no_progress else None


# --------------------------------------------------------------------------- parser
class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks; defaults are written into the help texts."""


def _common(parser: argparse.ArgumentParser, threads_help: str = "torch's choice") -> None:
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help=f"torch intra-op threads (default: {threads_help})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _overwrite_arg(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace {what} if it exists (refused by default)")


def _factory_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--factory", action="append", default=[], metavar="MODULE:FN",
                        help="allow a checkpoint that names this user factory to import and call it; it must "
                             "be the factory the file records (repeatable, one per factory). Without it, a "
                             "checkpoint of a user factory is refused and nothing is imported")


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL",
                        help="zoo model name (see `synflow-plugin list`) or package.module:factory")
    parser.add_argument("--num-classes", type=_positive_int, default=None,
                        help="classifier outputs of a zoo model (default: the dataset's, else 10)")
    parser.add_argument("--input-shape", type=_shape, default=None,
                        help="one input without the batch dimension, e.g. 3,32,32 (default: the dataset's, "
                             "else the model's)")
    parser.add_argument("--model-option", type=_key_value, action="append", default=[], metavar="NAME=VALUE",
                        help="factory keyword, repeatable, e.g. width_multiplier=0.5")
    parser.add_argument("--seed", type=_nonnegative_int, default=0,
                        help="seed of the initialisation, the calibration batch and of seeded criteria such as "
                             "random (default: %(default)s)")


def _data_args(parser: argparse.ArgumentParser, required: bool = False, what: str = "data-driven criteria") -> None:
    parser.add_argument("--dataset", choices=DATASET_CHOICES, default=None, required=required,
                        help=f"data set for {what}; sets a zoo model's input shape and classes")
    parser.add_argument("--data-root", default=None, metavar="DIR",
                        help="folder holding cifar-10-batches-py/ or cifar-100-python/ (CIFAR only)")
    parser.add_argument("--calibration-per-class", type=_positive_int, default=10, metavar="N",
                        help="samples per class in the batch SNIP/GraSP score on (default: %(default)s, as GraSP)")


def build_parser() -> argparse.ArgumentParser:
    """The ``synflow-plugin`` argument parser (one sub-parser per command)."""
    from synflow_plugin import __version__
    from synflow_plugin.criteria import list_criteria
    from synflow_plugin.masking import SCHEDULES, SCOPES

    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=_Formatter,
        description="Pruning at initialisation (SynFlow, SNIP, GraSP, magnitude, random, IterSNIP, FORCE) "
                    "from the command line.",
        epilog="Run `synflow-plugin COMMAND --help` for a command's options; `synflow-plugin demo --quick` "
               "shows what SynFlow does in a few minutes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("list", formatter_class=_Formatter, help="criteria, models and data sets",
                       description="List the registered criteria (installed plugins' too) with what each needs "
                                   "(data, an example input, a seed) and its rounds, the model zoo and the data sets.")
    p.add_argument("--json", action="store_true", help="print JSON")
    _common(p)

    criteria = list_criteria()
    p = sub.add_parser(
        "prune", formatter_class=_Formatter, help="prune a model at initialisation, write a checkpoint",
        description="Build MODEL (freshly initialised with --seed), prune it with a criterion and write a "
                    "checkpoint that loads with torch.load(weights_only=True).",
        epilog="examples:\n  synflow-plugin prune vgg16_bn --num-classes 100 -c synflow --compression 10^3 -o vgg.pt\n"
               "  synflow-plugin prune conv --dataset digits -c snip --amount 0.99 -o conv.pt\n"
               "  synflow-plugin prune mypkg.nets:make_net --input-shape 3,64,64 -c synflow --compression 100 -o n.pt",
    )
    _model_args(p)
    p.add_argument("-c", "--criterion", required=True, choices=criteria, metavar="CRITERION",
                   help=f"one of: {', '.join(criteria)} (see `synflow-plugin list`)")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--amount", type=_amount, help="fraction of the weights to prune, in [0, 1]")
    group.add_argument("--compression", type=parse_compression,
                       help="all weights / kept weights: 100, 100x, 1e2 or 10^2")
    p.add_argument("--allow-empty", action="store_true",
                   help="write the checkpoint even when --amount / --compression prunes every weight "
                        "(refused by default: no layer would keep a weight)")
    p.add_argument("--scope", choices=SCOPES, default="global",
                   help="global ranking (the paper; default), the same fraction per layer (local, uniform) or ERK budgets")
    p.add_argument("--iterations", type=_positive_int, default=None,
                   help="pruning rounds (default: the criterion's, SynFlow 100)")
    p.add_argument("--schedule", choices=SCHEDULES, default="exponential", help="density schedule over the rounds (default: %(default)s)")
    p.add_argument("--criterion-option", type=_key_value, action="append", default=[], metavar="NAME=VALUE",
                   help="criterion keyword, repeatable, e.g. batchnorm=identity (SynFlow), temperature=200 (GraSP)")
    _data_args(p)
    from synflow_plugin.train import OPTIMIZERS as _TRAIN_OPTIMIZERS

    training = p.add_argument_group(
        "training (criteria that train: imp trains the weights with train_model on --dataset at every level; "
        "gemminer trains its scores on --dataset's training set); defaults: the criterion's, for imp those "
        "of `synflow-plugin train`")
    training.add_argument("--epochs", type=_positive_int, default=None,
                          help="imp: epochs per level (default 10); gemminer: score epochs per round (default 5)")
    training.add_argument("--lr", type=_positive_float, default=None,
                          help="learning rate (imp: 1e-3, cosine; gemminer: 0.1 on the scores)")
    training.add_argument("--batch-size", type=_positive_int, default=None, help="(default: 128)")
    training.add_argument("--optimizer", choices=_TRAIN_OPTIMIZERS, default=None,
                          help="imp: adam (default) or sgd; gemminer: sgd (default) or adam")
    training.add_argument("--weight-decay", type=_nonnegative_float, default=None, help="(default: 0)")
    training.add_argument("--levels", type=_positive_int, default=None,
                          help="imp: pruning levels (the rounds; default: as many as --rate needs)")
    training.add_argument("--rate", type=_positive_float, default=None,
                          help="imp: fraction of the survivors pruned per level (default 0.2)")
    training.add_argument("--rewind-step", type=_nonnegative_int, default=None,
                          help="imp: rewind to the weights after this many optimizer steps of the first level "
                               "(default 0: the initialisation); the checkpoint then holds those weights")
    sanity = p.add_argument_group("sanity checks (Frankle et al., ICLR 2021)")
    sanity.add_argument("--invert", action="store_true", help="keep the lowest-scoring weights (score -> -score)")
    sanity.add_argument("--shuffle", action="store_true", help="permute each layer's mask at random after pruning")
    sanity.add_argument("--reinit", action="store_true", help="re-draw the kept weights after pruning")
    p.add_argument("-o", "--output", required=True, metavar="OUT.pt", help="checkpoint to write")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the layer report as JSON")
    _overwrite_arg(p, "OUT.pt and the --json file")
    _common(p)

    p = sub.add_parser(
        "collapse", formatter_class=_Formatter, help="critical-compression sweep (layer collapse)",
        description="Prune fresh copies of MODEL at compressions 10^x and report, per criterion, the largest "
                    "compression at which no layer has lost all its weights (Tanaka et al. 2020, Fig. 1). "
                    "The grid is searched coarse-to-fine.",
        epilog="example:\n  synflow-plugin collapse vgg16_bn --num-classes 100 --criteria synflow,magnitude,random",
    )
    _model_args(p)
    p.add_argument("--criteria", default="magnitude,random,synflow",
                   help=f"comma-separated, from: {', '.join(criteria)} (default: %(default)s)")
    p.add_argument("--max-exponent", type=_positive_float, default=6.0, help="largest compression 10^x tried (default: %(default)s)")
    p.add_argument("--step", type=_positive_float, default=0.25, help="grid step of x (default: %(default)s, as the paper)")
    p.add_argument("--coarse-step", type=_positive_float, default=1.0,
                   help="step of the first, coarse pass; >= --step gives a plain linear sweep (default: %(default)s)")
    p.add_argument("--iterations", type=_positive_int, default=None,
                   help="rounds of the iterative criteria, those with more than one round in `synflow-plugin "
                        "list` (default: each one's own, SynFlow 100 as the paper); one-shot criteria stay one-shot")
    _data_args(p)
    p.add_argument("--proxy-data", action="store_true",
                   help="SNIP/GraSP score on the demo's proxy batch (real 8x8 digits upsampled to the input "
                        "size) instead of --dataset; for image models when CIFAR is not at hand")
    p.add_argument("--json", metavar="FILE", default=None, help="write every pruned point as JSON")
    p.add_argument("--plot", metavar="FILE.png", default=None, help="plot per-layer densities (needs matplotlib)")
    _overwrite_arg(p, "the --json and --plot files")
    _common(p)

    from synflow_plugin.train import OPTIMIZERS

    p = sub.add_parser(
        "train", formatter_class=_Formatter, help="train a pruned checkpoint (or a dense zoo model)",
        description="Train a checkpoint written by `prune` (its masks stay fixed) or a freshly initialised "
                    "zoo MODEL (dense baseline) on a data set, and report the test accuracy.",
        epilog="example:\n  synflow-plugin prune conv --dataset digits -c synflow --compression 100 -o p.pt\n"
               "  synflow-plugin train p.pt --dataset digits --epochs 15 --lr 3e-3 -o trained.pt",
    )
    p.add_argument("source", metavar="CHECKPOINT|MODEL", help="checkpoint file, or a zoo model name")
    p.add_argument("--dataset", choices=DATASET_CHOICES, required=True, help="data set to train and test on")
    p.add_argument("--data-root", default=None, metavar="DIR", help="folder holding the CIFAR files (CIFAR only)")
    p.add_argument("--epochs", type=_positive_int, default=10, help="(default: %(default)s)")
    p.add_argument("--lr", type=_positive_float, default=1e-3, help="initial learning rate, cosine schedule (default: %(default)s)")
    p.add_argument("--batch-size", type=_positive_int, default=128, help="(default: %(default)s)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="(default: %(default)s)")
    p.add_argument("--weight-decay", type=_nonnegative_float, default=0.0, help="(default: %(default)s)")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="seed of the data order and of a zoo model's initialisation (default: %(default)s)")
    sanity = p.add_argument_group("sanity checks (Frankle et al., ICLR 2021), applied before training")
    sanity.add_argument("--shuffle", action="store_true", help="permute each layer's mask at random")
    sanity.add_argument("--reinit", action="store_true", help="re-draw the kept weights")
    p.add_argument("-o", "--output", default=None, metavar="OUT.pt", help="write the trained checkpoint")
    p.add_argument("--json", metavar="FILE", default=None, help="write the training history as JSON")
    _overwrite_arg(p, "OUT.pt and the --json file")
    _factory_arg(p)
    _common(p)

    p = sub.add_parser(
        "export", formatter_class=_Formatter, help="export a checkpoint to ONNX",
        description="Make a checkpoint's masks permanent and export it to one verified ONNX file.",
        epilog="example:\n  synflow-plugin export vgg.pt -o vgg.onnx --compact",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    p.add_argument("--compact", action=argparse.BooleanOptionalAction, default=None,
                   help="remove all-zero channels (needs torch-pruning; default: when installed)")
    p.add_argument("--sparse-initializers", action="store_true", help="store sparse weights in COO form")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime-vs-torch check")
    p.add_argument("--static-batch", action="store_true",
                   help="fix the batch size to the example's (recorded in the file's metadata); default: a "
                        "dynamic batch, verified at two batch sizes")
    _overwrite_arg(p, "OUT.onnx")
    _factory_arg(p)
    _common(p)

    p = sub.add_parser(
        "bench", formatter_class=_Formatter, help="benchmark ONNX files with ONNX Runtime",
        description="Time ONNX files (or checkpoints, exported on the fly) with ONNX Runtime on the CPU: "
                    "latency, throughput, speed-up over the first, sizes and MACs.",
        epilog="example:\n  synflow-plugin bench dense.onnx pruned.onnx --batch-sizes 1,8",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help=".onnx files or checkpoints")
    p.add_argument("--batch-sizes", type=_batch_sizes, default=(1, 8),
                   help="comma-separated positive integers (default: 1,8)")
    p.add_argument("--repeat", type=_positive_int, default=30, help="timed runs per model and batch size (default: %(default)s)")
    p.add_argument("--warmup", type=_nonnegative_int, default=5, help="untimed runs first (default: %(default)s)")
    p.add_argument("--ort-threads", type=_positive_int, default=1, help="ONNX Runtime intra-op threads (default: %(default)s)")
    p.add_argument("--json", metavar="FILE", default=None, help="write the report as JSON")
    _overwrite_arg(p, "the --json file")
    _factory_arg(p)
    _common(p)

    from synflow_plugin.demo import EXPERIMENTS

    p = sub.add_parser(
        "demo", formatter_class=_Formatter, help="the paper's central result on this machine, with pictures",
        description="Layer collapse of VGG-16-BN for every criterion, accuracy vs compression on a real "
                    "offline data set, the sanity checks, ONNX export + benchmark, and the tickets comparison "
                    "(GemMiner, IMP, SynFlow, SNIP, random). Writes report.md, "
                    "results.json and PNGs to --out.",
    )
    p.add_argument("--quick", action="store_true",
                   help="coarser grid (step 0.5) and 20 SynFlow rounds: a few minutes on 2 cores")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # a reduced grid for the tests
    p.add_argument("--render-only", action="store_true",
                   help="redraw the pictures and report of --out from its results.json, measuring nothing")
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="output folder (default: %(default)s)")
    p.add_argument("--cifar-root", default=None, metavar="DIR",
                   help="folder with cifar-100-python/: SNIP/GraSP score on CIFAR-100 in the collapse experiment "
                        "(default: a proxy batch of upsampled digits)")
    p.add_argument("--dataset", choices=("digits", "mnist1d"), default="digits",
                   help="data set of the accuracy experiment (default: %(default)s)")
    p.add_argument("--seeds", type=_int_list, default=None, help="seeds of the accuracy experiment, e.g. 0,1,2")
    p.add_argument("--skip", action="append", choices=EXPERIMENTS, default=[], help="leave out an experiment")
    _common(p, threads_help="the cores the 1-minute load average leaves free, at least 1")
    from synflow_plugin.sweep import add_parser as add_sweep_parser

    add_sweep_parser(sub)
    for name, command_parser in sub.choices.items():
        command_parser.set_defaults(command_parser=command_parser)
    return parser


# --------------------------------------------------------------------------- helpers
def _spec_and_data(parser, args, criteria_need_data: bool):
    """The ModelSpec (input shape and classes from --dataset) and the calibration batches."""
    from synflow_plugin.checkpoint import ModelSpec
    from synflow_plugin.data import DATASETS
    from synflow_plugin.models import MODELS

    if ":" not in args.model and args.model.strip().lower() not in MODELS:
        parser.error(f"argument MODEL: invalid choice: {args.model!r} (choose from {', '.join(MODELS)}, "
                     "or give package.module:factory)")
    info = DATASETS[args.dataset] if args.dataset else None
    is_zoo = ":" not in args.model
    if not is_zoo:
        _import_named_module(args.model)
    num_classes = args.num_classes or (info.num_classes if info else None)
    input_shape = args.input_shape or (info.input_shape if info else None)
    if info is not None and criteria_need_data and args.num_classes and args.num_classes != info.num_classes:
        parser.error(f"argument --num-classes: {args.num_classes} classes, but the criterion scores on "
                     f"{args.dataset}, which has {info.num_classes}; drop --num-classes (it is taken from "
                     "--dataset) or give that number")
    spec = ModelSpec(args.model.strip().lower() if is_zoo else args.model, dict(args.model_option),
                     num_classes if is_zoo else args.num_classes, input_shape)
    if info is not None and info.needs_root and not args.data_root:
        parser.error(f"argument --data-root: {args.dataset} is read from disk; pass the folder holding "
                     f"{'cifar-100-python' if info.num_classes == 100 else 'cifar-10-batches-py'}/")
    data = None
    if criteria_need_data:
        if getattr(args, "proxy_data", False):
            from synflow_plugin.demo import collapse_calibration

            if input_shape is None:  # the model's own default
                from synflow_plugin.checkpoint import build_model

                input_shape = getattr(build_model(spec), "input_shape", None)
            if input_shape is None or len(input_shape) != 3:
                parser.error("argument --proxy-data: needs an image model; pass --input-shape C,H,W")
            data, _ = collapse_calibration(input_shape, per_class=args.calibration_per_class,
                                           num_classes=num_classes or 10, seed=args.seed)
        elif info is None:
            parser.error(f"argument --dataset: required by data-driven criteria; choose from "
                         f"{', '.join(DATASET_CHOICES)}")
        else:
            data = _calibration(args.dataset, args.data_root, args.calibration_per_class, args.seed)
    return spec, data


def _calibration(dataset: str, root, per_class: int, seed: int):
    from synflow_plugin.data import calibration_batches, load_dataset

    train, _ = load_dataset(dataset, root=root)
    return calibration_batches(train, samples_per_class=per_class, seed=seed)


def _build(spec):
    from synflow_plugin.checkpoint import build_model, example_inputs_for

    model = build_model(spec)
    if spec.input_shape is None and getattr(model, "input_shape", None) is not None:
        spec.input_shape = tuple(model.input_shape)
    if spec.num_classes is None and getattr(model, "num_classes", None) is not None:
        spec.num_classes = int(model.num_classes)
    return model, example_inputs_for(model, spec)


def _import_named_module(factory: str) -> None:
    """Import the module of a factory named on the command line, the working directory searched too.

    Console scripts, unlike ``python -m``, do not put the working directory on ``sys.path``,
    so ``synflow-plugin prune mynets:make`` would not find ``./mynets.py``. The user typed
    this name, so its module is looked up there as well, for this one import; ``sys.path``
    is restored afterwards. Nothing a checkpoint names reaches this function unless
    ``--factory`` names it too.
    """
    module_name = factory.partition(":")[0].strip()
    if not re.fullmatch(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*", module_name):
        raise PruningError(f"factory {factory!r} should look like 'package.module:function'")
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        importlib.import_module(module_name)
    except ImportError as exc:
        raise PruningError(f"cannot import module {module_name!r} of {factory!r}: {exc}; run from the folder that "
                           "holds it, install its package or add its folder to PYTHONPATH") from exc
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)


def _check_outputs(args, *outputs: tuple[str, Any, str]) -> None:
    """Refuse, before any work, an output that is a directory, repeated, or exists without --overwrite.

    ``outputs`` are ``(flag, path or None, example file name)``: one rule for every file
    a command writes.
    """
    seen: dict[Path, str] = {}
    for flag, value, example in outputs:
        if value is None:
            continue
        path = Path(value)
        if not str(value):
            raise PruningError(f"argument {flag}: the path is empty; give a file name such as {example!r}")
        if path.is_dir():
            raise PruningError(f"argument {flag}: '{path}' is a directory; give a file name such as "
                               f"'{path / example}'")
        if path.exists() and not getattr(args, "overwrite", False):
            raise PruningError(f"argument {flag}: '{path}' already exists; pass --overwrite to replace it, "
                               "or choose another path")
        key = path.resolve()
        if key in seen:
            raise PruningError(f"argument {flag}: '{path}' is also the {seen[key]} file; give two different paths")
        seen[key] = flag


def _check_plot_path(path: Path) -> None:
    """Refuse, before any work, a --plot file matplotlib cannot write: a format it does not
    know, or a folder that does not exist."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PruningError("argument --plot: needs matplotlib (pip install matplotlib)") from exc
    formats = Figure().canvas.get_supported_filetypes()
    if path.suffix.lower().lstrip(".") not in formats:
        raise PruningError(f"argument --plot: '{path}' has no image extension matplotlib writes; use one of "
                           f"{', '.join('.' + f for f in sorted(formats))}, e.g. 'collapse.png'")
    if not path.parent.is_dir():
        raise PruningError(f"argument --plot: the folder '{path.parent}' does not exist; create it first")


def _load_checkpoints(paths: Sequence[Path], factories: Sequence[str]) -> list[tuple[Any, dict[str, Any]]]:
    """``load_checkpoint`` for each path, with the ``--factory`` its file names (if given).

    Every path is checked first: a user factory not among ``factories`` is refused (and
    nothing imported), as is a ``--factory`` that no checkpoint names.
    """
    from synflow_plugin.checkpoint import ModelSpec, load_checkpoint, read_checkpoint

    factories = [f.strip() for f in factories]
    if not factories:  # load_checkpoint refuses a user factory itself and says how to allow it
        return [load_checkpoint(path) for path in paths]
    chosen, named = [], []
    for path in paths:
        spec = ModelSpec.from_dict(read_checkpoint(path)["model"], source=f"checkpoint '{path}'")
        named.append(spec.spec)
        if spec.is_zoo:
            chosen.append(None)
        elif spec.spec in factories:
            chosen.append(spec.spec)
        else:
            raise PruningError(f"checkpoint '{path}' names the factory {spec.spec!r}, which is not among --factory "
                               f"{', '.join(factories)}; if you trust it, add --factory {spec.spec} "
                               "(it is imported and called)")
    unused = [f for f in factories if f not in chosen]
    if unused:
        raise PruningError(f"argument --factory: no checkpoint given names {', '.join(map(repr, unused))} (they "
                           f"name: {', '.join(named)}); drop it")
    for factory in dict.fromkeys(f for f in chosen if f):
        _import_named_module(factory)
    return [load_checkpoint(path, factory=factory) for path, factory in zip(paths, chosen)]


def _layers_json(model) -> list[dict[str, Any]]:
    from synflow_plugin.diagnostics import layer_report

    return [dict(r.as_dict(), shape=list(r.shape)) for r in layer_report(model)]


# --------------------------------------------------------------------------- commands
def _criteria_table() -> list[dict[str, Any]]:
    """Every registered criterion, plugins' included, with what it needs (its capabilities)."""
    from synflow_plugin.criteria import CRITERIA, list_criteria

    rows = []
    for name in list_criteria():
        cls = CRITERIA[name]
        doc = (cls.__doc__ or "").strip()
        rows.append({
            "name": name, "summary": cls.summary or (doc.splitlines()[0].rstrip(".") if doc else ""),
            "needs_data": bool(cls.needs_data), "needs_example_inputs": bool(cls.needs_example_inputs),
            "seeded": bool(cls.seeded), "default_iterations": int(cls.default_iterations),
        })
    return rows


def _trains(name: str) -> bool:
    """Whether the criterion ``name`` trains (with a train_fn, or on a training set)."""
    from synflow_plugin.criteria import CRITERIA

    cls = CRITERIA[name]
    return bool(getattr(cls, "needs_training", False) or getattr(cls, "reads_training_set", False))


def _cmd_list(parser, args) -> int:
    from synflow_plugin.data import DATASETS
    from synflow_plugin.models import list_models, model_summaries

    criteria = _criteria_table()
    datasets = [{"name": d.name, "input_shape": list(d.input_shape), "num_classes": d.num_classes,
                 "needs_root": d.needs_root, "source": d.source} for d in DATASETS.values()]
    if args.json:
        print(json.dumps({"criteria": criteria, "models": list_models(), "datasets": datasets}, indent=1))
        return 0
    width = max([len("name")] + [len(c["name"]) for c in criteria])
    print("criteria (data: reads labelled batches, --dataset; inputs: runs the model on an example input; "
          "seeded: uses --seed; trains: trains on --dataset, see `prune --help`):")
    print(f"  {'name':<{width}}  {'data':<4}  {'inputs':<6}  {'seeded':<6}  {'rounds':>6}  {'trains':<6}  summary")
    yes = {True: "yes", False: "no"}
    for c in criteria:
        print(f"  {c['name']:<{width}}  {yes[c['needs_data']]:<4}  {yes[c['needs_example_inputs']]:<6}  "
              f"{yes[c['seeded']]:<6}  {c['default_iterations']:>6}  {yes[_trains(c['name'])]:<6}  {c['summary']}")
    print("\nmodels (or package.module:factory for your own):")
    summaries = model_summaries()
    width = max(len(name) for name in summaries)
    for name, summary in summaries.items():
        print(f"  {name:<{width}}  {summary}")
    print("\ndatasets:")
    for d in datasets:
        print(f"  {d['name']:<9} input {tuple(d['input_shape'])}, {d['num_classes']} classes: {d['source']}")
    return 0


def _cmd_prune(parser, args) -> int:
    from torch.nn.utils import prune

    from synflow_plugin import sanity
    from synflow_plugin.checkpoint import save_checkpoint
    from synflow_plugin.demo import criterion_class, criterion_kwargs
    from synflow_plugin.diagnostics import format_report, layer_report
    from synflow_plugin.masking import compute_masks, num_to_prune
    from synflow_plugin.targets import group_by_tensor, held_tensor, prunable_parameters

    _check_outputs(args, ("-o/--output", args.output, "model.pt"), ("--json", args.json, "report.json"))
    options = dict(args.criterion_option)
    caps = criterion_class(args.criterion)
    needs_data = caps.needs_data
    trains = bool(getattr(caps, "needs_training", False) or getattr(caps, "reads_training_set", False))
    _check_training_args(parser, args, caps, trains)
    spec, data = _spec_and_data(parser, args, needs_data and not trains)
    if caps.seeded:
        options.setdefault("seed", args.seed)
    torch.manual_seed(args.seed)
    model, example = _build(spec)
    training = _training_options(parser, args, caps, spec, model) if trains else {}
    if getattr(caps, "reads_training_set", False):
        data = training.pop("data")
    recorded = {k: v for k, v in options.items()}
    options.update(training.pop("options", {}))
    params = prunable_parameters(model)
    if not params:
        raise PruningError(f"{spec.spec} has no conv or linear layer to prune")
    amount = args.amount if args.amount is not None else 1.0 - 1.0 / args.compression
    sizes = [held_tensor(*uses[0]).numel() for uses in group_by_tensor(params)]  # a tied weight once
    total = sum(sizes)
    if args.scope in ("local", "uniform"):
        budget = sum(n - num_to_prune(amount, n) for n in sizes)
    else:
        budget = total - num_to_prune(amount, total)
    if budget == 0 and not args.allow_empty:
        given = f"--amount {args.amount}" if args.amount is not None else f"--compression {args.compression:g}"
        raise PruningError(
            f"{given} prunes all {total:,} weights of {spec.spec}: every layer would be empty. Give a smaller "
            f"--amount or --compression (with --scope global, --compression {total:,} keeps one weight), or pass "
            "--allow-empty to write the empty model anyway"
        )
    criterion = sanity.inverted(args.criterion, **options) if args.invert else args.criterion
    # the seed stays among the options, which an inverted criterion is built with
    inputs = criterion_kwargs(caps, example_inputs=example, data=data)
    start = time.perf_counter()
    if not args.invert:
        from synflow_plugin.criteria import get_criterion

        criterion = get_criterion(args.criterion, **options)
    iterations = args.levels if args.levels is not None else args.iterations
    masks = compute_masks(model, params, criterion, amount, **inputs,
                          iterations=iterations, schedule=args.schedule, scope=args.scope,
                          progress=_progress(args), caller=f"{PROG} prune")
    for (module, name), mask in zip(params, masks):
        prune.custom_from_mask(module, name, mask)
    if args.shuffle:
        sanity.shuffle_masks_(model, seed=args.seed)
    if args.reinit:
        sanity.reinitialize_(model, seed=args.seed + 1)
    seconds = time.perf_counter() - start

    rows = layer_report(model)
    size, kept = sum(r.size for r in rows), sum(r.remaining for r in rows)
    collapsed = [r.name for r in rows if r.collapsed]
    if kept == 0 and not args.allow_empty:  # the budget check above already refuses this; a safety net
        raise PruningError(f"pruning left none of the {size:,} weights of {spec.spec}; pass --allow-empty to "
                           "write such a checkpoint")
    history = getattr(criterion, "history", None)
    rounds = len(history) if history else (iterations or caps.default_iterations)
    pruning = {
        "criterion": args.criterion, "amount": amount,
        "requested_compression": 1.0 / (1.0 - amount) if amount < 1 else math.inf,
        "compression": size / kept if kept else math.inf, "density": kept / size,
        "scope": args.scope, "iterations": rounds, "schedule": args.schedule, "seed": args.seed,
        "dataset": args.dataset, "calibration_per_class": args.calibration_per_class if needs_data and not trains else None,
        "criterion_options": recorded, "sanity": {"invert": args.invert, "shuffle": args.shuffle, "reinit": args.reinit},
        "collapsed_layers": collapsed, "seconds": seconds,
    }
    if trains:
        pruning["training"] = training["record"]
        if history:
            pruning["round_seconds"] = [round(h["seconds"], 3) for h in history]
    path = save_checkpoint(args.output, model, spec, pruning=pruning, overwrite=args.overwrite)
    print(format_report(rows))
    print(f"{args.criterion}{' (inverted)' if args.invert else ''}: kept {kept:,} of {size:,} weights "
          f"(compression {size / kept if kept else math.inf:.4g}x, {rounds} round(s), {seconds:.1f} s); "
          f"{'collapsed layers: ' + ', '.join(collapsed) if collapsed else 'no layer collapsed'}")
    if history:
        print("time per round: " + ", ".join(f"{h['seconds']:.1f} s" for h in history))
    if trains and training["record"].get("rewind_step"):
        print(f"the checkpoint holds the weights rewound to step {training['record']['rewind_step']} of the first "
              "level's training, not the initialisation")
    print(f"wrote {path}")
    if args.json:
        write_json_atomic(args.json, {"checkpoint": str(path), "pruning": pruning, "layers": _layers_json(model)})
    return 0


_TRAINING_ARGS = ("epochs", "lr", "batch_size", "optimizer", "weight_decay", "levels", "rate", "rewind_step")


def _check_training_args(parser, args, caps, trains: bool) -> None:
    """Refuse training options a criterion does not use (read from its capabilities)."""
    given = [name for name in _TRAINING_ARGS if getattr(args, name) is not None]
    if given and not trains:
        parser.error(f"argument --{given[0].replace('_', '-')}: applies to criteria that train (see `synflow-plugin "
                     f"list`, column 'trains'); {args.criterion} does not")
    imp_only = [name for name in ("levels", "rate", "rewind_step") if getattr(args, name) is not None]
    if imp_only and not getattr(caps, "needs_training", False):
        parser.error(f"argument --{imp_only[0].replace('_', '-')}: applies to criteria trained with a train_fn "
                     f"(imp), not to {args.criterion}")
    if args.levels is not None and args.iterations is not None and args.levels != args.iterations:
        parser.error(f"argument --levels: the levels are the rounds; --iterations {args.iterations} disagrees")
    if trains and args.dataset is None:
        parser.error(f"argument --dataset: {args.criterion} trains; choose from {', '.join(DATASET_CHOICES)}")


def _training_options(parser, args, caps, spec, model) -> dict[str, Any]:
    """What a criterion that trains gets: a ``train_fn`` (``needs_training``) or the
    training set and its options (``reads_training_set``), and the record of both."""
    batch_size = args.batch_size or 128
    from synflow_plugin.data import load_dataset, make_loader

    train_set, test_set = load_dataset(args.dataset, root=args.data_root)
    shape = getattr(model, "input_shape", None) or spec.input_shape
    if shape is not None and tuple(shape) != tuple(train_set[0][0].shape):
        raise PruningError(f"the model takes inputs of shape {tuple(shape)} but {args.dataset} has "
                           f"{tuple(train_set[0][0].shape)}")
    chosen = {name: getattr(args, name) for name in ("epochs", "lr", "optimizer", "weight_decay")
              if getattr(args, name) is not None}
    if getattr(caps, "reads_training_set", False):
        loader = make_loader(train_set, batch_size=batch_size, shuffle=True, seed=args.seed)
        return {"data": loader, "options": chosen,
                "record": dict(chosen, dataset=args.dataset, batch_size=batch_size)}
    from synflow_plugin.train import train_model

    settings = dict(epochs=10, lr=1e-3, optimizer="adam", weight_decay=0.0)
    settings.update(chosen)
    progress = _progress(args)

    def train_fn(net):
        train_model(net, train_set, test_set, batch_size=batch_size, seed=args.seed, progress=progress,
                    desc="imp level", **settings)

    options: dict[str, Any] = {"train_fn": train_fn}
    if args.rate is not None:
        options["rate"] = args.rate
    if args.rewind_step:
        options["rewind_step"] = args.rewind_step
        options["rewind_into"] = model
    return {"options": options,
            "record": dict(settings, dataset=args.dataset, batch_size=batch_size, levels=args.levels,
                           rate=args.rate, rewind_step=args.rewind_step or 0)}


def _cmd_collapse(parser, args) -> int:
    from synflow_plugin.checkpoint import build_model
    from synflow_plugin.criteria import list_criteria
    from synflow_plugin.demo import (
        PAPER_CRITICAL_LOG10,
        _plot_layers,
        collapse_sweep,
        criterion_class,
        criterion_kwargs,
        settings_for,
    )
    from synflow_plugin.masking import LayerCollapseWarning, ZeroFlowWarning

    names = [c.strip().lower() for c in args.criteria.split(",") if c.strip()]
    bad = [c for c in names if c not in list_criteria()]
    if bad or not names:
        parser.error(f"argument --criteria: invalid choice: {', '.join(bad) or repr(args.criteria)} "
                     f"(choose from {', '.join(list_criteria())})")
    _check_outputs(args, ("--json", args.json, "collapse.json"), ("--plot", args.plot, "collapse.png"))
    if args.plot:
        _check_plot_path(Path(args.plot))
    capabilities = {name: criterion_class(name) for name in names}
    training = [name for name, caps in capabilities.items() if getattr(caps, "needs_training", False)]
    if training:
        parser.error(f"argument --criteria: {', '.join(training)} trains the network with a train_fn at every "
                     "prune, and the sweep prunes at every grid point; run `synflow-plugin prune -c "
                     f"{training[0]} --dataset ...` at the compressions you want instead")
    needs_data = any(caps.needs_data for caps in capabilities.values())
    spec, data = _spec_and_data(parser, args, needs_data)
    torch.manual_seed(args.seed)
    _, example = _build(spec)

    def model_fn():
        torch.manual_seed(args.seed)
        return build_model(spec)

    results, table = {}, []
    for name, caps in capabilities.items():
        # --iterations sets the rounds of the iterative criteria; one-shot ones stay one-shot
        kwargs = criterion_kwargs(caps, example_inputs=example, data=data, iterations=args.iterations,
                                  seed=args.seed)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ZeroFlowWarning)
            warnings.simplefilter("ignore", LayerCollapseWarning)
            result = collapse_sweep(model_fn, name, max_exponent=args.max_exponent, coarse_step=args.coarse_step,
                                    fine_step=args.step, progress=_progress(args), **kwargs)
        first = next((p for p in result.points if p["collapsed"]), None)
        results[name] = {
            "critical_exponent": result.critical_exponent, "bounded_by_grid": first is None,
            "first_collapse_exponent": None if first is None else first["exponent"],
            "first_collapsed_layers": [] if first is None else first["collapsed"],
            "iterations": kwargs.get("iterations", caps.default_iterations),
            # the paper's values are for VGG-16-BN on CIFAR-100 only
            "paper_exponent": PAPER_CRITICAL_LOG10.get(name) if spec.spec == "vgg16_bn" else None,
            "points": result.points,
            "densities": result.densities, "seconds": time.perf_counter() - start,
        }
        crit = "-" if result.critical_exponent is None else (
            (">=" if first is None else "") + f"{result.critical_exponent:g}")
        table.append((name, crit, "-" if first is None else f"{first['exponent']:g}",
                      ", ".join(first["collapsed"][:3]) if first else "", results[name]["seconds"]))
    print(f"{spec.spec}: log10 of the critical compression (grid step {args.step:g}, up to 10^{args.max_exponent:g})")
    width = max([10] + [len(name) for name in names])
    print(f"  {'criterion':<{width}} {'critical':>8} {'collapse':>8}  {'time':>7}  first collapsed layers")
    for name, crit, col, layers, secs in table:
        print(f"  {name:<{width}} {crit:>8} {col:>8}  {secs:>6.1f}s  {layers}")
    if args.json:
        write_json_atomic(args.json, {"model": spec.as_dict(), "step": args.step, "max_exponent": args.max_exponent,
                                "criteria": results})
    if args.plot:
        probe = model_fn()
        from synflow_plugin.diagnostics import layer_report

        settings = settings_for("full")
        settings.max_exponent, settings.collapse_model = args.max_exponent, spec.spec
        _plot_layers({"criteria": results, "layers": [r.name for r in layer_report(probe)]}, settings,
                     Path(args.plot))
        print(f"wrote {args.plot}")
    return 0


def _cmd_train(parser, args) -> int:
    from synflow_plugin import sanity
    from synflow_plugin.checkpoint import ModelSpec, build_model, save_checkpoint
    from synflow_plugin.data import DATASETS, load_dataset
    from synflow_plugin.diagnostics import layer_report
    from synflow_plugin.models import MODELS
    from synflow_plugin.train import train_model

    source = Path(args.source)
    info = DATASETS[args.dataset]
    _check_outputs(args, ("-o/--output", args.output, "trained.pt"), ("--json", args.json, "history.json"))
    if source.is_file():
        [(model, blob)] = _load_checkpoints([source], args.factory)
        spec, pruning = ModelSpec.from_dict(blob["model"]), dict(blob.get("pruning") or {})
    elif args.factory:
        raise PruningError(f"argument --factory: applies to a checkpoint, but {args.source!r} is not a file")
    elif args.source.strip().lower() in MODELS:
        spec = ModelSpec(args.source.strip().lower(), {}, info.num_classes, info.input_shape)
        torch.manual_seed(args.seed)
        model, pruning = build_model(spec), {}
    else:
        parser.error(f"argument CHECKPOINT|MODEL: {args.source!r} is neither a file nor a zoo model "
                     f"(choose from {', '.join(MODELS)})")
    shape = getattr(model, "input_shape", None) or spec.input_shape
    if shape is not None and tuple(shape) != tuple(info.input_shape):
        raise PruningError(f"the model takes inputs of shape {tuple(shape)} but {args.dataset} has "
                           f"{tuple(info.input_shape)}; prune with --dataset {args.dataset}")
    if args.shuffle or args.reinit:
        pruned = any(name.endswith("_mask") for name, _ in model.named_buffers())
        if args.shuffle and not pruned:
            raise PruningError("--shuffle needs a pruned checkpoint (written by `synflow-plugin prune`)")
        if args.shuffle:
            sanity.shuffle_masks_(model, seed=args.seed)
        if args.reinit:
            sanity.reinitialize_(model, seed=args.seed + 1)
    train, test = load_dataset(args.dataset, root=args.data_root)
    with torch.no_grad():  # one sample through the model: its number of outputs
        training_mode = model.training
        outputs = model.eval()(train[0][0].unsqueeze(0)).shape[-1]
        model.train(training_mode)
    if outputs != info.num_classes:
        raise PruningError(f"the model has {outputs} outputs but {args.dataset} has {info.num_classes} classes; "
                           f"prune it for this data set (synflow-plugin prune ... --dataset {args.dataset}, or "
                           f"--num-classes {info.num_classes})")
    result = train_model(model, train, test, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         optimizer=args.optimizer, weight_decay=args.weight_decay, seed=args.seed,
                         progress=_progress(args), desc=f"train {spec.spec}")
    rows = layer_report(model)
    kept, size = sum(r.remaining for r in rows), sum(r.size for r in rows)
    training = dict(result.as_dict(), dataset=args.dataset, sanity={"shuffle": args.shuffle, "reinit": args.reinit})
    print(f"{spec.spec} ({kept:,} of {size:,} weights, compression {size / kept if kept else math.inf:.4g}x) on "
          f"{args.dataset}: test accuracy {100 * result.test_accuracy:.2f}% after {args.epochs} epochs "
          f"({result.seconds:.1f} s)")
    if args.output:
        path = save_checkpoint(args.output, model, spec, pruning=pruning, training=training,
                               overwrite=args.overwrite)
        print(f"wrote {path}")
    if args.json:
        write_json_atomic(args.json, {"source": args.source, "pruning": pruning, "training": training})
    return 0


def _cmd_export(parser, args) -> int:
    from synflow_plugin.checkpoint import ModelSpec, example_inputs_for
    from synflow_plugin.export import export_onnx

    _check_outputs(args, ("-o/--output", args.output, "model.onnx"))
    [(model, blob)] = _load_checkpoints([Path(args.checkpoint)], args.factory)
    model.eval()
    example = example_inputs_for(model, ModelSpec.from_dict(blob["model"]))
    result = export_onnx(model, example, args.output, compact=args.compact,
                         sparse_initializers=args.sparse_initializers, verify=not args.no_verify,
                         overwrite=args.overwrite, dynamic_batch=not args.static_batch, progress=_progress(args))
    print(f"wrote {result}")
    return 0


def _cmd_bench(parser, args) -> int:
    from synflow_plugin.checkpoint import ModelSpec, example_inputs_for
    from synflow_plugin.export import benchmark_onnx

    _check_outputs(args, ("--json", args.json, "bench.json"))
    paths = []
    for name in args.files:
        path = Path(name)
        if not path.is_file():
            parser.error(f"argument FILE: {name!r} does not exist")
        paths.append(path)
    checkpoints = [p for p in paths if p.suffix != ".onnx"]
    models = {}
    for path, (model, blob) in zip(checkpoints, _load_checkpoints(checkpoints, args.factory)):
        shape = blob["model"].get("input_shape")
        if getattr(model, "input_shape", None) is None and shape:
            model.input_shape = tuple(shape)  # a user factory's model: benchmark_onnx sizes its input from this
        if getattr(model, "input_shape", None) is None:  # benchmark_onnx would ask for example_inputs=
            example_inputs_for(model, ModelSpec.from_dict(blob["model"], source=str(path)))
        models[path] = model
    entries: dict[str, Any] = {}
    for path in paths:
        key = next(k for k in (path.stem, path.name, str(path)) if k not in entries)
        entries[key] = str(path) if path.suffix == ".onnx" else models[path].eval()
    report = benchmark_onnx(entries, batch_sizes=args.batch_sizes, threads=args.ort_threads, warmup=args.warmup,
                            repeat=args.repeat, json_path=args.json, overwrite=args.overwrite,
                            progress=_progress(args), verbose=False)
    print(report.table())
    return 0


def _cmd_demo(parser, args) -> int:
    from synflow_plugin.demo import render_demo, run_demo

    if args.render_only:
        render_demo(args.out)
        print(f"redrew {args.out}/report.md and its pictures")
        return 0
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    command = " ".join([PROG] + [shlex.quote(a) for a in (args.argv or [])])
    run_demo(args.out, mode=mode, cifar_root=args.cifar_root, accuracy_dataset=args.dataset,
             seeds=args.seeds, skip=args.skip, progress=_progress(args), threads=args.threads, command=command,
             log=lambda line: print(line, flush=True))
    return 0


def _cmd_sweep(parser, args) -> int:
    from synflow_plugin.sweep import main as sweep_main

    return sweep_main(args)


_COMMANDS = {"list": _cmd_list, "prune": _cmd_prune, "collapse": _cmd_collapse, "train": _cmd_train,
             "export": _cmd_export, "bench": _cmd_bench, "demo": _cmd_demo, "sweep": _cmd_sweep}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (argparse exits with 2 on bad arguments).

    A reader that closes stdout early (``synflow-plugin list --json | head``) ends the
    command with status 1 and no traceback, as the Python documentation recommends for
    SIGPIPE.
    """
    try:
        try:
            return _main(argv)
        finally:
            if sys.stdout is not None:
                sys.stdout.flush()  # a closed pipe shows up here, where it can be handled
    except BrokenPipeError:
        # Point stdout at devnull so that the interpreter's own flush at exit cannot fail again.
        with contextlib.suppress(AttributeError, OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, sys.stdout.fileno())
            finally:
                os.close(devnull)
        return 1


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    sub = args.command_parser
    threads = torch.get_num_threads()
    if args.threads and args.command != "demo":  # the demo sets (and restores) its own
        torch.set_num_threads(args.threads)
    try:
        return _COMMANDS[args.command](sub, args)
    except ImportError as exc:
        sub.exit(1, f"{sub.prog}: error: {exc}\n")
    except PruningError as exc:  # a bad request: argparse-style, with the library's message
        sub.error(str(exc))
    finally:  # called in-process, the caller keeps its thread count
        torch.set_num_threads(threads)
    return 1  # pragma: no cover - error() exits


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
