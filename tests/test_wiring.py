"""Every config key reaches the code that uses it: a run's numbers equal a reference written here.

The reference below is the training loop written out in plain torch, in float64: the data from
`looplab.data.load` (given the settings directly, not through the config), the initial numbers
from `looplab.model.initial_parameters` (or, for `model.init=seed`, from `torch.rand` itself),
then forward, loss, gradients and the SGD update with momentum and weight decay by hand. A key
that stopped reaching the code that uses it (a literal in `run.py`, an argument left out)
leaves the run on the default value, and its curve moves away from the reference.

Each test, or each case of a parametrized test, names the fault it catches, and each numeric
test also checks that the reference with that fault in it is far from the right one, so the
test is able to fail. See tests/README.md.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import looplab.run.prepare
from looplab.cli.train import execute_tracked as execute
from looplab.core import data
from looplab.core.errors import DeviceError
from looplab.core.model import MySimpleNN, initial_parameters
from looplab.core.paths import RESOURCES
from looplab.core.update import ManualUpdate
from looplab.run.execute import RunResult

# Not the default 42: a seed that stopped reaching the split, the weights or the shuffle would
# fall back to 42 and change the numbers.
SEED = 7
EPOCHS = 8
CPU = torch.device("cpu")
F64 = torch.float64
# Two float64 runs of the same loop agree to ~1e-15; a fault moves the curve by far more.
SAME = 1e-10
FAR = 1e-6

Curve = list[float]


# --- the reference loop, written out -----------------------------------------------------


def tutorial_loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    p = torch.clamp(1 / (1 + torch.exp(-z)), 1e-7, 1 - 1e-7)
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "binary": F.binary_cross_entropy_with_logits,
    "multiclass": F.cross_entropy,
    "regression": F.mse_loss,
}
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": lambda z: torch.clamp(z, min=0),
    "tanh": lambda z: (torch.exp(z) - torch.exp(-z)) / (torch.exp(z) + torch.exp(-z)),
    "sigmoid": lambda z: 1 / (1 + torch.exp(-z)),
}


def tutorial_parameters(sizes: Sequence[int], seed: int) -> list[torch.Tensor]:
    """The tutorial's initial numbers: `torch.rand` weights (in, out) and zero biases."""
    generator = torch.Generator().manual_seed(seed)
    params = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        params.append(torch.rand(fan_in, fan_out, dtype=F64, generator=generator))
        params.append(torch.zeros(fan_out, dtype=F64))
    return params


def reference(
    *,
    dataset: str = "breast_cancer",
    path: str | None = None,
    target: str | None = None,
    drop: Sequence[str] = (),
    task: str | None = None,
    test_size: float = 0.2,
    seed: int = SEED,
    width: int = 0,
    activation: str = "relu",
    init: str = "default",
    loss: str = "logits",
    lr: float = 0.1,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    epochs: int = EPOCHS,
    batch_size: int | None = None,
) -> Curve:
    """The train-loss curve the run with these settings must give, computed without looplab's
    model, loss, update or loop. Mini-batches are a fresh `randperm` each epoch."""
    split = data.load(
        dataset,
        path=path,
        target=target,
        drop=list(drop),
        task=task,
        test_size=test_size,
        seed=seed,
    )
    tensors = data.to_device(split, CPU, F64)
    x_all, y_all = tensors.x_train, tensors.y_train
    sizes = (
        [split.n_features, width, split.n_outputs] if width else [split.n_features, split.n_outputs]
    )
    if init == "seed":
        start = tutorial_parameters(sizes, seed)
    else:
        layers = initial_parameters(sizes, "default", F64, torch.Generator().manual_seed(seed))
        start = [tensor for layer in layers for tensor in layer]
    params = [p.clone().requires_grad_(True) for p in start]
    loss_fn = tutorial_loss if loss == "tutorial" else LOSSES[split.task]
    act = ACTIVATIONS[activation]

    def forward(x: torch.Tensor) -> torch.Tensor:
        *hidden, w_out, b_out = params
        for w, b in zip(hidden[::2], hidden[1::2], strict=True):
            x = act(x @ w + b)
        return x @ w_out + b_out

    n = len(x_all)
    shuffle = torch.Generator().manual_seed(seed)
    velocity: list[torch.Tensor | None] = [None] * len(params)
    curve = []
    for _ in range(epochs):
        if batch_size is None or batch_size >= n:
            batches = [torch.arange(n)]
        else:
            batches = list(torch.randperm(n, generator=shuffle).split(batch_size))
        total = 0.0
        for rows in batches:
            value = loss_fn(forward(x_all[rows]), y_all[rows])
            grads = torch.autograd.grad(value, params)
            with torch.no_grad():
                for i, (p, grad) in enumerate(zip(params, grads, strict=True)):
                    step = grad + weight_decay * p
                    if momentum:
                        previous = velocity[i]
                        step = step if previous is None else momentum * previous + step
                        velocity[i] = step
                    p -= lr * step
            total += value.item() * len(rows) / n
        curve.append(total)
    return curve


