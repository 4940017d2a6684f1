"""`hydra/launcher=stacked`, its first half: a batch's jobs partitioned into stacks, each
stack trained as one (core/stacked.py), and what each member trained kept for its job,
which then runs as any job does and records it as its own (`run.execute(trained=...)`).

Jobs share a stack when their configs agree on everything but values that change numbers
and leave every shape and operation alone (`FREE`: the seed, the learning rate, momentum,
weight decay, the initialisation, and how a run is recorded or stopped).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from omegaconf import DictConfig, OmegaConf

from looplab.core.objective import Objective
from looplab.core.schema import has_target, plain_config
from looplab.core.validate import validate
from looplab.launch.jobs import SweepJob
from looplab.launch.parts import parts_of
from looplab.launch.sweep import job_part
from looplab.launch.trials import pruning_for

if TYPE_CHECKING:
    from looplab.core.stacked import Member, Trained
    from looplab.run.early_stop import EarlyStop

# Keys a stack's members may differ in (a key, or every key under it).
FREE = (
    "seed", "train.lr", "train.momentum", "train.weight_decay", "model.init",
    "train.early_stop", "optimized_metric", "tracking", "checkpoint", "train.print_every",
    "train.print_style", "train.threads",
)  # fmt: skip


# How far a stacked run's metrics may lie from the same run trained alone (relative), by
# dtype: batched arithmetic rounds in another order. Measured over 100 epochs: float64 equal
# or within 5e-16; float32 up to 1e-4 on digits (width 64, batches of 64, SGD with
# momentum), 3e-7 on the tutorial's full batch (README, "Stacked sweeps").
TOLERANCE = {"float64": 1e-9, "float32": 1e-3}


@dataclass
class Job:
    num: int
    config: DictConfig  # the job's whole config, Hydra's node included
    plain: DictConfig | None = None  # its plain config; None: it cannot be stacked...
    why_alone: str = ""  # ...and why


def stack_key(plain: DictConfig) -> str:
    """What a stack's members agree on: the plain config less the FREE keys."""
    document = OmegaConf.to_container(plain)
    assert isinstance(document, dict)
    for key in FREE:
        *path, last = key.split(".")
        node = document
        for part in path:
            node = node.get(part, {})
        if isinstance(node, dict):
            node.pop(last, None)
    return json.dumps(document, sort_keys=True, default=str)


def plan(jobs: list[Job]) -> list[list[Job]]:
    """The stacks of two or more jobs; the jobs left out say why (`why_alone`)."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        try:
            job.plain = plain_config(job_part(job.config))
            validate(job.plain)
        except Exception:  # the job says what is wrong when it runs
            job.plain, job.why_alone = None, "its config does not check"
            continue
        if has_target(job.plain.model):
            job.plain, job.why_alone = None, "a network of your own (model._target_)"
            continue
        groups.setdefault(stack_key(job.plain), []).append(job)
    stacks = []
    for group in groups.values():
        if len(group) == 1:
            group[0].why_alone = "no other job of its batch has its shapes, data and update"
        else:
            stacks.append(group)
    return stacks


class StackedRuns:
    """What the stacks trained, by sweep folder and job number, until each job takes its
    own. One per process (`here()`): the launcher fills it, the job's task function reads it."""

    _here: ClassVar[StackedRuns | None] = None

    def __init__(self) -> None:
        self.trained: dict[tuple[str, int], Trained] = {}

    @classmethod
    def here(cls) -> StackedRuns:
        if cls._here is None:
            cls._here = cls()
        return cls._here

    def take(self, job: SweepJob) -> Trained | None:
        return self.trained.pop((str(job.sweep_dir), job.num), None)


def train_stack(
    stack: list[Job], sweep_dir: Path, budget_mb: float, cpus: float | None = None
) -> str:
    """Train the stack's jobs as one, in chunks that fit `budget_mb`; keep each member's
    `Trained` for its job. A line that says what was trained, and in how long; a stack that
    could not be trained (a part that refuses, an error) leaves its jobs to train alone."""
    try:
        return _train_stack(stack, sweep_dir, budget_mb, cpus)
    except Exception as error:  # each job meets it again alone, and says it as a job does
        for job in stack:
            StackedRuns.here().trained.pop((str(sweep_dir.resolve()), job.num), None)
            job.why_alone = f"its stack could not be trained ({type(error).__name__}: {error})"
        return f"stacked: jobs {_numbers(stack)} could not be trained as one; each trains alone"


