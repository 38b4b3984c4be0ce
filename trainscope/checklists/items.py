"""The checklist items: Josh Tobin's "Troubleshooting Deep Neural Networks" (Full Stack Deep
Learning) and Andrej Karpathy's "A Recipe for Training Neural Networks" (2019).

Each item names its source, says what it means, and how trainscope evaluates it: a ``check`` (run
on a click or a call, :func:`trainscope.run_check`), diagnosis ``labels`` whose findings speak to it,
or neither (a manual item: trainscope cannot judge it for you).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ITEMS", "MODEL_CHANGES", "Item", "item", "last_model_change"]


@dataclass(frozen=True)
class Item:
    id: str
    source: str  # "tobin" | "karpathy"
    title: str
    meaning: str
    check: str | None = None  # name of the automated check (see trainscope.checklists.CHECKS)
    labels: tuple[str, ...] = ()  # diagnosis labels that bear on this item


ITEMS: tuple[Item, ...] = (
    # ---------------------------------------------------------------- Karpathy, stages 1-4
    Item("karpathy.data", "karpathy", "Become one with the data",
         "Look at many examples, their label distribution, duplicates, corrupted labels and outliers "
         "before touching any model code.", labels=("label_noise",)),
    Item("karpathy.seed", "karpathy", "Fix the random seed",
         "Seed every random generator so two runs of the same code give the same result.", check="seed"),
    Item("karpathy.simplify", "karpathy", "Simplify",
         "Turn off augmentation, regularization and other fanciness for the first end-to-end run.",
         labels=("over_regularization",)),
    Item("karpathy.full_eval", "karpathy", "Add significant digits to your eval",
         "Evaluate on the whole validation set, not on a few noisy batches."),
    Item("karpathy.loss_at_init", "karpathy", "Verify loss @ init",
         "At initialization the loss should be that of an uninformed prediction, e.g. -log(1/C) = ln C for "
         "C-class softmax cross-entropy.", check="loss_at_init", labels=("bad_loss_at_init",)),
    Item("karpathy.init_well", "karpathy", "Init well",
         "Initialize so that activations keep a sane scale through the depth and the final layer starts from "
         "the data prior (e.g. its bias set to the mean target or the log class frequencies).",
         labels=("bad_loss_at_init", "symmetric_init", "vanishing_activations", "exploding_activations",
                 "saturated_activations", "dead_units")),
    Item("karpathy.human_baseline", "karpathy", "Human baseline",
         "Measure a metric a human can interpret and compare the model with your own accuracy."),
    Item("karpathy.input_independent_baseline", "karpathy", "Input-independent baseline",
         "Train with all inputs set to zero: the real model must do clearly better, or it is not using its inputs.",
         check="input_baseline", labels=("label_noise",)),
    Item("karpathy.overfit_one_batch", "karpathy", "Overfit one batch",
         "A few examples must be learnable down to (near) zero loss; if not, there is a bug.", check="overfit_batch"),
    Item("karpathy.decreasing_loss", "karpathy", "Verify decreasing training loss",
         "The training loss should go down steadily; a bigger model should fit better.",
         labels=("not_learning", "divergence", "oscillation", "lr_too_low", "lr_too_high")),
    Item("karpathy.visualize_input", "karpathy", "Visualize just before the net",
         "Look at exactly what enters the model (after all preprocessing): scale, offsets, content.",
         check="input_stats", labels=("unnormalized_inputs",)),
    Item("karpathy.prediction_dynamics", "karpathy", "Visualize prediction dynamics",
         "Watch the predictions on a fixed test batch evolve during training."),
    Item("karpathy.backprop_dependencies", "karpathy", "Use backprop to chart dependencies",
         "The loss of example i must have zero gradient with respect to every other example's input; otherwise "
         "the model mixes examples (view instead of transpose, reductions over the batch dimension).",
         check="batch_mixing", labels=("batch_mixing",)),
    Item("karpathy.generalize", "karpathy", "Generalize a special case",
         "Write the specific, simple version first, check it, then generalize it."),
    Item("karpathy.overfit_then_regularize", "karpathy", "Overfit, then regularize",
         "First get a model big enough to overfit, then trade training fit for validation: more data, "
         "augmentation, dropout, weight decay, early stopping.", labels=("overfitting",)),
    # ---------------------------------------------------------------- Tobin
    Item("tobin.start_simple", "tobin", "Start simple",
         "A simple architecture (LeNet-like, small LSTM, one-hidden-layer MLP), sensible defaults (Adam 3e-4, "
         "ReLU / tanh, no regularization), a simplified problem."),
    Item("tobin.normalize_inputs", "tobin", "Normalize inputs",
         "Subtract the mean and divide by the standard deviation (bug #2: pre-processing inputs incorrectly).",
         check="input_stats", labels=("unnormalized_inputs",)),
    Item("tobin.overfit_batch", "tobin", "Overfit a single batch",
         "Drive the training error on one batch arbitrarily close to 0; its failure modes point to the bug.",
         check="overfit_batch", labels=("not_learning",)),
    Item("tobin.error_dynamics", "tobin", "Error goes up / explodes / oscillates / plateaus",
         "Goes up: flipped loss sign, LR too high, softmax over the wrong dimension. Explodes: numerical "
         "issue, LR too high. Oscillates: corrupted or unshuffled data, LR too high. Plateaus: LR too low, "
         "gradients not flowing, too much regularization, wrong loss input, corrupted data.",
         labels=("divergence", "nan_inf", "oscillation", "not_learning", "exploding_gradients")),
    Item("tobin.known_result", "tobin", "Compare to a known result",
         "Reproduce an official implementation or a published number on a similar dataset."),
    Item("tobin.bug_shapes", "tobin", "Bug #1: incorrect tensor shapes",
         "Silent broadcasting, e.g. a prediction of shape (N, 1) against a target of shape (N,) gives (N, N).",
         check="loss_inputs", labels=("wrong_loss",)),
    Item("tobin.bug_loss_input", "tobin", "Bug #3: incorrect input to the loss",
         "Softmax outputs passed to a loss that expects logits.", check="loss_inputs",
         labels=("probabilities_into_loss", "wrong_loss")),
    Item("tobin.bug_train_eval", "tobin", "Bug #4: forgot to set train / eval mode",
         "Dropout and batch norm behave differently in train and eval mode.", check="train_eval_mode",
         labels=("train_eval_mode",)),
    Item("tobin.bug_numerical", "tobin", "Bug #5: numerical instability",
         "Inf / NaN, usually from exp, log or division.", labels=("nan_inf", "exploding_gradients", "exploding_activations")),
    Item("tobin.zero_grad", "tobin", "Forgot zero_grad()",
         "Gradients accumulate across steps unless they are cleared once per step.", labels=("missing_zero_grad",)),
    Item("tobin.grad_flow", "tobin", "Gradients reach every parameter",
         "Every trainable parameter receives a gradient and is held by the optimizer; no layer blocks the "
         "gradient (dead units, vanishing gradients).", check="grad_flow",
         labels=("frozen_parameters", "dead_units", "vanishing_gradients", "vanishing_activations")),
    Item("tobin.bias_variance", "tobin", "Evaluate: bias-variance decomposition",
         "Test error = irreducible + bias (train - goal) + variance (val - train) + val overfitting. The "
         "validation score must be trustworthy: with batch norm, eval mode reads running statistics that can lag.",
         check="bn_lag", labels=("overfitting", "label_noise")),
    Item("tobin.tune_lr", "tobin", "Tune the learning rate",
         "Coarse-to-fine random search, e.g. lr = 10**U(-6, -3); the LR is the most sensitive hyperparameter.",
         labels=("lr_too_high", "lr_too_low")),
)  # fmt: skip

_BY_ID = {i.id: i for i in ITEMS}


def item(item_id: str) -> Item:
    """The item with this id (``KeyError`` with the known ids otherwise)."""
    try:
        return _BY_ID[item_id]
    except KeyError:
        raise KeyError(f"no checklist item {item_id!r}; items are: {', '.join(_BY_ID)}") from None


MODEL_CHANGES = ("reinit", "rollback", "undo", "switch_optimizer")
"""Timeline actions after which the model (its weights, or how they are updated) is not the one a
check or a finding judged: results from before go stale."""


def last_model_change(history: Any) -> tuple[int, str] | None:
    """``(step, label)`` of the latest :data:`MODEL_CHANGES` event on a history's timeline."""
    for ev in reversed(list(getattr(history, "events", ()))):
        if ev.kind in ("intervention", "undo") and (ev.data.get("action") in MODEL_CHANGES or ev.kind == "undo"):
            return int(ev.step), str(ev.data.get("action") or ev.label)
    return None
