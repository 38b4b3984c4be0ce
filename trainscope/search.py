"""Random search with successive halving, from the notebook: ``trainscope.search(train_fn, space, ...)``.

Random search (Bergstra & Bengio, *Random Search for Hyper-Parameter Optimization*, JMLR 2012)
draws every trial's configuration independently from ``space``; weak trials are stopped early by
successive halving (Jamieson & Talwalkar 2016) in its asynchronous form (ASHA, Li et al.,
*A System for Massively Parallel Hyperparameter Tuning*, MLSys 2020), the rule Optuna's
``SuccessiveHalvingPruner`` uses:

* the rungs are the steps ``budget / eta**rungs, ..., budget / eta`` (``budget=27, eta=3,
  rungs=3``: 1, 3, 9; the trial then runs on to 27);
* when a trial first reports at or after a rung's step, its value joins the values every trial
  reported there so far; it goes on only if it is among the best ``1/eta`` of them (while fewer
  than ``eta`` trials have reached the rung: only if it is the best so far);
* otherwise ``report`` raises :class:`TrialStopped`, which ends ``train_fn`` (let it propagate;
  a trial that catches it and carries on is still recorded as stopped, and every later ``report``
  raises again).

The user's function::

    def train_fn(config, report):
        model = make_model(config["width"]); opt = SGD(model.parameters(), lr=config["lr"])
        probe = report.probe(model, opt, loss_fn=loss_fn)   # optional: the trial's run directory
        for step in range(1, report.budget + 1):
            ...train...
            report(step, val_loss)       # raises TrialStopped when the trial falls below a rung's cut

    res = trainscope.search(train_fn, {"lr": loguniform(1e-4, 1e-1), "width": choice([32, 64, 128])},
                            trials=20, budget=27, run_dir="runs/search")
    res.best_config; print(res)           # the table: trials x hyper-parameters x metric x status

What else is guaranteed:

* Each trial starts from the global RNGs (torch, numpy, ``random``) seeded with its own seed
  (``report.seed``), so a trial gives the same result alone, in any order or in another process;
  the global RNG states are put back when the search ends.
* A trial that raises is recorded as ``failed`` with the error and the search goes on; Ctrl-C stops
  the search (the table so far stays in ``run_dir/search.json``) and is re-raised.
* With ``run_dir``, trial ``k`` writes ``run_dir/trial-00k`` (``report.probe(...)``'s run, or the
  reported values alone when ``train_fn`` makes no probe there), readable with
  ``trainscope.open(run_dir)`` (every trial overlaid) or ``trainscope.open(run_dir + "/trial-003")``.
* Trials run one after another by default.  ``executor=`` takes any ``concurrent.futures.Executor``:
  a ``ThreadPoolExecutor``, or a ``ProcessPoolExecutor`` (the rung decisions then go through a
  ``multiprocessing`` manager; ``train_fn`` must be picklable, i.e. defined in an importable module
  for the "spawn" start method).  trainscope has no scheduler of its own beyond successive halving.
  Optuna and Ray Tune are not integrated (neither is a dependency); their samplers and schedulers
  can call the same ``train_fn``.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import math
import os
import random
import threading
import time
import traceback
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .interventions._base import as_choice, as_int
from .interventions._state import RNGCapture

__all__ = ["Report", "SearchResult", "Trial", "TrialStopped", "choice", "loguniform", "randint", "search", "uniform"]

MAX_REPORTS = 1000
"""Reported points kept per trial (older ones thinned): memory stays bounded on long trials."""


class TrialStopped(Exception):
    """Raised by ``report(step, value)`` when the trial fell below a rung's cut (successive halving)."""


# ---------------------------------------------------------------------------- the space
class Dist:
    """A hyper-parameter's distribution (made by :func:`loguniform`, :func:`uniform`, :func:`choice`,
    :func:`randint`)."""

    def sample(self, rng: np.random.Generator) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def position(self, value: Any) -> float:
        """Where ``value`` lies on this axis, in [0, 1] (the parallel-coordinates plot)."""
        raise NotImplementedError  # pragma: no cover - abstract


def _finite(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(v).__name__} {v!r}")
    x = float(v)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {v!r}")
    return x


