"""Every threshold the rules use, in one place, each with its reason.

The rules compare *scale-free* quantities (ratios across depth or time, fractions of units,
relative changes of the loss, update / weight ratios) with round thresholds -- mostly powers of
ten -- chosen from what the quantity means, not fitted to a test suite.  Anything that can flap
must hold over several samples (``persist_need`` of the last ``persist_of``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Thresholds"]


@dataclass(frozen=True)
class Thresholds:
    """Thresholds of the diagnosis rules (see ``docs/diagnosis.md`` for each label)."""

    # --- persistence --------------------------------------------------------------------------
    persist_need: int = 3  # a per-sample condition must hold in 3 ...
    persist_of: int = 4  # ... of the last 4 sampled steps (one odd batch never raises a finding)
    min_loss_points: int = 20  # loss-curve rules need this many recorded losses
    min_steps_plateau: int = 50  # "no progress" is only judged after this many steps
    not_learning_steps: int = 100  # ... and "has not moved since the start" (not_learning) after this many:
    # healthy sigmoid / tanh nets and SGD runs often sit flat for 50-100 steps before they take off
    val_trend_points: int = 4  # ... unless validation improved at each of the last 4 evaluations (info then)

    # --- depth / time profiles of activations and gradients ------------------------------------
    depth_ratio: float = 1e-2  # 100x smaller (or larger) from the first to the last hidden layer:
    # two orders of magnitude; the suite's healthy networks stay within 0.09x - 18x
    depth_ratio_error: float = 1e-4  # four orders: the far end of the network effectively sees 0
    time_ratio: float = 1e-2  # exploding over time: total gradient norm 100x its early level

    # --- units -------------------------------------------------------------------------------
    dead_info: float = 0.25  # share of a layer's ReLU units that never fired over the window
    dead_warning: float = 0.5  # half the layer is wasted capacity and passes no gradient
    dead_error: float = 0.9  # the layer is (almost) a wall for the gradient
    dead_min_window: int = 5  # samples the dead-unit window must hold before judging (and the recent
    # samples in which a whole layer that fired earlier must stay silent to count as died during training)
    sat_info: float = 0.2  # share of bounded-activation outputs within 1% of a bound
    sat_warning: float = 0.5  # (there tanh' <= 0.04, sigmoid' < 0.01: the gradient is cut 25-100x)
    sat_error: float = 0.9
    symmetric_share: float = 0.5  # share of a layer's units that are exact copies of one another

    # --- learning rate (update / weight ratio per step; cs231n's rule of thumb is ~1e-3) --------
    update_high: float = 3e-2  # 30x the rule of thumb: weights are re-drawn within ~30 steps
    update_high_plateau: float = 0.1  # with a mere plateau (many causes): 10% of the weights per step
    update_low: float = 1e-4  # 10x below it: 100 steps move the weights by at most 1%
    update_plateau_low: float = 1e-3  # a plateau while the whole model moves by less than the rule of thumb
    # per step: raising the learning rate is the first thing to try (lr_too_low, not not_learning)
    lr_low_progress: float = 0.5  # ...and the loss still above half its initial value
    slow_min_steps: int = 50  # a slow steady descent is judged over at least 50 steps (and min_loss_points losses)
    slow_keep: float = 0.5  # the last half of the curve removes >= 50% of what the first half did: no
    # deceleration (a well-tuned run drops fast, then flattens: the second half's drop is a fraction of the first's)
    slow_progress: float = 0.1  # ... while less than 10% of the initial loss is gone: a plateau that does move.
    # Not more: short healthy runs (Adam at 1e-3, a few epochs) also fall linearly at 0.2-0.6% per step, and a
    # curve's shape cannot tell "too slow" from "not finished yet" beyond that
    slow_update_max: float = 1e-2  # ... and the weights move by less than 1% per step (a larger update is not "too low")

    # --- loss curve ----------------------------------------------------------------------------
    plateau_progress: float = 0.05  # "no progress": the loss is within 5% of where it started
    divergence_lost: float = 0.5  # rising: more than half of the progress made has been lost
    divergence_level: float = 0.2  # ...and the rise exceeds 20% of the loss level
    explosion_factor: float = 10.0  # exploding: the recent loss is 10x the initial loss (error)
    osc_window: int = 20  # losses per oscillation window (two consecutive windows are checked)
    osc_swing: float = 0.5  # mean |step-to-step change| >= 50% of the mean loss ...
    osc_vs_progress: float = 0.5  # ... and >= 50% of the progress made since the start

    # --- validation ----------------------------------------------------------------------------
    min_val_points: int = 5  # validation evaluations needed before judging generalization
    overfit_rise: float = 0.1  # validation loss 10% above its best ...
    overfit_patience: int = 3  # ... at each of the last 3 evaluations after the best one
    overfit_floor: float = 0.02  # ... and by at least 2% of the chance level (or the first evaluation):
    # a validation loss of 8e-4 rising to 1.2e-3 is +46% but noise on a solved task
    chance_margin: float = 0.05  # "at chance": validation never got 5% below the chance loss
    memorize_progress: float = 0.05  # training loss fell 5% (overfitting: since the best evaluation;
    # label noise: below chance)

    # --- setup ---------------------------------------------------------------------------------
    init_loss_excess: float = 1.0  # loss at init > ln C + max(ln C, 1 nat): confidently wrong
    input_scale_high: float = 4.0  # input RMS above 4: every downstream scale is 4x too large
    input_scale_low: float = 0.1  # below 0.1: the first layer's outputs are 10x too small
    input_offset: float = 3.0  # |mean| > 3 std per feature: features are offsets, not signals
    input_spread: float = 100.0  # per-feature std differing by more than 100x between features
    zero_grad_ratio: float = 1e-3  # gradient left over before backward, relative to the new one
    mixing_tolerance: float = 1e-5  # relative gradient leaking to other examples (exact 0 expected)
    decay_high: float = 1e-2  # weight decay shrinking the weights by 1% per step (lr * weight_decay):
    # half of any weight the gradient does not defend is gone in ~70 steps
    dropout_high: float = 0.7  # dropout dropping 70% of the units

    # --- head / loss / targets, when training stops (rules/headloss.py, rules/dynamics.py) -------
    head_range_miss: float = 0.25  # a bounded output activation leaves >= 25% of the targets' range out of reach
    head_relu_zero: float = 0.25  # a ReLU on the logits zeroes >= 25% of them (cross-entropy)
    sum_reduction_min_batch: int = 4  # reduction='sum' matters from batches of 4 (gradient x batch size)
    target_scale_high: float = 10.0  # regression targets with RMS >= 10: the output must grow 10x from init
    min_progress_steps: int = 20  # steps before "the loss is still above half the mean predictor's" counts
    imbalance_min_examples: int = 64  # class counts judged once 64 sampled targets were seen
    imbalance_majority: float = 0.95  # one class holds >= 95% of the targets (up to all of them)
    imbalance_ratio: float = 10.0  # the largest class is >= 10x the rarest present (SMD's threshold_imbalance)
    imbalance_prior_loss: float = 0.9  # ... and the loss is >= 90% of the class entropy: only the prior was learned
    still_window: int = 6  # evaluations over which validation must still be falling
    still_gain: float = 0.02  # ... by >= 2% (median of the later half vs the earlier half)
    stopped_level: float = 2 / 3  # training ended (probe.finish()) with the loss still >= 2/3 of a constant
    # prediction's: less than a third of what there was to learn was learned ...
    stopped_t: float = 3.0  # ... while still falling: the last half's loss slope is 3 standard errors below 0
