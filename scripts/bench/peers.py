"""Group `peers`: looplab's epoch against Lightning's Trainer on the same problem.

Users of lightning-hydra-template run a LightningModule that logs torchmetrics' epoch means
through Lightning, optionally to MLflow with MLFlowLogger. These rows train that on the same
data, model shape, loss and learning rate as looplab's default run. Lightning comes with the
optional `bench` extra (`pip install -e '.[bench]'`); without it the rows say so.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import torch

from bench.harness import Row, Seconds, Settings, human, medians, ratios, side_by_side
from bench.problems import Problem, best_epochs, framework_epochs, problem
from bench.tracking import TrackedStats, tracked_epochs
from looplab.tracking import Tracker

GROUP = "peers"
FIGURES = [
    ("looplab epoch, breast_cancer full batch, tracking off", "Lightning Trainer, no logger"),
    (
        "looplab epoch, breast_cancer full batch, tracking to SQLite",
        "Lightning Trainer + MLFlowLogger (SQLite)",
    ),
]


def rows(cfg: Settings, work: Path) -> list[Row]:
    try:
        import lightning  # noqa: F401
        import torchmetrics  # noqa: F401
    except ImportError as error:
        reason = f"{error.name or error} is not installed (pip install -e '.[bench]')"
        return [Row.skip(GROUP, figure, peer, reason) for figure, peer in FIGURES]
    return lightning_rows(cfg, work)


def lightning_trainer(p: Problem, uri: str | None):
    """A function of `epochs` that trains Lightning on `p`'s data and returns seconds an epoch.

    The clock runs from the first training epoch's start to the end of training: Trainer's
    set-up, its sanity check and the logger's closing are left out, as looplab's are.
    """
    import lightning as pl
    from lightning.pytorch.loggers import MLFlowLogger
    from torch.utils.data import DataLoader, TensorDataset
    from torchmetrics import MeanMetric
    from torchmetrics.classification import BinaryAccuracy

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"lightning\..*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    task, n_features, _, _ = p.shape
    assert task == "binary", task
    lr = p.cfg.train.lr

    class LitModule(pl.LightningModule):
        """As lightning-hydra-template's modules log: torchmetrics, on_epoch, to the bar."""

        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(n_features, 1)
            self.train_loss, self.val_loss = MeanMetric(), MeanMetric()
            self.val_acc = BinaryAccuracy()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: list[torch.Tensor], index: int) -> torch.Tensor:
            x, y = batch
            loss = torch.nn.functional.binary_cross_entropy_with_logits(self(x), y)
            self.train_loss(loss)
            self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
            return loss

        def validation_step(self, batch: list[torch.Tensor], index: int) -> None:
            x, y = batch
            logits = self(x)
            self.val_loss(torch.nn.functional.binary_cross_entropy_with_logits(logits, y))
            self.val_acc(logits, y.int())
            self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
            self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=lr)

    class Clock(pl.Callback):
        def __init__(self) -> None:
            self.start: float | None = None
            self.end = 0.0

        def on_train_epoch_start(self, trainer: object, module: object) -> None:
            if self.start is None:
                self.start = time.perf_counter()

        def on_train_end(self, trainer: object, module: object) -> None:
            self.end = time.perf_counter()

    def run(epochs: int) -> Seconds:
        d = p.prepare().data
        train = DataLoader(TensorDataset(d.x_train, d.y_train), batch_size=len(d.x_train))
        val = DataLoader(TensorDataset(d.x_val, d.y_val), batch_size=len(d.x_val))
        logger = False
        if uri is not None:
            logger = MLFlowLogger(experiment_name="lightning", tracking_uri=uri)
            assert logger.run_id  # the run exists before the clock starts, as looplab's does
        clock = Clock()
        trainer = pl.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            devices=1,
            logger=logger,
            callbacks=[clock],
            enable_progress_bar=False,  # a pipe, as looplab's print_every=0
            enable_checkpointing=False,  # looplab writes no checkpoints
            enable_model_summary=False,
        )
        trainer.fit(LitModule(), train, val)
        assert clock.start is not None
        return (clock.end - clock.start) / epochs

    return run


def lightning_rows(cfg: Settings, work: Path) -> list[Row]:
    import lightning

    p = problem("breast_cancer")
    uri = f"sqlite:///{work / 'lightning-store' / 'mlflow.db'}"
    (work / "lightning-store").mkdir(exist_ok=True)
    Tracker(uri, "bench").close()  # the store exists for both contenders
    looplab_epochs = best_epochs(lambda e: framework_epochs(p, e, None, work), cfg.budget)
    result = []
    for (figure, peer), tracked in zip(FIGURES, [False, True], strict=True):
        lit = lightning_trainer(p, uri if tracked else None)
        lit_epochs = best_epochs(lit, cfg.budget)
        stats = TrackedStats()

        def looplab(tracked: bool = tracked, stats: TrackedStats = stats) -> Seconds:
            if tracked:
                return tracked_epochs(p, looplab_epochs, uri, work, stats)
            return framework_epochs(p, looplab_epochs, None, work)

        times = side_by_side(
            {"looplab": looplab, "lightning": lambda lit=lit, e=lit_epochs: lit(e)},
            cfg.peer_repeats,
        )
        stats.stop()
        median = medians(times)
        result.append(
            Row(
                GROUP,
                figure,
                peer,
                ratios(times, "looplab", "lightning"),
                times=median,
                note=(
                    f"lightning {lightning.__version__}: full-batch DataLoaders, nn.Linear, "
                    "SGD, torchmetrics means and accuracy logged on_epoch; no progress bar, "
                    f"checkpoints or model summary; {looplab_epochs} looplab and {lit_epochs} "
                    f"Lightning epochs a repeat; Lightning's epoch is "
                    f"{median['lightning'] / median['looplab']:.1f}x looplab's, "
                    f"{human(median['lightning'] - median['looplab'])} more"
                ),
            )
        )
    return result
