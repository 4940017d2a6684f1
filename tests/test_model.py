"""The hand-written parts and PyTorch's own compute the same thing; shapes are guarded."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_the_four_ways_agree
from torch import nn

from looplab.errors import ShapeError
from looplab.model import (
    ACTIVATIONS,
    MODULE_ACTIVATIONS,
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
    ],
    ids=["binary-w0", "multiclass-w16-momentum", "regression-w8", "multiclass-sigmoid"],
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hand_written_activations_keep_finite_gradients_where_torch_nn_does(dtype) -> None:
    z = torch.tensor([-1000.0, -100.0, 0.0, 100.0, 1000.0], dtype=dtype)
    for name, manual in ACTIVATIONS.items():
        z_manual, z_module = z.clone().requires_grad_(), z.clone().requires_grad_()
        manual(z_manual).sum().backward()
        MODULE_ACTIVATIONS[name]()(z_module).sum().backward()
        torch.testing.assert_close(z_manual.grad, z_module.grad, msg=name)


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


def test_the_tutorials_broadcast_bug_is_real() -> None:
    """Why the guard exists: (N, 1) against (N,) silently gives an N x N loss."""
    predictions, labels = torch.full((6, 1), 0.5), torch.tensor([0.0, 1, 1, 0, 1, 1])
    assert ((predictions - labels) ** 2).shape == (6, 6)


def test_binary_quality_is_accuracy_at_probability_one_half() -> None:
    logits = torch.tensor([[-2.0], [0.5], [3.0], [-0.1]])
    labels = torch.tensor([[0.0], [0.0], [1.0], [1.0]])
    assert quality(logits, labels, "binary", 1.0).item() == pytest.approx(0.5)
