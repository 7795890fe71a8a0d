"""Sweeps: a tiny real grid (an MLP on scikit-learn's digits) on both engines, resume, failures,
criteria that train (IMP, GemMiner), the CLI."""

from __future__ import annotations

import argparse
import doctest
import json
import shutil
import socket
import sys

import pytest
import torch

from synflow_plugin import sweep
from synflow_plugin.criteria import CRITERIA, Criterion, register_criterion
from synflow_plugin.errors import PruningError
from synflow_plugin.sweep import Grid, run_sweep

# 64*32 + 32*32 + 32*10 = 3392 prunable weights; 10x keeps 3392 - round(0.9 * 3392) = 339,
# 100x keeps 3392 - round(0.99 * 3392) = 34.
TINY = dict(model="mlp", dataset="digits", criteria=["synflow", "snip"], compressions=[10, 100], seeds=[0, 1],
            epochs=2, lr=1e-2, model_options={"depth": 3, "width": 32})
KEPT = {10.0: 339, 100.0: 34}


def _without_times(records):
    return [{k: v for k, v in r.items() if k != "times"} for r in records]


def _read(out):
    return json.loads((out / sweep.RESULTS_FILE).read_text())


class FailingCriterion(Criterion):
    """Raises inside scoring, as a criterion with a bug would."""

    name = "sweep_test_failing"
    reads_network = False

    def score(self, state):
        raise RuntimeError("no scores for this network")


class CrashingCriterion(Criterion):
    """Interrupts the whole process (as Ctrl-C or a killed driver would) while armed."""

    name = "sweep_test_crash"
    reads_network = False
    armed = True

    def score(self, state):
        if CrashingCriterion.armed:
            raise KeyboardInterrupt
        return [p.detach().abs() for p in state.params]


@pytest.fixture
def test_criteria():
    for cls in (FailingCriterion, CrashingCriterion):
        register_criterion(cls)
    CrashingCriterion.armed = True
    yield
    for cls in (FailingCriterion, CrashingCriterion):
        CRITERIA.pop(cls.name, None)


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    return out, run_sweep(Grid(**TINY), out, progress=False)


def _cli(argv):
    """``synflow-plugin sweep ARGV`` through a parser built as cli.py builds it; the exit status."""
    parser = argparse.ArgumentParser(prog="synflow-plugin")
    sub = parser.add_subparsers(dest="command", required=True)
    sweep.add_parser(sub)
    try:
        return sweep.main(parser.parse_args(["sweep", *argv]))
    except SystemExit as exc:
        return exc.code


# --------------------------------------------------------------------------- the grid
def test_grid_lists_every_trial_in_a_fixed_order():
    grid = Grid(**dict(TINY, dense=True, compressions=["10x", "1e2"]))
    keys = [t.key for t in grid.trials()]
    assert keys == ["dense|1.0|0", "dense|1.0|1",
                    "synflow|10.0|0", "synflow|10.0|1", "synflow|100.0|0", "synflow|100.0|1",
                    "snip|10.0|0", "snip|10.0|1", "snip|100.0|0", "snip|100.0|1"]
    assert [round(t.amount, 6) for t in grid.trials()[:4]] == [0.0, 0.0, 0.9, 0.9]
    assert grid.settings() == {"model": "mlp", "dataset": "digits", "epochs": 2,
                               "model_options": {"depth": 3, "width": 32}, "lr": 0.01, "batch_size": 128,
                               "optimizer": "adam", "weight_decay": 0.0, "iterations": None,
                               "calibration_per_class": 10, "threads": 1, "criterion_options": {}}


