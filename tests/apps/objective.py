"""A Hydra app that is not looplab's: it returns `value` as it is, for a search to rank
(`python tests/apps/objective.py -m hydra/sweeper=looplab_optuna +value=choice(1,2,inf)`).
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3")
def my_app(cfg: DictConfig) -> float:
    return float(cfg.value)


if __name__ == "__main__":
    my_app()
