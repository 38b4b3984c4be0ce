"""DeepFD's 52 real faults (Cao et al., ICSE'22; Stack Overflow posts and GitHub projects, Keras),
ported to PyTorch: one small function per case builds its buggy or its fixed version.

Each :class:`RealBug` records DeepFD's fault types, the root cause in words, the layer where the
fault sits (when it sits in one), the trainscope labels that name it (``expect``: today's labels;
``proposed``: labels that should exist for it, which count as soon as trainscope has them), the
labels that name the *root cause* (``root``), and the one-click fix that should repair it.

Porting rules (see ``README.md`` beside this file): the buggy line and the patch are taken from
DeepFD's spreadsheet (``shared/deepfd-benchmark.md``); the data is scikit-learn's (bundled sets or
generators) shaped like the post's (raw pixel values stay raw, unscaled features stay unscaled);
Keras' probability-taking losses become the PyTorch form a user writing the same mistake would
write (a softmax / sigmoid module in the model, ``nn.BCELoss`` / ``nn.MSELoss`` on it, or logits
into the ``*WithLogits`` / cross-entropy losses); Keras defaults are kept (SGD lr 0.01, Adam /
RMSprop lr 0.001, ``init='normal'`` = N(0, 0.05)); epochs and sizes are scaled to seconds on CPU.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from . import programs as P
from .programs import Program

# ------------------------------------------------------------------------------------ registry
FAULT_LABELS: dict[str, tuple[str, ...]] = {
    "lr": ("lr_too_high", "lr_too_low", "divergence", "oscillation", "nan_inf", "not_learning"),
    "opt": ("lr_too_low", "not_learning", "oscillation"),
    "act": ("probabilities_into_loss", "wrong_loss", "saturated_activations", "dead_units", "not_learning"),
    "loss": ("wrong_loss", "probabilities_into_loss"),
    "epoch": (),
    "init": ("symmetric_init", "vanishing_activations", "exploding_activations", "bad_loss_at_init", "dead_units"),
    "missing_prep": ("unnormalized_inputs",),
    "wrong_prep": ("label_noise", "unnormalized_inputs"),
    "layer_properties": ("wrong_loss",),
    "missing/redundant/wrong_layers": ("overfitting", "vanishing_gradients", "vanishing_activations", "dead_units"),
    "training_data_quality": ("label_noise", "wrong_loss"),
    "batch_size": (),
    "model_type&properties": (),
}
"""DeepFD fault type -> the trainscope labels that name the condition it produces when it produces
one (``shared/deepfd-benchmark.md``, last table).  Each case narrows this to what its own fault
produces (:attr:`RealBug.expect`)."""

FAULT_PROPOSED: dict[str, tuple[str, ...]] = {
    "act": ("head_loss_mismatch",),
    "loss": ("head_loss_mismatch",),
    "epoch": ("still_improving",),
    "missing_prep": ("unscaled_targets",),
    "wrong_prep": ("class_imbalance",),
}
"""DeepFD fault types whose condition has no trainscope label today, and the label that should name
it: ``head_loss_mismatch`` (output activation / loss / target that do not fit: softmax over one
unit, MSE on one-hot classes, softmax into a multi-label BCE, sigmoid into cross-entropy, an output
activation that cannot reach the targets' range), ``still_improving`` (stopped while the
validation metric still improves), ``unscaled_targets`` (regression targets far from unit scale),
``class_imbalance`` (one class dominates the targets, up to a single class)."""

HEAD = ("out", "head")
"""Layer names of the output layer and its activation in the ported models."""


@dataclass(frozen=True)
class RealBug:
    no: int
    post: str
    faults: tuple[str, ...]
    cause: str
    build: Callable[[bool], Program]
    expect: tuple[str, ...] = ()
    root: tuple[str, ...] = ()
    module: tuple[str, ...] = ()
    proposed: tuple[str, ...] = ()
    fix: dict[str, Any] | None = None
    note: str = ""
    fixed_true: tuple[str, ...] = ()  # labels that stay true on the fixed version (the patch leaves that condition)

    @property
    def faulty(self) -> bool:
        return self.faults != ("origin",)

    @property
    def name(self) -> str:
        return f"{self.no:02d}_{self.post}"


CASES: list[RealBug] = []

EXCLUDED: dict[int, str] = {
    24: "51930566: no patch in DeepFD's spreadsheet, whose note says the original already reaches accuracy 1 "
        "with its sigmoid; there is no fixed program to port.",
    35: "39810655: Keras' categorical_crossentropy given integer labels runs silently; PyTorch's CrossEntropyLoss "
        "raises on the same mistake (float targets of the wrong shape), so the fault cannot occur silently in a "
        "PyTorch loop. DeepFD's note also says the fix barely changes accuracy.",
    38: "41947039: no patch and no faulty line in DeepFD's spreadsheet (marked 'slow').",
    52: "kaggle-melbourne_properties: the patch replaces the model by a command-line sweep over architectures "
        "(with optional L1); there is no single fixed program to compare with.",
}
"""DeepFD's evaluated cases that are not ported, and why."""


def case(no: int, post: str, faults: str, cause: str, *, expect: tuple[str, ...] = (),
         root: tuple[str, ...] = (), module: tuple[str, ...] = (), proposed: tuple[str, ...] = (),
         fix: dict[str, Any] | None = None, note: str = "",
         fixed_true: tuple[str, ...] = ()) -> Callable[[Callable[[bool], Program]], Callable[[bool], Program]]:
    def deco(fn: Callable[[bool], Program]) -> Callable[[bool], Program]:
        CASES.append(RealBug(no, post, tuple(faults.split()), cause, fn, expect, root, module, proposed, fix, note,
                             fixed_true))
        return fn

    return deco


def fx(action: str, **params: Any) -> dict[str, Any]:
    return {"action": action, "params": params}


# ------------------------------------------------------------------------------------ builders
_ACT: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "selu": nn.SELU, "elu": nn.ELU,
    "softmax": lambda: nn.Softmax(dim=1),
}


def mlp(*sizes: int, act: str = "relu", head: str | None = None) -> nn.Sequential:
    """Linear layers ``fc1, fc2, ..., out`` with ``act`` between them and an optional output
    activation ``head`` (a Keras ``Dense(..., activation=head)`` on the last layer)."""
    layers: list[tuple[str, nn.Module]] = []
    pairs = list(itertools.pairwise(sizes))
    for i, (a, b) in enumerate(pairs):
        last = i == len(pairs) - 1
        layers.append(("out" if last else f"fc{i + 1}", nn.Linear(a, b)))
        if not last:
            layers.append((f"{act}{i + 1}", _ACT[act]()))
    if head is not None:
        layers.append(("head", _ACT[head]()))
    return P.seq(*layers)


