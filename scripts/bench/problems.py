"""The two in-process contenders most rows compare: looplab's loop and one written by hand.

The framework contender is set up by `looplab.run.prepare`, the function the CLI calls, from
a config Hydra composes from conf/: it trains exactly what `looplab-train` would. The bare
loop is the tutorial's loop written out with no framework at all, the physical limit.
"""

from __future__ import annotations

import atexit
import functools
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from bench.harness import Seconds
from looplab.core import data as datasets
from looplab.core.model import (
    MANUAL_LOSSES,
    build_model,
    initial_parameters,
    loss_function,
    quality,
    tutorial_bce,
)
from looplab.core.paths import config_dir
from looplab.core.schema import plain_config
from looplab.core.update import build_update
from looplab.launch.schema import register
from looplab.run.prepare import Prepared, prepare, torch_threads
from looplab.run.reporting import ConsoleReport, MetricsCsv
from looplab.tracking import Tracker


def compose(*overrides: str) -> DictConfig:
    """The plain config `looplab-train OVERRIDES` would run (tracking off unless asked)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        raw = hydra_compose("train", overrides=["tracking.enabled=false", *overrides])
    return plain_config(raw)


@dataclass
class Problem:
    """What both contenders train: a config, and for sizes no data set has, synthetic data."""

    name: str
    cfg: DictConfig
    synthetic: datasets.DeviceData | None = None  # made once: a fresh copy would double memory

    def prepare(self) -> Prepared:
        """A fresh model and update on this problem's data, as a run sets them up."""
        if self.synthetic is None:
            return prepare(self.cfg)
        # run.prepare loads only real data sets; here the same parts come from the same keys.
        cfg, data = self.cfg, self.synthetic
        threads = torch_threads(cfg.train.threads)
        torch.set_num_threads(threads)
        torch.manual_seed(cfg.seed)
        model = build_model(
            data.x_train.shape[1],
            1,
            width=cfg.model.width,
            activation=cfg.model.activation,
            impl=cfg.model.impl,
            init=cfg.model.init,
            dtype=data.x_train.dtype,
            device=data.x_train.device,
            seed=cfg.seed,
        )
        update = build_update(cfg["update"].name, list(model.parameters()), lr=cfg.train.lr)
        empty = np.empty((0, data.x_train.shape[1]))
        return Prepared(
            device=data.x_train.device,
            data=data,
            split_info=datasets.SplitData(empty, empty[:, 0], empty, empty[:, 0], "binary", 2),
            model=model,
            update=update,
            loss=loss_function("binary", cfg.model.impl, cfg.model.loss),
            quality=lambda p, y: quality(p, y, "binary", 1.0),
            quality_name="val_accuracy",
            generator=torch.Generator(device=data.x_train.device).manual_seed(cfg.seed),
            threads=threads,
        )

    @functools.cached_property
    def shape(self) -> tuple[str, int, int, int]:
        """(task, features, outputs, training rows)."""
        if self.synthetic is not None:
            x = self.synthetic.x_train
            return "binary", x.shape[1], 1, x.shape[0]
        ready = self.prepare()
        x = ready.data.x_train
        return ready.split_info.task, x.shape[1], ready.split_info.n_outputs, x.shape[0]

    @property
    def n_batches(self) -> int:
        rows = self.shape[3]
        return math.ceil(rows / min(self.cfg.train.batch_size or rows, rows))


def problem(label: str, *overrides: str, device: str = "cpu") -> Problem:
    return Problem(label, compose(f"device={device}", *overrides))


def synthetic(rows: int, width: int, batch_size: int | None, device: str = "cpu") -> Problem:
    """A binary problem of `rows` rows (80 % train) and 32 features, made on the device."""
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(rows, 32, device=device, generator=generator)
    y = (x @ torch.linspace(-1, 1, 32, device=device) > 0).float().reshape(-1, 1)
    n_train = rows * 4 // 5
    data = datasets.DeviceData(x[:n_train], y[:n_train], x[n_train:], y[n_train:])
    batch = f"train.batch_size={batch_size}" if batch_size else "train.batch_size=null"
    cfg = compose(f"device={device}", f"model.width={width}", batch)
    return Problem(f"synthetic {rows}", cfg, data)


