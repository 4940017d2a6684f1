"""core/stacked.fit_stacked: runs that share their shapes, trained as one, each giving the
numbers it gives alone (issue #21's engine)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from looplab.core.errors import DivergedError
from looplab.core.stacked import Member, fit_stacked
from looplab.launch.parts import parts_of
from looplab.run.prepare import prepare

# Values that leave every shape alone: what a stack's members differ in.
MEMBERS = [
    ("train.lr=0.05", "train.momentum=0.0", "seed=1"),
    ("train.lr=0.2", "train.momentum=0.9", "seed=2", "train.weight_decay=0.01"),
    ("train.lr=0.5", "train.momentum=0.5", "seed=3"),
]


def member(cfg, callbacks=()) -> Member:
    ready = prepare(cfg, None, parts_of(cfg))
    return Member(
        ready.model, ready.loss, ready.update, ready.data, ready.quality, ready.quality_name,
        ready.generator, callbacks,
    )  # fmt: skip


def alone(cfg) -> list[dict[str, float]]:
    ready = prepare(cfg, None, parts_of(cfg))
    return [r.metrics for r in ready.fit(cfg.train.epochs, cfg.train.batch_size)]


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


UPDATES = {
    "manual": ("update=manual",),
    "sgd": ("update=sgd",),
    "adam": ("update=adam",),
    "adamw": ("update=adamw",),
    "rmsprop": ("update=optim", "update._target_=torch.optim.RMSprop"),  # steps alone
}


@pytest.mark.parametrize("update", list(UPDATES))
def test_members_with_one_update_rule_step_as_one_and_keep_their_state_when_some_leave(
    make_config, update
) -> None:
    """float64; two learning rates, so two groups of three that each step as one over their
    rows (RMSprop: each member with its own update). One member leaves its group's middle
    at epoch 2, the whole other group at epoch 3. Faults: a group's momentum (or Adam's
    moments) lost, or given to the wrong member, when members leave; a group stepping rows
    not its own; an update of another kind (AdamW) refused, or stepped as a group's."""
    shared = (
        "dataset=digits", "model.width=16", *UPDATES[update], "train.batch_size=64",
        "train.epochs=4", "train.dtype=float64", "train.momentum=0.9", "tracking.enabled=false",
    )  # fmt: skip
    configs = [
        make_config(*shared, f"train.lr={0.05 if s <= 3 else 0.1}", f"seed={s}")
        for s in range(1, 7)
    ]

    def stop_at(epoch: int):
        def stop(result) -> None:
            if result.epoch == epoch:
                raise RuntimeError("ended by its callback")

        return stop

    ends = {1: 2, 3: 3, 4: 3, 5: 3}  # member index: the epoch its callback ends it
    members = [
        member(cfg, [stop_at(ends[i])] if i in ends else []) for i, cfg in enumerate(configs)
    ]
    fit_stacked(members, epochs=4, batch_size=64)
    for i, (cfg, m) in enumerate(zip(configs, members, strict=True)):
        assert len(m.history) == ends.get(i, 4)
        assert_close([r.metrics for r in m.history], alone(cfg)[: len(m.history)])
        assert (m.ended is None) == (i not in ends)


def test_each_member_keeps_its_own_parameters_after_the_stack(make_config) -> None:
    """Fault: a member's parameters left as views of the stack's tensors, at the end or when
    it leaves early: its model.pt would hold every member's weights (torch.save writes a
    view's whole storage)."""
    configs = [make_config("model.impl=module", f"seed={s}", "train.epochs=2") for s in (1, 2, 3)]

    def stop_at_one(result) -> None:
        if result.epoch == 1:
            raise RuntimeError("ended by its callback")

    members = [member(cfg, [stop_at_one] if i == 0 else []) for i, cfg in enumerate(configs)]
    fit_stacked(members, epochs=2)
    assert len(members[0].history) == 1
    for m in members:
        for p in m.parameters():
            assert p.untyped_storage().nbytes() == p.numel() * p.element_size()


def test_members_of_other_shapes_are_refused(make_config) -> None:
    """Fault: networks of different widths stacked (a shape error deep in vmap, or worse)."""
    narrow = member(make_config("model.width=8"))
    wide = member(make_config("model.width=16"))
    with pytest.raises(ValueError, match="share their network's and data's shapes"):
        fit_stacked([narrow, wide], epochs=1)


# --- hydra/launcher=stacked, as a user types it --------------------------------------------


def swept(run_cli, folder, *overrides: str, timeout: float = 300):
    folder.mkdir()
    return run_cli("-m", *overrides, cwd=folder, timeout=timeout)


def job_curves(folder) -> dict[int, list[dict[str, float]]]:
    """Each job's metrics.csv, by job number (the timestamps left out)."""
    import csv

    (sweep,) = folder.glob("outputs/sweeps/*/*")
    curves = {}
    for path in sweep.glob("*/metrics.csv"):
        rows = list(csv.DictReader(path.open()))
        curves[int(path.parent.name)] = [
            {k: float(v) for k, v in row.items() if k != "timestamp_ms"} for row in rows
        ]
    return curves


