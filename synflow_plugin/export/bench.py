"""ONNX Runtime benchmark of dense and pruned models: latency, size, FLOPs, parity.

:func:`benchmark_onnx` measures every model on the same inputs, interleaving the
timed runs (round-robin over the models) so that a shared machine's load changes hit
all of them alike, and reports for each:

* latency p50 / p90 per ``session.run`` call (milliseconds), throughput
  (samples per second at p50), and speed-up = baseline p50 / model p50;
* file size, raw and gzip-compressed (level 6), including a ``.data`` side file;
* parameters = elements of the floating-point initializers of the ONNX graph (the
  exporter folds BatchNorm into the convolutions, so BN parameters are not counted),
  and how many of them are non-zero;
* MACs per sample (multiply-accumulates; "FLOPs" in the pruning literature's loose
  sense, one MAC counted once): *dense* = every Conv / ConvTranspose / Gemm / MatMul
  weight used at every output position, *effective* = non-zero weights only. Padding
  borders are counted as full windows and additions of biases are not counted;
* parity: max |onnxruntime - torch| (absolute and relative to max |torch|) when a
  torch model is known for the file.

What to expect, measured and documented in ``docs/export.md``: ONNX Runtime's CPU
kernels are dense, so unstructured zeros change neither latency nor dense MACs (only
the file size, with sparse initializers or gzip); removing channels (structured
pruning + compaction) cuts both.
"""

from __future__ import annotations

import gzip
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from synflow_plugin._files import write_json_atomic
from synflow_plugin.errors import PruningError, PruningTypeError
from synflow_plugin.export._common import (
    ExportError,
    check_path,
    output_leaves,
    refuse_existing,
    relative_difference,
    require_onnx,
)
from synflow_plugin.export.onnx_export import _first_line, densify_sparse_initializers, export_onnx
from synflow_plugin.permanent import make_permanent

__all__ = ["benchmark_onnx", "BenchmarkReport", "count_macs", "onnx_model_stats"]


# --------------------------------------------------------------------------- static analysis
def _load_proto(onnx, path: Path, caller: str):
    try:
        return onnx.load_model(str(path))
    except Exception as exc:
        raise ExportError(
            f"{caller}: '{path}' is not a readable ONNX model ({type(exc).__name__}: {_first_line(exc)}); "
            "the file is corrupt, truncated or not ONNX. Export it again with export_onnx()."
        ) from exc


_RECURRENT = ("LSTM", "GRU", "RNN")


def _runtime_shapes(model, names: list[str]) -> dict[str, tuple[int, ...]]:
    """Shapes of the tensors ``names`` when ONNX Runtime runs ``model`` on one sample.

    For graphs whose shapes ONNX's static inference cannot follow (a Reshape to a
    computed shape, as in attention); the inputs are zeros (token ids 0), which only
    matters for graphs whose shapes depend on values.
    """
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    wanted = [n for n in dict.fromkeys(names) if n not in present]
    for name in wanted:
        probe.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    feed = {}
    for inp in session.get_inputs():
        shape = [1 if not isinstance(d, int) else d for d in inp.shape]
        feed[inp.name] = np.zeros(shape, dtype=_ORT_TYPES.get(inp.type, np.float32))
    outputs = session.run(None, feed)
    return {o.name: tuple(v.shape) for o, v in zip(session.get_outputs(), outputs)}


