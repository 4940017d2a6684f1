"""A Hydra app that is not looplab's: it returns `value`, and its job 2 takes a minute while a
file `slow` lies in the folder it runs in (a trial to kill a search in)."""

import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(version_base="1.3")
def my_app(cfg: DictConfig) -> float:
    if HydraConfig.get().job.num == 2 and Path("slow").exists():
        Path("started").touch()
        time.sleep(60)
    return float(cfg.value)


if __name__ == "__main__":
    my_app()
