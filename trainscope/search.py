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

Modules: the space's distributions and checks are in ``trainscope._search_space``, the trials,
rung decisions and :class:`SearchResult` in ``trainscope._search_result`` (both re-exported
here); this module runs the trials (``Report``, sequential or on an executor).
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import os
import random
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ._search_result import SearchResult, Trial, _jsonable, _Store
from ._search_space import Choice as Choice  # re-exported: the space's types and checks lived here
from ._search_space import Dist as Dist
from ._search_space import LogUniform as LogUniform
from ._search_space import RandInt as RandInt
from ._search_space import Uniform as Uniform
from ._search_space import check_space, choice, loguniform, randint, sample_config, uniform
from .interventions._base import as_choice, as_int
from .interventions._state import RNGCapture

_show: Callable[[SearchResult], Any] | None = None


def set_display(show: Callable[[SearchResult], Any] | None) -> None:
    """Register the live panel a running search opens (``trainscope/__init__`` hands over the Jupyter
    layer's ``widgets.search_panel.show_search``, imported lazily): the search itself, a service,
    never imports the Jupyter layer."""
    global _show
    _show = show

__all__ = ["Report", "SearchResult", "Trial", "TrialStopped", "choice", "loguniform", "randint", "search", "uniform"]

MAX_REPORTS = 1000
"""Reported points kept per trial (older ones thinned): memory stays bounded on long trials."""


class TrialStopped(Exception):
    """Raised by ``report(step, value)`` when the trial fell below a rung's cut (successive halving)."""


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
            if _show is None:
                raise RuntimeError("no panel registered (import trainscope, which registers the Jupyter layer's)")
            _show(result)
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
