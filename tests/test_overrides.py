"""One owner for overrides -> config (`looplab.launch.overrides`), used three ways: looplab's
launcher and the sweep's whole-sweep check (`Compositions`), and `looplab reproduce`'s changes
(`with_overrides`). Each must give the config Hydra itself composes for the same command line.
"""

from __future__ import annotations

import json

import pytest
from conftest import compose_raw, only_run, store_uri
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from looplab.core.errors import ConfigError
from looplab.core.paths import config_dir
from looplab.core.schema import plain_config
from looplab.launch.overrides import Compositions, with_overrides
from looplab.launch.sweep import SweepRefused, check_jobs, enumerate_jobs

CASES = [
    # a value before its group's choice: Hydra applies the choice first (reproduce did not)
    ["dataset.test_size=0.3", "dataset=iris"],
    # a dict merged into a node (the sweep's check replaced the node, and refused it)
    ["model={width:8}"],
    ["model={width:8,activation:tanh}", "train.lr=0.05"],
    ["update=sgd", "train.lr=0.5", "model.width=4", "train.momentum=0.9"],
    ["dataset=csv", "dataset.path=x.csv", "dataset.target=y", "dataset.drop=[a]"],
    # the CSV's keys before its choice: reproduce refused it ("dataset.path is missing")
    ["dataset.path=x.csv", "dataset.target=y", "dataset=csv"],
    ["train.batch_size=null", "seed=7", "device=cpu"],
]


def plain(cfg, tmp_path) -> dict:
    return OmegaConf.to_container(plain_config(cfg, launch_dir=tmp_path))


@pytest.mark.parametrize("lines", CASES, ids=[" ".join(c) for c in CASES])
def test_every_user_of_overrides_gets_hydras_config(lines, tmp_path) -> None:
    """Faults: the sweep's check or the launcher merging differently from Hydra (merge=False
    on a dict), `looplab reproduce` applying a group's choice after a value typed before it,
    or finding a group's options by itself rather than through Hydra."""
    hydra_own = plain(compose_raw(*lines), tmp_path)
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        shared = Compositions(lambda typed: compose("train", overrides=typed))
        shared.job_config([])  # a composition with no overrides is cached, as in a sweep
        composed = plain(shared.job_config(list(lines)), tmp_path)
    assert composed == hydra_own
    recorded = plain_config(compose_raw(), launch_dir=tmp_path)
    reproduced = plain(with_overrides(recorded, list(lines)), tmp_path)
    assert reproduced == hydra_own


def test_a_sweep_of_dicts_is_checked_as_hydra_merges_them() -> None:
    """Fault: `-m 'model={width:8},{width:16}'` refused ("it is a group of keys") by the
    sweep's check while `looplab-train 'model={width:8}'` runs."""
    jobs, _ = enumerate_jobs(["model={width:8},{width:16}"])
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        check_jobs("train", jobs)  # no SweepRefused
        bad, _ = enumerate_jobs(["model={width:-1},{width:8}"])
        with pytest.raises(SweepRefused, match=r"model\.width=-1"):
            check_jobs("train", bad)


def test_reproduce_changes_are_refused_in_one_line() -> None:
    """Faults: a sweep, a +key or a preset taken as a change; an unknown key or option not
    named; the developer's hint about the schema's source file shown to a user."""
    recorded = plain_config(compose_raw())
    for lines, expected in (
        (["model.widht=3"], "did you mean model.width"),
        (["experiment=seed"], "a preset is a fresh start"),
        (["train.lr=0.1,1"], "only plain key=value"),
        (["+model.extra=1"], "only plain key=value"),
        (["update=adagrad"], "choose one of adam, adamw, manual, optim, sgd"),
        (["train.epochs=abc"], "train.epochs=abc is not allowed: it must be an integer"),
    ):
        with pytest.raises(ConfigError, match=expected) as raised:
            with_overrides(recorded, lines)
        assert "looplab/" not in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.slow
def test_a_sweep_over_dicts_runs_each_job_with_its_merge(run_cli, tmp_path, client) -> None:
    """Fault: the sweep refused, or a job's dict replacing its node (activation lost)."""
    done = run_cli("-m", "model={width:8},{width:16}", "model.activation=tanh", "train.epochs=1")
    assert done.returncode == 0, done.stderr
    experiment = client.get_experiment_by_name("looplab")
    runs = client.search_runs([experiment.experiment_id], "tags.`looplab.role` = 'job'")
    widths = sorted(int(r.data.params["model.width"]) for r in runs)
    assert widths == [8, 16]
    assert {r.data.params["model.activation"] for r in runs} == {"tanh"}


@pytest.mark.slow
def test_reproduce_applies_changes_as_looplab_train_and_names_the_run_so(
    run_cli, tmp_path, client
) -> None:
    """Faults: `reproduce RUN dataset.test_size=0.3 dataset=iris` training with 0.2; a
    derived run named after the original's name plus the changes as typed; a CSV's keys
    typed before `dataset=csv` refused ("dataset.path is missing")."""
    import subprocess
    import sys
    from pathlib import Path

    done = run_cli("model.width=8", "train.epochs=2")
    assert done.returncode == 0, done.stderr
    original = only_run(client)
    looplab = str(Path(sys.executable).parent / "looplab")
    uri = store_uri(tmp_path)

    def reproduce(*changes: str) -> object:
        done = subprocess.run(
            [looplab, "reproduce", original.info.run_id, *changes, "--tracking-uri", uri],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        (derived,) = client.search_runs(
            [original.info.experiment_id],
            "tags.`looplab.derived_from` = '" + original.info.run_id + "'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return derived

    derived = reproduce("dataset.test_size=0.3", "dataset=iris")
    assert derived.data.params["dataset.test_size"] == "0.3"
    assert derived.data.params["dataset.name"] == "iris"
    assert derived.data.params["model.width"] == "8"
    # as `looplab-train dataset=iris dataset.test_size=0.3 model.width=8 train.epochs=2` names it
    assert derived.info.run_name == "iris test_size=0.3 width=8 epochs=2"
    assert json.loads(derived.data.tags["looplab.choices"])["dataset"] == "iris"

    (tmp_path / "d.csv").write_text(
        "a,b,y\n" + "".join(f"{i},{(i * 7) % 5},{i % 2}\n" for i in range(40))
    )
    derived = reproduce("dataset.path=d.csv", "dataset.target=y", "dataset=csv")
    assert derived.data.params["dataset.name"] == "csv"
    assert derived.data.params["dataset.path"] == str(tmp_path / "d.csv")
    assert derived.info.run_name.startswith("d ")


@pytest.mark.slow
def test_a_preset_that_declares_a_sweep_says_so_without_m(run_cli) -> None:
    """Fault: `looplab-train experiment=width_sweep` quietly trains one run."""
    done = run_cli("experiment=width_sweep", "train.epochs=1")
    assert done.returncode == 0, done.stderr
    assert "experiment=width_sweep declares a sweep (model.width=0,4,16,64)" in done.stderr
    assert "looplab-train -m experiment=width_sweep" in done.stderr
