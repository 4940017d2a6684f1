"""A Hydra app that does nothing, over looplab's conf/ tree: what Hydra alone costs a job.

`make bench`'s sweep group runs it with the same overrides as `looplab-train -m`, so the
difference per job is looplab's own work.
"""

import hydra
from omegaconf import DictConfig

from looplab.core.paths import config_dir
from looplab.launch.schema import register

register()  # the schema and resolver that conf/train.yaml names


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def task(cfg: DictConfig) -> None:
    return None


if __name__ == "__main__":
    task()
