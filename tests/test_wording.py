"""Hydra's and OmegaConf's errors, as the installed versions word them, become one line each
(`looplab.launch.wording.describe`). Its patterns match the libraries' own texts: a new
release that rewords one fails here, not in front of a user as a raw library message."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import compose_raw

from looplab.core.errors import LooplabError
from looplab.core.schema import plain_config
from looplab.launch.wording import describe

CASES = [
    ("model.activation=swish", "model.activation=swish is not allowed: choose one of"),
    ("train.epochs=abc", "train.epochs=abc is not allowed: it must be an integer"),
    ("train.lr=fast", "train.lr=fast is not allowed: it must be a number"),
    ("tracking.enabled=maybe", "tracking.enabled=maybe is not allowed: it must be true or false"),
    ("dataset.drop=5", "dataset.drop=5 is not allowed: it must be a list, e.g. [a,b]"),
    # dataset is typed Any (for dataset._target_): plain_config types a built-in's keys
    ("dataset.test_size=abc", "dataset.test_size=abc is not allowed: it must be a number"),
    ("dataset.missing=fill", "dataset.missing=fill is not allowed: choose one of refuse, drop"),
    ("+dataset.foo=1", "unknown key dataset.foo: dataset has only name, path, target"),
    ("train.lr=null", "train.lr=null is not allowed: it cannot be null"),
    ("model=5", "it is a group of keys; set one key in it"),
    ("model.widht=3", "unknown key model.widht: did you mean model.width?"),
    ("update=adagrad", "update=adagrad is not an option; choose one of adam, adamw, manual, optim"),
    pytest.param(
        "hydra/launcher=ray",
        "hydra/launcher=ray needs the ray extra: make setup-ray",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is not None,
            reason="the ray extra is installed here (make setup-ray)",
        ),
    ),
    ("train.lr=[1", "cannot parse the command line:"),
]


@pytest.mark.parametrize(("line", "expected"), CASES)
def test_each_library_error_is_worded_as_one_line(line, expected) -> None:
    """Faults: a pattern that no longer matches the installed wording (the raw message shown),
    a wording that loses the key or the value, a multi-line message."""
    try:  # composed, then made plain: the built-in model is typed there (core/schema.py)
        plain_config(compose_raw(line))
    except LooplabError as error:
        message = str(error)
    except Exception as error:
        message = describe(error)
    else:
        pytest.fail(f"{line} composed without an error")
    assert expected in message
    assert "\n" not in message and "looplab/" not in message