@dataclass(frozen=True)
class LogUniform(Dist):
    low: float
    high: float

    def sample(self, rng: np.random.Generator) -> float:
        return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))

    def position(self, value: Any) -> float:
        return (math.log(float(value)) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))

    def __repr__(self) -> str:
        return f"loguniform({self.low:g}, {self.high:g})"


@dataclass(frozen=True)
class Uniform(Dist):
    low: float
    high: float

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.low, self.high))

    def position(self, value: Any) -> float:
        return (float(value) - self.low) / (self.high - self.low)

    def __repr__(self) -> str:
        return f"uniform({self.low:g}, {self.high:g})"


@dataclass(frozen=True)
class Choice(Dist):
    options: tuple[Any, ...]

    def sample(self, rng: np.random.Generator) -> Any:
        return self.options[int(rng.integers(len(self.options)))]

    def position(self, value: Any) -> float:
        idx = next((i for i, o in enumerate(self.options) if o == value), 0)
        return idx / (len(self.options) - 1) if len(self.options) > 1 else 0.5

    def __repr__(self) -> str:
        return f"choice({list(self.options)!r})"


@dataclass(frozen=True)
class RandInt(Dist):
    low: int
    high: int

    def sample(self, rng: np.random.Generator) -> int:
        return int(rng.integers(self.low, self.high + 1))

    def position(self, value: Any) -> float:
        return (float(value) - self.low) / (self.high - self.low)

    def __repr__(self) -> str:
        return f"randint({self.low}, {self.high})"


def loguniform(low: float, high: float) -> LogUniform:
    """A float drawn uniformly in log space between ``low`` and ``high`` (both > 0): learning rates,
    weight decay."""
    lo, hi = _finite("loguniform low", low), _finite("loguniform high", high)
    if lo <= 0:
        raise ValueError(f"loguniform needs low > 0 (a log scale has no 0), got low={low!r}; "
                         "use uniform(0, high) for a range that starts at 0")
    if hi <= lo:
        raise ValueError(f"loguniform needs high > low, got low={low!r}, high={high!r}")
    return LogUniform(lo, hi)


def uniform(low: float, high: float) -> Uniform:
    """A float drawn uniformly between ``low`` and ``high``."""
    lo, hi = _finite("uniform low", low), _finite("uniform high", high)
    if hi <= lo:
        raise ValueError(f"uniform needs high > low, got low={low!r}, high={high!r}")
    return Uniform(lo, hi)


def choice(options: Sequence[Any]) -> Choice:
    """One of ``options``, each equally likely."""
    if isinstance(options, (str, bytes)) or not isinstance(options, Sequence):
        raise TypeError(f"choice takes a list of options, got {type(options).__name__} {options!r}")
    if len(options) == 0:
        raise ValueError("choice needs at least one option, got an empty list")
    return Choice(tuple(options))


def randint(low: int, high: int) -> RandInt:
    """An integer between ``low`` and ``high``, both included."""
    lo, hi = as_int("randint low", low), as_int("randint high", high)
    if hi <= lo:
        raise ValueError(f"randint needs high > low (both are included), got low={low!r}, high={high!r}")
    return RandInt(lo, hi)


def check_space(space: Any) -> dict[str, Any]:
    """The space as a dict ``{name: Dist or constant}``, or a clear error."""
    if not isinstance(space, Mapping) or not space:
        raise TypeError("space must be a non-empty dict {name: loguniform(a, b) | uniform(a, b) | choice([...]) | "
                        f"randint(a, b) | a constant}}, got {type(space).__name__ if not isinstance(space, Mapping) else 'an empty dict'}")
    out: dict[str, Any] = {}
    for k, v in space.items():
        if not isinstance(k, str) or not k:
            raise TypeError(f"space keys are hyper-parameter names (non-empty strings), got {k!r}")
        if isinstance(v, (list, tuple, set, range)):
            raise TypeError(f"space[{k!r}] is a {type(v).__name__}: write choice({list(v)!r}) to draw one of them")
        if isinstance(v, (Mapping, np.ndarray)) or (callable(v) and not isinstance(v, Dist)):
            raise TypeError(f"space[{k!r}] must be loguniform(a, b), uniform(a, b), choice([...]), randint(a, b) "
                            f"or a constant, got {type(v).__name__}")
        out[k] = v
    if not any(isinstance(v, Dist) for v in out.values()):
        raise ValueError("space has only constants: nothing to search (use loguniform / uniform / choice / randint)")
    return out