# --- running looplab ---------------------------------------------------------------------

BASE = {
    "tracking.enabled": "false",
    "train.print_every": "0",
    "device": "cpu",
    "train.dtype": "float64",
    "seed": str(SEED),
    "train.epochs": str(EPOCHS),
}


def run(make_config, tmp_path: Path, *overrides: str) -> RunResult:
    """Execute BASE with `overrides` on top (a later value for the same key wins)."""
    settings = dict(BASE)
    for override in overrides:
        key, value = override.split("=", 1)
        settings[key] = value
    cfg = make_config(*(f"{key}={value}" for key, value in settings.items()))
    folder = tmp_path / f"run-{len(list(tmp_path.glob('run-*')))}"
    result = execute(cfg, folder)
    assert result.status == "FINISHED", result.error
    return result


def curve_of(result: RunResult) -> Curve:
    return [epoch.metrics["train_loss"] for epoch in result.history]


def assert_same(actual: Curve, expected: Curve, what: str = "") -> None:
    assert len(actual) == len(expected), what
    np.testing.assert_allclose(actual, expected, rtol=0, atol=SAME, err_msg=what)


def assert_far(a: Curve, b: Curve, what: str = "") -> None:
    """The fault would show: two curves differ by far more than the tolerance of assert_same."""
    assert len(a) != len(b) or np.max(np.abs(np.subtract(a, b))) > FAR, what


@pytest.fixture
def calls(monkeypatch) -> dict[str, list[SimpleNamespace]]:
    """What `run.py` hands to `fit` (model, loss, updater, data) and to `loss_function`
    (task, impl, loss): each call's args and kwargs, recorded on the way through."""
    recorded: dict[str, list[SimpleNamespace]] = {}
    for name in ("fit", "loss_function"):
        real = getattr(looplab.run.prepare, name)
        recorded[name] = []

        def spy(*args, _real=real, _name=name, **kwargs):
            recorded[_name].append(SimpleNamespace(args=args, kwargs=kwargs))
            return _real(*args, **kwargs)

        monkeypatch.setattr(looplab.run.prepare, name, spy)
    return recorded


# --- momentum and weight decay --------------------------------------------------------


@pytest.mark.parametrize("update", ["manual", "sgd"])
def test_momentum_and_weight_decay_reach_the_update(make_config, tmp_path, update) -> None:
    """Fault: run.py passes momentum=0.0 or weight_decay=0.0 to build_update instead of the
    config's values (or the manual update ignores them)."""
    settings = {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.05, "width": 3}
    result = run(
        make_config,
        tmp_path,
        f"update={update}",
        "model.width=3",
        "train.lr=0.05",
        "train.momentum=0.9",
        "train.weight_decay=0.05",
    )
    expected = reference(**settings)
    assert_same(curve_of(result), expected)
    assert_far(expected, reference(**{**settings, "momentum": 0.0}), "momentum makes no change")
    assert_far(expected, reference(**{**settings, "weight_decay": 0.0}), "weight decay: none")


# --- the hidden layer's activation ----------------------------------------------------


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("impl", ["manual", "module"])
def test_activation_reaches_the_hidden_layer(make_config, tmp_path, impl, activation) -> None:
    """Fault: run.py passes activation="relu" (or any one name) to build_model whatever
    model.activation says, or a network applies another function than the one named."""
    result = run(
        make_config,
        tmp_path,
        f"model.impl={impl}",
        "model.width=5",
        f"model.activation={activation}",
    )
    expected = reference(width=5, activation=activation)
    assert_same(curve_of(result), expected)
    for other in ACTIVATIONS.keys() - {activation}:
        assert_far(expected, reference(width=5, activation=other), f"{activation} vs {other}")


