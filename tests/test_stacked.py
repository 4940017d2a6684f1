"""core/stacked.fit_stacked: runs that share their shapes, trained as one, each giving the
numbers it gives alone (issue #21's engine)."""

from __future__ import annotations

import math

import pytest
import torch

from looplab.core.errors import DivergedError
from looplab.core.stacked import Member, fit_stacked
from looplab.run.prepare import prepare

# Values that leave every shape alone: what a stack's members differ in.
MEMBERS = [
    ("train.lr=0.05", "train.momentum=0.0", "seed=1"),
    ("train.lr=0.2", "train.momentum=0.9", "seed=2", "train.weight_decay=0.01"),
    ("train.lr=0.5", "train.momentum=0.5", "seed=3"),
]


def member(cfg, callbacks=()) -> Member:
    ready = prepare(cfg)
    return Member(
        ready.model, ready.loss, ready.update, ready.data, ready.quality, ready.quality_name,
        ready.generator, callbacks,
    )  # fmt: skip


def alone(cfg) -> list[dict[str, float]]:
    return [r.metrics for r in prepare(cfg).fit(cfg.train.epochs, cfg.train.batch_size)]


def assert_close(stacked: list[dict[str, float]], single: list[dict[str, float]]) -> None:
    assert len(stacked) == len(single)
    for epoch, (a, b) in enumerate(zip(stacked, single, strict=True), start=1):
        assert a.keys() == b.keys()
        for key in a:
            assert math.isclose(a[key], b[key], rel_tol=1e-9, abs_tol=1e-12), (epoch, key)


@pytest.mark.parametrize("impl", ["manual", "module"])
@pytest.mark.parametrize("update", ["manual", "sgd"])
@pytest.mark.parametrize("batch_size", ["null", "64"])
def test_each_member_of_a_stack_gives_the_numbers_it_gives_alone(
    make_config, impl, update, batch_size
) -> None:
    """float64. Faults: members sharing a gradient (the summed loss's), an update or a
    shuffle; one member's learning rate, momentum or weight decay applied to another; the
    batches of a member not its own shuffle; sgd not going through torch.optim.SGD."""
    shared = (
        "dataset=digits", "model.width=16", f"model.impl={impl}", f"update={update}",
        f"train.batch_size={batch_size}", "train.epochs=6", "train.dtype=float64",
        "tracking.enabled=false",
    )  # fmt: skip
    configs = [make_config(*shared, *values) for values in MEMBERS]
    members = [member(cfg) for cfg in configs]
    if update == "sgd":
        assert all(isinstance(m.update, torch.optim.SGD) for m in members)
    fit_stacked(members, epochs=6, batch_size=configs[0].train.batch_size)
    for cfg, m in zip(configs, members, strict=True):
        assert m.ended is None
        assert_close([r.metrics for r in m.history], alone(cfg))
    # the members differ: a stack that trained one network K times would pass the above
    finals = {m.history[-1].metrics["val_loss"] for m in members}
    assert len(finals) == len(members)


def test_a_member_that_diverges_ends_at_its_epoch_and_leaves_the_others_alone(
    make_config,
) -> None:
    """Faults: a diverged member's NaN reaching the others (through the summed loss or the
    stacked data), the stack stopping with it, or its end not at the epoch it diverged."""
    shared = ("dataset=diabetes", "train.epochs=8", "train.dtype=float64", "train.batch_size=32")
    good = [make_config(*shared, "train.lr=0.05", f"seed={s}") for s in (1, 2)]
    bad = make_config(*shared, "train.lr=1e10", "seed=3")
    with_bad = [member(cfg) for cfg in (good[0], bad, good[1])]
    fit_stacked(with_bad, epochs=8, batch_size=32)
    without = [member(cfg) for cfg in good]
    fit_stacked(without, epochs=8, batch_size=32)
    diverged = with_bad[1]
    assert isinstance(diverged.ended, DivergedError)
    with pytest.raises(DivergedError) as alone_error:
        prepare(bad).fit(8, 32)
    assert diverged.ended.epoch == alone_error.value.epoch == len(diverged.history) + 1
    for stacked, clean in zip((with_bad[0], with_bad[2]), without, strict=True):
        assert stacked.ended is None and len(stacked.history) == 8
        assert [r.metrics for r in stacked.history] == [r.metrics for r in clean.history]


def test_a_callback_that_ends_its_member_stops_only_that_member(make_config) -> None:
    """Faults: an early stop or a pruner's word ending every member, or none."""
    configs = [make_config("train.epochs=5", f"seed={s}", "train.dtype=float64") for s in (1, 2)]

    def stop_at_two(result) -> None:
        if result.epoch == 2:
            raise RuntimeError("ended by its callback")

    members = [member(configs[0], [stop_at_two]), member(configs[1])]
    fit_stacked(members, epochs=5)
    assert isinstance(members[0].ended, RuntimeError) and len(members[0].history) == 2
    assert members[1].ended is None and len(members[1].history) == 5
    assert_close([r.metrics for r in members[1].history], alone(configs[1]))


def test_members_of_other_shapes_are_refused(make_config) -> None:
    """Fault: networks of different widths stacked (a shape error deep in vmap, or worse)."""
    narrow = member(make_config("model.width=8"))
    wide = member(make_config("model.width=16"))
    with pytest.raises(ValueError, match="share their network's and data's shapes"):
        fit_stacked([narrow, wide], epochs=1)
