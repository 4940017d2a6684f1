"""A Hydra app that is not looplab's, as Hydra's own tests/test_apps/app_can_fail: it prints
1 / divisor and returns it, so `-m +divisor=1,0` fails its second job (ZeroDivisionError) and
`+divisor=inf` returns a number that is not finite.

    python tests/apps/can_fail.py -m +divisor=1,0 hydra/sweeper=looplab_grid
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3")
def my_app(cfg: DictConfig) -> float:
    val = 1 / cfg.divisor
    print(f"val={val}")
    return val


if __name__ == "__main__":
    my_app()