# --- model.init -----------------------------------------------------------------------


# (4, manual) would also pin the hand-written logits loss's gradient at z = 0, where the
# zero biases of `seed` put rows whose hidden units are all off: test_model.py pins that.
@pytest.mark.parametrize(("width", "impl"), [(0, "manual"), (4, "module")])
def test_init_seed_is_torch_rand_weights_and_zero_bias(make_config, tmp_path, width, impl):
    """Fault: run.py passes init="default" whatever model.init says (or `seed` stops drawing
    the tutorial's torch.rand weights with zero bias)."""
    result = run(
        make_config, tmp_path, "model.init=seed", f"model.width={width}", f"model.impl={impl}"
    )
    expected = reference(init="seed", width=width)
    assert_same(curve_of(result), expected)
    # The first epoch's loss is the loss at the initial numbers, before any update.
    assert_far(expected[:1], reference(init="default", width=width)[:1])


def test_init_default_is_not_the_tutorials_rand_weights(make_config, tmp_path) -> None:
    """Fault: run.py passes init="seed" always, so `default` gives torch.rand weights too."""
    result = run(make_config, tmp_path, "model.init=default")
    assert_same(curve_of(result), reference(init="default"))
    assert_far(curve_of(result)[:1], reference(init="seed")[:1])


def test_experiment_seed_is_the_tutorials_loop_written_out(make_config, tmp_path) -> None:
    """Fault: any of the tutorial's settings in experiment=seed stops reaching the run: its
    CSV, target and dropped id, seed 42, torch.rand weights with zero bias, the clamped loss
    (e.g. run.py passes loss="logits" to loss_function), lr 0.1, 25 full-batch epochs, float64.
    """
    cfg = make_config(
        "experiment=seed", "tracking.enabled=false", "train.print_every=0", "device=cpu"
    )
    result = execute(cfg, tmp_path / "run")
    assert result.status == "FINISHED", result.error
    tutorial = {
        "dataset": "csv",
        "path": str(RESOURCES / "breast_cancer.csv"),
        "target": "diagnosis",
        "drop": ["id"],
        "seed": 42,
        "init": "seed",
        "loss": "tutorial",
        "lr": 0.1,
        "epochs": 25,
    }
    expected = reference(**tutorial)
    assert_same(curve_of(result), expected)
    # The clamp matters here: the rand weights put some logits beyond +-16, where it bites.
    assert_far(expected, reference(**{**tutorial, "loss": "logits"}), "the clamped loss")


# --- the other keys that change the numbers -------------------------------------------


@dataclass
class Case:
    fault: str
    overrides: tuple[str, ...]
    settings: dict  # the reference's settings for the right run
    faulty: dict  # the reference's settings if the fault were there


def table_csv(folder: Path) -> str:
    """120 rows: features a, b, c; `id` (numeric, so it would train if it were not dropped);
    a string target `label`."""
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(rng.normal(size=(120, 3)), columns=["a", "b", "c"])
    frame.insert(0, "id", rng.normal(size=120) * 5)
    frame["label"] = np.where(frame.a - frame.b + 0.3 * frame.id > 0, "yes", "no")
    path = folder / "table.csv"
    frame.to_csv(path, index=False)
    return str(path)


CSV = {"dataset": "csv", "path": "{csv}", "target": "label", "drop": ["id"]}
CASES = [
    Case("train.lr never reaches build_update (the default 0.1 is used)", ("train.lr=0.37",),
         {"lr": 0.37}, {"lr": 0.1}),
    Case("model.width never reaches build_model (one neuron always)", ("model.width=3",),
         {"width": 3}, {"width": 0}),
    Case("dataset.test_size never reaches the split (0.2 always)", ("dataset.test_size=0.5",),
         {"test_size": 0.5}, {"test_size": 0.2}),
    Case("seed never reaches the split or the initial weights (42 instead)", ("seed=11",),
         {"seed": 11}, {"seed": 42}),
    Case("train.epochs never reaches fit", ("train.epochs=3",), {"epochs": 3}, {"epochs": 100}),
    Case("train.batch_size never reaches fit (full batch always)", ("train.batch_size=64",),
         {"batch_size": 64}, {"batch_size": None}),
    Case("dataset never reaches the loader (breast_cancer always): multiclass",
         ("dataset=iris",), {"dataset": "iris"}, {"dataset": "breast_cancer"}),
    Case("dataset never reaches the loader (breast_cancer always): regression",
         ("dataset=diabetes", "train.lr=0.05"), {"dataset": "diabetes", "lr": 0.05},
         {"dataset": "breast_cancer", "lr": 0.05}),
    Case("model.loss never reaches loss_function (logits always)",
         ("model.loss=tutorial", "model.init=seed"), {"loss": "tutorial", "init": "seed"},
         {"loss": "logits", "init": "seed"}),
    Case("dataset.drop never reaches the loader (id trains as a feature); dataset.path or "
         "dataset.target never does (the run fails)",
         ("dataset=csv", "dataset.path={csv}", "dataset.target=label", "dataset.drop=[id]"),
         CSV, {**CSV, "drop": []}),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.fault for case in CASES])