@functools.cache
def scratch() -> Path:
    """A temporary folder for metrics.csv files, removed when the bench exits."""
    folder = Path(tempfile.mkdtemp(prefix="looplab-bench-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def framework_epochs(
    p: Problem,
    epochs: int,
    tracker: Tracker | None = None,
    folder: Path | None = None,
    console: ConsoleReport | None = None,
    around: Callable[[str], None] | None = None,
    callbacks: bool = True,
) -> Seconds:
    """Seconds an epoch of `looplab.loop.fit` with the callbacks `run.py` gives it.

    The console is silent (print_every=0) unless one is given; closing the console and
    metrics.csv (their last writes) is timed with the epochs. `around` is called with
    "start" and "end" at the edges of the timed part (to read other processes' CPU time).
    `callbacks=False` runs the loop with none, to tell the loop's cost from theirs.
    """
    ready = p.prepare()
    history: list = []
    console = console or ConsoleReport(epochs, p.cfg.train.print_style, 0)
    csv = MetricsCsv(
        (folder or scratch()) / "metrics.csv", ["train_loss", "val_loss", ready.quality_name]
    )
    given = [history.append, console, csv] + ([tracker] if tracker else [])
    sync(ready.device)
    if around:
        around("start")
    start = time.perf_counter()
    ready.fit(epochs, p.cfg.train.batch_size, given if callbacks else [])
    sync(ready.device)
    console.close()
    csv.close()
    elapsed = time.perf_counter() - start
    if around:
        around("end")
    return elapsed / epochs


def bare_epochs(
    p: Problem,
    epochs: int,
    loader: bool = False,
    log: Callable[[int, float], None] | None = None,
) -> Seconds:
    """Seconds an epoch of the tutorial's loop written out by hand: the physical limit.

    Mini-batches are sliced from one on-device shuffle; with `loader=True` they come from
    the tutorial series' `DataLoader(TensorDataset)` with a `loss.item()` per batch. `log`
    is called with each epoch's training loss (the naive-logging rows).
    """
    ready = p.prepare()  # the data only: the parameters and the loss are written out here
    device, task = ready.device, p.shape[0]
    dtype = ready.data.x_train.dtype
    width, n_features, n_outputs = p.cfg.model.width, p.shape[1], p.shape[2]
    sizes = [n_features, width, n_outputs] if width else [n_features, n_outputs]
    layers = [
        (w.to(device).requires_grad_(True), b.to(device).requires_grad_(True))
        for w, b in initial_parameters(sizes, "default", dtype, torch.Generator())
    ]
    params = [t for layer in layers for t in layer]
    loss_fn = tutorial_bce if p.cfg.model.loss == "tutorial" else MANUAL_LOSSES[task]
    d = ready.data
    x_train, y_train, x_val, y_val = d.x_train, d.y_train, d.x_val, d.y_val
    n, lr, batch = x_train.shape[0], p.cfg.train.lr, p.cfg.train.batch_size or x_train.shape[0]
    generator = torch.Generator(device=device).manual_seed(42)
    data_loader = None
    if loader:
        from torch.utils.data import DataLoader, TensorDataset

        data_loader = DataLoader(TensorDataset(x_train, y_train), batch_size=batch, shuffle=True)

    def forward(x: torch.Tensor) -> torch.Tensor:
        for w, b in layers[:-1]:
            x = torch.relu(x @ w + b)
        w, b = layers[-1]
        return x @ w + b

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = loss_fn(forward(x), y)
        loss.backward()
        with torch.no_grad():
            for t in params:
                t -= lr * t.grad
        for t in params:
            t.grad.zero_()
        return loss

    sync(device)
    start = time.perf_counter()
    for epoch in range(epochs):
        losses = []
        if data_loader is not None:
            train_loss = 0.0
            for x, y in data_loader:
                train_loss += step(x, y).item() * len(x) / n
        elif batch >= n:
            losses.append(step(x_train, y_train).detach())
        else:
            order = torch.randperm(n, device=device, generator=generator)
            xs, ys = x_train[order], y_train[order]
            for i in range(0, n, batch):
                losses.append(
                    step(xs[i : i + batch], ys[i : i + batch]).detach()
                    * (len(xs[i : i + batch]) / n)
                )
        with torch.no_grad():
            z = forward(x_val)
            val_loss = loss_fn(z, y_val)
            if task == "multiclass":
                accuracy = (z.argmax(dim=1) == y_val).float().mean()
            else:
                accuracy = ((z > 0).float() == y_val).float().mean()
        *batch_losses, _, _ = torch.stack([*losses, val_loss, accuracy]).tolist()
        if data_loader is None:
            train_loss = sum(batch_losses)
        if log is not None:
            log(epoch, train_loss)
    sync(device)
    return (time.perf_counter() - start) / epochs


def best_epochs(run: Callable[[int], Seconds], budget: Seconds) -> int:
    """How many epochs fill `budget` seconds, from a short warm-up run."""
    run(3)
    per_epoch = min(run(5) for _ in range(2))
    return max(5, int(budget / per_epoch))
