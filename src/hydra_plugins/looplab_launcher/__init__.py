"""looplab's local launcher (`hydra/launcher=looplab`, the default in conf/train.yaml).

Hydra finds plugins in the `hydra_plugins` namespace package; this one registers its config
on import. `hydra/launcher=basic` still picks Hydra's own.
"""

from hydra.core.config_store import ConfigStore

from hydra_plugins.looplab_launcher.launcher import LooplabLauncherConf

ConfigStore.instance().store(
    group="hydra/launcher", name="looplab", node=LooplabLauncherConf, provider="looplab"
)