def sample_config(space: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    return {k: v.sample(rng) if isinstance(v, Dist) else v for k, v in space.items()}


# ---------------------------------------------------------------------------- trials
@dataclass
class Trial:
    """One trial: its configuration, status and what it reported."""

    id: int
    config: dict[str, Any]
    seed: int
    status: str = "pending"  # pending | running | completed | stopped | failed | interrupted
    value: float | None = None  # the trial's metric: last reported (or train_fn's return value)
    step: int | None = None  # last reported step
    rung: int = 0  # rungs passed
    stopped_at: int | None = None  # the rung step it was stopped at
    reports: list[tuple[int, float]] = field(default_factory=list)
    error: str | None = None
    logdir: str | None = None
    seconds: float = 0.0

    def row(self, metric: str) -> dict[str, Any]:
        return {"trial": self.id, **self.config, metric: self.value, "step": self.step, "status": self.status,
                "seconds": round(self.seconds, 3), **({"error": self.error} if self.error else {})}


class _Store:
    """Rung values and live progress, shared by the trials (dicts + lock, or manager proxies)."""

    def __init__(self, rungs: MutableMapping[Any, Any], progress: MutableMapping[Any, Any], lock: Any) -> None:
        self.rungs, self.progress, self.lock = rungs, progress, lock

    def decide(self, k: int, value: float, eta: int, mode: str) -> bool:
        """Record ``value`` at rung ``k``; go on only if it is in the best 1/eta there (ASHA)."""
        v = value if math.isfinite(value) else math.inf * (1 if mode == "min" else -1)
        with self.lock:
            vals: list[float] = [*(float(x) for x in self.rungs.get(k, [])), v]
            self.rungs[k] = vals
        ranked = sorted(vals, reverse=(mode == "max"))
        cut = ranked[max(len(ranked) // eta - 1, 0)]
        if not math.isfinite(value):
            return False
        return bool(value <= cut) if mode == "min" else bool(value >= cut)


class Report:
    """``report(step, value)``, handed to ``train_fn`` with the trial's facts.

    ``report(step, value)`` records the metric at ``step`` (an int in whatever unit ``budget`` is:
    optimizer steps, epochs...) and returns ``True``; when the trial falls below a rung's cut it
    raises :class:`TrialStopped` (let it propagate out of ``train_fn``).  Attributes: ``budget``
    (train to this step), ``config``, ``trial`` (its number), ``seed``, ``logdir``.
    """

    def __init__(self, trial: Trial, store: _Store, milestones: Sequence[int], budget: int | None, metric: str,
                 mode: str, eta: int) -> None:
        self._trial = trial
        self._store = store
        self._milestones = list(milestones)
        self.budget = budget
        self.metric = metric
        self._mode = mode
        self._eta = eta
        self._probe: Any = None
        self._history: Any = None
        self._writer: Any = None
        self._last_push = 0.0
        self.stopped = False

    @property
    def trial(self) -> int:
        return self._trial.id

    @property
    def config(self) -> dict[str, Any]:
        return dict(self._trial.config)

    @property
    def seed(self) -> int:
        return self._trial.seed

    @property
    def logdir(self) -> str | None:
        return self._trial.logdir

    def probe(self, model: Any, optimizer: Any = None, **kwargs: Any) -> Any:
        """A :class:`~trainscope.Probe` on ``model`` writing this trial's run directory (detached and
        closed when the trial ends); the reported values are logged to it as ``search/<metric>``."""
        from .probe import Probe

        if self._probe is not None:
            raise RuntimeError("report.probe(...) was already called in this trial: one probe per trial")
        if self._history is not None:
            raise RuntimeError("report.probe(...) must come before the first report(...) of the trial")
        if "logdir" in kwargs:
            raise TypeError("report.probe sets logdir itself (the trial's run directory); drop logdir=")
        self._probe = Probe(model, optimizer, logdir=self.logdir, **kwargs)
        return self._probe

    def __call__(self, step: int, value: Any = None, **metrics: Any) -> bool:
        if self.stopped:
            raise TrialStopped(f"trial {self.trial} was stopped at step {self._trial.stopped_at}")
        step = as_int("report step", step, lo=0)
        if value is None:
            if self.metric not in metrics:
                raise TypeError(f"report(step, value) needs the value of {self.metric!r} (or {self.metric}=...)")
            value = metrics.pop(self.metric)
        if isinstance(value, torch.Tensor):
            value = value.detach().float().item()
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"report value must be a number, got {type(value).__name__}")
        v = float(value)
        t = self._trial
        t.value, t.step = v, step
        t.reports.append((step, v))
        if len(t.reports) > MAX_REPORTS:
            t.reports[:] = [*t.reports[:-1:2], t.reports[-1]]
        self._log(step, v)
        while t.rung < len(self._milestones) and step >= self._milestones[t.rung]:
            if not self._store.decide(t.rung, v, self._eta, self._mode):
                self.stopped = True
                t.stopped_at = self._milestones[t.rung]
                self._push(force=True)
                raise TrialStopped(f"trial {t.id}: {self.metric}={v:.4g} at step {step} is below the cut of rung "
                                   f"{t.rung + 1} (step {self._milestones[t.rung]})")
            t.rung += 1
        self._push()
        return True

    def _log(self, step: int, v: float) -> None:
        if self._probe is not None:
            self._probe.log(**{f"search/{self.metric}": v})
            return
        if self.logdir is None:
            return
        if self._history is None:
            from .history import History
            from .runlog import RunWriter

            self._history = History()
            self._history.meta.update(model=f"trial {self.trial}", search_config=_jsonable(self.config))
            self._writer = RunWriter(self.logdir, self._history)
        self._history.add_scalars(step, {self.metric: v})

    def _push(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_push > 0.2:
            self._last_push = now
            t = self._trial
            self._store.progress[t.id] = {"status": "running", "value": t.value, "step": t.step, "rung": t.rung}

    def _close(self) -> None:
        if self._probe is not None:
            try:
                self._probe.detach()
                if getattr(self._probe, "run_writer", None) is not None:
                    self._probe.run_writer.close()
            except Exception:
                pass
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:
                pass


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    return repr(v)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _run_trial(train_fn: Callable[..., Any], trial: Trial, store: _Store, milestones: Sequence[int],
               budget: int | None, metric: str, mode: str, eta: int) -> Trial:
    """Run one trial to its end (any process); never raises except KeyboardInterrupt."""
    report = Report(trial, store, milestones, budget, metric, mode, eta)
    trial.status = "running"
    store.progress[trial.id] = {"status": "running", "value": None, "step": None, "rung": 0}
    t0 = time.perf_counter()
    try:
        _seed_all(trial.seed)
        out = train_fn(dict(trial.config), report)
        if report.stopped:
            trial.status = "stopped"
        else:
            if isinstance(out, torch.Tensor) and out.numel() == 1:
                out = out.item()
            if isinstance(out, (int, float, np.integer, np.floating)) and not isinstance(out, bool):
                trial.value = float(out)
            if trial.value is None:
                trial.status = "failed"
                trial.error = (f"train_fn reported no {metric!r}: call report(step, value) during training "
                               "(or return the final value)")
            else:
                trial.status = "completed"
    except TrialStopped:
        trial.status = "stopped"
    except KeyboardInterrupt:
        trial.status = "interrupted"
        raise
    except Exception as e:
        trial.status = "failed"
        where = traceback.extract_tb(e.__traceback__)[-1:] if e.__traceback__ else []
        at = f" (at {os.path.basename(where[0].filename)}:{where[0].lineno})" if where else ""
        trial.error = f"{type(e).__name__}: {e}{at}"
    finally:
        trial.seconds = time.perf_counter() - t0
        report._close()
        store.progress[trial.id] = {"status": trial.status, "value": trial.value, "step": trial.step,
                                    "rung": trial.rung}
    return trial


# ---------------------------------------------------------------------------- the result
class SearchResult:
    """The trials of a search (live while it runs), the best configuration and the table."""

    def __init__(self, trials: list[Trial], *, metric: str, mode: str, budget: int | None, eta: int,
                 milestones: list[int], space: Mapping[str, Any], run_dir: str | None) -> None:
        self.trials = trials
        self.metric = metric
        self.mode = mode
        self.budget = budget
        self.eta = eta
        self.milestones = milestones
        self.space = dict(space)
        self.run_dir = run_dir
        self.finished = False
        self.elapsed = 0.0
        self._listeners: dict[int, Callable[[SearchResult], None]] = {}
        self._next = 0
        self.listener_errors: list[str] = []

    # -- what a user reads
    @property
    def best(self) -> Trial | None:
        """The best trial that ran its whole budget (or, if none did, the best of those that reached
        the furthest step); ``None`` if no trial has a finite value."""
        ok = [t for t in self.trials if t.value is not None and math.isfinite(t.value)]
        full = [t for t in ok if t.status == "completed"]
        pool = full or ([t for t in ok if t.step == max(x.step or 0 for x in ok)] if ok else [])
        if not pool:
            return None
        return (min if self.mode == "min" else max)(pool, key=lambda t: t.value if t.value is not None else math.nan)

    @property
    def best_config(self) -> dict[str, Any] | None:
        b = self.best
        return None if b is None else dict(b.config)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.status] = out.get(t.status, 0) + 1
        return out

    @property
    def steps_used(self) -> int:
        """Steps the trials ran (their last reported steps): against ``trials * budget`` without stopping."""
        return sum(t.step or 0 for t in self.trials)

    def table(self) -> list[dict[str, Any]]:
        """One row per trial: ``trial``, the hyper-parameters, the metric, ``step``, ``status``, ``seconds``."""
        return [t.row(self.metric) for t in self.trials]

    def dataframe(self) -> Any:
        """:meth:`table` as a pandas DataFrame (pandas must be installed)."""
        import pandas as pd  # type: ignore[import-untyped,unused-ignore]

        return pd.DataFrame(self.table()).set_index("trial")

    def __str__(self) -> str:
        keys = list(self.space)
        head = ["trial", *keys, self.metric, "step", "status"]
        rows = [[str(t.id), *[_fmt(t.config.get(k)) for k in keys], _fmt(t.value), _fmt(t.step), t.status]
                for t in self.trials]
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        b = self.best
        lines.append(f"best: trial {b.id} {self.metric}={b.value:.4g} {b.config}" if b is not None and b.value is not None
                     else "best: none (no trial reported a finite value)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        c = self.counts()
        return (f"<SearchResult {len(self.trials)} trials ({', '.join(f'{v} {k}' for k, v in c.items())}); "
                f"best {self.metric}: {None if self.best is None else self.best.value}>")

    # -- live updates
    def subscribe(self, callback: Callable[[SearchResult], None]) -> Callable[[], None]:
        """Call ``callback(result)`` whenever trials progress (on the searching thread); returns an
        unsubscribe function.  A callback that raises is dropped and noted in ``listener_errors``."""
        self._next += 1
        key = self._next
        self._listeners[key] = callback

        def unsubscribe() -> None:
            self._listeners.pop(key, None)

        return unsubscribe

    def notify(self) -> None:
        for key, cb in list(self._listeners.items()):
            try:
                cb(self)
            except Exception as e:
                self._listeners.pop(key, None)
                if len(self.listener_errors) < 20:
                    self.listener_errors.append(f"{type(e).__name__}: {e}")

    def save(self) -> None:
        """Write ``run_dir/search.json`` (the settings and the table), atomically."""
        if self.run_dir is None:
            return
        doc = {"metric": self.metric, "mode": self.mode, "budget": self.budget, "eta": self.eta,
               "rungs": self.milestones, "space": {k: repr(v) for k, v in self.space.items()},
               "finished": self.finished, "elapsed": self.elapsed,
               "trials": [_jsonable({**t.row(self.metric), "config": t.config, "logdir": t.logdir,
                                     "stopped_at": t.stopped_at, "rung": t.rung}) for t in self.trials]}
        path = os.path.join(self.run_dir, "search.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1, allow_nan=True)
        os.replace(tmp, path)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# ---------------------------------------------------------------------------- the search
def _milestones(budget: int | None, rungs: int, eta: int) -> list[int]:
    if budget is None or rungs == 0:
        return []
    first = budget / eta**rungs
    if first < 1:
        most = math.floor(math.log(budget) / math.log(eta) + 1e-9)
        raise ValueError(f"budget={budget} with eta={eta} leaves the first of {rungs} rungs below step 1 "
                         f"(budget / eta**rungs = {first:.3g}); use rungs <= {most} or a larger budget")
    return sorted({max(1, round(budget / eta ** (rungs - k))) for k in range(rungs)})


def search(
    train_fn: Callable[[dict[str, Any], Report], Any],
    space: Mapping[str, Any],
    trials: int = 20,
    budget: int | None = None,
    metric: str = "val_loss",
    mode: str = "min",
    seed: int = 0,
    rungs: int = 2,
    eta: int = 3,
    executor: cf.Executor | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    *,
    include: Sequence[Mapping[str, Any]] = (),
    display: bool | str = "auto",
) -> SearchResult:
    """Random search with successive halving (see the module docstring).

    Parameters
    ----------
    train_fn
        ``train_fn(config, report)``: trains one configuration for ``report.budget`` steps, calling
        ``report(step, value)`` as it goes (``report.probe(model, opt, ...)`` attaches a probe that
        writes the trial's run directory).  It may return the final value instead of reporting it.
    space
        ``{name: loguniform(a, b) | uniform(a, b) | choice([...]) | randint(a, b) | constant}``.
    trials
        How many configurations to try (``include`` ones first, then random ones).
    budget
        The step a trial trains to (the unit ``report`` counts in); ``None``: ``train_fn`` decides,
        and no trial is stopped early.
    metric, mode
        The reported value's name and whether lower (``"min"``) or higher (``"max"``) is better.
    seed
        Seeds the configurations and each trial's seed.
    rungs, eta
        Successive halving: ``rungs`` points where trials may be stopped, the best ``1/eta`` going on
        at each; ``rungs=0`` runs every trial to the end (plain random search).
    executor
        A ``concurrent.futures.Executor`` to run trials in parallel (default: one after another here).
    run_dir
        Write each trial's run to ``run_dir/trial-NNN`` and the table to ``run_dir/search.json``.
    include
        Configurations to evaluate first (e.g. your default one), keys from ``space`` (others drawn).
    display
        ``"auto"``: in Jupyter, show the live table and parallel-coordinates plot.
    """
    if not callable(train_fn):
        raise TypeError(f"train_fn must be a function train_fn(config, report), got {type(train_fn).__name__}")
    sp = check_space(space)
    trials = as_int("trials", trials, lo=1, hi=100_000)
    if budget is not None:
        budget = as_int("budget", budget, lo=1)
    if not isinstance(metric, str) or not metric:
        raise TypeError(f"metric is the reported value's name (a string), got {metric!r}")
    mode = as_choice("mode", mode, ("min", "max"))
    seed = as_int("seed", seed, lo=0, hi=2**63 - 1)
    eta = as_int("eta", eta, lo=2, hi=100)
    rungs = as_int("rungs", rungs, lo=0, hi=20)
    if executor is not None and not isinstance(executor, cf.Executor):
        raise TypeError(f"executor must be a concurrent.futures.Executor (e.g. ProcessPoolExecutor), "
                        f"got {type(executor).__name__}")
    if display not in (True, False, "auto"):
        raise ValueError(f"display must be True, False or 'auto', got {display!r}")
    milestones = _milestones(budget, rungs, eta)
    if not isinstance(include, (list, tuple)):
        raise TypeError(f"include is a list of configurations (dicts), got {type(include).__name__}")
    for i, c in enumerate(include):
        if not isinstance(c, Mapping):
            raise TypeError(f"include[{i}] must be a dict of hyper-parameters, got {type(c).__name__}")
        unknown = [k for k in c if k not in sp]
        if unknown:
            raise ValueError(f"include[{i}] names {unknown} which are not in the space ({', '.join(sp)})")
    if len(include) > trials:
        raise ValueError(f"include holds {len(include)} configurations, more than trials={trials}")
    root: str | None = None
    if run_dir is not None:
        root = os.fspath(run_dir)
        if os.path.exists(os.path.join(root, "search.json")) or (
                os.path.isdir(root) and any(n.startswith("trial-") for n in os.listdir(root))):
            raise FileExistsError(f"run_dir {root!r} already holds a search; runs are never overwritten: "
                                  "pass a new directory")
        os.makedirs(root, exist_ok=True)

    rng = np.random.default_rng(seed)
    all_trials: list[Trial] = []
    for i in range(trials):
        config = sample_config(sp, rng)
        if i < len(include):
            config.update(include[i])
        tseed = int(rng.integers(2**31 - 1))
        logdir = os.path.join(root, f"trial-{i:03d}") if root is not None else None
        all_trials.append(Trial(id=i, config=config, seed=tseed, logdir=logdir))
    result = SearchResult(all_trials, metric=metric, mode=mode, budget=budget, eta=eta, milestones=milestones,
                          space=sp, run_dir=root)
    if display is True or (display == "auto" and _in_notebook()):
        try:
            from .widgets.search_panel import show_search

            show_search(result)
        except Exception as e:  # the search runs without its widget
            result.listener_errors.append(f"display: {type(e).__name__}: {e}")
    t0 = time.perf_counter()
    saved_rng = RNGCapture()
    try:
        if executor is None:
            _sequential(train_fn, result, milestones, budget, metric, mode, eta)
        else:
            _parallel(executor, train_fn, result, milestones, budget, metric, mode, eta)
        result.finished = True
    finally:
        saved_rng.restore()
        result.elapsed = time.perf_counter() - t0
        try:
            result.save()
        finally:
            result.notify()
    return result


def _in_notebook() -> bool:
    import sys

    ip = sys.modules.get("IPython")
    try:
        shell = ip.get_ipython() if ip is not None else None  # type: ignore[attr-defined]
    except Exception:
        return False
    return shell is not None and "ZMQ" in type(shell).__name__


class _LiveDict(dict):  # type: ignore[type-arg]
    """A progress dict that tells the result whenever a trial writes to it (in-process trials)."""

    def __init__(self, result: SearchResult) -> None:
        super().__init__()
        self._result = result

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self._result.notify()


def _sequential(train_fn: Callable[..., Any], result: SearchResult, milestones: list[int], budget: int | None,
                metric: str, mode: str, eta: int) -> None:
    store = _Store({}, _LiveDict(result), threading.Lock())
    for t in result.trials:
        _run_trial(train_fn, t, store, milestones, budget, metric, mode, eta)
        result.save()


def _parallel(executor: cf.Executor, train_fn: Callable[..., Any], result: SearchResult, milestones: list[int],
              budget: int | None, metric: str, mode: str, eta: int) -> None:
    manager = None
    if isinstance(executor, cf.ThreadPoolExecutor):
        store = _Store({}, {}, threading.Lock())
    else:  # other processes: the rungs and the progress live in a manager process
        import multiprocessing as mp

        manager = mp.get_context("spawn").Manager()
        store = _Store(manager.dict(), manager.dict(), manager.Lock())
    try:
        futures = {executor.submit(_run_trial, train_fn, t, store, milestones, budget, metric, mode, eta): t
                   for t in result.trials}
        pending = set(futures)
        try:
            while pending:
                done, pending = cf.wait(pending, timeout=0.5, return_when=cf.FIRST_COMPLETED)
                for f in done:
                    t = futures[f]
                    try:
                        r = f.result()
                        for name in ("status", "value", "step", "rung", "stopped_at", "reports", "error", "seconds"):
                            setattr(t, name, getattr(r, name))
                    except Exception as e:  # the executor failed to run it (pickling, a dead worker)
                        t.status, t.error = "failed", f"{type(e).__name__}: {e}"
                for t in result.trials:
                    p = store.progress.get(t.id) if t.status in ("pending", "running") else None
                    if p:
                        t.status, t.value, t.step, t.rung = p["status"], p["value"], p["step"], p["rung"]
                if done:
                    result.save()
                result.notify()
        except BaseException:
            for f in pending:
                f.cancel()
            for t in result.trials:
                if t.status in ("pending", "running"):
                    t.status = "interrupted"
            raise
    finally:
        if manager is not None:
            manager.shutdown()


# ``trainscope.search`` is this function once the package is imported (it shadows the module's
# name there): the space helpers and the trial types ride on it, so that
# ``trainscope.search.loguniform(1e-4, 1e-1)`` works as well as ``from trainscope.search import ...``.
for _name, _obj in (("loguniform", loguniform), ("uniform", uniform), ("choice", choice), ("randint", randint),
                    ("TrialStopped", TrialStopped), ("Report", Report), ("SearchResult", SearchResult),
                    ("Trial", Trial)):
    setattr(search, _name, _obj)