def test_each_key_changes_the_curve_as_the_reference_says(make_config, tmp_path, case) -> None:
    """Each case is named after its fault: the key stops reaching the code that uses it."""
    csv_path = table_csv(tmp_path)

    def fill(settings: dict) -> dict:
        return {k: v.format(csv=csv_path) if isinstance(v, str) else v for k, v in settings.items()}

    overrides = [override.format(csv=csv_path) for override in case.overrides]
    expected = reference(**fill(case.settings))
    assert_same(curve_of(run(make_config, tmp_path, *overrides)), expected)
    assert_far(expected, reference(**fill(case.faulty)), "the fault would not show")


# --- keys that change what is built, not the numbers -------------------------------------


@pytest.mark.parametrize("impl", ["manual", "module"])
def test_model_impl_picks_plain_tensors_or_torch_nn(make_config, tmp_path, calls, impl) -> None:
    """Fault: run.py passes impl="manual" (or "module") to build_model or loss_function
    whatever model.impl says. Both give the same numbers by design, so this looks at what was
    built: the model handed to fit, and the impl the loss was asked for."""
    result = run(make_config, tmp_path, f"model.impl={impl}", "model.width=2")
    (fit_call,) = calls["fit"]
    assert isinstance(fit_call.args[0], nn.Module if impl == "module" else MySimpleNN)
    (loss_call,) = calls["loss_function"]
    assert loss_call.args[1] == impl
    assert_same(curve_of(result), reference(width=2))


@pytest.mark.parametrize("update", ["manual", "sgd"])
def test_update_picks_the_manual_update_or_torch_sgd(make_config, tmp_path, calls, update):
    """Fault: run.py builds the manual update (or SGD) whatever `update=` says. Both give the
    same numbers by design, so this looks at the updater handed to fit."""
    run(make_config, tmp_path, f"update={update}", "train.lr=0.2")
    (call,) = calls["fit"]
    updater = call.args[2]
    if update == "sgd":
        assert isinstance(updater, torch.optim.SGD) and updater.param_groups[0]["lr"] == 0.2
    else:
        assert isinstance(updater, ManualUpdate) and updater.lr == 0.2


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("impl", ["manual", "module"])
def test_dtype_reaches_the_data_and_the_parameters(make_config, tmp_path, calls, impl, dtype):
    """Fault: run.py ignores train.dtype (float32 always, or float64 always)."""
    run(make_config, tmp_path, f"train.dtype={dtype}", f"model.impl={impl}", "model.width=2")
    (call,) = calls["fit"]
    model, tensors, want = call.args[0], call.args[3], getattr(torch, dtype)
    assert tensors.x_train.dtype == want and tensors.y_train.dtype == want
    assert {p.dtype for p in model.parameters()} == {want}


@pytest.mark.parametrize("name", ["cpu", "cuda", "mps"])
def test_device_is_the_one_asked_for_or_an_error(make_config, tmp_path, name) -> None:
    """Fault: run.py resolves `auto` (or any one name) whatever `device=` says. On a machine
    without cuda (or mps) asking for it must fail; where it exists the run must use it."""
    available = {"cpu": True, "cuda": torch.cuda.is_available()}
    available["mps"] = torch.backends.mps.is_available()
    if not available[name]:
        with pytest.raises(DeviceError, match=f"device={name} is not available"):
            run(make_config, tmp_path, f"device={name}", "train.epochs=1")
        return
    result = run(make_config, tmp_path, f"device={name}", "train.epochs=1")
    assert torch.device(result.device).type == name