@pytest.mark.slow
def test_a_stacked_sweep_is_the_sequential_sweep_job_for_job(run_cli, tmp_path) -> None:
    """float64, mini-batches, sgd. Faults: a stacked job's curve or weights not its own
    (within 1e-9 of the same job on looplab's launcher); a job without its folder, files,
    child run, params or closing line; no tag saying it was stacked; a job of another width
    stacked with the others, or left out without a word."""
    from conftest import store_uri
    from test_sweep import sweep_runs

    sweep = (
        "seed=1,2", "train.lr=0.05,0.2", "model.width=8", "update=sgd", "train.momentum=0.9",
        "train.batch_size=64", "train.epochs=5", "train.dtype=float64", "train.print_every=0",
    )  # fmt: skip
    plain = swept(run_cli, tmp_path / "plain", *sweep)
    assert plain.returncode == 0, plain.stderr
    stacked = swept(run_cli, tmp_path / "stacked", "hydra/launcher=stacked", *sweep)
    assert stacked.returncode == 0, stacked.stderr
    assert "stacked: jobs #0-#3 trained as one stack of 4" in stacked.stdout
    expected, got = job_curves(tmp_path / "plain"), job_curves(tmp_path / "stacked")
    assert sorted(got) == sorted(expected) == [0, 1, 2, 3]
    for num in expected:
        assert_close(got[num], expected[num])
    _, parent, children = sweep_runs(store_uri(tmp_path / "stacked"))
    _, _, alone_children = sweep_runs(store_uri(tmp_path / "plain"))
    assert parent.data.tags["looplab.jobs_finished"] == "4"
    for num, run in children.items():
        twin = alone_children[num]
        assert run.info.status == "FINISHED" and run.info.run_name == twin.info.run_name
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["looplab.stack_size"] == "4"
        differs = {k for k in run.data.params if run.data.params[k] != twin.data.params.get(k)}
        assert differs == {"tracking.uri"}, differs  # each sweep's own store
        folder = Path(run.data.tags["looplab.run_dir"])
        for name in (".hydra/config.yaml", "config.yaml", "preprocessing.json", "record.json"):
            assert (folder / name).is_file(), name
        mine = torch.load(folder / "model.pt", weights_only=True)
        theirs = torch.load(Path(twin.data.tags["looplab.run_dir"]) / "model.pt", weights_only=True)
        for key in mine:
            assert torch.allclose(mine[key], theirs[key], rtol=1e-9, atol=1e-12), key
        assert f"[job {num}] {run.info.run_name}: FINISHED after 5 epochs" in stacked.stdout

    mixed = swept(
        run_cli, tmp_path / "mixed", "hydra/launcher=stacked", "model.width=8,16",
        "seed=1,2", "train.epochs=2",
    )  # fmt: skip
    assert mixed.returncode == 0, mixed.stderr
    assert "stacked: jobs #0, #1 trained as one stack of 2" in mixed.stdout
    assert "stacked: jobs #2, #3 trained as one stack of 2" in mixed.stdout
    # an optimiser the config names by _target_ (Adam's members step as one group)
    adam = swept(run_cli, tmp_path / "adam", "hydra/launcher=stacked", "update=adam", "seed=1,2")
    assert adam.returncode == 0, adam.stderr
    assert "stacked: jobs #0, #1 trained as one stack of 2" in adam.stdout
    lonely = swept(run_cli, tmp_path / "lonely", "hydra/launcher=stacked", "model.width=8,16")
    assert lonely.returncode == 0, lonely.stderr
    assert "[job 0] trained alone: no other job of its batch has its shapes" in lonely.stdout


@pytest.mark.slow
def test_a_diverging_member_of_a_stacked_sweep_fails_alone(run_cli, tmp_path) -> None:
    """Faults: the diverged job's NaN reaching the rest of its stack, the sweep stopping,
    or the job not FAILED at its epoch as it would be on looplab's launcher."""
    sweep = (
        "dataset=diabetes", "train.lr=0.05,1e200,0.1", "train.epochs=5", "train.print_every=0",
        "train.dtype=float64",
    )  # fmt: skip
    plain = swept(run_cli, tmp_path / "plain", *sweep)
    stacked = swept(run_cli, tmp_path / "stacked", "hydra/launcher=stacked", *sweep)
    assert plain.returncode == stacked.returncode == 1
    assert stacked.stderr.strip().splitlines()[-1] == (
        "looplab-train: error: 1 job(s) of the sweep failed: #1 lr=1e+200"
    )
    expected, got = job_curves(tmp_path / "plain"), job_curves(tmp_path / "stacked")
    assert got.keys() == expected.keys()
    for num in expected:
        assert_close(got[num], expected[num])


@pytest.mark.slow
def test_reproduce_reruns_a_stacked_child_alone_within_the_stacks_tolerance(
    run_cli, tmp_path
) -> None:
    """Faults: a stacked child's rerun compared bitwise (NOT reproduced, over the rounding
    of batched arithmetic), or compared without saying why not bitwise."""
    from conftest import store_uri
    from test_sweep import sweep_runs

    done = run_cli(
        "-m", "hydra/launcher=stacked", "dataset=digits", "model.width=32", "train.epochs=20",
        "train.batch_size=64", "train.lr=0.05,0.1", "update=sgd", "train.momentum=0.9",
        "train.print_every=0",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    _, _, children = sweep_runs(store_uri(tmp_path))
    again = subprocess.run(
        [str(Path(sys.executable).parent / "looplab"), "reproduce", children[1].info.run_id],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert "trained in a stack of 2 (hydra/launcher=stacked)" in again.stdout
    assert "identical within 0.001 (relative)" in again.stdout
