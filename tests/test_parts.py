"""Your own parts: deeper networks by config and any `torch.optim` optimiser by `_target_`,
each with everything looplab gives a run (params, the recorded config, `looplab reproduce`)."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import store_uri

from looplab.core.errors import ConfigError
from looplab.launch.parts import parts_of
from looplab.run.parts import Parts
from looplab.run.prepare import prepare

LOOPLAB = str(Path(sys.executable).parent / "looplab")
QUIET = ("tracking.enabled=false", "train.print_every=0", "train.dtype=float64")


def losses(cfg, parts: Parts) -> list[float]:
    ready = prepare(cfg, parts=parts)
    return [e.metrics["train_loss"] for e in ready.fit(cfg.train.epochs, cfg.train.batch_size)]


def test_update_adam_trains_with_adam_and_its_configured_arguments(make_config) -> None:
    """Faults: `update._target_` ignored (the manual update trains instead), its arguments
    dropped (Adam's defaults train), or train.lr not passed as its learning rate."""
    overrides = ("update=adam", "update.betas=[0.8,0.95]", "train.lr=0.05", "train.epochs=30")
    cfg = make_config(*QUIET, "dataset=iris", "model.hidden=[8,4]", *overrides)
    ours = losses(cfg, parts_of(cfg))
    by_hand = functools.partial(torch.optim.Adam, betas=(0.8, 0.95), eps=1e-8)
    assert ours == losses(cfg, Parts(optimizer=by_hand))  # the same numbers, bit for bit
    assert ours != losses(cfg, Parts(optimizer=torch.optim.Adam))  # its betas were used
    assert ours[-1] < ours[0] * 0.8
    sgd = make_config(*QUIET, "dataset=iris", "model.hidden=[8,4]", "update=sgd", "train.lr=0.05")
    assert ours[:3] != losses(sgd, Parts())[:3]


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (("update=adam", "+update.alpha=0.9"), ["cannot take", "alpha", "betas, eps"]),
        (("update=optim", "update._target_=torch.optim.Adamm"), ["Adamm", "importable"]),
    ],
)
def test_an_optimiser_that_cannot_be_built_is_one_line_before_training(
    make_config, overrides, words
) -> None:
    """Fault: a wrong target or argument found only after the run started (a FAILED run)."""
    with pytest.raises(ConfigError) as error:
        parts_of(make_config(*QUIET, *overrides))
    assert all(word in str(error.value) for word in words), error.value


def test_model_hidden_builds_every_layer_in_both_implementations(make_config) -> None:
    """Faults: model.hidden ignored (the one-neuron model trains), a layer dropped, or the
    hand-written network's names not the torch.nn twin's (model.pt would not load there)."""
    shapes = {}
    for impl in ("manual", "module"):
        cfg = make_config(*QUIET, "dataset=digits", "model.hidden=[12,7,5]", f"model.impl={impl}")
        state = prepare(cfg).model.state_dict()
        shapes[impl] = {name: tuple(tensor.shape) for name, tensor in state.items()}
    assert shapes["manual"] == shapes["module"]
    widths = [shape[0] for name, shape in sorted(shapes["manual"].items()) if "weight" in name]
    assert widths == [12, 7, 5, 10]  # three hidden layers and digits' ten classes


@pytest.mark.slow
def test_a_deeper_network_with_adam_is_recorded_and_reproduced_bitwise(run_cli, tmp_path) -> None:
    """The CLI as a user types it: params name the optimiser and its arguments, the run's name
    says Adam, and `looplab reproduce` reruns it from the store to the last bit. Faults: the
    recorded config loses `_target_` (the rerun trains with the manual update and differs),
    or `update.*` arguments are not recorded."""
    done = run_cli(
        "dataset=iris", "model.hidden=[16,8]", "update=adam", "train.lr=0.01", "train.epochs=5"
    )
    assert done.returncode == 0, done.stderr
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("looplab").experiment_id])
    params = run.data.params
    assert params["update"] == "torch.optim.Adam" and params["update.betas"] == "[0.9, 0.999]"
    assert params["model.hidden"] == "[16, 8]" and "train.momentum" in params
    assert run.info.run_name == "iris hidden=[16, 8] Adam epochs=5 lr=0.01"
    again = subprocess.run(
        [LOOPLAB, "reproduce", run.info.run_id, "--tracking-uri", uri],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        timeout=300,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "bitwise identical" in again.stdout
    assert json.loads(run.data.tags["looplab.choices"])["update"] == "adam"


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def a_users_folder(tmp_path: Path) -> Path:
    """examples/ copied where a user keeps their project: their package, their conf/."""
    folder = tmp_path / "project"
    shutil.copytree(EXAMPLES, folder, ignore=shutil.ignore_patterns("outputs", "__pycache__"))
    return folder


def run_and_sweep(run_cli, folder: Path, user: tuple[str, ...], swept: str) -> list:
    """`looplab-train USER` and `looplab-train -m USER SWEPT` (two jobs) in a user's folder,
    both fine; every run of its default store, oldest first."""
    done = run_cli(*user, cwd=folder)
    assert done.returncode == 0, done.stderr
    sweep = run_cli("-m", *user, swept, cwd=folder)
    assert sweep.returncode == 0, sweep.stderr
    assert "sweep: 2 of 2 jobs finished" in sweep.stdout
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store_uri(folder))
    return client.search_runs(
        [client.get_experiment_by_name("looplab").experiment_id],
        order_by=["attributes.start_time ASC"],
    )


