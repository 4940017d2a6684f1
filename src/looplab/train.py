"""`looplab-train`: the Hydra entry point, and the only module that touches Hydra.

    looplab-train                                   # the default experiment
    looplab-train model.width=16 update=sgd         # override any key
    looplab-train -m train.lr=0.01,0.1,1            # a sweep, one MLflow run per job
    looplab-train experiment=seed                   # the tutorial's exact recipe

It checks the config, starts the MLflow writer early (so its start-up overlaps importing
torch), hands the run to `looplab.run.execute`, and turns errors into one line and an exit code.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from looplab.config import config_dir, plain_config, register, validate
from looplab.errors import LooplabError
from looplab.tracking import start_tracker

register()


def _fail(message: str, exit_code: int = 1) -> None:
    print(f"looplab-train: error: {message}", file=sys.stderr)
    sys.exit(exit_code)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Run one job; return its last validation loss (a value sweepers can minimise)."""
    hydra_config = HydraConfig.get()
    output_dir = Path(hydra_config.runtime.output_dir)
    hydra_dir = output_dir / hydra_config.output_subdir if hydra_config.output_subdir else None
    in_sweep = hydra_config.mode == RunMode.MULTIRUN
    try:
        plain = plain_config(cfg)
        validate(plain)
        # Start MLflow's writer process before torch is imported, so the two overlap.
        tracker = start_tracker(plain)
        from looplab.run import execute, print_warning

        result = execute(plain, output_dir, hydra_dir, tracker)
    except LooplabError as error:
        _fail(str(error))
    print_warning(result)
    if result.exit_code and not (in_sweep and result.status == "FAILED"):
        if result.error:
            print(f"looplab-train: {result.error}", file=sys.stderr)
        sys.exit(result.exit_code)
    if result.error:  # a diverged job in a sweep: reported, and the sweep goes on
        print(f"looplab-train: job {hydra_config.job.num}: {result.error}", file=sys.stderr)
    return result.history[-1].metrics["val_loss"] if result.history else float("nan")


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    main()