@pytest.mark.parametrize("change, words", [
    ({"compressions": [0.5]}, ["0.5", ">= 1"]),
    ({"compressions": ["abc"]}, ["'abc'", "10^2"]),
    ({"compressions": [10, 10.0]}, ["10.0", "twice"]),
    ({"compressions": []}, ["compressions", "empty"]),
    ({"seeds": [-1]}, ["-1", ">= 0"]),
    ({"seeds": [0, 0]}, ["twice"]),
    ({"criteria": ["synflow", "nope"]}, ["'nope'", "magnitude", "synflow"]),
    ({"criteria": ["dense"]}, ["dense=True"]),
    ({"criteria": []}, ["criteria", "empty"]),
    ({"epochs": 0}, ["epochs=0", "positive"]),
    ({"epochs": 1.5}, ["epochs=1.5", "int"]),
    ({"lr": -1}, ["lr=-1"]),
    ({"optimizer": "lion"}, ["'lion'", "adam"]),
    ({"model": "nope"}, ["'nope'", "vgg16_bn"]),
    ({"dataset": "imagenet"}, ["'imagenet'", "digits"]),
    ({"dataset": "cifar10"}, ["data_root", "cifar-10-batches-py"]),
    ({"model_options": {"width": float("nan")}}, ["JSON"]),
    ({"criterion_options": {"nope": {}}}, ["criterion_options", "'nope'", "synflow"]),
    ({"criterion_options": {"imp": 0.5}}, ["criterion_options['imp']=0.5", "dict of keywords"]),
    ({"criterion_options": {"imp": {"seed": 1}}}, ["'seed'", "set by the sweep"]),
    ({"criterion_options": {"imp": {"train_fn": "x"}}}, ["'train_fn'", "set by the sweep"]),
    ({"criterion_options": {"gemminer": {"iterations": 0}}}, ["iterations", "positive"]),
    ({"criterion_options": [("imp", {})]}, ["criterion_options", "dict of criterion name"]),
    ({"criterion_options": {"snip": {"iterations": 5}}}, ["snip prunes in one round", "ignored"]),
    ({"criterion_options": {"imp": {"rate": 2.0}}}, ["criterion_options['imp']", "rate=2.0"]),  # before any trial
    ({"criterion_options": {"gemminer": {"optimizer": "adam", "momentum": 0.9}}}, ["momentum=0.9", "'sgd' only"]),
    ({"criterion_options": {"imp": {"bogus": 1}}}, ["criterion_options['imp']", "'bogus'"]),
])
def test_bad_grid_values_are_refused_naming_them(change, words):
    with pytest.raises(PruningError) as info:
        Grid(**dict(TINY, **change))
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_a_model_that_cannot_take_the_data_is_refused_before_any_trial(tmp_path):
    with pytest.raises(PruningError, match="'depht'"):
        run_sweep(Grid(**dict(TINY, model_options={"depht": 3})), tmp_path / "a", progress=False)
    with pytest.raises(PruningError, match=r"cannot be built for digits \(inputs \(1, 8, 8\).*too small for vgg11"):
        run_sweep(Grid(**dict(TINY, model="vgg11", model_options={"width_multiplier": 0.125})), tmp_path / "b",
                  progress=False)
    with pytest.raises(PruningError, match="engine='spark'"):
        run_sweep(Grid(**TINY), tmp_path / "c", engine="spark")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# --------------------------------------------------------------------------- local engine
def test_local_sweep_records_every_trial(local_sweep):
    out, result = local_sweep
    assert (result.ran, result.skipped, result.failed) == (8, 0, [])
    assert [r["trial"] for r in result.records] == [t.key for t in Grid(**TINY).trials()]
    for record in result.records:
        assert record["status"] == "ok" and record["error"] is None
        assert (record["model"], record["dataset"], record["epochs"]) == ("mlp", "digits", 2)
        assert record["prunable"] == 3392 and record["remaining"] == KEPT[record["compression"]]
        assert record["iterations"] == (100 if record["criterion"] == "synflow" else 1)
        assert record["collapsed_layers"] == []
        assert 0.0 <= record["accuracy"] <= 1.0
        assert set(record["times"]) == {"setup", "prune", "train", "eval", "total"}
        assert all(v >= 0 for v in record["times"].values())
    # real training: the accuracies differ between trials and some are well above chance (10%)
    accuracies = [r["accuracy"] for r in result.records]
    assert len(set(accuracies)) > 4 and max(accuracies) > 0.2
    payload = _read(out)
    assert payload["records"] == result.records and payload["grid"] == Grid(**TINY).as_dict()
    assert payload["environment"]["engine"] == "local"
    assert result.figure_path == out / "accuracy.png"
    assert result.figure_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_trial_is_reproducible_and_leaves_the_caller_state(local_sweep):
    _, result = local_sweep
    trial = Grid(**TINY).trials()[5]  # snip|10.0|1
    torch.manual_seed(123)
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    record = sweep.run_trial(trial)
    assert torch.equal(torch.get_rng_state(), state) and torch.get_num_threads() == threads
    assert _without_times([record]) == _without_times([result.records[5]])


