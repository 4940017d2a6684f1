"""looplab's local launcher (`hydra/launcher=looplab`, the default in conf/train.yaml).

Hydra finds plugins in the `hydra_plugins` namespace package; this one registers its config
on import. `hydra/launcher=basic` still picks Hydra's own; `hydra/launcher=stacked` trains
the jobs that share their shapes as one (stacked.py).
"""

from hydra.core.config_store import ConfigStore

from hydra_plugins.looplab_launcher.launcher import LooplabLauncherConf
from hydra_plugins.looplab_launcher.stacked import StackedLauncherConf

ConfigStore.instance().store(
    group="hydra/launcher", name="looplab", node=LooplabLauncherConf, provider="looplab"
)
ConfigStore.instance().store(
    group="hydra/launcher", name="stacked", node=StackedLauncherConf, provider="looplab"
)