def assert_reproduced_only_when_trusted(folder: Path, run_id: str, target: str) -> None:
    """`looplab reproduce` of a run that names the examples' code: refused in one line naming
    `target` and --trust, then, trusted, bitwise identical (its code unchanged)."""
    refused = looplab_in(folder, "reproduce", run_id)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert target in refused.stderr and "--trust looplab_examples" in refused.stderr
    trusted = looplab_in(folder, "reproduce", run_id, "--trust", "looplab_examples")
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    assert "bitwise identical" in trusted.stdout and "has changed" not in trusted.stderr


def looplab_in(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LOOPLAB, *args],
        cwd=folder,
        capture_output=True,
        text=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        timeout=300,
    )


@pytest.mark.slow
def test_a_users_own_network_and_optimiser_get_everything_a_built_in_gets(
    run_cli, tmp_path
) -> None:
    """examples/ as a user's own folder: their package and their config directory (through
    hydra.searchpath), a run, a sweep, model.pt, the recorded code, and reproduce (refused
    until trusted, then bitwise; a changed package named). Faults: model._target_ ignored
    (the built-in network trains), its keys not passed, the user's group option refused by
    the schema, user code rerun without consent, a changed package not noticed."""
    folder = a_users_folder(tmp_path)
    user = ("hydra.searchpath=[file://conf]", "experiment=digits_cnn", "train.epochs=3")
    runs = run_and_sweep(run_cli, folder, user, "model.channels=4,8")
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "digits_cnn epochs=3"
    params = run.data.params
    assert params["model._target_"] == "looplab_examples.nets.SmallCNN"
    assert params["model.channels"] == "6" and "model.width" not in params
    assert params["update"] == "looplab_examples.optim.ClippedSGD"
    code = json.loads(run.data.tags["looplab.code"])
    assert list(code) == ["looplab_examples"] and code["looplab_examples"].startswith("sha256:")
    jobs = [r for r in runs if r.data.tags.get("looplab.role") == "job"]
    assert sorted(r.data.params["model.channels"] for r in jobs) == ["4", "8"]
    state = torch.load(next(folder.glob("outputs/runs/*/*/model.pt")), weights_only=True)
    assert state["features.0.weight"].shape == (6, 1, 3, 3)  # the CNN's, with channels=6

    assert_reproduced_only_when_trusted(folder, run.info.run_id, "model._target_")
    with (folder / "looplab_examples" / "nets.py").open("a") as source:
        source.write("# edited since the run\n")
    edited = looplab_in(folder, "reproduce", run.info.run_id, "--trust", "looplab_examples")
    assert "note: looplab_examples has changed since run" in edited.stderr


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (("model.width=8",), ["model.width=8", "looplab's own network"]),
        (("model._target_=looplab_examples.nets.Nope",), ["Nope", "importable"]),
        (("model._target_=torch.nn.Linear",), ["cannot take", "n_features and n_outputs"]),
    ],
)
def test_a_users_model_that_cannot_be_built_is_one_line(
    make_config, monkeypatch, overrides, words
) -> None:
    """Faults: a built-in key silently ignored beside the user's model, or a target that is
    missing or takes other arguments found only once the run has started."""
    from looplab.core.validate import validate

    monkeypatch.chdir(EXAMPLES)  # the user's folder: their package is importable from it
    cfg = make_config(*QUIET, "+model._target_=looplab_examples.nets.SmallCNN", *overrides)
    with pytest.raises(ConfigError) as error:
        validate(cfg)
        parts_of(cfg)
    assert all(word in str(error.value) for word in words), error.value
