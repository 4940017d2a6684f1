"""Every option of every config group composes, validates and flattens into MLflow params."""

from __future__ import annotations

import re

import pytest
from conftest import compose_raw
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig
from omegaconf.errors import ValidationError

from looplab.core.errors import ConfigError
from looplab.core.paths import config_dir
from looplab.core.schema import plain_config
from looplab.core.validate import validate
from looplab.run.naming import flatten, params, run_name

GROUPS = ["dataset", "update", "device", "experiment"]


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (config_dir() / group).glob("*.yaml"))


def test_the_groups_offer_what_the_docs_promise() -> None:
    assert options("dataset") == [
        "breast_cancer",
        "csv",
        "diabetes",
        "digits",
        "function",
        "iris",
        "wine",
    ]
    assert options("update") == ["adam", "adamw", "manual", "optim", "sgd"]
    assert options("device") == ["auto", "cpu", "cuda", "mps"]
    assert "seed" in options("experiment")


@pytest.mark.parametrize(
    "override",
    [f"{group}={option}" for group in GROUPS for option in options(group)]
    + [
        "model.impl=module",
        "model.init=seed",
        "model.width=16",
        "model.activation=tanh",
        "model.activation=sigmoid",
        "train.dtype=float64",
        "train.batch_size=32",
        "train.momentum=0.9",
        "train.weight_decay=0.001",
        "train.print_style=tutorial",
        "tracking.enabled=false",
        "tracking.uri=sqlite:////tmp/elsewhere.db",
        "tracking.experiment=other",
        "train.threads=1",
    ],
)
def test_every_option_composes_and_validates(override: str) -> None:
    extra = {
        "dataset=csv": ["dataset.path=x.csv", "dataset.target=y"],
        "dataset=function": ["dataset._target_=sklearn.datasets.make_moons"],
    }.get(override, [])
    cfg = plain_config(compose_raw(override, *extra))
    validate(cfg)
    key, value = override.split("=", 1)
    if key == "update" and "_target_" in cfg["update"]:  # an optimiser, by its class
        assert cfg["update"]._target_.startswith("torch.optim.")
    elif key == "dataset" and "_target_" in cfg.dataset:  # your own data: named as its function
        assert cfg.dataset.name == "make_moons" and "path" not in cfg.dataset
    elif key in GROUPS[:3]:
        assert cfg[key].name == value
    elif key != "experiment":
        assert str(flatten(cfg)[key]) in {value, value.replace("false", "False")}


def test_defaults_are_the_tutorials_loop() -> None:
    cfg = plain_config(compose_raw())
    assert (cfg.dataset.name, cfg["update"].name, cfg.device.name) == (
        "breast_cancer",
        "manual",
        "auto",
    )
    assert (cfg.model.width, cfg.model.impl, cfg.train.epochs, cfg.train.batch_size) == (
        0,
        "manual",
        100,
        None,
    )
    assert (cfg.train.dtype, cfg.seed, cfg.tracking.experiment) == ("float32", 42, "looplab")


def test_seed_preset_is_the_tutorials_recipe() -> None:
    cfg = plain_config(compose_raw("experiment=seed"))
    assert cfg.dataset.name == "csv" and cfg.dataset.path.endswith("breast_cancer.csv")
    assert (cfg.dataset.target, list(cfg.dataset.drop)) == ("diagnosis", ["id"])
    assert (cfg.model.width, cfg.model.impl, cfg.model.init, cfg.model.loss) == (
        0,
        "manual",
        "seed",
        "tutorial",
    )
    assert (cfg["update"].name, cfg.train.lr, cfg.train.epochs, cfg.train.dtype) == (
        "manual",
        0.1,
        25,
        "float64",
    )
    assert run_name(cfg, plain_config(compose_raw("experiment=seed")), "seed") == "seed"


@pytest.mark.parametrize(
    ("overrides", "preset", "name"),
    [
        ((), None, "breast_cancer"),
        (("model.impl=module",), None, "breast_cancer impl=module"),
        (("dataset=digits", "model.width=64"), None, "digits width=64"),
        (("update=sgd", "train.lr=0.05", "train.print_every=0"), None, "breast_cancer sgd lr=0.05"),
        (("model.loss=tutorial", "seed=3"), None, "breast_cancer loss=tutorial seed=3"),
        (("experiment=seed",), "seed", "seed"),
        (("experiment=seed", "train.epochs=50"), "seed", "seed epochs=50"),
    ],
)
def test_a_run_name_shows_the_preset_and_every_choice_apart_from_the_defaults(
    overrides, preset, name
) -> None:
    """Fault: two runs that train differently get the same name (impl=module or the seed
    preset hidden), or a printing/tracking setting makes a name differ."""
    baseline = plain_config(compose_raw(*([f"experiment={preset}"] if preset else [])))
    assert run_name(plain_config(compose_raw(*overrides)), baseline, preset) == name


