"""looplab's grid sweeper (`hydra/sweeper=looplab_grid`, the default in conf/train.yaml).

Hydra's basic sweep, the product of the swept values, less its second composition of every
job: Hydra's basic sweeper composes each job once to check the batch and once more to launch
it, while looplab's sweep callback has already checked every job of the sweep, composing only
once per combination of config groups. The launch is left to the chosen launcher.
"""

from hydra.core.config_store import ConfigStore

from hydra_plugins.looplab_grid_sweeper.sweeper import LooplabGridSweeperConf

ConfigStore.instance().store(
    group="hydra/sweeper", name="looplab_grid", node=LooplabGridSweeperConf, provider="looplab"
)
