"""The hand-written parts and PyTorch's own compute the same thing; shapes are guarded."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_the_four_ways_agree
from torch import nn

from looplab.core.errors import ShapeError
from looplab.core.model import (
    bce_with_logits,
    cross_entropy,
    loss_function,
    quality,
    tutorial_bce,
)


@pytest.mark.parametrize(
    "setting",
    [
        # the tutorial's network: one neuron, full batch, many epochs
        ("dataset=breast_cancer", "train.epochs=600", "train.lr=0.5"),
        # a hidden layer, mini-batches, momentum and weight decay done by hand
        (
            "dataset=wine",
            "model.width=16",
            "model.activation=tanh",
            "train.batch_size=32",
            "train.momentum=0.9",
            "train.weight_decay=0.01",
            "train.epochs=300",
        ),
        ("dataset=diabetes", "model.width=8", "train.epochs=300", "train.lr=0.05"),
        ("dataset=iris", "model.width=6", "model.activation=sigmoid", "train.epochs=200"),
        # deeper: two hidden layers, each an explicit (weights, bias) pair by hand
        (
            "dataset=digits",
            "model.hidden=[24,12]",
            "model.activation=tanh",
            "train.batch_size=64",
            "train.momentum=0.9",
            "train.epochs=40",
        ),
    ],
    ids=[
        "binary-w0",
        "multiclass-w16-momentum",
        "regression-w8",
        "multiclass-sigmoid",
        "multiclass-hidden-24-12",
    ],
)
def test_manual_and_torch_parts_give_the_same_loss_history(make_config, tmp_path, setting):
    assert_the_four_ways_agree(make_config, tmp_path, *setting)


def test_hand_written_losses_equal_torch_nn_losses_even_when_saturated() -> None:
    z = torch.tensor([[-800.0], [-30.0], [0.0], [2.5], [40.0], [900.0]], dtype=torch.float64)
    y = torch.tensor([[0.0], [1.0], [1.0], [0.0], [1.0], [0.0]], dtype=torch.float64)
    torch.testing.assert_close(bce_with_logits(z, y), nn.BCEWithLogitsLoss()(z, y))
    logits = torch.randn(20, 4, dtype=torch.float64) * 50
    labels = torch.randint(0, 4, (20,))
    torch.testing.assert_close(cross_entropy(logits, labels), nn.CrossEntropyLoss()(logits, labels))


def test_logits_loss_keeps_finite_gradients_in_float32_when_the_sigmoid_rounds_to_one() -> None:
    z = torch.tensor([[40.0], [-40.0]], requires_grad=True)  # sigmoid(40) == 1.0 in float32
    y = torch.tensor([[0.0], [1.0]])
    bce_with_logits(z, y).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().min() > 0.4


def test_logits_loss_has_torchs_gradient_at_exactly_zero() -> None:
    """Fault: the hand-written logits loss takes a one-sided gradient at z = 0 (the kinks of
    |z| and max(-z, 0) meet there), -y instead of sigmoid(0) - y = 1/2 - y.

    z = 0 exactly is no corner case: with `model.init=seed` (zero biases) and a ReLU hidden
    layer, every row whose hidden units are all off has the logit 0 at the first step.
    """
    z = torch.tensor([[0.0], [0.0], [2.0], [-3.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[0.0], [1.0], [1.0], [0.0]], dtype=torch.float64)
    (manual,) = torch.autograd.grad(bce_with_logits(z, y), z)
    (module,) = torch.autograd.grad(nn.BCEWithLogitsLoss()(z, y), z)
    torch.testing.assert_close(manual, module)


def test_tutorial_loss_is_the_clamped_formula() -> None:
    z = torch.tensor([[0.3], [100.0]], dtype=torch.float64)
    y = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    p = torch.sigmoid(z).clamp(1e-7, 1 - 1e-7)
    expected = -(y * p.log() + (1 - y) * (1 - p).log()).mean()
    torch.testing.assert_close(tutorial_bce(z, y), expected)


@pytest.mark.parametrize("impl", ["manual", "module"])
@pytest.mark.parametrize("task", ["binary", "regression"])
def test_losses_refuse_the_tutorials_broadcasting_shapes(impl, task) -> None:
    predictions = torch.zeros(8, 1)
    labels = torch.ones(8)  # (N,) against (N, 1) would broadcast into an 8 x 8 loss
    with pytest.raises(ShapeError, match=r"\(8, 1\).*\(8,\)"):
        loss_function(task, impl)(predictions, labels)
    with pytest.raises(ShapeError):
        quality(predictions, labels, task, 1.0)


def test_multiclass_loss_refuses_one_hot_targets() -> None:
    with pytest.raises(ShapeError):
        loss_function("multiclass", "manual")(torch.zeros(5, 3), torch.zeros(5, 3))


def test_binary_quality_is_accuracy_at_probability_one_half() -> None:
    logits = torch.tensor([[-2.0], [0.5], [3.0], [-0.1]])
    labels = torch.tensor([[0.0], [0.0], [1.0], [1.0]])
    assert quality(logits, labels, "binary", 1.0).item() == pytest.approx(0.5)


# --- device=auto: an accelerator only for a step with the work for it -------------------------


def test_auto_takes_an_accelerator_only_for_a_step_with_the_work_for_it() -> None:
    """Faults: auto sending a tiny model to the GPU (slower there: make bench, group cuda),
    auto never taking it, or keeping to the CPU without saying why."""
    from looplab.core.device import AUTO_MIN_STEP_WORK, choose_auto

    small, large = AUTO_MIN_STEP_WORK - 1, AUTO_MIN_STEP_WORK
    device, reason = choose_auto(["cuda", "cpu"], small)
    assert device.type == "cpu" and f"a step of {small:,} multiply-adds" in reason
    assert choose_auto(["cuda", "cpu"], large)[0].type == "cuda"
    assert choose_auto(["mps", "cpu"], large)[0].type == "mps"
    assert choose_auto(["cpu"], small) == (torch.device("cpu"), "")


@pytest.mark.parametrize(
    ("overrides", "work"),
    [
        ((), 455 * 30),  # the tutorial: 455 training rows a step, 30 weights
        (("train.batch_size=32",), 32 * 30),  # a step is a mini-batch
        (("model.width=8",), 455 * (30 + 1) * 8),  # two layers
        (("dataset=iris",), 120 * 4 * 3),  # three outputs
        (("model.hidden=[8,4]",), 455 * (30 * 8 + 8 * 4 + 4 * 1)),  # every layer
    ],
)
def test_the_step_work_auto_weighs_is_the_runs(make_config, monkeypatch, overrides, work) -> None:
    """Faults: the step's work taken from the whole table instead of a step's rows (batch
    size ignored), or from one layer, or without the outputs. With no GPU here, auto is
    shown an accelerator; the work is small enough that it keeps to the CPU and says so."""
    from looplab.core import device
    from looplab.run.prepare import prepare

    monkeypatch.setattr(device, "available_devices", lambda: ["cuda", "cpu"])
    ready = prepare(make_config("device=auto", "tracking.enabled=false", *overrides))
    assert ready.device.type == "cpu"
    assert f"a step of {work:,} multiply-adds" in ready.device_reason
