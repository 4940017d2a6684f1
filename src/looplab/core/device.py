"""Which device a run uses: `auto` takes cuda, then mps, when a step has the work for it;
else, and always where there is neither, the CPU."""

from __future__ import annotations

import itertools

import torch

from looplab.core.errors import DeviceError

# `device=auto` takes an accelerator only when a training step has the work to pay for its
# kernel launches. On an H200 (in a VM: about 1 ms of launches a step) against its host's 16
# cores, every step below 2 million multiply-adds (a step's rows times the model's weights)
# ran faster on the CPU, 1.2 to 3.7 times; above it the GPU was as fast or faster in 6 cases
# of 8, up to 10 times, and lost the other 2 by at most 1.26 times (make bench, group cuda:
# docs/benchmarks-cuda.md). `device=cuda` forces the GPU.
AUTO_MIN_STEP_WORK = 2_000_000


def available_devices() -> list[str]:
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    if torch.backends.mps.is_available():
        found.append("mps")
    return [*found, "cpu"]


def step_work(rows_a_step: int, n_features: int, n_outputs: int, hidden: list[int]) -> int:
    """Multiply-adds of one forward step: the rows of a step times the model's weights
    (`hidden`: the hidden layers' widths, `model.hidden_widths`)."""
    sizes = [n_features, *hidden, n_outputs]
    return rows_a_step * sum(a * b for a, b in itertools.pairwise(sizes))


def resolve_device(name: str, work: int | None = None) -> tuple[torch.device, str]:
    """The torch device for `device=NAME`, and for `auto` why it kept to the CPU where there
    is an accelerator (else ""). `work`: `step_work` of the run. DeviceError when this
    machine lacks the device asked for."""
    available = available_devices()
    if name == "auto":
        return choose_auto(available, work)
    if name not in available:
        raise DeviceError(
            f"device={name} is not available on this machine; available: {', '.join(available)}"
        )
    return torch.device(name), ""


def choose_auto(available: list[str], work: int | None) -> tuple[torch.device, str]:
    """`device=auto` among the `available` devices (best first, the CPU last)."""
    best = available[0]
    if best != "cpu" and work is not None and work < AUTO_MIN_STEP_WORK:
        return torch.device("cpu"), (
            f"device: cpu (auto: a step of {work:,} multiply-adds is below the "
            f"{AUTO_MIN_STEP_WORK:,} where {best} pays; device={best} to use it anyway)"
        )
    return torch.device(best), ""
