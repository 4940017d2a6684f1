"""Your own data: a function that returns a table. looplab calls it with the data set config's
other keys (n_rows, noise, seed) and reads the column `dataset.target` names as the target."""

from __future__ import annotations

import numpy as np
import pandas as pd


def two_moons(n_rows: int = 200, noise: float = 0.15, seed: int = 0) -> pd.DataFrame:
    """Two interleaving half circles, one a class, with Gaussian noise: a table no straight
    line separates (the single neuron stops short of it; a hidden layer does not). The same
    arguments give the same table, bit for bit: it draws from its own seeded generator."""
    rng = np.random.default_rng(seed)
    moon = np.arange(n_rows) % 2
    angle = rng.uniform(0.0, np.pi, n_rows)
    x = np.where(moon == 0, np.cos(angle), 1.0 - np.cos(angle))
    y = np.where(moon == 0, np.sin(angle), 0.5 - np.sin(angle))
    return pd.DataFrame(
        {
            "x": x + rng.normal(0.0, noise, n_rows),
            "y": y + rng.normal(0.0, noise, n_rows),
            "moon": np.where(moon == 0, "upper", "lower"),
        }
    )
