"""Host adapters. ``torch_prune`` needs only torch; ``nni`` and ``torch_pruning`` import
their host library and are only imported when used."""