# --------------------------------------------------------------------------- ray engine
def test_ray_engine_gives_the_same_records(local_sweep, tmp_path):
    ray = pytest.importorskip("ray")
    _, local = local_sweep
    # address="local": a new instance even if a `ray start` cluster runs on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = run_sweep(Grid(**TINY), tmp_path, engine="ray", progress=False)
        assert ray.is_initialized()  # a Ray the caller started is left running
    finally:
        ray.shutdown()
    assert (result.ran, result.failed) == (8, [])
    assert _without_times(result.records) == _without_times(local.records)
    assert _read(tmp_path)["environment"]["engine"] == "ray"


def test_ray_missing_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'synflow-plugin\[ray\]'"):
        run_sweep(Grid(**TINY), tmp_path, engine="ray")
    assert not (tmp_path / sweep.RESULTS_FILE).exists()
    assert _cli(["--config", str(_config(tmp_path)), "--engine", "ray", "--out", str(tmp_path / "o")]) == 1


def test_an_unreachable_ray_address_is_refused_at_once(monkeypatch, tmp_path):
    pytest.importorskip("ray")
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(PruningError, match=f"nothing answers at RAY_ADDRESS='127.0.0.1:{port}'"):
        run_sweep(Grid(**TINY), tmp_path / "o", engine="ray")
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- resume
def test_a_rerun_does_no_work_and_a_lost_record_alone_runs_again(local_sweep, tmp_path):
    source, first = local_sweep
    out = tmp_path / "copy"
    shutil.copytree(source, out)
    again = run_sweep(Grid(**TINY), out, progress=False, plot=False)
    assert (again.ran, again.skipped) == (0, 8)
    assert again.records == first.records  # times included: nothing was run again

    payload = _read(out)
    lost = payload["records"].pop(3)
    (out / sweep.RESULTS_FILE).write_text(json.dumps(payload))
    third = run_sweep(Grid(**TINY), out, progress=False, plot=False)
    assert (third.ran, third.skipped) == (1, 7)
    assert [r["times"] for i, r in enumerate(third.records) if i != 3] == \
           [r["times"] for i, r in enumerate(first.records) if i != 3]
    assert third.records[3]["trial"] == lost["trial"]
    assert _without_times([third.records[3]]) == _without_times([lost])


@pytest.mark.parametrize("damage, words", [
    (lambda p: p["records"][0].pop("criterion"), "has no criterion"),
    (lambda p: p["records"][0].update(accuracy=None), "is ok but has accuracy None"),
    (lambda p: p["records"][0].update(accuracy=5.0), "is ok but has accuracy 5.0"),
    (lambda p: p["records"][0].update(compression=1000.0), "says criterion .*compression 1000.0"),
    (lambda p: p.update(grid="oops"), "'grid' should be a mapping"),
])
def test_a_damaged_results_file_is_refused_naming_the_damage(local_sweep, tmp_path, damage, words):
    source, _ = local_sweep
    out = tmp_path / "copy"
    shutil.copytree(source, out)
    payload = _read(out)
    damage(payload)
    (out / sweep.RESULTS_FILE).write_text(json.dumps(payload))
    with pytest.raises(PruningError, match=f"is damaged: .*{words}.*rerun with --overwrite"):
        run_sweep(Grid(**TINY), out, progress=False, plot=False)


