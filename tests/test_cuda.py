"""On a CUDA device: a run trains there, the hand-written and torch parts agree, mini-batches work.

Every test here skips on a machine without CUDA. That `device=cuda` fails cleanly where there
is none is tested through the CLI in test_bad_input.py (case device-cuda).
"""

from __future__ import annotations

import pytest
import torch
from conftest import assert_the_four_ways_agree

from looplab.run import execute

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


def run_on_cuda(make_config, tmp_path, *overrides: str):
    cfg = make_config("device=cuda", "tracking.enabled=false", "train.print_every=0", *overrides)
    result = execute(cfg, tmp_path / "_".join(overrides).replace("=", "-"))
    assert result.status == "FINISHED", result.error
    assert result.device.startswith("cuda"), result.device
    return result


def losses(result) -> torch.Tensor:
    return torch.tensor([epoch.metrics["train_loss"] for epoch in result.history])


def test_a_short_run_trains_on_cuda(make_config, tmp_path) -> None:
    result = run_on_cuda(make_config, tmp_path, "train.epochs=30")
    history = losses(result)
    assert len(history) == 30
    assert torch.isfinite(history).all()
    assert history[-1] < history[0]


def test_manual_and_torch_parts_give_the_same_loss_history_on_cuda(make_config, tmp_path) -> None:
    assert_the_four_ways_agree(
        make_config, tmp_path, "device=cuda", "dataset=wine", "model.width=16", "train.epochs=100"
    )


def test_mini_batches_on_cuda(make_config, tmp_path) -> None:
    result = run_on_cuda(
        make_config,
        tmp_path,
        "dataset=digits",
        "model.width=32",
        "train.batch_size=32",
        "train.epochs=5",
    )
    history = losses(result)
    assert len(history) == 5
    assert torch.isfinite(history).all()
    assert history[-1] < history[0]
    assert 0 < result.history[-1].metrics["val_loss"] < history[0]
