"""Group `pruning`: what a pruner saves a search, and what it costs its result (issue #20's
goal: a best objective within 2% of the unpruned search's, in at most 40% of its epochs).

The same search twice, as a user launches it, with the same sampler and seed: without a
pruner, then under one. Epochs are counted from each job's metrics.csv (what was trained,
whatever Optuna was told); the best value is the study's best complete trial.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench.harness import CLI, Row, Settings

GROUP = "pruning"
TRIALS, EPOCHS = 40, 40
SEARCH = (
    "-m",
    "hparams_search=optuna",
    "dataset=digits",
    "update=sgd",
    "train.batch_size=64",
    f"train.epochs={EPOCHS}",
    "train.lr=tag(log,interval(0.001,1.0))",
    "model.width=choice(8,16,32,64)",
    "train.momentum=interval(0.0,0.95)",
    "tracking.enabled=false",
    "train.print_every=0",
)
PRUNER = ("hydra/sweeper/pruner=percentile", "hydra.sweeper.pruner.n_warmup_steps=2")


def search(folder: Path, *extra: str, trials: int) -> tuple[int, float]:
    """Run the search in `folder`; the epochs its jobs trained and its best val_loss."""
    import optuna

    folder.mkdir(parents=True)
    args = [CLI, *SEARCH, f"hydra.sweeper.n_trials={trials}", *extra]
    done = subprocess.run(args, cwd=folder, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the search failed: {done.stderr[-2000:]}")
    epochs = sum(
        len(path.read_text().splitlines()) - 1
        for path in folder.glob("outputs/sweeps/*/*/*/metrics.csv")
    )
    (db,) = folder.glob("outputs/optuna/*.db")
    storage = f"sqlite:///{db}"
    (name,) = optuna.get_all_study_names(storage)
    return epochs, optuna.load_study(study_name=name, storage=storage).best_value


def rows(cfg: Settings, work: Path) -> list[Row]:
    figure = f"a pruned search's epochs ({' '.join(PRUNER)})"
    try:
        import optuna  # noqa: F401
    except ImportError:
        return [Row.skip(GROUP, figure, "unpruned", "the search extra is not installed")]
    trials = TRIALS if cfg.repeats > 1 else 8  # --quick: a smoke run
    plain_epochs, plain_best = search(work / "unpruned", trials=trials)
    pruned_epochs, pruned_best = search(work / "pruned", *PRUNER, trials=trials)
    note = (
        f"digits, {trials} trials of {EPOCHS} epochs (train.lr log-uniform, width, momentum), "
        f"TPE seed 42 for both: {pruned_epochs} epochs trained against {plain_epochs}; best "
        f"val_loss {pruned_best:.4g} against {plain_best:.4g}"
    )
    return [
        Row(
            GROUP,
            figure,
            "the same search unpruned",
            [pruned_epochs / plain_epochs],
            "<= 0.40",
            unit="epochs",
            note=note,
        ),
        Row(
            GROUP,
            "its best val_loss",
            "the unpruned search's best",
            [pruned_best / plain_best],
            "<= 1.02",
            unit="val_loss",
            note="one search each: its ratio has no spread to show",
        ),
    ]