# --- dataset.task, and the console ----------------------------------------------------


def integer_targets_csv(folder: Path) -> str:
    """300 rows: `grade` has 3 integer values (classes, inferred), `count` 30 (a number)."""
    rng = np.random.default_rng(5)
    frame = pd.DataFrame(rng.normal(size=(300, 2)), columns=["a", "b"])
    frame["grade"] = np.arange(300) % 3
    frame["count"] = np.arange(300) % 30
    path = folder / "integers.csv"
    frame.to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize(
    ("target", "task", "metric"),
    [
        ("grade", "null", "val_accuracy"),  # <= 20 integer values: classes
        ("grade", "regression", "val_rmse"),  # forced
        ("count", "null", "val_rmse"),  # 30 integer values: a number
        ("count", "classification", "val_accuracy"),  # forced
    ],
)
def test_dataset_task_null_infers_and_a_value_forces(make_config, tmp_path, target, task, metric):
    """Fault: run.py passes task=None (or any one value) to the loader whatever dataset.task
    says: a forced task would then be inferred, or an inferred one forced."""
    drop = "count" if target == "grade" else "grade"
    result = run(
        make_config,
        tmp_path,
        "dataset=csv",
        f"dataset.path={integer_targets_csv(tmp_path)}",
        f"dataset.target={target}",
        f"dataset.drop=[{drop}]",
        f"dataset.task={task}",
        "train.epochs=2",
    )
    assert set(result.history[0].metrics) == {"train_loss", "val_loss", metric}


@pytest.mark.parametrize(("every", "printed"), [(3, [3, 6]), (1, [1, 2, 3, 4, 5, 6, 7]), (0, [])])
def test_print_every_reaches_the_console(make_config, tmp_path, capsys, every, printed) -> None:
    """Fault: run.py passes print_every=1 (or any one value) to ConsoleReport whatever
    train.print_every says."""
    result = run(make_config, tmp_path, f"train.print_every={every}", "train.epochs=7")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(",")[0] for line in lines] == [f"Epoch: {n}/7" for n in printed]
    losses = [float(line.split("Loss: ")[1].split(",")[0]) for line in lines]
    expected = [result.history[n - 1].metrics["train_loss"] for n in printed]
    np.testing.assert_allclose(losses, expected, rtol=1e-5)


def test_print_style_tutorial_prints_the_tutorials_line(make_config, tmp_path, capsys) -> None:
    """Fault: run.py passes style="full" to ConsoleReport whatever train.print_style says."""
    result = run(
        make_config, tmp_path, "train.print_style=tutorial", "train.print_every=1", "train.epochs=3"
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"Epoch: {e.epoch}, Loss: {e.metrics['train_loss']}" for e in result.history]


# --- tracking ----------------------------------------------------------------------------


def test_tracking_disabled_starts_no_run_and_writes_no_store(make_config, tmp_path) -> None:
    """Fault: start_tracker (or run.py) ignores tracking.enabled=false and tracks anyway."""
    result = run(make_config, tmp_path, "tracking.enabled=false")
    assert result.run_id is None
    assert not list(tmp_path.rglob("*.db")) and not (tmp_path / "outputs").exists()


def test_tracking_uri_and_experiment_reach_the_store(make_config, tmp_path) -> None:
    """Faults: tracking.uri is replaced by the default store (plain_config or start_tracker
    ignores it), or tracking.experiment never reaches the tracker ("looplab" always)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    result = run(
        make_config,
        tmp_path,
        "tracking.enabled=true",
        f"tracking.uri={uri}",
        "tracking.experiment=wiring",
        "train.epochs=3",
    )
    assert result.run_id is not None
    assert not (tmp_path / "outputs").exists(), "the run went to the default store"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("wiring")
    assert experiment is not None, "no experiment 'wiring' in the store tracking.uri names"
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_id == result.run_id and found.info.status == "FINISHED"
    assert found.data.params["tracking.experiment"] == "wiring"
    steps = client.get_metric_history(result.run_id, "train_loss")
    recorded = [m.value for m in sorted(steps, key=lambda m: m.step)]
    np.testing.assert_allclose(recorded, curve_of(result), rtol=1e-12)