def _numbers(stack: list[Job]) -> str:
    numbers = [job.num for job in stack]
    contiguous = numbers == list(range(numbers[0], numbers[-1] + 1)) and len(numbers) > 2
    return f"#{numbers[0]}-#{numbers[-1]}" if contiguous else ", ".join(f"#{n}" for n in numbers)


def _train_stack(stack: list[Job], sweep_dir: Path, budget_mb: float, cpus: float | None) -> str:
    import torch

    from looplab.run.prepare import prepare, torch_threads

    started = time.perf_counter()
    readies = [prepare(job.plain, cpus, parts_of(job.plain)) for job in stack]  # type: ignore[arg-type]
    members = [_member(job, sweep_dir, ready) for job, ready in zip(stack, readies, strict=True)]
    size = max(1, min(len(members), int(budget_mb * 2**20 // member_bytes(members[0][0]))))
    train = stack[0].plain.train  # type: ignore[union-attr]
    threads = torch_threads(train.threads, cpus, writer_idle=True)  # no run to write yet
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _fit(stack, readies, members, size, sweep_dir)
    finally:
        torch.set_num_threads(before)
    seconds = time.perf_counter() - started
    nums = _numbers(stack)
    chunks = -(-len(members) // size)
    shown = f"{chunks} stacks of up to {size}" if chunks > 1 else f"one stack of {len(members)}"
    threads_shown = f"{threads} thread{'s' if threads > 1 else ''}"
    return f"stacked: jobs {nums} trained as {shown} in {seconds:.2f} s ({threads_shown})"


def _fit(stack: list[Job], readies: list, members: list, size: int, sweep_dir: Path) -> None:
    """Train the stack in chunks of `size`; keep each member's `Trained` for its job (its
    run's `torch.threads` param stays its own setting, as on looplab's launcher: a stacked
    sweep's runs have the same params; the stack's threads are in the launcher's line)."""
    from looplab.core.stacked import Trained, fit_stacked
    from looplab.run.early_stop import StoppedEarly

    train = stack[0].plain.train  # type: ignore[union-attr]
    for start in range(0, len(members), size):
        chunk = members[start : start + size]
        fit_stacked(
            [member for member, _ in chunk], epochs=train.epochs, batch_size=train.batch_size
        )
        for job, ready, (member, early_stop) in zip(
            stack[start : start + size], readies[start : start + size], chunk, strict=True
        ):
            if isinstance(member.ended, StoppedEarly):  # as execute() ends such a run:
                early_stop.restore_best()  # type: ignore[union-attr]  # the best epoch's weights
            trained = Trained(member.history, member.ended, len(chunk), ready)
            StackedRuns.here().trained[(str(sweep_dir.resolve()), job.num)] = trained


def _member(job: Job, sweep_dir: Path, ready: Any) -> tuple[Member, EarlyStop | None]:
    """A job's member of its stack, with its early stop and pruning as its own run has them."""
    from looplab.core.stacked import Member
    from looplab.run.early_stop import EarlyStop

    plain = job.plain
    assert plain is not None
    asked = OmegaConf.select(job.config, "hydra.sweeper.direction")  # as the job's own run
    objective = Objective.of(plain.get("optimized_metric"), asked)
    early_stop = EarlyStop.from_config(plain.train, ready.model, objective.metric)
    overrides = list(job.config.hydra.overrides.task)
    pruning = pruning_for(SweepJob(job.num, sweep_dir.resolve(), overrides), objective)
    callbacks = [judge for judge in (early_stop, pruning) if judge is not None]
    member = Member(
        ready.model, ready.loss, ready.update, ready.data, ready.quality, ready.quality_name,
        ready.generator, callbacks,
    )  # fmt: skip
    return member, early_stop


def member_bytes(member: Member) -> int:
    """A rough size of one member in a stack: its data (stacked, and an epoch's shuffled
    copy), its parameters with their gradients and two buffers of update state, and its
    widest activations over the training set."""
    data = member.data
    tensors = (data.x_train, data.y_train, data.x_val, data.y_val)
    data_bytes = sum(t.numel() * t.element_size() for t in tensors)
    params = member.parameters()
    param_bytes = sum(p.numel() * p.element_size() for p in params) * 4
    widest = max(p.shape[-1] for p in params)
    rows = data.x_train.shape[0] + data.x_val.shape[0]
    return data_bytes + param_bytes + 3 * rows * widest * data.x_train.element_size()
