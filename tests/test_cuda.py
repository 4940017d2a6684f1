"""On a CUDA device: a run trains there, the hand-written and torch parts agree, mini-batches work.

Every test here skips on a machine without CUDA. That `device=cuda` fails cleanly where there
is none is tested through the CLI in test_bad_input.py (case device-cuda).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import IMPLS_BY_UPDATES, assert_the_four_ways_agree

from looplab.cli.train import execute_tracked as execute
from looplab.run.prepare import prepare

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


def fit_prepared(ready, epochs: int, batch_size: int | None = None) -> list:
    """What `execute` trains, with no callbacks."""
    return ready.fit(epochs, batch_size)


# float32: the GPU's kernels sum in another order than the CPU's; float64: as close as the
# kernels allow, over the whole run.
TOLERANCES = {"float32": {"rtol": 1e-6, "atol": 1e-6}, "float64": {"rtol": 1e-13, "atol": 1e-13}}


@pytest.mark.parametrize("dtype", sorted(TOLERANCES))
@pytest.mark.parametrize(("impl", "update"), IMPLS_BY_UPDATES)
def test_cuda_gives_the_cpus_numbers(make_config, impl, update, dtype) -> None:
    """Faults: a part that computes otherwise on the GPU (a hand-written loss or update, a
    model built or initialised differently there, data scaled or moved otherwise), in either
    model.impl or update. Full batches: a mini-batch shuffle is drawn from the device's own
    generator, so its order differs between devices by design."""
    histories = {}
    for device in ("cpu", "cuda"):
        cfg = make_config(
            f"device={device}",
            "tracking.enabled=false",
            "dataset=wine",
            "model.width=16",
            f"model.impl={impl}",
            f"update={update}",
            f"train.dtype={dtype}",
            "train.momentum=0.9",
            "train.weight_decay=0.001",
        )
        ready = prepare(cfg)
        assert ready.device.type == device
        history = fit_prepared(ready, epochs=60)
        histories[device] = torch.tensor(
            [[e.metrics[k] for k in ("train_loss", "val_loss", "val_accuracy")] for e in history],
            dtype=torch.float64,
        )
    assert histories["cpu"][-1, 0] < histories["cpu"][0, 0] * 0.8  # it really trained
    difference = (histories["cuda"] - histories["cpu"]).abs().max().item()
    print(f"{impl}/{update} {dtype}: largest difference CUDA - CPU over 60 epochs {difference:.3g}")
    torch.testing.assert_close(histories["cuda"], histories["cpu"], **TOLERANCES[dtype])


@pytest.mark.parametrize("batch_size", [None, 64])
def test_the_loop_waits_for_the_gpu_once_an_epoch(make_config, batch_size) -> None:
    """Faults: a `.item()`, `.tolist()` or `float()` of a loss, a metric or a batch inside the
    epoch (each one stalls the host until the GPU catches up), or data copied back to the
    host to shuffle or slice a mini-batch. torch's sync debug mode warns at every operation
    that makes the host wait for the GPU."""
    cfg = make_config(
        "device=cuda",
        "tracking.enabled=false",
        "dataset=digits",
        "model.width=32",
        f"train.batch_size={'null' if batch_size is None else batch_size}",
        "update=sgd",
        "train.momentum=0.9",
    )
    ready = prepare(cfg)
    epochs = 5
    fit_prepared(ready, epochs=1, batch_size=batch_size)  # warm-up: kernels, allocator
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fit_prepared(ready, epochs=epochs, batch_size=batch_size)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    waits = [str(w.message) for w in caught if "called a synchronizing" in str(w.message)]
    assert len(waits) == epochs, waits[:3]


def test_a_mini_batch_epoch_copies_nothing_back_but_its_numbers(make_config) -> None:
    """Fault: a mini-batch epoch that brings data (a shuffle, a batch, a loss a batch) back to
    the host: the profiler counts every device-to-host copy, and an epoch has one, of its
    numbers."""
    from torch.profiler import ProfilerActivity, profile

    cfg = make_config(
        "device=cuda", "tracking.enabled=false", "dataset=digits", "train.batch_size=32"
    )
    ready = prepare(cfg)
    fit_prepared(ready, epochs=1, batch_size=32)
    epochs = 3
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fit_prepared(ready, epochs=epochs, batch_size=32)
        torch.cuda.synchronize()
    copies = [e for e in prof.events() if "DtoH" in e.name or "Device -> Pageable" in e.name]
    names = sorted({e.name for e in copies})
    batches = -(-ready.data.x_train.shape[0] // 32)
    assert batches > 10
    # Each copy back is seen as the runtime's call and as the copy itself: one of each an epoch.
    assert 0 < len(copies) <= 2 * epochs, (len(copies), names)


def test_auto_takes_the_gpu_for_a_step_with_the_work_for_it(make_config, tmp_path) -> None:
    """Fault: device=auto not taking the GPU on a machine that has one, for a model and data
    large enough (digits at width 1024, full batch: 109 million multiply-adds a step)."""
    cfg = make_config("device=auto", "dataset=digits", "model.width=1024", "tracking.enabled=false")
    result = execute(cfg.copy(), tmp_path / "large")
    assert result.status == "FINISHED", result.error
    assert result.device.startswith("cuda"), result.device


def test_auto_keeps_the_tutorials_tiny_model_on_the_cpu(make_config, tmp_path, caplog) -> None:
    """Fault: device=auto sending the tutorial's single neuron to the GPU, where an epoch
    took 3 times as long as on the CPU (make bench, group cuda), or doing so silently."""
    cfg = make_config("device=auto", "tracking.enabled=false", "train.epochs=3")
    with caplog.at_level("INFO", logger="looplab"):
        result = execute(cfg, tmp_path / "tiny")
    assert result.status == "FINISHED", result.error
    assert result.device == "cpu"
    assert "device: cpu (auto: a step of 13,650 multiply-adds is below" in caplog.text