def count_macs(model_proto) -> tuple[int, int]:
    """``(dense, effective)`` multiply-accumulates per sample of an ONNX model.

    Counted nodes, for one sample (batch dimension 1):

    * Conv / ConvTranspose: output positions x kernel elements (``weight.size``);
    * Gemm and MatMul: ``prod(output shape) * K``, K the contracted dimension, so
      ``A[..., M, K] @ B[..., K, N]`` costs ``prod(...) * M * N * K``. A MatMul of two
      activations (attention's ``Q @ K^T``, ``weights @ V``) counts as dense in both
      figures; with a constant operand the share of its zeros is removed;
    * LSTM / GRU / RNN: ``seq_len * (W.size + R.size)`` (every step multiplies the
      input by ``W`` and the hidden state by ``R``, in each direction).

    Shapes come from ONNX shape inference; where it cannot size a node (a Reshape to a
    computed shape) ONNX Runtime runs the graph once on one zero sample to measure
    them. Elementwise work, softmax and bias additions are not counted. A file exported
    at a fixed batch size is counted per sample too. ``model_proto`` is not changed.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(model_proto)
    densify_sparse_initializers(model)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    batch_params, static_batch = set(), 1
    for value in graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if len(dims) and not dims[0].HasField("dim_value"):
            if dims[0].dim_param:
                batch_params.add(dims[0].dim_param)
            dims[0].dim_value = 1
        elif len(dims) and static_batch == 1:
            static_batch = max(1, dims[0].dim_value)  # a file exported at a fixed batch: counted per sample
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - shapes missing below are measured by a run
        pass
    shapes: dict[str, tuple[int, ...] | None] = {}
    for value in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        # the exporter names the batch dimension symbolically in every intermediate shape
        shape = tuple(d.dim_value if d.HasField("dim_value") else 1 if d.dim_param in batch_params else -1
                      for d in dims)
        shapes[value.name] = None if (not value.type.tensor_type.HasField("shape") or -1 in shape) else shape
    for name, init in initializers.items():
        shapes[name] = tuple(int(d) for d in init.dims)

    counted = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") + _RECURRENT]
    needed = [t for n in counted for t in (list(n.input[:2]) + [n.output[0]]) if t and shapes.get(t) is None]
    if needed:
        try:
            shapes.update(_runtime_shapes(model, needed))
        except Exception as exc:  # noqa: BLE001 - reported with the node below
            first = next((n for n in counted if any(shapes.get(t) is None for t in list(n.input[:2]) + [n.output[0]] if t)), None)
            raise ExportError(
                f"count_macs(): cannot size {first.op_type} node '{first.name}': its shapes are not static and "
                f"onnxruntime could not run the graph to measure them ({type(exc).__name__}: {str(exc)[:200]}); "
                "export with static non-batch shapes."
            ) from exc

    cache: dict[str, tuple[int, int]] = {}
    # A weight the graph reads through a Transpose (a layer tied to an embedding's table) is
    # still a constant operand, with the same zeros.
    transposed = {n.output[0]: n.input[0] for n in model.graph.node
                  if n.op_type in ("Transpose", "Identity") and n.input and n.input[0] in initializers}

    def weight_counts(name: str) -> tuple[int, int] | None:
        name = transposed.get(name, name)
        if name not in initializers:
            return None
        if name not in cache:
            array = numpy_helper.to_array(initializers[name])
            cache[name] = (int(array.size), int(np.count_nonzero(array)))
        return cache[name]

    dense = effective = 0
    for node in counted:
        if node.op_type in ("Conv", "ConvTranspose"):
            counts = weight_counts(node.input[1])
            out = shapes.get(node.output[0]) if node.op_type == "Conv" else shapes.get(node.input[0])
            if counts is None or out is None:
                raise ExportError(
                    f"count_macs(): cannot size {node.op_type} node '{node.name}': its weight is not an "
                    "initializer or its shapes are not static; export with static non-batch shapes."
                )
            positions = int(np.prod(out[2:])) if len(out) > 2 else 1
            dense += positions * counts[0]
            effective += positions * counts[1]
        elif node.op_type in _RECURRENT:
            w, r, x = weight_counts(node.input[1]), weight_counts(node.input[2]), shapes.get(node.input[0])
            if w is None or r is None or x is None:
                raise ExportError(
                    f"count_macs(): cannot size {node.op_type} node '{node.name}': its weights are not "
                    "initializers or its input shape is not static."
                )
            layout = next((attr.i for attr in node.attribute if attr.name == "layout"), 0)
            steps = int(x[1] if layout else x[0])
            dense += steps * (w[0] + r[0])
            effective += steps * (w[1] + r[1])
        else:
            a_shape, b_shape, out = shapes.get(node.input[0]), shapes.get(node.input[1]), shapes.get(node.output[0])
            if node.op_type == "Gemm":
                trans_b = next((attr.i for attr in node.attribute if attr.name == "transB"), 0)
                k = None if b_shape is None else b_shape[1 if trans_b else 0]
            else:
                k = a_shape[-1] if a_shape else (b_shape[-2] if b_shape and len(b_shape) >= 2 else None)
            if out is None or k is None:
                raise ExportError(
                    f"count_macs(): cannot size {node.op_type} node '{node.name}': shapes are not static."
                )
            macs = int(np.prod(out)) * int(k)
            if out and out[0] == static_batch:  # the batch is in this product (a Conv's positions exclude it)
                macs //= static_batch
            dense += macs
            # every element of a constant operand is used equally often, so its zeros
            # remove the same share of the MACs
            counts = weight_counts(node.input[1]) or weight_counts(node.input[0])
            effective += macs * counts[1] // counts[0] if counts and counts[0] else macs
    return dense, effective


def onnx_model_stats(path: str | os.PathLike) -> dict[str, Any]:
    """Static facts about an ONNX file: sizes, parameters, non-zeros, dense/effective MACs."""
    caller = "onnx_model_stats()"
    onnx, _ = require_onnx(caller, exporter=False)
    path = check_path(path, caller, must_exist=True)
    proto = _load_proto(onnx, path, caller)
    return _stats(onnx, path, proto)


def _stats(onnx, path: Path, proto) -> dict[str, Any]:
    from onnx import numpy_helper

    raw = path.read_bytes()
    side = {loc.value for init in proto.graph.initializer for loc in init.external_data if loc.key == "location"}
    extra = b"".join((path.parent / s).read_bytes() for s in sorted(side))
    dense_proto = onnx.ModelProto()
    dense_proto.CopyFrom(proto)
    densify_sparse_initializers(dense_proto)
    floating = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    params = nonzeros = 0
    for init in dense_proto.graph.initializer:
        if init.data_type in floating:
            array = numpy_helper.to_array(init)
            params += int(array.size)
            nonzeros += int(np.count_nonzero(array))
    macs_dense, macs_effective = count_macs(dense_proto)
    return {
        "file_bytes": len(raw) + len(extra),
        "gzip_bytes": len(gzip.compress(raw + extra, compresslevel=6)),
        "params": params,
        "nonzeros": nonzeros,
        "macs_dense": macs_dense,
        "macs_effective": macs_effective,
        "sparse_initializers": len(proto.graph.sparse_initializer),
    }


# --------------------------------------------------------------------------- report
@dataclass
class BenchmarkReport:
    """The result of :func:`benchmark_onnx`.

    Attributes:
        models: one dict per model: ``name``, ``path``, the :func:`onnx_model_stats`
            fields, ``max_abs_diff`` / ``max_rel_diff`` (None without a torch
            reference) and ``latency``: ``{batch: {"p50_ms", "p90_ms", "min_ms",
            "throughput", "speedup"}}`` (None where the model's batch size is fixed);
            throughput and speed-up use p50, ``min_ms`` is the least disturbed run.
        settings: batch sizes, threads, warmup, repeat, baseline.
        environment: library versions and the machine.
    """

    models: list[dict[str, Any]]
    settings: dict[str, Any]
    environment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"environment": self.environment, "settings": self.settings, "models": self.models}

    def save_json(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the report as JSON (atomically); an existing file only with ``overwrite=True``."""
        caller = "BenchmarkReport.save_json()"
        path = check_path(path, caller, must_exist=False)
        refuse_existing(path, overwrite, caller)
        write_json_atomic(path, self.to_dict())
        return path


    def table(self) -> str:
        def num(x, fmt):
            return "-" if x is None else format(x, fmt)

        name_w = max([5] + [len(m["name"]) for m in self.models])
        lines = [
            f"{'model':<{name_w}}  {'file MB':>8}  {'gzip MB':>8}  {'params':>10}  {'non-zero':>10}  "
            f"{'MMACs dense':>11}  {'MMACs eff.':>10}  {'parity (rel)':>12}"
        ]
        for m in self.models:
            lines.append(
                f"{m['name']:<{name_w}}  {m['file_bytes'] / 1e6:>8.3f}  {m['gzip_bytes'] / 1e6:>8.3f}  "
                f"{m['params']:>10,}  {m['nonzeros']:>10,}  {m['macs_dense'] / 1e6:>11.2f}  "
                f"{m['macs_effective'] / 1e6:>10.2f}  {num(m['max_rel_diff'], '12.1e'):>12}"
            )
        lines.append("")
        lines.append(
            f"{'model':<{name_w}}  {'batch':>5}  {'p50 ms':>9}  {'p90 ms':>9}  {'samples/s':>10}  {'speedup':>8}"
        )
        for batch in self.settings["batch_sizes"]:
            for m in self.models:
                lat = m["latency"].get(str(batch))
                if lat is None:
                    lines.append(f"{m['name']:<{name_w}}  {batch:>5}  {'(fixed batch size: not run)':>40}")
                    continue
                lines.append(
                    f"{m['name']:<{name_w}}  {batch:>5}  {lat['p50_ms']:>9.3f}  {lat['p90_ms']:>9.3f}  "
                    f"{lat['throughput']:>10.1f}  {num(lat['speedup'], '7.2f') + 'x':>8}"
                )
        s = self.settings
        lines.append(
            f"(onnxruntime {self.environment.get('onnxruntime')}, CPU, {s['threads']} intra-op thread(s), "
            f"{s['repeat']} timed runs after {s['warmup']} warm-up runs; speed-up vs '{s['baseline']}')"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


# --------------------------------------------------------------------------- entries
@dataclass
class _Entry:
    name: str
    path: Path
    reference: nn.Module | None


def _is_pathlike(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def _entries(paths_or_models: Any, caller: str) -> list[tuple[str | None, Any, nn.Module | None]]:
    """Normalise the argument into ``(name or None, path or module, reference module or None)``."""
    def one(name, item):
        if _is_pathlike(item):
            return (name, item, None)
        if isinstance(item, nn.Module):
            return (name, item, item)
        if (isinstance(item, tuple) and len(item) == 2 and _is_pathlike(item[0])
                and isinstance(item[1], nn.Module)):
            return (name, item[0], item[1])
        raise PruningTypeError(
            f"{caller}: each model should be an .onnx path, an nn.Module, or a (path, nn.Module) pair "
            f"giving the torch model the file was exported from; got {type(item).__name__}"
        )

    if isinstance(paths_or_models, Mapping):
        items = [one(str(k), v) for k, v in paths_or_models.items()]
    elif _is_pathlike(paths_or_models) or isinstance(paths_or_models, nn.Module) or (
        isinstance(paths_or_models, tuple) and len(paths_or_models) == 2
        and _is_pathlike(paths_or_models[0]) and isinstance(paths_or_models[1], nn.Module)
    ):
        items = [one(None, paths_or_models)]
    elif isinstance(paths_or_models, (list, tuple)):
        items = [one(None, v) for v in paths_or_models]
    else:
        raise PruningTypeError(
            f"{caller}: paths_or_models should be a path, an nn.Module, a list of them or a dict "
            f"{{name: path or module}}, got {type(paths_or_models).__name__}"
        )
    if not items:
        raise PruningError(f"{caller}: no models given; pass at least one .onnx path or nn.Module.")
    return items


def _unique_name(name: str, taken: set[str]) -> str:
    candidate, k = name, 2
    while candidate in taken:
        candidate, k = f"{name}#{k}", k + 1
    taken.add(candidate)
    return candidate


def _example_for(module: nn.Module, example_inputs: Any, caller: str):
    if example_inputs is not None:
        return example_inputs
    shape = getattr(module, "input_shape", None)
    if shape is None:
        raise PruningError(
            f"{caller}: to benchmark a {type(module).__name__} given as an nn.Module, pass "
            "example_inputs=<a tensor it accepts> (zoo models carry input_shape and need none)."
        )
    return torch.randn(1, *shape)


# --------------------------------------------------------------------------- inputs
def _input_specs(ort_session, caller: str, name: str):
    specs = []
    for inp in ort_session.get_inputs():
        dims = list(inp.shape)
        if any(not isinstance(d, int) for d in dims[1:]):
            raise ExportError(
                f"{caller}: input '{inp.name}' of '{name}' has dynamic dimensions {dims} beyond the "
                "batch dimension; export with fixed shapes except the batch (export_onnx does)."
            )
        specs.append((inp.name, inp.type, dims))
    return specs


_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
}


def _make_inputs(specs, batch: int, rng: np.random.Generator):
    feed = {}
    for name, type_name, dims in specs:
        fixed = dims[0] if dims and isinstance(dims[0], int) else None
        if fixed is not None and fixed != batch:
            return None
        shape = [batch] + [int(d) for d in dims[1:]] if dims else []
        dtype = _ORT_TYPES.get(type_name, np.float32)
        if np.issubdtype(dtype, np.floating):
            feed[name] = rng.standard_normal(shape).astype(dtype)
        else:
            feed[name] = np.zeros(shape, dtype=dtype)
    return feed


# --------------------------------------------------------------------------- benchmark
def benchmark_onnx(
    paths_or_models: Any,
    *,
    batch_sizes: Sequence[int] = (1, 8),
    threads: int | None = None,
    warmup: int = 5,
    repeat: int = 30,
    baseline: int | str = 0,
    example_inputs: Any = None,
    json_path: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    verbose: bool = True,
    seed: int = 0,
) -> BenchmarkReport:
    """Time ONNX models with ONNX Runtime on CPU and report size, FLOPs and parity.

    Args:
        paths_or_models: one model or a list of them, or a dict ``{name: model}``. A
            model is an ``.onnx`` path, an ``nn.Module`` (exported first with
            :func:`export_onnx` into a temporary file), or a ``(path, module)`` pair
            naming the torch model a file was exported from (enables the parity column).
        batch_sizes: batch sizes to time (models with a fixed batch size run only theirs).
        threads: ONNX Runtime intra-op threads; ``None`` = 1 (the most reproducible on a
            shared machine). Every session gets the same value.
        warmup: untimed runs per model and batch size (at least one is made: the first
            run also checks the outputs, and the report counts it).
        repeat: timed runs per model and batch size, interleaved across models.
        baseline: index or name of the dense model that speed-ups are relative to.
        example_inputs: inputs for ``nn.Module`` entries (zoo models need none).
        json_path: also write the report there as JSON (refused, before any work, if the
            file exists, unless ``overwrite=True``).
        progress: tqdm progress bar (``None``: only on a terminal).
        verbose: print the table.
        seed: seed of the random inputs.

    Returns:
        A :class:`BenchmarkReport`; ``str(report)`` is the table.

    Raises:
        ExportError: a missing, corrupt or unloadable ONNX file, or one that onnxruntime
            cannot run at one of ``batch_sizes`` (the message names the batch size).
        PruningError / PruningTypeError: bad arguments.
    """
    caller = "benchmark_onnx()"
    onnx, ort = require_onnx(caller, exporter=False)
    if isinstance(batch_sizes, int):
        batch_sizes = (batch_sizes,)
    batch_sizes = tuple(batch_sizes)
    if not batch_sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise PruningError(f"{caller}: batch_sizes={batch_sizes!r} should be positive ints, e.g. (1, 8)")
    if threads is None:
        threads = 1
    for name, value, low in (("threads", threads, 1), ("warmup", warmup, 0), ("repeat", repeat, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise PruningError(f"{caller}: {name}={value!r} should be an int >= {low}")
    if json_path is not None:
        json_path = check_path(json_path, caller, must_exist=False)
        refuse_existing(json_path, overwrite, caller)

    raw_entries = _entries(paths_or_models, caller)
    # check every file exists before any (slow) export
    for _, item, _ in raw_entries:
        if _is_pathlike(item):
            check_path(item, caller, must_exist=True)

    with tempfile.TemporaryDirectory(prefix="synflow-bench-") as tmp:
        entries: list[_Entry] = []
        taken: set[str] = set()
        for k, (name, item, reference) in enumerate(raw_entries):
            if isinstance(item, nn.Module):
                stem = name or type(item).__name__
                path = Path(tmp) / f"{k}-{''.join(c if c.isalnum() else '_' for c in stem)}.onnx"
                export_onnx(item, _example_for(item, example_inputs, caller), path, progress=progress)
            else:
                path = check_path(item, caller, must_exist=True)
                stem = name or path.stem
            entries.append(_Entry(_unique_name(stem, taken), path, reference))

        names = [e.name for e in entries]
        if isinstance(baseline, str):
            if baseline not in names:
                raise PruningError(f"{caller}: baseline={baseline!r} is not one of the models {names}")
            base = names.index(baseline)
        elif isinstance(baseline, int) and not isinstance(baseline, bool) and -len(entries) <= baseline < len(entries):
            base = baseline % len(entries)
        else:
            raise PruningError(f"{caller}: baseline={baseline!r} should be a model name or an index below {len(entries)}")

        models, sessions, specs, references = [], [], [], []
        for entry in entries:
            proto = _load_proto(onnx, entry.path, caller)
            stats = _stats(onnx, entry.path, proto)
            del proto
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.log_severity_level = 3
            try:
                session = ort.InferenceSession(str(entry.path), sess_options=options, providers=["CPUExecutionProvider"])
            except Exception as exc:
                raise ExportError(
                    f"{caller}: onnxruntime {ort.__version__} cannot load '{entry.path}' "
                    f"({_first_line(exc)}); the file is corrupt or uses an unsupported opset."
                ) from exc
            sessions.append(session)
            specs.append(_input_specs(session, caller, entry.name))
            reference = None
            if entry.reference is not None:
                reference = make_permanent(entry.reference)
                reference.eval()
            references.append(reference)
            models.append({"name": entry.name, "path": str(entry.path), **stats,
                           "max_abs_diff": None, "max_rel_diff": None, "latency": {}})

        warmup = max(warmup, 1)  # the first run checks the outputs
        total = len(batch_sizes) * len(entries) * (warmup + repeat)
        with tqdm(total=total, desc="benchmark_onnx", unit="run", disable=(None if progress is None else not progress)) as bar:
            for batch in batch_sizes:
                # the same inputs for every model (same seed per batch size)
                feeds = [_make_inputs(spec, batch, np.random.default_rng([seed, batch])) for spec in specs]
                for i, (session, feed) in enumerate(zip(sessions, feeds)):
                    if feed is None:
                        continue
                    outputs = _run(session, feed, entries[i], batch, caller)
                    for _ in range(warmup - 1):
                        session.run(None, feed)
                    if references[i] is not None:
                        _parity(models[i], references[i], feed, outputs, caller)
                    bar.update(warmup)
                times = [[] for _ in entries]
                for _ in range(repeat):
                    for i, (session, feed) in enumerate(zip(sessions, feeds)):
                        if feed is None:
                            continue
                        start = time.perf_counter()
                        session.run(None, feed)
                        times[i].append(time.perf_counter() - start)
                        bar.update(1)
                for i, feed in enumerate(feeds):
                    if feed is None:
                        models[i]["latency"][str(batch)] = None
                        continue
                    t = np.asarray(times[i]) * 1e3
                    p50 = float(np.percentile(t, 50))
                    models[i]["latency"][str(batch)] = {
                        "p50_ms": p50, "p90_ms": float(np.percentile(t, 90)), "min_ms": float(t.min()),
                        "throughput": batch / (p50 / 1e3), "speedup": None,
                    }
                base_lat = models[base]["latency"].get(str(batch))
                for m in models:
                    lat = m["latency"].get(str(batch))
                    if lat is not None and base_lat is not None:
                        lat["speedup"] = base_lat["p50_ms"] / lat["p50_ms"]

    for m, raw in zip(models, raw_entries):
        if isinstance(raw[1], nn.Module):
            m["path"] = None  # the temporary file is gone
    report = BenchmarkReport(
        models=models,
        settings={"batch_sizes": list(batch_sizes), "threads": threads, "warmup": warmup,
                  "repeat": repeat, "baseline": names[base], "seed": seed},
        environment={
            "onnxruntime": ort.__version__, "onnx": onnx.__version__, "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
            "processor": platform.processor(), "cpu_count": os.cpu_count(),
        },
    )
    if json_path is not None:
        report.save_json(json_path, overwrite=overwrite)
    if verbose:
        print(report.table())
    return report


def _run(session, feed: dict, entry: _Entry, batch: int, caller: str) -> list:
    """The first run of a model at a batch size: an onnxruntime failure becomes an ExportError."""
    try:
        return session.run(None, feed)
    except Exception as exc:
        import onnxruntime as ort

        shapes = ", ".join(f"{name} {list(value.shape)}" for name, value in feed.items())
        raise ExportError(
            f"{caller}: onnxruntime {ort.__version__} cannot run '{entry.name}' ({entry.path.name}) at batch "
            f"size {batch} (inputs {shapes}): {_first_line(exc)}. The file declares a dynamic batch "
            "dimension, but an operation inside the graph fixes the batch size (a graph traced at batch 1 "
            "often does). Export it again with synflow_plugin.export.export_onnx(), which traces at batch 2 "
            "and verifies a second batch size, or export it with dynamic_batch=False and benchmark "
            "only its batch size."
        ) from exc


def _parity(model_row: dict, reference: nn.Module, feed: dict, outputs: list, caller: str) -> None:
    with torch.no_grad():
        expected = output_leaves(reference(*[torch.from_numpy(v) for v in feed.values()]), caller)
    diff, rel = relative_difference(outputs, [e.numpy() for e in expected])
    if model_row["max_abs_diff"] is None or diff > model_row["max_abs_diff"]:
        model_row["max_abs_diff"] = diff
    if model_row["max_rel_diff"] is None or rel > model_row["max_rel_diff"]:
        model_row["max_rel_diff"] = rel
