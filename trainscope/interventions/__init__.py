"""Interventions: change a running training safely, at a step boundary, undoably.

Every intervention is a plain Python function (in-place ones end in ``_``) that validates its
arguments before changing anything, applies all-or-nothing, and returns an
:class:`~trainscope.interventions.Applied` record with ``undo()``.  Given ``probe=``, it also lands
on the probe's timeline.  Each is registered as a whitelisted action of the same name (without
the underscore) for ``probe.request(...)`` and the dashboard: its ``@action(...)`` declaration sits
next to it, and :func:`trainscope.builtins.register_builtins` puts it on the whitelist.

=====================  =========================================================================
``reinit_``            zeros / constant / normal / uniform / Xavier / He / orthogonal / LSUV /
                       data-dependent init of chosen layers; optimizer state of those reset
``add_dropout_``       dropout after chosen modules; ``set_dropout_``; ``remove_dropout_``
``weight_decay_``      weight decay / L2; ``l1_`` L1 penalty; ``clip_grad_`` by norm or value
``set_lr_``            learning rate now; ``scale_lr_``; ``set_schedule_`` live schedules;
                       ``one_cycle_``
``switch_optimizer_``  SGD / Adam / AdamW / RAdam / Lookahead / Ranger on the same object
``early_stopping_``    smoothing + patience, restores the best weights
``snapshot_``          save; ``rollback_`` go back; ``snapshot_ensemble_`` SGDR + ensemble
=====================  =========================================================================
"""

from __future__ import annotations

from ._base import Applied
from .batch_size import accumulate_, batch_growth_
from .data_reg import input_noise_, label_smoothing_, mixup_
from .dropout import add_dropout_, remove_dropout_, set_dropout_
from .init import SCHEMES, detect_nonlinearity, reinit_
from .normalization import insert_norm_
from .optimizers import Lookahead, make_optimizer, switch_optimizer_
from .pruning import masks, prune_, sparsity
from .regularization import clip_grad_, l1_, weight_decay_
from .schedule import LiveSchedule, one_cycle_, scale_lr_, set_lr_, set_schedule_
from .snapshots import Snapshot, SnapshotEnsemble, SnapshotStore, rollback_, snapshot_, snapshots
from .stopping import EarlyStopping, early_stopping_, should_stop, snapshot_ensemble_

__all__ = [
    "SCHEMES",
    "Applied",
    "EarlyStopping",
    "LiveSchedule",
    "Lookahead",
    "Snapshot",
    "SnapshotEnsemble",
    "SnapshotStore",
    "accumulate_",
    "add_dropout_",
    "batch_growth_",
    "clip_grad_",
    "detect_nonlinearity",
    "early_stopping_",
    "input_noise_",
    "insert_norm_",
    "l1_",
    "label_smoothing_",
    "make_optimizer",
    "masks",
    "mixup_",
    "one_cycle_",
    "prune_",
    "reinit_",
    "remove_dropout_",
    "rollback_",
    "scale_lr_",
    "set_dropout_",
    "set_lr_",
    "set_schedule_",
    "should_stop",
    "snapshot_",
    "snapshot_ensemble_",
    "snapshots",
    "sparsity",
    "switch_optimizer_",
    "weight_decay_",
]