def test_an_unset_store_becomes_an_absolute_sqlite_path_under_outputs(tmp_path) -> None:
    cfg = plain_config(compose_raw(), launch_dir=tmp_path)
    assert cfg.tracking.uri == f"sqlite:///{tmp_path.resolve()}/outputs/mlflow.db"


def test_flatten_gives_dotted_keys_with_resolved_values() -> None:
    flat = flatten(plain_config(compose_raw("model.width=7", "update=sgd")))
    assert flat["model.width"] == "7"
    assert flat["update.name"] == "sgd"
    assert flat["train.lr"] == "0.1"
    assert not any(value.startswith("${") for value in flat.values())


@pytest.mark.parametrize(
    "override",
    ["model.impl=keras", "train.lr=fast", "model.width=wide", "train.dtype=float16"],
)
def test_wrong_types_and_options_fail_before_anything_runs(override: str) -> None:
    """Composed (the schema's types) or made plain (the built-in model, typed Any in the
    schema so that a user's own fits, is held to ModelConfig there)."""
    with pytest.raises((ValidationError, ConfigCompositionException, ConfigError)):
        plain_config(compose_raw(override))


@pytest.mark.parametrize(
    "override",
    [
        "dataset.path=x.csv",
        "dataset.target=label",
        "dataset.drop=[id]",
        "dataset.sep=';'",
        "dataset.encoding=latin-1",
    ],
)
def test_csv_keys_are_refused_for_a_built_in_data_set(override: str) -> None:
    """Fault: dataset.path/target/drop/sep/encoding silently ignored for dataset=iris."""
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"{re.escape(key)}=.* dataset=iris is built in"):
        validate(plain_config(compose_raw("dataset=iris", override)))


def test_activation_is_no_param_of_a_model_without_a_hidden_layer() -> None:
    """Fault: model.activation logged for width 0, where it changes nothing."""
    assert "model.activation" not in params(plain_config(compose_raw("model.width=0")))
    assert params(plain_config(compose_raw("model.width=3")))["model.activation"] == "relu"


def test_threads_must_be_positive_or_null() -> None:
    """Fault: train.threads=0 accepted (torch would refuse it mid-start)."""
    with pytest.raises(ConfigError, match=r"train\.threads=0 is not allowed"):
        validate(plain_config(compose_raw("train.threads=0")))
    validate(plain_config(compose_raw("train.threads=1")))


def compose_launcher(plugin: str, install: str, *overrides: str) -> DictConfig:
    """The `hydra` node that `looplab-train OVERRIDES` runs with; skips without the plugin."""
    import importlib.util

    from hydra import compose, initialize_config_dir

    if importlib.util.find_spec(f"hydra_plugins.{plugin}") is None:
        pytest.skip(f"{plugin} is not installed: {install}")
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        return compose("train", overrides=list(overrides), return_hydra_config=True).hydra


def test_the_slurm_launcher_config_composes_and_gives_its_cpus_to_torch() -> None:
    """Faults: conf/hydra/launcher/slurm.yaml does not compose onto submitit's SLURM launcher
    (a wrong defaults entry, a key submitit does not have), or the job does not read its
    cpus_per_task for torch's threads."""
    from looplab.cli.train import launcher_cpus

    hydra_node = compose_launcher(
        "hydra_submitit_launcher",
        "pip install -e '.[slurm]'",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
    )
    launcher = hydra_node.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.timeout_min, launcher.cpus_per_task) == ("gpu", 60, 4)
    assert launcher_cpus(hydra_node) == 4


def test_the_ray_cluster_launcher_config_joins_a_running_cluster_with_its_cpus() -> None:
    """Faults: conf/hydra/launcher/ray_cluster.yaml does not compose onto the Ray launcher, or
    keeps the plugin's object-store size (Ray refuses it when joining a running cluster), or
    the job does not read its num_cpus for torch's threads."""
    from looplab.cli.train import launcher_cpus

    hydra_node = compose_launcher(
        "hydra_ray_launcher",
        "make setup-ray",
        "hydra/launcher=ray_cluster",
        "hydra.launcher.ray.remote.num_cpus=3",
    )
    ray = hydra_node.launcher.ray
    assert hydra_node.launcher._target_.endswith("RayLauncher")
    assert ray.init.address == "auto"
    assert "object_store_memory" in ray.init and ray.init.object_store_memory is None
    assert launcher_cpus(hydra_node) == 3