def test_more_seeds_resume_but_other_settings_are_refused(local_sweep, tmp_path):
    source, first = local_sweep
    out = tmp_path / "copy"
    shutil.copytree(source, out)
    grid = Grid(**dict(TINY, criteria=["synflow"], seeds=[0, 1, 2]))
    result = run_sweep(grid, out, progress=False, plot=False)
    assert result.ran == 2 and result.skipped == 4  # synflow at 10x and 100x for seed 2
    # the snip records of the first run are kept, after this grid's
    assert [r["trial"] for r in result.records][-4:] == [r["trial"] for r in first.records[4:]]

    with pytest.raises(PruningError, match=r"epochs: 2 there, 3 here.*--overwrite") as info:
        run_sweep(Grid(**dict(TINY, epochs=3)), out, progress=False)
    assert "10 record(s)" in str(info.value)
    fresh = run_sweep(Grid(**dict(TINY, epochs=3, criteria=["snip"], seeds=[0], compressions=[10])), out,
                      overwrite=True, progress=False, plot=False)
    assert fresh.ran == 1 and [r["trial"] for r in _read(out)["records"]] == ["snip|10.0|0"]


def test_a_crash_keeps_the_finished_trials(tmp_path, test_criteria):
    grid = Grid(**dict(TINY, criteria=["magnitude", "sweep_test_crash"], compressions=[10], epochs=1))
    with pytest.raises(KeyboardInterrupt):
        run_sweep(grid, tmp_path, progress=False, plot=False)
    written = _read(tmp_path)["records"]
    assert [r["trial"] for r in written] == ["magnitude|10.0|0", "magnitude|10.0|1"]
    CrashingCriterion.armed = False
    result = run_sweep(grid, tmp_path, progress=False, plot=False)
    assert (result.ran, result.skipped, result.failed) == (2, 2, [])
    assert result.records[:2] == written


