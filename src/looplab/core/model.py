"""The network and its loss, written twice: by hand, as in the tutorial, and with torch.nn.

Both versions start from the same initial numbers (`initial_parameters`) and compute the same
functions, so a run with `model.impl=manual` and one with `model.impl=module` give the same
loss history. Binary and regression models output (N, 1); multiclass models (N, classes).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from looplab.core.data import TaskKind
from looplab.core.errors import ConfigError, ShapeError
from looplab.core.schema import hidden_widths

Tensor = torch.Tensor
LossFn = Callable[[Tensor, Tensor], Tensor]

# The tutorial clamps probabilities before the log so that log(0) never happens.
TUTORIAL_EPSILON = 1e-7


def initial_parameters(
    sizes: list[int], init: str, dtype: torch.dtype, generator: torch.Generator
) -> list[tuple[Tensor, Tensor]]:
    """Weights (in, out) and biases (out,) for each layer, on the CPU.

    `default` draws from U(-1/sqrt(in), 1/sqrt(in)) as `nn.Linear` does; `seed` is the
    tutorial's `torch.rand` weights and zero bias.
    """
    layers = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        if init == "seed":
            weights = torch.rand(fan_in, fan_out, dtype=dtype, generator=generator)
            bias = torch.zeros(fan_out, dtype=dtype)
        else:
            bound = 1 / math.sqrt(fan_in)
            weights = torch.empty(fan_in, fan_out, dtype=dtype).uniform_(
                -bound, bound, generator=generator
            )
            bias = torch.empty(fan_out, dtype=dtype).uniform_(-bound, bound, generator=generator)
        layers.append((weights, bias))
    return layers


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu,  # max(z, 0), with the gradient 0 at z = 0 that nn.ReLU has
    "tanh": torch.tanh,
    # torch.sigmoid, as the tutorial calls it: 1 / (1 + exp(-z)) written out overflows for
    # z < -88 in float32 and its gradient turns NaN there, where nn.Sigmoid's is 0.
    "sigmoid": torch.sigmoid,
}
MODULE_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


class MySimpleNN:
    """The tutorial's network: plain tensors with `requires_grad=True`, forward written out.

    With no hidden layer (width 0) it is the tutorial's single neuron `x @ w + b`; each
    hidden layer is one more explicit (weights, bias) pair and activation.
    """

    def __init__(self, layers: list[tuple[Tensor, Tensor]], activation: str) -> None:
        self.layers = [
            (w.clone().requires_grad_(True), b.clone().requires_grad_(True)) for w, b in layers
        ]
        self.activation = ACTIVATIONS[activation]

    def __call__(self, x: Tensor) -> Tensor:
        *hidden, (w_out, b_out) = self.layers
        for weights, bias in hidden:
            x = self.activation(torch.matmul(x, weights) + bias)
        return torch.matmul(x, w_out) + b_out

    def parameters(self) -> list[Tensor]:
        return [tensor for layer in self.layers for tensor in layer]

    def state_dict(self) -> dict[str, Tensor]:
        """The parameters under the names and shapes of the `torch.nn` twin (`0.weight` is
        (out, in), `2.weight` the next layer's), so one saved file loads into either."""
        state: dict[str, Tensor] = {}
        for index, (weights, bias) in enumerate(self.layers):
            state[f"{2 * index}.weight"] = weights.detach().T.clone()
            state[f"{2 * index}.bias"] = bias.detach().clone()
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load what `state_dict` (or the twin's) saved; a missing or extra name is an error."""
        expected = set(self.state_dict())
        if set(state) != expected:
            raise ShapeError(f"state_dict names {sorted(state)}, expected {sorted(expected)}")
        with torch.no_grad():
            for index, (weights, bias) in enumerate(self.layers):
                weights.copy_(state[f"{2 * index}.weight"].T)
                bias.copy_(state[f"{2 * index}.bias"])

    def to(self, device: torch.device) -> MySimpleNN:
        self.layers = [
            (w.detach().to(device).requires_grad_(True), b.detach().to(device).requires_grad_(True))
            for w, b in self.layers
        ]
        return self


def module_network(layers: list[tuple[Tensor, Tensor]], activation: str) -> nn.Sequential:
    """The same network from `torch.nn` layers, loaded with the same initial numbers."""
    modules: list[nn.Module] = []
    for index, (weights, bias) in enumerate(layers):
        linear = nn.Linear(weights.shape[0], weights.shape[1], dtype=weights.dtype)
        with torch.no_grad():
            linear.weight.copy_(weights.T)
            linear.bias.copy_(bias)
        modules.append(linear)
        if index < len(layers) - 1:
            modules.append(MODULE_ACTIVATIONS[activation]())
    return nn.Sequential(*modules)


def build_model(
    n_features: int,
    n_outputs: int,
    *,
    width: int,
    activation: str,
    impl: str,
    init: str,
    dtype: torch.dtype,
    device: torch.device,
    seed: int,
    hidden: Sequence[int] | None = None,
) -> MySimpleNN | nn.Module:
    """The network with the hidden layers `hidden_widths` says, by hand or from torch.nn."""
    sizes = [n_features, *hidden_widths(width, hidden), n_outputs]
    layers = initial_parameters(sizes, init, dtype, torch.Generator().manual_seed(seed))
    if impl == "manual":
        return MySimpleNN(layers, activation).to(device)
    if impl == "module":
        return module_network(layers, activation).to(device)
    raise ConfigError(f"model.impl={impl} is not allowed: choose one of manual, module")


def user_model(
    factory: Callable[..., nn.Module], n_features: int, n_outputs: int, dtype: torch.dtype
) -> nn.Module:
    """The user's own network (`model._target_`, its keys bound by the Hydra side), called
    with the data's input and output sizes, in the run's dtype. Its output is checked as a
    built-in's is: (N, classes) logits, or (N, 1) for a binary or regression target."""
    model = factory(n_features=n_features, n_outputs=n_outputs)
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model._target_ returned a {type(model).__name__}, not a torch.nn.Module"
        )
    return model.to(dtype=dtype)


def check_shapes(prediction: Tensor, target: Tensor, task: TaskKind) -> None:
    """Refuse shapes that would broadcast, like the tutorial's (N, 1) against (N,)."""
    if task == "multiclass":
        ok = prediction.ndim == 2 and target.shape == prediction.shape[:1]
        expected = "logits (N, classes) and labels (N,)"
    else:
        ok = prediction.shape == target.shape
        expected = "the same shape for both"
    if not ok:
        raise ShapeError(
            f"prediction shape {tuple(prediction.shape)} does not fit target shape "
            f"{tuple(target.shape)}: expected {expected}; mismatched shapes would broadcast "
            "into a wrong loss"
        )


# --- Losses written out by hand -----------------------------------------------------------


def bce_with_logits(z: Tensor, y: Tensor) -> Tensor:
    """Binary cross-entropy of sigmoid(z), in the stable logits form.

    (1 - y) z + log(1 + e^-z) equals -[y log s + (1 - y) log(1 - s)] with s = sigmoid(z), but
    never takes the log of a rounded 0 or 1. log(1 + e^-z) is written `logaddexp(0, -z)`,
    which is stable for any z and has the true gradient at z = 0 (the |z| form's two kinks
    meet there and give -y instead of 1/2 - y, which a zero-bias, all-off ReLU layer hits).
    """
    return ((1 - y) * z + torch.logaddexp(torch.zeros_like(z), -z)).mean()


def tutorial_bce(z: Tensor, y: Tensor) -> Tensor:
    """The tutorial's loss: sigmoid, clamp to [1e-7, 1 - 1e-7], then the cross-entropy."""
    p = torch.clamp(torch.sigmoid(z), TUTORIAL_EPSILON, 1 - TUTORIAL_EPSILON)
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()


def cross_entropy(z: Tensor, y: Tensor) -> Tensor:
    """Softmax cross-entropy: log-sum-exp of the logits minus the logit of the true class."""
    top = z.max(dim=1, keepdim=True).values
    log_sum_exp = top.squeeze(1) + torch.log(torch.exp(z - top).sum(dim=1))
    return (log_sum_exp - z.gather(1, y.unsqueeze(1)).squeeze(1)).mean()


def squared_error(z: Tensor, y: Tensor) -> Tensor:
    """Mean squared error."""
    return ((z - y) ** 2).mean()


MANUAL_LOSSES: dict[TaskKind, LossFn] = {
    "binary": bce_with_logits,
    "multiclass": cross_entropy,
    "regression": squared_error,
}
MODULE_LOSSES: dict[TaskKind, Callable[[], nn.Module]] = {
    "binary": nn.BCEWithLogitsLoss,
    "multiclass": nn.CrossEntropyLoss,
    "regression": nn.MSELoss,
}


def loss_function(task: TaskKind, impl: str, loss: str = "logits") -> LossFn:
    """The loss for a task, checked for shapes; `torch.nn`'s own with `impl=module`."""
    if loss == "tutorial":
        if task != "binary":
            raise ConfigError(
                f"model.loss=tutorial is for binary tasks only; this data set is {task}: "
                "use model.loss=logits"
            )
        raw: LossFn = tutorial_bce
    elif impl == "module":
        raw = MODULE_LOSSES[task]()
    elif impl == "manual":
        raw = MANUAL_LOSSES[task]
    else:
        raise ConfigError(f"model.impl={impl} is not allowed: choose one of manual, module")

    def checked(prediction: Tensor, target: Tensor) -> Tensor:
        check_shapes(prediction, target, task)
        return raw(prediction, target)

    checked.__doc__ = raw.__doc__
    return checked


def quality(prediction: Tensor, target: Tensor, task: TaskKind, target_std: float) -> Tensor:
    """Accuracy for classes, RMSE in the target's own units for regression (a device tensor)."""
    check_shapes(prediction, target, task)
    if task == "regression":
        return torch.sqrt(((prediction - target) ** 2).mean()) * target_std
    # A logit above 0 is a probability above 1/2; `mean(dtype=...)` counts without a copy.
    predicted = prediction > 0 if task == "binary" else prediction.argmax(dim=1)
    return (predicted == target).mean(dtype=prediction.dtype)
