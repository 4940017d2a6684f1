"""A Hydra app with two objectives, as hydra-optuna-sweeper's multi-objective example:
(x^2 + y^2, (x-2)^2 + (y-2)^2), both minimised; their Pareto front is the segment between
(0, 0) and (2, 2)."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3")
def my_app(cfg: DictConfig) -> tuple[float, float]:
    x, y = float(cfg.x), float(cfg.y)
    return x**2 + y**2, (x - 2) ** 2 + (y - 2) ** 2


if __name__ == "__main__":
    my_app()
