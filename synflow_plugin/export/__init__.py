"""From pruning masks to a deployable, benchmarked ONNX model.

>>> from synflow_plugin.export import export_onnx, benchmark_onnx
>>> result = export_onnx(model, x, "pruned.onnx")          # doctest: +SKIP
>>> report = benchmark_onnx({"dense": "dense.onnx", "pruned": "pruned.onnx"})  # doctest: +SKIP

The pipeline, each step also usable alone:

* :func:`make_permanent`: masks of ``torch.nn.utils.prune`` / our criteria / NNI
  (``masks=``) baked into plain weights, on a copy;
* :func:`compact_channels`: all-zero output channels removed through torch-pruning's
  dependency graph (residual coupling respected), outputs unchanged; what cannot be
  removed is kept and named (:class:`CompactionWarning`, or an error with ``strict``);
* :func:`export_onnx`: one verified ONNX file (dynamo exporter, IR <= 10, optional COO
  ``sparse_initializer`` s, dynamic batch verified at two batch sizes), written atomically;
* :func:`benchmark_onnx`: ONNX Runtime latency, throughput, speed-up, file sizes,
  parameters, dense/effective MACs and parity.

Unstructured zeros make the file smaller (sparse initializers, gzip) but not faster
on ONNX Runtime's CPU kernels; removed channels make it faster. See ``docs/export.md``.

onnx, onnxruntime and onnxscript (extra ``[onnx]``) and torch-pruning (extra
``[torch-pruning]``) are imported only by the functions that need them.
"""

from synflow_plugin.export._common import ExportError
from synflow_plugin.export.bench import BenchmarkReport, benchmark_onnx, count_macs, onnx_model_stats
from synflow_plugin.export.compact import CompactionWarning, channel_counts, compact_channels, find_zero_channels
from synflow_plugin.export.onnx_export import (
    ExportResult,
    densify_sparse_initializers,
    export_onnx,
    opset_range,
    remove_stale_temporaries,
    to_sparse_initializers,
)
from synflow_plugin.permanent import apply_masks, has_pruning_hooks, make_permanent

__all__ = [
    # the pipeline
    "export_onnx",
    "ExportResult",
    "benchmark_onnx",
    "BenchmarkReport",
    # its steps
    "make_permanent",
    "apply_masks",
    "has_pruning_hooks",
    "compact_channels",
    "find_zero_channels",
    "channel_counts",
    "to_sparse_initializers",
    "densify_sparse_initializers",
    "opset_range",
    "remove_stale_temporaries",
    # analysis
    "count_macs",
    "onnx_model_stats",
    # errors and warnings
    "ExportError",
    "CompactionWarning",
]