def optim(name: str, model: nn.Module, lr: float | None = None, **kw: Any) -> torch.optim.Optimizer:
    """The optimizer a Keras string names, with Keras' defaults (``'sgd'``: lr 0.01, no momentum;
    ``'adam'``: 0.001; ``'rmsprop'``: 0.001, rho 0.9; ``'adamax'``: 0.002)."""
    ps = model.parameters()
    if name == "sgd":
        return torch.optim.SGD(ps, lr=lr if lr is not None else 0.01, **kw)
    if name == "adam":
        return torch.optim.Adam(ps, lr=lr if lr is not None else 1e-3, eps=1e-7, **kw)
    if name == "rmsprop":
        return torch.optim.RMSprop(ps, lr=lr if lr is not None else 1e-3, alpha=0.9, eps=1e-7, **kw)
    if name == "adamax":
        return torch.optim.Adamax(ps, lr=lr if lr is not None else 2e-3, eps=1e-7, **kw)
    raise ValueError(name)


def digits_data(scale: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Digits split 75 / 25; ``scale``: ``raw`` (0..16), ``pixels`` (0..255, as MNIST is
    loaded), ``unit`` (/16), ``std`` (standardized with the training statistics)."""
    x, y = P.digits()
    if scale == "pixels":
        x = x * (255.0 / 16.0)
    elif scale == "unit":
        x = x / 16.0
    x, y, xv, yv = P.split(x, y)
    if scale == "std":
        x, xv = P.standardize(x), P.standardize(xv, x)
    return x, y, xv, yv


def tabular(x: Tensor, y: Tensor, scaled: bool, seed: int = 0, frac: float = 0.75) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x, y, xv, yv = P.split(x, y, frac, seed=seed)
    if scaled:
        x, xv = P.standardize(x), P.standardize(xv, x)
    return x, y, xv, yv


def prog(model: nn.Module, opt: torch.optim.Optimizer, loss: nn.Module,
         data: tuple[Tensor, Tensor, Tensor, Tensor], steps: int, metric: P.Metric, batch: int = 32) -> Program:
    x, y, xv, yv = data
    return Program(model, opt, loss, x, y, xv, yv, steps, metric, batch=batch)


def ep(epochs: int, data: tuple[Tensor, ...], batch: int = 32) -> int:
    return P.steps_for(epochs, len(data[0]), batch)


def fy(data: tuple[Tensor, Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Class indices as float column targets (for BCE / MSE on a one-unit output)."""
    x, y, xv, yv = data
    return x, y.float().unsqueeze(1), xv, yv.float().unsqueeze(1)


def oh(data: tuple[Tensor, Tensor, Tensor, Tensor], classes: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x, y, xv, yv = data
    return x, P.one_hot(y, classes), xv, P.one_hot(yv, classes)


def reg_data(scaled_x: bool, scaled_y: bool, *, x_scale: float = 1.0, x_shift: float = 0.0,
             y_shift: float = 0.0, n: int = 1000, features: int = 8, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``make_regression`` as a user's raw table: features ``x * x_scale + x_shift``, target
    ``y + y_shift`` (std ~ 100); ``scaled_*``: standardized with the training statistics."""
    x, y = P.regression(n=n, features=features, seed=seed)
    x = x * x_scale + x_shift
    y = y + y_shift
    x, y, xv, yv = P.split(x, y, seed=seed)
    if scaled_x:
        x, xv = P.standardize(x), P.standardize(xv, x)
    if scaled_y:
        mu, sd = y.mean(0), y.std(0)
        y, yv = (y - mu) / sd, (yv - mu) / sd
    return x, y, xv, yv


def binary_head(out: Tensor, y: Tensor) -> float:
    """Binary accuracy of a two-unit (argmax) or one-unit (logit > 0) head against 0 / 1 labels."""
    pred = out.argmax(-1) if out.shape[-1] == 2 else (out.reshape(-1) > 0).long()
    return float((pred == y.reshape(-1).long()).float().mean())


# ------------------------------------------------------------------------------------ the cases
@case(1, "48385830", "act loss lr",
      "No hidden or output activation (a linear model), N(0, 1) weights and biases, MSE on one-hot digits and "
      "SGD at lr 3.0: the updates blow the weights up",
      expect=("nan_inf", "divergence", "lr_too_high", "exploding_gradients", "exploding_activations", "oscillation"),
      root=("lr_too_high", "exploding_activations"), proposed=("head_loss_mismatch",),
      fix=fx("scale_lr", factor=0.01),
      note="Fixed: sigmoid hidden layer, softmax + categorical cross-entropy (logits into CrossEntropyLoss), SGD lr 3.0 "
           "kept as in the patch. Digits scaled to [0, 1] like the post's MNIST. The patch keeps the N(0, 1) weights and "
           "biases, so the fixed program still starts confidently wrong with saturated sigmoids.",
      fixed_true=("bad_loss_at_init", "saturated_activations"))
def c01(fixed: bool) -> Program:
    d = digits_data("unit")
    model = P.init_normal(mlp(64, 30, 10, act="sigmoid") if fixed else P.seq(("fc1", nn.Linear(64, 30)), ("out", nn.Linear(30, 10))), 1.0, 1.0)
    loss: nn.Module = nn.CrossEntropyLoss() if fixed else nn.MSELoss()
    return prog(model, optim("sgd", model, 3.0), loss, d if fixed else oh(d, 10), ep(3, d, 10), P.accuracy, batch=10)


@case(2, "44164749", "epoch lr act loss",
      "Plain SGD at lr 0.01 for 5 epochs: far too slow for the run's length",
      expect=("lr_too_low", "not_learning"), root=("lr_too_low",), proposed=("still_improving",),
      fix=fx("scale_lr", factor=5.0),
      note="Fixed: lr 0.05 and 10 epochs (the patch's kept change; the activation / loss swap was tried and not kept). "
           "MNIST MLP -> standardized digits, batch 128.")
def c02(fixed: bool) -> Program:
    d = digits_data("std")
    model = mlp(64, 64, 10)
    return prog(model, optim("sgd", model, 0.05 if fixed else 0.01), nn.CrossEntropyLoss(), d,
                ep(10 if fixed else 5, d, 128), P.accuracy, batch=128)


@case(3, "31556268", "loss epoch lr opt",
      "XOR with a 2-4-1 tanh / sigmoid net, MSE and SGD lr 0.05 (momentum 0.11) for 1000 epochs: too slow to "
      "leave the plateau",
      expect=("lr_too_low", "not_learning"), root=("lr_too_low",), proposed=("still_improving",),
      fix=fx("scale_lr", factor=10.0),
      note="Fixed: lr 0.1 and 10x the epochs (the patch); epochs scaled 1000 -> 200 and 10000 -> 2000 (batch of 4 = one "
           "step per epoch).")
def c03(fixed: bool) -> Program:
    x, y = P.xor()
    model = mlp(2, 4, 1, act="tanh", head="sigmoid")
    opt = optim("sgd", model, 0.1 if fixed else 0.05, momentum=0.11, nesterov=True)
    return prog(model, opt, nn.MSELoss(), (x, y, x, y), 2000 if fixed else 200, P.thresholded(0.5), batch=4)


@case(4, "50306988", "lr epoch",
      "Adam at lr 0.001 for 5 epochs of batch 128 on a sigmoid / binary cross-entropy head: stopped long before "
      "it converged",
      expect=("lr_too_low", "not_learning"), root=("lr_too_low",), proposed=("still_improving",),
      fix=fx("scale_lr", factor=10.0),
      note="Fixed: lr 0.01 and 10 epochs. The sigmoid + BCE head (already in the original) becomes BCEWithLogits on "
           "one-hot targets.")
def c04(fixed: bool) -> Program:
    d = oh(digits_data("std"), 10)
    model = mlp(64, 64, 10)
    return prog(model, optim("adam", model, 0.01 if fixed else 0.001), nn.BCEWithLogitsLoss(), d,
                ep(10 if fixed else 5, d, 128), P.accuracy, batch=128)


@case(5, "48251943", "act",
      "ReLU on the regression output while the targets lie in [-1, 1]: the negative half cannot be reached",
      expect=("dead_units",), root=("dead_units", "head_loss_mismatch"), module=HEAD, proposed=("head_loss_mismatch",),
      note="Fixed: tanh output. Targets: make_regression squashed to [-1, 1].")
def c05(fixed: bool) -> Program:
    x, y, xv, yv = reg_data(True, True)
    m = y.abs().max()
    model = mlp(8, 32, 32, 1, head="tanh" if fixed else "relu")
    return prog(model, optim("adam", model), nn.MSELoss(), (x, y / m, xv, yv / m), 400, P.r2)


@case(6, "38648195", "act loss epoch",
      "Softmax over a one-unit output (always 1.0) trained with MSE: the output is constant and nothing learns",
      expect=("wrong_loss", "not_learning", "vanishing_gradients", "frozen_parameters"), root=("wrong_loss", "head_loss_mismatch"), module=HEAD,
      proposed=("head_loss_mismatch",),
      note="Fixed: sigmoid + binary cross-entropy (BCELoss on the sigmoid), twice the epochs. Breast-cancer "
           "data, standardized.")
def c06(fixed: bool) -> Program:
    d = fy(tabular(*P.cancer(), scaled=True))
    model = mlp(30, 16, 1, head="sigmoid" if fixed else "softmax")
    loss: nn.Module = nn.BCELoss() if fixed else nn.MSELoss()
    return prog(model, optim("sgd", model), loss, d, ep(20 if fixed else 10, d), P.thresholded(0.5))


@case(7, "33969059", "act",
      "Softmax over the one-unit regression output: the prediction is the constant 1.0",
      expect=("wrong_loss", "not_learning", "vanishing_gradients", "frozen_parameters"), root=("wrong_loss", "head_loss_mismatch"), module=HEAD,
      proposed=("head_loss_mismatch",),
      note="Fixed: linear output. DeepFD notes no fix helped the original (stock prices); here the fixed program "
           "does learn.")
def c07(fixed: bool) -> Program:
    d = reg_data(True, True)
    model = mlp(8, 32, 1, head=None if fixed else "softmax")
    return prog(model, optim("rmsprop", model), nn.MSELoss(), d, 300, P.r2)


@case(8, "55328966", "act opt missing_prep",
      "Raw 0..255 pixels, a sigmoid output into cross-entropy, and plain SGD",
      expect=("unnormalized_inputs", "probabilities_into_loss"), root=("unnormalized_inputs",), module=("fc1", *HEAD),
      proposed=("head_loss_mismatch",), fix=fx("switch_optimizer", name="adam", lr=0.01),
      note="Fixed: pixels / 255, softmax (logits into CrossEntropyLoss), Adam at the same lr 0.01.")
def c08(fixed: bool) -> Program:
    x, y, xv, yv = digits_data("pixels")
    if fixed:
        x, xv = x / 255, xv / 255
    model = mlp(64, 64, 10, head=None if fixed else "sigmoid")
    return prog(model, optim("adam" if fixed else "sgd", model, 0.01), nn.CrossEntropyLoss(), (x, y, xv, yv),
                ep(5, (x,)), P.accuracy)


@case(9, "34311586", "lr act init epoch batch_size",
      "Sigmoid MLP with N(0, 0.05) init and SGD lr 0.001 (momentum 0.9): barely moves",
      expect=("lr_too_low", "not_learning", "vanishing_gradients", "vanishing_activations", "saturated_activations"),
      root=("lr_too_low", "vanishing_activations"), fix=fx("switch_optimizer", name="adam", lr=0.001),
      note="Fixed: Adam at lr 0.001 (the patch). make_classification, binary, sigmoid + BCELoss head.")
def c09(fixed: bool) -> Program:
    d = fy(tabular(*P.classification(1200, 20, 8, seed=9), scaled=True))
    model = P.init_normal(mlp(20, 64, 64, 1, act="sigmoid", head="sigmoid"), 0.05)
    opt = optim("adam", model, 0.001) if fixed else optim("sgd", model, 0.001, momentum=0.9, nesterov=True)
    return prog(model, opt, nn.BCELoss(), d, 300, P.thresholded(0.5))


@case(10, "31880720", "act epoch",
      "Softmax over a one-unit binary output (constant 1.0) into binary cross-entropy, one epoch",
      expect=("wrong_loss", "not_learning", "vanishing_gradients", "frozen_parameters"), root=("wrong_loss", "head_loss_mismatch"), module=HEAD,
      proposed=("head_loss_mismatch", "still_improving"),
      note="Fixed: sigmoid output and 40 epochs (the patch); sizes scaled: 1 -> 15 epochs buggy, 40 fixed would be "
           "thousands of steps, so 5 -> 20.")
def c10(fixed: bool) -> Program:
    d = fy(tabular(*P.classification(800, 20, 6, seed=10), scaled=True))
    model = mlp(20, 32, 1, head="sigmoid" if fixed else "softmax")
    return prog(model, optim("adam", model), nn.BCELoss(), d, ep(20 if fixed else 5, d), P.thresholded(0.5))


@case(11, "39525358", "act lr missing_prep",
      "Unscaled breast-cancer features (areas ~1000) into a small MLP",
      expect=("unnormalized_inputs",), root=("unnormalized_inputs",), module=("fc1",), fix=None,
      note="Fixed: StandardScaler and Adam lr 0.1 (the patch). The missing output sigmoid (Keras BCE on a linear "
           "output) is not ported: PyTorch's BCELoss raises on values outside [0, 1], so both versions keep the "
           "sigmoid. No one-click fix rescales data.")
def c11(fixed: bool) -> Program:
    d = fy(tabular(*P.cancer(), scaled=fixed))
    model = mlp(30, 12, 8, 1, head="sigmoid")
    return prog(model, optim("adam", model, 0.01 if fixed else 0.001), nn.BCELoss(), d, ep(15, d), P.thresholded(0.5))


@case(12, "39217567", "act batch_size",
      "Two sigmoid hidden layers with Keras' N(0, 0.05) init on a regression: the signal shrinks and learning "
      "stalls",
      expect=("vanishing_activations", "vanishing_gradients", "saturated_activations", "not_learning", "lr_too_low"),
      root=("vanishing_activations", "vanishing_gradients"), module=("fc1", "fc2"),
      fix=fx("reinit", layers="all", scheme="lsuv"),
      note="Fixed: ReLU hidden layers (the patch), same init.")
def c12(fixed: bool) -> Program:
    d = reg_data(True, True)
    model = P.init_normal(mlp(8, 8, 8, 1, act="relu" if fixed else "sigmoid"), 0.05)
    return prog(model, optim("sgd", model, 0.05), nn.MSELoss(), d, 300, P.r2, batch=16)


@case(13, "48934338", "lr",
      "SGD at lr 0.1 on a regression with raw targets (std ~100): the first updates overflow",
      expect=("nan_inf", "divergence", "lr_too_high", "exploding_gradients", "oscillation"),
      root=("lr_too_high",), fix=fx("scale_lr", factor=0.001),
      note="Fixed: lr 0.0001 (the patch). Targets stay raw in both versions.")
def c13(fixed: bool) -> Program:
    d = reg_data(True, False)
    model = mlp(8, 16, 1)
    return prog(model, optim("sgd", model, 0.0001 if fixed else 0.1), nn.MSELoss(), d, 300, P.r2)


@case(14, "47724077", "opt lr missing_prep epoch",
      "Unscaled wine features (proline ~1000) with Adam at lr 0.001",
      expect=("unnormalized_inputs",), root=("unnormalized_inputs",), module=("fc1",),
      note="Fixed: StandardScaler and Adam lr 0.01 (the patch).")
def c14(fixed: bool) -> Program:
    d = tabular(*P.wine(), scaled=fixed)
    model = mlp(13, 32, 3)
    return prog(model, optim("adam", model, 0.01 if fixed else 0.001), nn.CrossEntropyLoss(), d, ep(30, d), P.accuracy)


@case(15, "59325381", "loss wrong_prep",
      "`y_train = y_train / 255` instead of `x_test = x_test / 255`: every training label becomes class 0 and "
      "the test pixels stay raw",
      expect=("label_noise",), root=("label_noise",), proposed=("class_imbalance",),
      note="Keras casts the divided sparse labels to integers; the PyTorch user casts with .long() (CrossEntropyLoss "
           "needs class indices), with the same result. Fixed: labels intact, test pixels / 255.")
def c15(fixed: bool) -> Program:
    x, y, xv, yv = digits_data("pixels")
    x = x / 255
    if fixed:
        xv = xv / 255
    else:
        y = (y.float() / 255).long()
    model = mlp(64, 64, 10)
    return prog(model, optim("adam", model), nn.CrossEntropyLoss(), (x, y, xv, yv), ep(5, (x,)), P.accuracy)


@case(16, "59278771", "act opt missing_prep",
      "Raw iris measurements, a sigmoid output layer into cross-entropy",
      expect=("probabilities_into_loss", "unnormalized_inputs"), root=("probabilities_into_loss", "unnormalized_inputs", "head_loss_mismatch"),
      module=("fc1", *HEAD), proposed=("head_loss_mismatch",),
      note="Fixed: StandardScaler, SELU hidden layer, softmax output (logits into CrossEntropyLoss), SGD (the patch; "
           "lr 0.1 instead of Keras' 0.01 to converge in the scaled-down run).")
def c16(fixed: bool) -> Program:
    d = tabular(*P.iris(), scaled=fixed)
    model = P.init_normal(mlp(4, 4, 3, act="selu" if fixed else "relu", head=None if fixed else "sigmoid"), 0.05)
    opt = optim("sgd", model, 0.1) if fixed else optim("adam", model)
    return prog(model, opt, nn.CrossEntropyLoss(), d, ep(100, d), P.accuracy)


@case(17, "52800582", "missing_prep",
      "A 1-D regression on raw x in [0, 1000] and raw y (scale ~500): neither is scaled",
      expect=("unnormalized_inputs",), root=("unnormalized_inputs", "unscaled_targets"), module=("fc1",),
      proposed=("unscaled_targets",),
      note="Fixed: StandardScaler on x and y (the patch); R^2 is invariant to the target's scaling, so both versions "
           "are scored on the same footing.")
def c17(fixed: bool) -> Program:
    g = torch.Generator().manual_seed(17)
    x = torch.rand(1000, 1, generator=g) * 1000
    y = 200 * torch.sin(x / 120) + x / 2 + 5 * torch.randn(1000, 1, generator=g)
    x, y, xv, yv = P.split(x, y)
    if fixed:
        mx, sx, my, sy = x.mean(0), x.std(0), y.mean(0), y.std(0)
        x, xv, y, yv = (x - mx) / sx, (xv - mx) / sx, (y - my) / sy, (yv - my) / sy
    model = mlp(1, 32, 32, 1)
    return prog(model, optim("adam", model, 0.01), nn.MSELoss(), (x, y, xv, yv), 400, P.r2)


@case(18, "41372874", "origin",
      "No fault (DeepFD's healthy control: 'no issue in structure')",
      note="Both versions are the same healthy program: a digits MLP with Adam. Any warning on it is a false alarm.")
def c18(fixed: bool) -> Program:
    del fixed
    d = digits_data("std")
    model = mlp(64, 64, 10)
    return prog(model, optim("adam", model), nn.CrossEntropyLoss(), d, ep(5, d), P.accuracy)


@case(19, "34673164", "missing/redundant/wrong_layers layer_roperties act loss",
      "Softmax output trained with MSE on one-hot targets",
      expect=("not_learning", "lr_too_low", "vanishing_gradients"), root=("wrong_loss",), module=HEAD,
      proposed=("head_loss_mismatch",),
      note="DeepFD relabelled the original 'origin' (accuracy already 1); ported anyway. Fixed: logits into "
           "CrossEntropyLoss (the patch's tried fixes were BN / sigmoid + BCE, none kept).")
def c19(fixed: bool) -> Program:
    d = tabular(*P.iris(), scaled=True)
    model = mlp(4, 16, 3, head=None if fixed else "softmax")
    if not fixed:
        d = oh(d, 3)
    loss: nn.Module = nn.CrossEntropyLoss() if fixed else nn.MSELoss()
    return prog(model, optim("sgd", model, 0.1), loss, d, ep(40, d), P.accuracy)


@case(20, "48221692", "act",
      "Sigmoid on a regression output whose standardized targets span about [-3, 3]",
      expect=("saturated_activations",), root=("saturated_activations", "head_loss_mismatch"), module=HEAD,
      proposed=("head_loss_mismatch",),
      note="Fixed: linear output.")
def c20(fixed: bool) -> Program:
    d = reg_data(True, True)
    model = mlp(8, 32, 1, head=None if fixed else "sigmoid")
    return prog(model, optim("adam", model), nn.MSELoss(), d, 400, P.r2)


@case(21, "50079585", "epoch lr act loss layer_properties",
      "Three iris classes through one sigmoid unit and binary cross-entropy on targets 0 / 1 / 2",
      expect=("wrong_loss",), root=("wrong_loss",), module=HEAD, proposed=("head_loss_mismatch",),
      note="Fixed: three outputs, softmax + categorical cross-entropy (logits into CrossEntropyLoss), RMSprop lr "
           "0.005, 20 epochs. Keras' sigmoid + binary cross-entropy becomes BCEWithLogitsLoss on the one logit "
           "(PyTorch's BCELoss raises on targets outside [0, 1]; the logits form runs silently). The one-unit output "
           "predicts class 0 for every row (argmax of one column).")
def c21(fixed: bool) -> Program:
    d = tabular(*P.iris(), scaled=True)
    if fixed:
        model = mlp(4, 16, 3)
        return prog(model, optim("rmsprop", model, 0.005), nn.CrossEntropyLoss(), d, ep(20, d), P.accuracy)
    model = mlp(4, 16, 1)
    return prog(model, optim("rmsprop", model), nn.BCEWithLogitsLoss(), fy(d), ep(10, d),
                lambda out, y: P.accuracy(out, y.reshape(-1).long()))


@case(22, "45337371", "act",
      "Softmax output on a multi-label task trained with binary cross-entropy: the labels compete for one unit "
      "of probability",
      expect=(), root=("head_loss_mismatch",), module=HEAD, proposed=("head_loss_mismatch",),
      note="Fixed: sigmoid output (the patch). make_multilabel_classification, 6 labels, about 2 per row.")
def c22(fixed: bool) -> Program:
    x, y = P.multilabel(seed=22)
    d = tabular(x, y, scaled=True)
    model = mlp(20, 64, 6, head="sigmoid" if fixed else "softmax")
    return prog(model, optim("adam", model), nn.BCELoss(), d, 300, P.thresholded(0.5))


@case(23, "44066044", "missing_prep",
      "Raw features (scale ~1000, offset 5000) into a ReLU regression net",
      expect=("unnormalized_inputs",), root=("unnormalized_inputs",), module=("fc1",),
      note="Fixed: preprocessing.scale(X) (the patch). Targets stay raw in both.")
def c23(fixed: bool) -> Program:
    d = reg_data(fixed, False, x_scale=1000.0, x_shift=5000.0, y_shift=300.0)
    model = P.init_normal(mlp(8, 32, 1, head="relu"), 0.05)
    return prog(model, optim("adam", model, 0.01), nn.MSELoss(), d, 400, P.r2)


@case(25, "47352366", "act epoch",
      "ReLU on the ten output logits before cross-entropy: negative logits are cut to 0 and their gradient dies",
      expect=("dead_units",), root=("dead_units", "head_loss_mismatch"), module=HEAD, proposed=("head_loss_mismatch",),
      note="Fixed: softmax output (no ReLU: logits into CrossEntropyLoss). The epoch change (1 -> 2) was tried and "
           "not kept; both run 2 epochs.")
def c25(fixed: bool) -> Program:
    d = digits_data("std")
    model = mlp(64, 64, 10, head=None if fixed else "relu")
    return prog(model, optim("adam", model), nn.CrossEntropyLoss(), d, ep(2, d), P.accuracy)


@case(26, "45442843", "loss opt act epoch",
      "Mean absolute error with RMSprop on a regression whose targets are mostly zero with rare large values: MAE "
      "fits the median",
      expect=("not_learning",), root=(),
      note="Fixed: MSE and Adam (the patch). Targets: make_regression cut at its 80th percentile (80% zeros, the rest grows with x).")
def c26(fixed: bool) -> Program:
    x, y, xv, yv = reg_data(True, False, seed=26)
    cut = y.quantile(0.8)
    y, yv = (y - cut).clamp(min=0) / 100, (yv - cut).clamp(min=0) / 100
    model = mlp(8, 32, 1)
    loss: nn.Module = nn.MSELoss() if fixed else nn.L1Loss()
    return prog(model, optim("adam" if fixed else "rmsprop", model), loss, (x, y, xv, yv), 400, P.r2)


@case(27, "48594888", "epoch batch_size",
      "Five epochs of plain SGD on a small CNN: stopped while still improving",
      expect=(), root=(), proposed=("still_improving",),
      note="Fixed: 10 epochs (the patch). Digits as 1x8x8 images.")
def c27(fixed: bool) -> Program:
    d = digits_data("unit")
    model = P.seq(("unflatten", nn.Unflatten(1, (1, 8, 8))), ("conv1", nn.Conv2d(1, 8, 3, padding=1)), ("relu1", nn.ReLU()),
                  ("pool", nn.MaxPool2d(2)), ("flatten", nn.Flatten()), ("out", nn.Linear(128, 10)))
    return prog(model, optim("sgd", model, 0.05), nn.CrossEntropyLoss(), d, ep(10 if fixed else 5, d, 64), P.accuracy,
                batch=64)


@case(28, "31627380", "opt act loss",
      "Softmax over a one-unit binary output (constant 1.0), Adam",
      expect=("wrong_loss", "not_learning", "vanishing_gradients", "frozen_parameters"), root=("wrong_loss", "head_loss_mismatch"), module=HEAD,
      proposed=("head_loss_mismatch",),
      note="Fixed: sigmoid output and SGD (the patch's kept lines). Binary cross-entropy (BCELoss) in both: Keras' "
           "categorical cross-entropy over one unit is case 29's fault.")
def c28(fixed: bool) -> Program:
    d = fy(tabular(*P.classification(1000, 10, 5, seed=28), scaled=True))
    model = mlp(10, 32, 1, head="sigmoid" if fixed else "softmax")
    opt = optim("sgd", model, 0.1) if fixed else optim("adam", model)
    return prog(model, opt, nn.BCELoss(), d, ep(10, d), P.thresholded(0.5))


@case(29, "58609115", "loss",
      "Categorical cross-entropy over a single output unit: the loss is 0 whatever the weights",
      expect=("wrong_loss",), root=("wrong_loss",), module=HEAD, proposed=("head_loss_mismatch",),
      note="The PyTorch form: CrossEntropyLoss on a (N, 1) logit with (N, 1) probability targets (silent; with class "
           "indices PyTorch would raise). Fixed: binary cross-entropy (BCEWithLogitsLoss).")
def c29(fixed: bool) -> Program:
    d = fy(tabular(*P.cancer(), scaled=True))
    model = mlp(30, 16, 1)
    loss: nn.Module = nn.BCEWithLogitsLoss() if fixed else nn.CrossEntropyLoss()
    return prog(model, optim("adam", model), loss, d, ep(10, d), P.thresholded(0.0))


@case(30, "50481178", "act loss",
      "Two sigmoid outputs (probabilities) into categorical cross-entropy for a binary task",
      expect=("probabilities_into_loss",), root=("probabilities_into_loss", "head_loss_mismatch"), module=HEAD,
      proposed=("head_loss_mismatch",),
      note="DeepFD: the original performs well, worse after its repair. Fixed: one logit, binary cross-entropy "
           "(BCEWithLogitsLoss).")
def c30(fixed: bool) -> Program:
    x, y, xv, yv = tabular(*P.classification(1000, 12, 6, seed=30), scaled=True)
    if fixed:
        model = mlp(12, 32, 1)
        return prog(model, optim("adam", model), nn.BCEWithLogitsLoss(), fy((x, y, xv, yv)), ep(10, (x,)), binary_head)
    model = mlp(12, 32, 2, head="sigmoid")
    return prog(model, optim("adam", model), nn.CrossEntropyLoss(), (x, y, xv, yv), ep(10, (x,)), binary_head)


@case(31, "56380303", "opt lr",
      "Plain SGD at Keras' default lr 0.01 on a small CNN: too slow",
      expect=("lr_too_low", "not_learning"), root=("lr_too_low",), fix=fx("switch_optimizer", name="adam", lr=1e-3),
      note="Fixed: Adam (the patch says lr 1e-4; 1e-3 here, as 1e-4 does not converge in the scaled-down run either).")
def c31(fixed: bool) -> Program:
    d = digits_data("unit")
    model = P.seq(("unflatten", nn.Unflatten(1, (1, 8, 8))), ("conv1", nn.Conv2d(1, 16, 3, padding=1)), ("relu1", nn.ReLU()),
                  ("conv2", nn.Conv2d(16, 16, 3, padding=1)), ("relu2", nn.ReLU()), ("pool", nn.MaxPool2d(2)),
                  ("flatten", nn.Flatten()), ("out", nn.Linear(256, 10)))
    opt = optim("adam", model, 1e-3) if fixed else optim("sgd", model)
    return prog(model, opt, nn.CrossEntropyLoss(), d, ep(2, d), P.accuracy)


class _Tagger(nn.Module):
    """A sequence tagger: an LSTM and a per-step linear head."""

    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, batch_first=True)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.lstm(x)[0])


@case(32, "59282996", "epoch training_data_quality layer_properties",
      "Per-step binary labels stored as 1 / 2 fed to binary cross-entropy (targets outside [0, 1])",
      expect=("wrong_loss",), root=("wrong_loss",), proposed=("head_loss_mismatch",),
      note="Fixed: labels remapped to 0 / 1 and 3x the epochs (the patch). The TimeDistributed Dense(3, sigmoid) "
           "becomes one logit per step with BCEWithLogitsLoss; data: random sequences tagged by the sign of a running "
           "sum. Both are scored against the 0 / 1 truth.")
def c32(fixed: bool) -> Program:
    g = torch.Generator().manual_seed(32)
    x = torch.randn(600, 12, 4, generator=g)
    y = (x[..., :1].cumsum(1) > 0).float()
    x, y, xv, yv = P.split(x, y)
    if not fixed:
        y = y + 1
    model = _Tagger(4, 16)
    return prog(model, optim("adam", model, 0.01), nn.BCEWithLogitsLoss(), (x, y, xv, yv), ep(30 if fixed else 10, (x,)),
                P.thresholded(0.0))


class _Volumes(nn.Module):
    """Case 33's model: six 'volumes' per example, a shared encoder, then (buggy) a one-unit ReLU
    bottleneck (Keras' Conv1D(filters=1) + ReLU) before the classifier."""

    def __init__(self, bottleneck: bool) -> None:
        super().__init__()
        self.encoder = nn.Linear(16, 64)
        self.relu1 = nn.ReLU()
        self.bottleneck = nn.Linear(6 * 64, 1 if bottleneck else 8)
        self.relu2 = nn.ReLU()
        self.out = nn.Linear(1 if bottleneck else 8, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.relu1(self.encoder(x))  # (B, 6, 64)
        return self.out(self.relu2(self.bottleneck(h.reshape(len(x), -1))))


@case(33, "58237726", "lr wrong_prep",
      "A one-unit ReLU bottleneck between the encoder and the classifier (Conv1D(filters=1) + ReLU) and Adam at "
      "lr 0.001: the single unit dies and the output is constant",
      expect=("dead_units", "not_learning"), root=("dead_units",), module=("relu2", "bottleneck"),
      fix=fx("reinit", layers=["bottleneck"], scheme="kaiming_normal"),
      note="Fixed: the bottleneck widened to 8 units and lr 0.01 (the patch rebuilt the model on single volumes). "
           "Data: 'ones' vs 'zeros' volumes with noise, as the post's generator.")
def c33(fixed: bool) -> Program:
    g = torch.Generator().manual_seed(33)
    y = (torch.rand(480, generator=g) < 0.5).long()
    x = y.float().view(-1, 1, 1).expand(480, 6, 16) + 0.5 * torch.randn(480, 6, 16, generator=g)
    d = P.split(x, y)
    model = _Volumes(bottleneck=not fixed)
    return prog(model, optim("adam", model, 0.01 if fixed else 0.001), nn.CrossEntropyLoss(), d, ep(5, d, 6),
                P.accuracy, batch=6)


@case(34, "37624102", "lr",
      "SGD at lr 0.1 with Nesterov momentum 0.9 on a CNN: too large a step",
      expect=("lr_too_high", "divergence", "oscillation", "nan_inf", "dead_units", "exploding_gradients"),
      root=("lr_too_high",), fix=fx("scale_lr", factor=0.1),
      note="Fixed: lr 0.01 (the patch). Digits as images scaled to [0, 1].")
def c34(fixed: bool) -> Program:
    d = digits_data("unit")
    model = P.seq(("unflatten", nn.Unflatten(1, (1, 8, 8))), ("conv1", nn.Conv2d(1, 16, 3, padding=1)), ("relu1", nn.ReLU()),
                  ("pool", nn.MaxPool2d(2)), ("flatten", nn.Flatten()), ("fc1", nn.Linear(256, 64)), ("relu2", nn.ReLU()),
                  ("out", nn.Linear(64, 10)))
    opt = optim("sgd", model, 0.01 if fixed else 0.1, momentum=0.9, nesterov=True)
    return prog(model, opt, nn.CrossEntropyLoss(), d, ep(3, d), P.accuracy)


@case(36, "41327601", "loss",
      "Binary cross-entropy on a ten-way softmax (one-hot targets) instead of categorical cross-entropy",
      expect=(), root=("head_loss_mismatch",), module=HEAD, proposed=("head_loss_mismatch",),
      note="DeepFD: the original performs well and worse after the repair. Fixed: logits into CrossEntropyLoss; "
           "Adamax in both.")
def c36(fixed: bool) -> Program:
    d = digits_data("std")
    model = mlp(64, 64, 10, head=None if fixed else "softmax")
    loss: nn.Module = nn.CrossEntropyLoss() if fixed else nn.BCELoss()
    return prog(model, optim("adamax", model), loss, d if fixed else oh(d, 10), ep(5, d), P.accuracy)


@case(37, "41600519", "opt loss layer_properties missing/redundant/wrong_layers",
      "Binary cross-entropy on a sigmoid output for regression targets in [0, 10]",
      expect=("wrong_loss",), root=("wrong_loss",), module=HEAD, proposed=("head_loss_mismatch",),
      note="Fixed: MSE on a linear output and Adam instead of RMSprop (the patch). Keras' sigmoid + BCE becomes "
           "BCEWithLogitsLoss (PyTorch's BCELoss raises on targets outside [0, 1]); the buggy model's prediction is "
           "scored as 10 * sigmoid(output), the best reading of its [0, 1] output on the [0, 10] targets.")
def c37(fixed: bool) -> Program:
    x, y, xv, yv = reg_data(True, False, seed=37)
    lo, hi = y.min(), y.max()
    y, yv = 10 * (y - lo) / (hi - lo), 10 * (yv - lo) / (hi - lo)
    model = mlp(8, 32, 1)
    loss: nn.Module = nn.MSELoss() if fixed else nn.BCEWithLogitsLoss()
    metric = P.r2 if fixed else (lambda out, t: P.r2(10 * torch.sigmoid(out), t))  # the sigmoid's prediction, rescaled
    return prog(model, optim("adam" if fixed else "rmsprop", model), loss, (x, y, xv, yv), 600, metric)


@case(39, "41977498", "opt lr epoch",
      "RMSprop at lr 0.001 for 10 epochs on iris: stopped long before convergence",
      expect=("lr_too_low", "not_learning"), root=("lr_too_low",), proposed=("still_improving",),
      fix=fx("switch_optimizer", name="adam", lr=0.01),
      note="Fixed: Adam lr 0.01 and 100 epochs (the patch).")
def c39(fixed: bool) -> Program:
    d = tabular(*P.iris(), scaled=True)
    model = mlp(4, 16, 3)
    opt = optim("adam", model, 0.01) if fixed else optim("rmsprop", model)
    return prog(model, opt, nn.CrossEntropyLoss(), d, ep(100 if fixed else 10, d), P.accuracy)


@case(40, "42514960", "act",
      "A ReLU autoencoder with a sigmoid output for data in [-1, 1]: the negative half cannot be reconstructed",
      expect=("dead_units", "saturated_activations"), root=("head_loss_mismatch",), module=HEAD, proposed=("head_loss_mismatch",),
      note="Fixed: tanh everywhere (the patch's lines, commented in the spreadsheet). Digits scaled to [-1, 1].")
def c40(fixed: bool) -> Program:
    x, _, xv, _ = digits_data("raw")
    x, xv = x / 8 - 1, xv / 8 - 1
    act = "tanh" if fixed else "relu"
    model = mlp(64, 128, 128, 16, 128, 128, 64, act=act, head="tanh" if fixed else "sigmoid")
    return prog(model, optim("adam", model), nn.MSELoss(), (x, x, xv, xv), ep(5, (x,)), P.r2)


@case(41, "42800203", "act",
      "Softmax over a one-unit binary output (constant 1.0) into binary cross-entropy",
      expect=("wrong_loss", "not_learning", "vanishing_gradients", "frozen_parameters"), root=("wrong_loss", "head_loss_mismatch"), module=HEAD,
      proposed=("head_loss_mismatch",),
      note="Fixed: sigmoid output (the patch).")
def c41(fixed: bool) -> Program:
    d = fy(tabular(*P.classification(1000, 10, 4, seed=41), scaled=True))
    model = mlp(10, 16, 8, 1, head="sigmoid" if fixed else "softmax")
    return prog(model, optim("adam", model), nn.BCELoss(), d, ep(10, d), P.thresholded(0.5))


@case(42, "44998910", "lr epoch",
      "SGD at Keras' default lr 0.01 on a regression: too slow for the run",
      expect=("lr_too_low", "not_learning"), root=("lr_too_low",), proposed=("still_improving",),
      fix=fx("scale_lr", factor=3.0),
      note="Fixed: lr 0.03 (the patch).")
def c42(fixed: bool) -> Program:
    d = reg_data(True, True, seed=42)
    model = mlp(8, 16, 1, act="tanh")
    return prog(model, optim("sgd", model, 0.03 if fixed else 0.01), nn.MSELoss(), d, 100, P.r2)


@case(43, "46642627", "opt lr loss missing_prep",
      "Raw features (~1000) and raw targets (~10^4) with SGD at lr 0.01: the first updates overflow",
      expect=("nan_inf", "divergence", "exploding_gradients", "unnormalized_inputs", "lr_too_high"),
      root=("unnormalized_inputs", "unscaled_targets"), module=("fc1",), proposed=("unscaled_targets",),
      note="Fixed: X and Y scaled by their maximum and Adam (the patch). The patch's (X - max) / max leaves every "
           "feature at a mean about 3 of its stds away from 0, so the inputs are still not centred.",
      fixed_true=("unnormalized_inputs",))
def c43(fixed: bool) -> Program:
    x, y, xv, yv = reg_data(False, False, x_scale=300.0, x_shift=1000.0, y_shift=0.0, seed=43)
    y, yv = y * 50 + 10000, yv * 50 + 10000
    if fixed:
        mx, my = x.abs().max(), y.abs().max()
        x, xv, y, yv = (x - mx) / mx, (xv - mx) / mx, (y - my) / my, (yv - my) / my
    model = mlp(8, 16, 1)
    opt = optim("adam", model) if fixed else optim("sgd", model, 0.01)
    return prog(model, opt, nn.MSELoss(), (x, y, xv, yv), 300, P.r2)


@case(44, "46995209", "act missing_prep layer_properties missing/redundant/wrong_layers",
      "Unscaled features into a 12-layer narrow tanh / ReLU stack",
      expect=("unnormalized_inputs", "dead_units", "vanishing_gradients", "vanishing_activations", "saturated_activations"),
      root=("unnormalized_inputs",), module=("fc1",),
      note="Fixed: scaled features, two ReLU layers (10, 25) (the patch).")
def c44(fixed: bool) -> Program:
    d = reg_data(fixed, True, x_scale=100.0, x_shift=500.0, seed=44)
    if fixed:
        model = mlp(8, 10, 25, 1)
    else:
        layers: list[tuple[str, nn.Module]] = [("fc1", nn.Linear(8, 10)), ("tanh1", nn.Tanh()), ("fc2", nn.Linear(10, 90)),
                                               ("tanh2", nn.Tanh()), ("fc3", nn.Linear(90, 10)), ("relu3", nn.ReLU())]
        for i in range(4, 13):
            layers += [(f"fc{i}", nn.Linear(10, 10)), (f"relu{i}", nn.ReLU())]
        model = P.seq(*layers, ("out", nn.Linear(10, 1)))
    return prog(model, optim("adam", model), nn.MSELoss(), d, 400, P.r2)


@case(45, "51181393", "lr",
      "RMSprop at lr 0.001 on raw regression targets (mean ~500): the output cannot reach their scale in the run",
      expect=("lr_too_low", "not_learning"), root=("lr_too_low", "unscaled_targets"), proposed=("unscaled_targets",),
      fix=fx("scale_lr", factor=100.0),
      note="Fixed: RMSprop at lr 0.1 (the patch).")
def c45(fixed: bool) -> Program:
    d = reg_data(True, False, y_shift=500.0, seed=45)
    model = mlp(8, 32, 1)
    return prog(model, optim("rmsprop", model, 0.1 if fixed else 0.001), nn.MSELoss(), d, 400, P.r2)


@case(46, "47932589", "missing_prep",
      "Raw features and raw targets, no min-max scaling",
      expect=("unnormalized_inputs",), root=("unnormalized_inputs", "unscaled_targets"), module=("fc1",),
      proposed=("unscaled_targets",),
      note="Fixed: min-max scaling of x and y (the patch).")
def c46(fixed: bool) -> Program:
    x, y, xv, yv = reg_data(False, False, x_scale=50.0, x_shift=200.0, y_shift=1000.0, seed=46)
    if fixed:
        lo, hi, ylo, yhi = x.min(0).values, x.max(0).values, y.min(), y.max()
        x, xv = (x - lo) / (hi - lo), (xv - lo) / (hi - lo)
        y, yv = (y - ylo) / (yhi - ylo), (yv - ylo) / (yhi - ylo)
    model = mlp(8, 32, 1)
    return prog(model, optim("adam", model), nn.MSELoss(), (x, y, xv, yv), 400, P.r2)


@case(47, "37213388", "epoch",
      "Two epochs of SGD: stopped while still improving",
      expect=(), root=(), proposed=("still_improving",),
      note="Fixed: 10 epochs (the patch).")
def c47(fixed: bool) -> Program:
    d = digits_data("std")
    model = mlp(64, 32, 10, act="tanh")
    return prog(model, optim("sgd", model, 0.01), nn.CrossEntropyLoss(), d, ep(10 if fixed else 2, d, 64), P.accuracy,
                batch=64)


@case(48, "gol_nn", "loss epoch lr",
      "Game of Life rule learned with Adam at lr 0.001 for 5 epochs: stopped long before it fits",
      expect=("lr_too_low", "not_learning"), root=("lr_too_low",), proposed=("still_improving",),
      fix=fx("scale_lr", factor=10.0),
      note="Fixed: MSE, Adam lr 0.01, 10 epochs (the patch). Data: all 512 3x3 neighbourhoods -> the centre's next "
           "state; scored on the same 512 (the rule is the whole task).")
def c48(fixed: bool) -> Program:
    x, y = P.life()
    model = mlp(9, 64, 64, 1, head="sigmoid")
    loss: nn.Module = nn.MSELoss() if fixed else nn.BCELoss()
    return prog(model, optim("adam", model, 0.01 if fixed else 0.001), loss, (x, y, x, y), ep(10 if fixed else 5, (x,)),
                P.thresholded(0.5))


@case(49, "FacialKeypointsDetection", "opt epoch",
      "Adam at lr 0.1 on a keypoint regression: the ReLU layer dies and the output freezes at the mean",
      expect=("lr_too_high", "dead_units", "divergence", "oscillation", "not_learning"), root=("lr_too_high",),
      fix=fx("scale_lr", factor=0.01),
      note="Fixed: SGD (lr 0.01, Nesterov momentum 0.9) and 4x the epochs (the patch). Keypoints: the ink centroids "
           "of the top and bottom halves of each digit, scaled to [-1, 1].")
def c49(fixed: bool) -> Program:
    x, _ = P.digits()
    img = x.view(-1, 8, 8)
    coords = torch.arange(8.0)
    pts = []
    for part in (img[:, :4], img[:, 4:]):
        w = part.sum((1, 2)) + 1e-6
        pts += [(part.sum(1) * coords).sum(1) / w, (part.sum(2) * coords[: part.shape[1]]).sum(1) / w]
    y = torch.stack(pts, 1) / 3.5 - 1
    x, y, xv, yv = P.split(x / 16, y)
    model = mlp(64, 100, 4)
    opt = optim("sgd", model, 0.01, momentum=0.9, nesterov=True) if fixed else optim("adam", model, 0.1)
    return prog(model, opt, nn.MSELoss(), (x, y, xv, yv), ep(12 if fixed else 3, (x,), 64), P.r2, batch=64)


@case(50, "MovieReviews_Keras", "epoch missing/redundant/wrong_layers",
      "A bag-of-words classifier without dropout on few reviews: it memorizes the training set",
      expect=("overfitting",), root=("overfitting",), fix=fx("add_dropout", after=["relu1", "relu2"], p=0.5),
      note="Fixed: two Dropout(0.5) layers and 7 epochs instead of 4 (the patch). Data: make_classification, 300 "
           "features, 300 training rows; the Keras IMDB model (16-16-1, RMSprop).")
def c50(fixed: bool) -> Program:
    x, y = P.classification(600, 300, 15, seed=50, sep=0.8)
    d = fy(tabular(x, y, scaled=True, frac=0.5))
    if fixed:
        model = P.seq(("fc1", nn.Linear(300, 16)), ("relu1", nn.ReLU()), ("drop1", nn.Dropout(0.5)), ("fc2", nn.Linear(16, 16)),
                      ("relu2", nn.ReLU()), ("drop2", nn.Dropout(0.5)), ("out", nn.Linear(16, 1)))
    else:
        model = mlp(300, 16, 16, 1)
    return prog(model, optim("rmsprop", model), nn.BCEWithLogitsLoss(), d, ep(7 if fixed else 4, d, 16) * 3,
                P.thresholded(0.0), batch=16)


@case(51, "Traffic-Sign-Classifier", "act",
      "ReLU convolutions that die under Adam's first large steps (sigmoid / ELU in the fix)",
      expect=("dead_units",), root=("dead_units",), module=("relu1", "relu2", "relu3"),
      fix=fx("reinit", layers="all", scheme="kaiming_normal"),
      note="Fixed: sigmoid then ELU activations (the patch). Digits as images scaled to [0, 1]; Adam at lr 0.01 in both.")
def c51(fixed: bool) -> Program:
    d = digits_data("unit")
    acts = ("sigmoid", "elu", "elu") if fixed else ("relu", "relu", "relu")
    model = P.seq(("unflatten", nn.Unflatten(1, (1, 8, 8))), ("conv1", nn.Conv2d(1, 3, 1)), (f"{acts[0]}1", _ACT[acts[0]]()),
                  ("conv2", nn.Conv2d(3, 16, 3, stride=2, padding=1)), (f"{acts[1]}2", _ACT[acts[1]]()),
                  ("conv3", nn.Conv2d(16, 32, 3, padding=1)), (f"{acts[2]}3", _ACT[acts[2]]()),
                  ("flatten", nn.Flatten()), ("out", nn.Linear(512, 10)))
    return prog(model, optim("adam", model, 0.01), nn.CrossEntropyLoss(), d, ep(3, d), P.accuracy)


CASES.sort(key=lambda c: c.no)
BY_NO: dict[int, RealBug] = {c.no: c for c in CASES}

NO_EFFECT: dict[int, str] = {
    30: "DeepFD: the original performs well and worse after its repair; here too the two versions end level.",
    33: "The one-unit ReLU bottleneck survives at this seed (its death is a matter of chance in the original too).",
    34: "DeepFD: 'the loss does decrease'; lr 0.1 with momentum trains this small CNN about as well as lr 0.01.",
    36: "DeepFD: the original performs well and worse after its repair; BCE on a softmax trains as well as CE here.",
    51: "ReLU units do not die in this small CNN; ELU / sigmoid end level with ReLU.",
}
"""Ported cases whose buggy program does not end clearly worse than the fixed one (measured at seed 0
with one thread): their detection is still scored, their 'fix' cannot show a gain."""
