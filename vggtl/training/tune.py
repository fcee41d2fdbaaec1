"""Search the head and training settings on cached features (Optuna, TPE).

Every trial is the head as ``vggtl train`` trains it (phase 1), scored by
stratified K-fold cross-validation over train + val (:mod:`vggtl.training.cv`);
the test split is never read while searching. The objective is the mean
cross-validated accuracy; among equally accurate trials the lower log loss
wins. The default config is scored the same way first, as the bar to beat.

Trials run in ``tune.jobs`` spawned worker processes, each holding the
folds' features once. Reproducible: the sampler is seeded and trials are
asked in batches of ``jobs`` and told in trial order, so the same config,
data, seed and ``jobs`` give the same trials table however the processes
are scheduled. Only after the search are the default and the best settings
each trained once on the train split and scored on test, for the report.

Outputs, published as ``<output.dir>/<name>/tune/v<N>/`` (``latest``):
``trials.csv``, ``trials.md``, ``trials.png``, ``best.yaml`` (a config
``vggtl train`` accepts as it is) and ``tune.json``.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from vggtl import config
from vggtl.errors import VggtlError, require_extra
from vggtl.training import cv, tune_report

OUTPUTS = ("trials.csv", "trials.md", "trials.png", "best.yaml", "tune.json")


@dataclass(frozen=True)
class TrialResult:
    """One scored setting: ``state`` is ``complete`` or ``failed`` (with ``error``)."""

    number: int | str
    params: dict
    state: str = "complete"
    accuracy: float = math.nan
    sd: float = math.nan
    log_loss: float = math.nan
    seconds: float = 0.0
    error: str = ""


@dataclass(frozen=True)
class Study:
    """The outcome of :func:`tune`: every trial, the default, the best, where it was written.

    Built once, after the search; ``tune.json`` is its JSON form
    (:func:`vggtl.training.tune_report.as_json`)."""

    trials: list
    default: TrialResult
    best: TrialResult
    test: dict = field(default_factory=dict)  # "default"/"best" -> test metrics, for the report only
    path: Path | None = None
    seconds: float = 0.0
    jobs: int = 1
    seed: int = 0


def tune(plan, trials: int | None = None, config_arg: str | None = None, log=print) -> Study:
    """Search ``tune.space`` on the cached features of a plan and publish the study.

    Args:
        plan: a :class:`~vggtl.plan.RunPlan`, or a validated config to plan
            here, whose store is up to date (``vggtl extract``).
        trials: number of trials; ``None`` = ``tune.trials``.
        config_arg: how the user named the config (for hints and ``best.yaml``).
        log: progress lines.

    Returns:
        The :class:`Study`, with ``path`` the published directory.

    Raises:
        MissingExtra: Optuna is not installed (``pip install 'vggtl[tune]'``).
        StoreError / ConfigError: as ``vggtl train`` (no store, folds too many for a class).
    """
    from vggtl.plan import as_plan
    from vggtl.training import fit
    from vggtl.training import run as training_run

    require_extra("optuna", "tune", "vggtl tune")
    plan = as_plan(plan)
    cfg = plan.cfg
    started, trials = time.perf_counter(), trials or cfg.tune.trials
    fs, _ = training_run.open_current_store(plan, config_arg)
    try:
        data = cv.fold_data(cfg, fs, cfg.tune.folds)
        jobs = resolve_jobs(cfg.tune.jobs, trials)
        log(f"tune: {trials} trials x {cfg.tune.folds} folds of train + val ({len(data.labels)} images; "
            f"test untouched), {jobs} process(es)")
        with fit.progress_bar(trials, "tune", unit="trial") as bar:
            default, results = run_trials(cfg, data, trials, jobs, bar)
        best = default
        for result in results:
            best = result if better(result, best) else best
        test = test_scores(cfg, fs, {"default": default.params, "best": best.params})
    finally:
        fs.close()
    study = Study(results, default, best, test, jobs=jobs, seed=cfg.tune_seed, seconds=round(time.perf_counter() - started, 1))
    return dataclasses.replace(study, path=tune_report.publish(cfg, study, config_arg))


def test_scores(cfg: config.Config, fs, settings: dict) -> dict:
    """Test accuracy (with its 95% interval) of each setting, trained once on
    train with early stopping on val, as phase 1 of ``vggtl train``. Computed
    after the search, so the test split never influences it."""
    from vggtl.training import fit
    from vggtl.training import run as training_run
    from vggtl.training.metrics import split_metrics

    splits = training_run.streamed_splits(fs)
    train, val, test = splits["train"], splits["val"], splits["test"]
    scores = {}
    if not len(test.y):  # data.split.test: 0
        return scores
    for name, params in settings.items():
        head, _ = fit.train_head(config.with_overrides(cfg, params, name), fs, train, val)
        metrics = split_metrics(test.y, test.predict(head), fs.class_names)
        scores[name] = {key: metrics[key] for key in ("accuracy", "accuracy_ci95", "n")}
    return scores


def cpu_cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resolve_jobs(requested: int, trials: int) -> int:
    """``tune.jobs`` (0 = one per CPU core this process may use), at most ``trials``."""
    return max(1, min(requested or cpu_cores(), trials))


def suggest(trial, param: config.SearchParam):
    """The value of one dimension for an Optuna ``trial``.

    Choices go to Optuna as their JSON text: it only accepts scalars, and
    ``head.units`` choices are lists.
    """
    if param.choices is not None:
        return json.loads(trial.suggest_categorical(param.key, [json.dumps(c) for c in param.choices]))
    if param.integer:
        return trial.suggest_int(param.key, int(param.low), int(param.high), log=param.log)
    return trial.suggest_float(param.key, param.low, param.high, log=param.log)


def better(a: TrialResult, b: TrialResult | None) -> bool:
    """``a`` beats ``b``: completed, higher CV accuracy, then lower log loss."""
    if a.state != "complete":
        return False
    if b is None or b.state != "complete":
        return True
    return (round(a.accuracy, 9), -round(a.log_loss, 9)) > (round(b.accuracy, 9), -round(b.log_loss, 9))


def run_trials(cfg: config.Config, data: cv.FoldData, trials: int, jobs: int, bar=None) -> tuple[TrialResult, list]:
    """Score the default config, then ``trials`` Optuna trials, in ``jobs`` processes.

    Returns:
        ``(default, trials)`` as :class:`TrialResult` s, trials in order.
    """
    optuna = require_extra("optuna", "tune", "vggtl tune")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = config.tune_space(cfg.tune.space)
    sampler = optuna.samplers.TPESampler(seed=cfg.tune_seed, n_startup_trials=min(10, max(1, trials // 3)))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    context = multiprocessing.get_context("spawn")  # TensorFlow does not survive fork()
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_init, initargs=(cfg.to_dict(), data, jobs)) as pool:
        default = pool.submit(_score, "default", {}).result()
        results = []
        while len(results) < trials:
            asked = [study.ask() for _ in range(min(jobs, trials - len(results)))]
            batch = [(t.number, {p.key: suggest(t, p) for p in space}) for t in asked]
            for trial, result in zip(asked, pool.map(_score, *zip(*batch))):
                _tell(optuna, study, trial, result)
                results.append(result)
                if bar is not None:
                    bar.update(1)
                    best = max((r.accuracy for r in results if r.state == "complete"), default=math.nan)
                    bar.set_postfix(best_cv=f"{best:.3f}", default_cv=f"{default.accuracy:.3f}", refresh=False)
    return default, results


def _tell(optuna, study, trial, result: TrialResult) -> None:
    if result.state == "complete":
        trial.set_user_attr("log_loss", result.log_loss)
        study.tell(trial, result.accuracy)
    else:
        trial.set_user_attr("error", result.error)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)


# --------------------------------------------------------------------------- worker processes

_WORKER: dict = {}


def _worker_init(base: dict, data: cv.FoldData, jobs: int) -> None:
    """Hold the base config and the folds' features; share the cores among workers."""
    from vggtl import tfquiet

    tf = tfquiet.load()
    tf.config.threading.set_intra_op_parallelism_threads(max(1, cpu_cores() // jobs))
    tf.config.threading.set_inter_op_parallelism_threads(1)
    _WORKER.update(base=base, data=data)


def _score(number, params: dict) -> TrialResult:
    """Cross-validate one setting; any failure becomes a failed trial, never a crashed study."""
    import numpy as np

    started = time.perf_counter()
    try:
        cfg = config.from_dict(config.apply_overrides(_WORKER["base"], params), "tune trial")
        scores = cv.head_scores(cfg, _WORKER["data"])
    except Exception as exc:  # noqa: BLE001 - a trial's failure is data for the table
        error = str(exc) if isinstance(exc, VggtlError) else f"{type(exc).__name__}: {exc}"
        return TrialResult(number, params, "failed", error=" ".join(error.split())[:300],
                           seconds=round(time.perf_counter() - started, 2))
    acc, loss = np.asarray(scores["accuracy"]), np.asarray(scores["log_loss"])
    if not np.all(np.isfinite(loss)):
        return TrialResult(number, params, "failed", error="non-finite log loss on a held-out fold",
                           seconds=round(time.perf_counter() - started, 2))
    return TrialResult(number, params, accuracy=round(float(acc.mean()), 6), sd=round(float(acc.std()), 6),
                       log_loss=round(float(loss.mean()), 6), seconds=round(time.perf_counter() - started, 2))
