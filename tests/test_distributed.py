"""Identical masks on every rank: two CPU processes on the gloo backend.

Rank r scores only its own batch; the data-driven criteria reduce their gradients
across the ranks, so both ranks get the masks one process gets from both batches,
through every host. Ranks with different weights get a clear error."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.multiprocessing as mp

import _ddp_worker
from synflow_plugin import PruningTypeError, compute_masks, prunable_parameters

pytest.importorskip("nni")
pytest.importorskip("torch_pruning")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with gloo is needed", allow_module_level=True)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    files = [str(folder / f"rank{r}.pt") for r in range(2)]
    context = mp.get_context("spawn")
    procs = [context.Process(target=_ddp_worker.run, args=(r, 2, str(folder / "init"), files[r])) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return [torch.load(f, weights_only=True) for f in files]


def single_process():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _ddp_worker.results(_ddp_worker.halves(), {})


def test_every_rank_gets_the_masks_of_one_process_on_all_batches(ranks):
    expected = single_process()
    for name, want in expected.items():
        for rank, record in enumerate(ranks):
            got = record["masks"][name]
            assert all(torch.equal(g, w) for g, w in zip(got, want)), f"{name}: rank {rank} differs from one process"


def test_ranks_with_different_weights_get_a_clear_error(ranks):
    for record in ranks:
        assert "the pruned weights (or their existing masks) differ between the ranks" in record["different weights"]
        assert "rank(s) 1 disagree with rank 0" in record["different weights"]
        assert "same seed" in record["different weights"]


def test_masks_that_differ_between_ranks_are_an_error(ranks):
    for record in ranks:
        assert "the masks differ between the ranks" in record["different masks"]
        assert "same seed=" in record["different masks"]


def test_a_criterion_that_cannot_reduce_is_refused_under_a_group(ranks):
    for record in ranks:
        assert "cannot combine them across the 2 ranks" in record["no reduction"]
        assert "process_group=False" in record["no reduction"]


def test_process_group_false_scores_each_rank_alone(ranks):
    model = _ddp_worker.network()
    for rank, record in enumerate(ranks):
        alone = compute_masks(model, prunable_parameters(model), "snip", 0.8, data=[_ddp_worker.halves()[rank]])
        assert all(torch.equal(a, b) for a, b in zip(record["alone"], alone))
    assert not all(torch.equal(a, b) for a, b in zip(ranks[0]["alone"], ranks[1]["alone"]))  # why reduction matters


def test_process_group_is_checked():
    model = _ddp_worker.network()
    with pytest.raises(PruningTypeError, match="process_group should be a torch.distributed.ProcessGroup, None"):
        compute_masks(model, prunable_parameters(model), "magnitude", 0.5, process_group="world")
