"""looplab's Hydra sweeper over Optuna's ask-and-tell API (`hydra/sweeper=looplab_optuna`).

Hydra finds plugins in the `hydra_plugins` namespace package; this one registers its config
on import. The published hydra-optuna-sweeper pins optuna<3, which cannot live beside the
rest of looplab's stack (SQLAlchemy 2), so looplab carries this small one instead.
"""

from hydra_plugins.looplab_optuna_sweeper.config import register

register()