def test_a_second_sweep_into_the_same_folder_is_refused(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    with open(tmp_path / ".sweep.lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(PruningError, match="another sweep is writing"):
            run_sweep(Grid(**TINY), tmp_path, progress=False)


# --------------------------------------------------------------------------- failures
def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path, test_criteria, capsys):
    grid = Grid(**dict(TINY, criteria=["sweep_test_failing", "magnitude"], compressions=[10], seeds=[0], epochs=1))
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    result = run_sweep(grid, tmp_path, progress=False)
    assert torch.equal(torch.get_rng_state(), state) and torch.get_num_threads() == threads
    failed, ok = result.records
    assert result.failed == ["sweep_test_failing|10.0|0"] and result.ran == 2
    assert failed["status"] == "failed" and failed["accuracy"] is None
    assert "no scores for this network" in failed["error"] and "RuntimeError" in failed["traceback"]
    assert ok["status"] == "ok" and ok["remaining"] == KEPT[10.0]
    assert _read(tmp_path)["records"] == result.records
    # the command line exits with 1 and says where the errors are; the rerun retries only the failure
    code = _cli(["--model", "mlp", "--model-option", "depth=3", "--model-option", "width=32", "--dataset", "digits",
                 "--criteria", "sweep_test_failing,magnitude", "--compressions", "10", "--epochs", "1",
                 "--lr", "0.01", "--out", str(tmp_path), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    assert "1 trial(s) failed: sweep_test_failing|10.0|0" in captured.err
    assert "ran 1 trial(s), 1 already finished" in captured.out


# --------------------------------------------------------------------------- command line
def _config(tmp_path, **change):
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(dict(TINY, **change)))
    return path


def test_the_json_config_form_with_a_flag_overriding_it(tmp_path, capsys):
    config = _config(tmp_path, criteria=["magnitude", "synflow"], compressions=["10x", 100], iterations=5)
    out = tmp_path / "out"
    assert _cli(["--config", str(config), "--seeds", "1", "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    payload = _read(out)
    assert payload["grid"]["seeds"] == [1] and payload["grid"]["epochs"] == 1
    assert payload["grid"]["compressions"] == [10.0, 100.0] and payload["grid"]["iterations"] == 5
    assert [r["trial"] for r in payload["records"]] == ["magnitude|10.0|1", "magnitude|100.0|1",
                                                        "synflow|10.0|1", "synflow|100.0|1"]
    assert [r["iterations"] for r in payload["records"]] == [1, 1, 5, 5]
    text = capsys.readouterr().out
    assert "magnitude" in text and "wrote" in text and "accuracy.png" in text

    assert _cli(["--config", str(config), "--seeds", "1", "--epochs", "1", "--out", str(out), "--dry-run"]) == 0
    assert "4 trial(s) in the grid: 4 finished" in capsys.readouterr().out


@pytest.mark.parametrize("text, words", [
    ('{"model": "mlp", "dataset": "digits", "criteria": ["synflow"], "compressions": [10], "engine": "ray"}',
     ["'engine'", "command-line option", "valid keys"]),
    ('{"model": "mlp", "model": "conv"}', ["'model' appears twice"]),
    ('{"model": "mlp",}', ["not valid JSON"]),
    ('["mlp"]', ["JSON list", "one object"]),
    ('{"model": "mlp", "dataset": "digits"}', ["lacks criteria, compressions"]),
])
def test_bad_config_files_exit_2_with_the_reason(tmp_path, capsys, text, words):
    path = tmp_path / "bad.json"
    path.write_text(text)
    assert _cli(["--config", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage:") and "synflow-plugin sweep: error:" in err
    for word in words:
        assert word in err, (word, err)
    assert not (tmp_path / "o").exists()


def test_bad_flags_exit_2(tmp_path, capsys):
    assert _cli(["--model", "mlp", "--dataset", "digits", "--criteria", "synflow", "--compressions", "10,0.5",
                 "--out", str(tmp_path)]) == 2
    assert "invalid compression '0.5'" in capsys.readouterr().err
    assert _cli(["--model", "mlp", "--dataset", "digits", "--criteria", "synflow,nope", "--compressions", "10",
                 "--out", str(tmp_path)]) == 2
    assert "unknown criterion 'nope'" in capsys.readouterr().err


def test_cli_wiring(capsys):
    from synflow_plugin import cli

    with pytest.raises(SystemExit) as info:
        cli.main(["sweep", "--help"])
    if info.value.code == 2 and "invalid choice: 'sweep'" in capsys.readouterr().err:
        pytest.skip("synflow_plugin/cli.py does not list the sweep command yet")
    assert info.value.code == 0
    with pytest.raises(SystemExit) as info:
        cli.main(["sweep", "--model", "mlp", "--dataset", "digits", "--criteria", "nope", "--compressions", "10"])
    assert info.value.code == 2 and "unknown criterion 'nope'" in capsys.readouterr().err


def test_docstring_examples_run():
    result = doctest.testmod(sweep, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 5 and result.failed == 0


# --------------------------------------------------------------------------- criteria that train
# 64*8 + 8*10 = 592 prunable weights; 4x keeps 592 - round(0.75 * 592) = 148, 2x keeps 296.
TRAINING = dict(model="mlp", dataset="digits", criteria=["imp", "gemminer"], compressions=[4], seeds=[0], epochs=1,
                lr=1e-2, model_options={"depth": 2, "width": 8},
                criterion_options={"imp": {"rate": 0.5}, "gemminer": {"epochs": 1, "iterations": 2}})


def test_criteria_that_train_run_and_rerun_to_identical_records(tmp_path):
    first = run_sweep(Grid(**TRAINING), tmp_path / "a", progress=False, plot=False)
    second = run_sweep(Grid(**TRAINING), tmp_path / "b", progress=False, plot=False)
    assert first.failed == [] and second.failed == []
    assert _without_times(first.records) == _without_times(second.records)
    imp, gemminer = first.records
    # IMP at 4x with rate 0.5: keeps 1/2, then 1/4 of the weights: 2 levels, each a training
    assert (imp["trial"], imp["iterations"], imp["criterion_options"]) == ("imp|4.0|0", 2, {"rate": 0.5})
    assert (gemminer["iterations"], gemminer["criterion_options"]) == (2, {"epochs": 1, "iterations": 2})
    for record in first.records:
        assert (record["prunable"], record["remaining"]) == (592, 148)
        assert record["times"]["prune"] > 0 and 0.0 <= record["accuracy"] <= 1.0
    # a resume keeps the finished trials of criteria that train like any other
    again = run_sweep(Grid(**TRAINING), tmp_path / "a", progress=False, plot=False)
    assert (again.ran, again.skipped) == (0, 2) and again.records == first.records
    with pytest.raises(PruningError, match=r"criterion_options: .*'rate': 0.5.* there, .*'rate': 0.25.* here"):
        run_sweep(Grid(**dict(TRAINING, criterion_options={"imp": {"rate": 0.25}})), tmp_path / "a", progress=False)


def test_imp_levels_train_exactly_as_the_final_training(tmp_path):
    """One IMP level by hand: the trial's own training of the dense network, its 50% largest
    trained magnitudes kept, rewound to the initialisation, trained again the same way."""
    import copy

    from torch.nn.utils import prune

    from synflow_plugin import compute_masks
    from synflow_plugin.data import load_dataset
    from synflow_plugin.models import create_model
    from synflow_plugin.targets import prunable_parameters
    from synflow_plugin.train import train_model

    grid = Grid(**dict(TRAINING, criteria=["imp"], compressions=[2], seeds=[3]))
    (record,) = run_sweep(grid, tmp_path, progress=False, plot=False).records
    assert record["iterations"] == 1 and record["remaining"] == 296

    train, test = load_dataset("digits")
    settings = dict(epochs=1, lr=1e-2, batch_size=128, optimizer="adam", weight_decay=0.0, seed=3, progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the grid's threads
    try:
        sweep._seed_everything(3)
        ticket = create_model("mlp", num_classes=10, input_shape=(1, 8, 8), depth=2, width=8)
        trained = copy.deepcopy(ticket)
        train_model(trained, train, test, **settings)
        masks = compute_masks(trained, prunable_parameters(trained), "magnitude", 0.5)
        for (module, name), mask in zip(prunable_parameters(ticket), masks):
            prune.custom_from_mask(module, name, mask)
        result = train_model(ticket, train, test, **settings)
    finally:
        torch.set_num_threads(threads)
    assert result.test_accuracy == record["accuracy"]


def test_criterion_options_from_the_command_line_and_old_files_resume(local_sweep, tmp_path):
    parser = argparse.ArgumentParser(prog="synflow-plugin")
    sweep.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sweep", "--model", "mlp", "--dataset", "digits", "--criteria", "imp,gemminer",
                              "--compressions", "4", "--criterion-option", "imp.rate=0.5",
                              "--criterion-option", "gemminer.iterations=3", "--criterion-option", "IMP.levels=2"])
    grid = sweep._grid_from_args(args)
    assert grid.criterion_options == {"imp": {"rate": 0.5, "levels": 2}, "gemminer": {"iterations": 3}}
    assert [t.criterion_options for t in grid.trials()] == [{"rate": 0.5, "levels": 2}, {"iterations": 3}]
    with pytest.raises(SystemExit):
        parser.parse_args(["sweep", "--criterion-option", "rate=0.5"])

    # a results file written before criterion_options existed resumes as a grid without them
    source, first = local_sweep
    out = tmp_path / "old"
    shutil.copytree(source, out)
    payload = _read(out)
    del payload["grid"]["criterion_options"]
    (out / sweep.RESULTS_FILE).write_text(json.dumps(payload))
    again = run_sweep(Grid(**TINY), out, progress=False, plot=False)
    assert (again.ran, again.skipped) == (0, 8)


def test_option_values_read_like_python_or_json_literals():
    from synflow_plugin.sweep import _criterion_option_arg

    assert _criterion_option_arg("imp.rewind_step=2") == ("imp", "rewind_step", 2)
    assert _criterion_option_arg("gemminer.affine=False") == ("gemminer", "affine", False)
    assert _criterion_option_arg("gemminer.affine=false") == ("gemminer", "affine", False)
    assert _criterion_option_arg("gemminer.init=signed_constant") == ("gemminer", "init", "signed_constant")


def test_imp_trials_take_their_levels_and_rewinding_from_their_own_options(tmp_path):
    grid = Grid(**dict(TRAINING, criteria=["imp"], iterations=5, criterion_options={"imp": {"rewind_step": 1}},
                       compressions=[2], seeds=[3]))
    (record,) = run_sweep(grid, tmp_path, progress=False, plot=False).records
    assert record["status"] == "ok" and record["iterations"] == 4  # IMP's own 20% levels, not the grid's 5
    assert not any("left unchanged" in w for w in record["warnings"])  # the rewound weights were trained
