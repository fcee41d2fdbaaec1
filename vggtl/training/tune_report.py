"""What ``vggtl tune`` writes: the trials table (CSV, markdown, plot), the
best config as YAML and ``tune.json``, published as one versioned directory."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict
from pathlib import Path

from vggtl import config
from vggtl.training import artifact


def publish(cfg: config.Config, study, config_arg: str | None) -> Path:
    """Write every output into a staging directory and publish it as
    ``<output.dir>/<name>/tune/v<N>`` (nothing half-written is left on failure)."""
    staging = artifact.begin(cfg.output.dir, f"{cfg.name}/tune")
    try:
        rows = trial_rows(study)
        write_csv(staging / "trials.csv", rows)
        (staging / "trials.md").write_text(markdown(cfg, study, rows, config_arg), encoding="utf-8")
        plot(staging / "trials.png", study)
        (staging / "best.yaml").write_text(best_yaml(cfg, study, config_arg), encoding="utf-8")
        summary = {**as_json(study), "config": cfg.to_dict(), "config_digest": cfg.digest(), "versions": _versions()}
        artifact.write_json(staging / "tune.json", summary)
        return artifact.publish(staging)
    except BaseException:
        artifact.abandon(staging)
        raise


def _versions() -> dict:
    import optuna

    return {**artifact.versions(), "optuna": optuna.__version__}


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4f}"
    return str(value).replace("|", "\\|")


def markdown(cfg: config.Config, study, rows: list[dict], config_arg: str | None) -> str:
    """The summary lines and the trials table as markdown."""
    lines = [f"# Tuning {cfg.name}", "", *summary_lines(study, config_arg), ""]
    header = list(rows[0])
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(row[key]) for key in header) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def summary_lines(study, config_arg: str | None = None) -> list[str]:
    """What a user reads first: default vs best, cross-validated and on test."""
    d, b = study.default, study.best
    failed = sum(t.state != "complete" for t in study.trials)
    lines = [
        f"{len(study.trials)} trials ({failed} failed), sampler seed {study.seed}, {study.jobs} process(es), {study.seconds} s",
        f"default: CV accuracy {_cv(d)}",
        f"best:    CV accuracy {_cv(b)}  (trial {b.number}; {(b.accuracy - d.accuracy) * 100:+.1f} points)",
    ]
    if study.test:
        lines.append("test accuracy, reported only (the search never saw it): "
                     + "; ".join(f"{name} {_test(score)}" for name, score in study.test.items()))
    if b is d:
        lines.append("no trial beat the default config; best.yaml is the default")
    return lines


def _cv(t) -> str:
    return f"{t.accuracy:.3f} ± {t.sd:.3f} (log loss {t.log_loss:.3f})" if t.state == "complete" else f"failed: {t.error}"


def _test(score: dict) -> str:
    low, high = score["accuracy_ci95"]
    return f"{score['accuracy']:.3f} [95% CI {low:.3f}-{high:.3f}, n={score['n']}]"


def best_yaml(cfg: config.Config, study, config_arg: str | None) -> str:
    """The config with the best trial's settings applied, as ``vggtl train`` reads it."""
    best = config.with_overrides(cfg, study.best.params, "best trial")
    changed = ", ".join(f"{k}={v!r}" for k, v in study.best.params.items()) or "nothing (the default won)"
    header = [
        f"# vggtl tune {config_arg or cfg.name}: best of {len(study.trials)} trials, "
        f"CV accuracy {study.best.accuracy:.4f} vs default {study.default.accuracy:.4f}",
        f"# changed: {changed}",
        "# relative paths are relative to the directory vggtl is run from; train with: vggtl train <this file>",
    ]
    return "\n".join(header) + "\n" + best.to_yaml()


def plot(path: Path, study) -> None:
    """CV accuracy per trial with its running best and the default as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in study.trials if t.state == "complete"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.errorbar([t.number for t in done], [t.accuracy for t in done], yerr=[t.sd for t in done], fmt="o", ms=4,
                alpha=0.7, label="trial (± sd over folds)")
    running, best = [], -math.inf
    for t in study.trials:
        best = max(best, t.accuracy) if t.state == "complete" else best
        running.append(best if best > -math.inf else math.nan)
    ax.step([t.number for t in study.trials], running, where="post", label="best so far")
    if study.default.state == "complete":
        ax.axhline(study.default.accuracy, color="gray", ls="--", label="default config")
    ax.set_xlabel("trial")
    ax.set_ylabel("cross-validated accuracy")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def trial_rows(study) -> list[dict]:
    """The trials table: one flat row per trial (default first), params as columns."""
    keys = list(dict.fromkeys(k for t in study.trials for k in t.params))
    rows = []
    for t in [study.default, *study.trials]:
        row = {"trial": t.number, "state": t.state, "cv_accuracy": t.accuracy, "cv_sd": t.sd, "cv_log_loss": t.log_loss,
               "seconds": t.seconds, "best": "yes" if t is study.best else ""}
        row.update({k: _param_text(t.params[k]) if k in t.params else "(default)" for k in keys})
        row["error"] = t.error
        rows.append(row)
    return rows


def _param_text(value) -> str:
    """A parameter as the YAML/--set user would write it: ``max``, ``[256]``, ``true``, ``0.0031``."""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value)


def as_json(study) -> dict:
    return {
        "seed": study.seed, "jobs": study.jobs, "seconds": study.seconds,
        "default": asdict(study.default), "best": asdict(study.best),
        "trials": [asdict(t) for t in study.trials], "test": study.test,
    }
