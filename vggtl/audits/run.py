"""One audit, top to bottom: the up-to-date feature store in, a published audit out.

``experiments/<name>/audit/v<N>/`` (and ``latest``): ``issues.csv`` (most
suspicious first), ``audit.json`` (everything, with the settings and digests
that make it reproducible) and ``audit.html`` (every flagged image beside
examples of its given and suggested class). Over every image -- train, val
and test: a wrong test label corrupts the score a user trusts. Nothing is
recomputed: no forward pass, no decode except the page's thumbnails.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vggtl.audits import curve as curves, labels as label_issues, similar
from vggtl.data import SPLITS
from vggtl.errors import ConfigError, invocation
from vggtl.features.store import FeatureStore
from vggtl.plan import as_plan
from vggtl.training import artifact
from vggtl.training.fit import pooled_features
from vggtl.training.cv import too_small_classes

COLUMNS = ("rank", "path", "kind", "given", "suggested", "score", "likely", "split", "other", "detail", "action")
TOP = 10  # rows in the console summary
EXAMPLES = 4  # images shown per confused class pair


@dataclass(frozen=True)
class Audit:
    """A published audit: its directory, rows and summary (``audit.json``)."""

    path: Path
    rows: list[dict]
    summary: dict


def run(plan, config_arg: str | None = None, log=print) -> Audit:
    """Audit the data of a plan from its feature store and publish the result.

    Args:
        plan: a :class:`~vggtl.plan.RunPlan` or a validated config; its store
            must be up to date (:func:`vggtl.extract.run`).
        config_arg: how the user named the config, for hints in errors.
        log: progress and summary lines.

    Raises:
        StoreError: no store, or one out of date with the data.
        ConfigError: a class has fewer images than ``audit.folds``.
    """
    from vggtl.training.run import open_current_store

    started = time.perf_counter()
    plan = as_plan(plan)
    cfg = plan.cfg
    fs, dataset = open_current_store(plan, config_arg)
    try:
        _check_folds(fs, cfg.audit.folds)
        findings = find_all(cfg, fs, log)
        rows = issue_rows(fs, findings)
        summary = {**summarize(cfg, fs, dataset, findings, rows, time.perf_counter() - started),
                   "apply_command": apply_command(config_arg)}
        target = publish(cfg, fs, rows, summary, findings)
    finally:
        fs.close()
    for line in summary_lines(rows, summary):
        log(line)
    log(f"audit: {target}  (issues.csv, audit.html; act on it: {summary['apply_command']})")
    return Audit(target, rows, summary)


def apply_command(config_arg: str | None) -> str:
    """The command that acts on an edited copy of issues.csv, with the config the audit ran with."""
    return f"{invocation('audit')} {config_arg + ' ' if config_arg else ''}--apply EDITED.csv"


def _check_folds(fs: FeatureStore, folds: int) -> None:
    small = too_small_classes(fs.labels, fs.class_names, folds)
    if small:
        fewest = int(np.bincount(fs.labels, minlength=len(fs.class_names)).min())
        raise ConfigError(f"key 'audit.folds': {folds} folds need at least {folds} images of every class; too few: "
                          f"{', '.join(small)}; lower audit.folds (e.g. --set audit.folds={max(2, fewest)}) "
                          "or add images")


@dataclass(frozen=True)
class Findings:
    """Everything the audit found, per store row."""

    labels: label_issues.LabelFindings
    pairs: list  # (i, j, cosine)
    outlier_score: np.ndarray
    outlier_limit: float
    curve: dict | None
    seconds: dict


def find_all(cfg, fs: FeatureStore, log=print) -> Findings:
    """Label issues, duplicates, outliers and (``audit.learning_curve``) the learning curve."""
    timings, clock = {}, time.perf_counter()
    rows = np.arange(len(fs.labels))
    vectors = pooled_features(fs, rows, "avgmax")  # [avg | max]: the store is read once
    unit = similar.unit_vectors(vectors[:, : vectors.shape[1] // 2])  # avg-pooled: the leakage audit's measure
    vectors = label_issues.with_lower_layer(vectors, fs, rows)
    timings["read"] = time.perf_counter() - clock
    clock = time.perf_counter()
    n_classes = len(fs.class_names)
    # The neighbours of label issues and outliers: the label model's representation (signed-sqrt avg+max).
    similarity = similar.class_similarity(similar.unit_vectors(label_issues.signed_sqrt(vectors)), fs.labels, n_classes)
    pairs = similar.duplicate_pairs(unit, np.asarray(fs.entries), cfg.audit.near_duplicate)
    scores = similar.outlier_scores(similarity)
    timings["similar"] = time.perf_counter() - clock
    clock = time.perf_counter()
    found = label_issues.find(vectors, fs.labels, similarity, cfg.audit.folds, cfg.seed)
    timings["labels"] = time.perf_counter() - clock
    learning = None
    if cfg.audit.learning_curve:
        log("learning curve: 5 fractions x "
            f"{cfg.audit.folds} folds x {curves.REPEATS} repeats (audit.learning_curve: false skips it)")
        clock = time.perf_counter()
        learning = curves.points(vectors, fs.labels, n_classes, cfg.audit.folds, cfg.seed)
        learning["verdict"] = curves.verdict(learning, float(np.bincount(fs.labels).mean()))
        learning["class_verdicts"] = _class_verdicts(fs, learning)
        timings["curve"] = time.perf_counter() - clock
    return Findings(found, pairs, scores, similar.outlier_limit(scores), learning,
                    {k: round(v, 2) for k, v in timings.items()})


def _class_verdicts(fs: FeatureStore, learning: dict) -> dict:
    counts = np.bincount(fs.labels, minlength=len(fs.class_names))
    verdicts = {}
    for c, name in enumerate(fs.class_names):
        if counts[c] < curves.PER_CLASS_MIN:
            verdicts[name] = {"ok": False, "why": f"fewer than {curves.PER_CLASS_MIN} images"}
            continue
        n = learning["class_images"][c]
        verdicts[name] = {**curves.extrapolate(n, learning["class_recall"][c], 2 * n[-1]),
                          "more_images_per_class": int(counts[c])}
    return verdicts


# --------------------------------------------------------------------------- the table

# Order of the table: certain conflicts first, then the likely label issues,
# then the rest; within a tier by score (most suspicious first). The likely
# rows are the top of the label ranking, so label rows keep their rank order.
_TIERS = ("duplicate, two labels", "label, likely", "outlier", "duplicate", "label")


def issue_rows(fs: FeatureStore, findings: Findings) -> list[dict]:
    """The rows of ``issues.csv``, most suspicious first (deterministic: ties by path)."""
    rows = _label_rows(fs, findings.labels) + _duplicate_rows(fs, findings.pairs) + _outlier_rows(fs, findings)
    rows.sort(key=lambda r: (_TIERS.index(r.pop("tier")), -r["score"], r["path"], r["other"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def _split_names(fs: FeatureStore) -> list[str]:
    return [SPLITS[s] for s in fs.splits]


def _label_rows(fs: FeatureStore, found: label_issues.LabelFindings) -> list[dict]:
    """Every image the out-of-fold model finds likelier to be of another class."""
    names, splits, rows = fs.class_names, _split_names(fs), []
    for i in np.flatnonzero(found.disputed):
        given, suggested = found.given[i], found.suggested[i]
        rows.append(_row("label, likely" if found.likely[i] else "label", path=fs.paths[i], kind="label",
                         given=names[given], suggested=names[suggested], score=float(found.score[i]), split=splits[i],
                         likely="yes" if found.likely[i] else "",
                         detail=f"p(given) {found.probabilities[i, given]:.3f}, p(suggested) {found.probabilities[i, suggested]:.3f}, "
                                f"neighbours: {found.neighbour_margin[i]:+.3f} closer to another class, "
                                f"SVM margin {found.svm_margin[i]:+.2f}"))
    return rows


def _duplicate_rows(fs: FeatureStore, pairs) -> list[dict]:
    """One row per pair, for its later image (``other`` names the earlier one)."""
    names, splits, rows = fs.class_names, _split_names(fs), []
    for i, j, cosine in pairs:
        two_labels = fs.labels[i] != fs.labels[j]
        what = ["identical files" if fs.entries[i] == fs.entries[j] else f"cosine {cosine:.4f}"]
        what += ["two labels" if two_labels else "same class"]
        what += [f"across splits ({splits[i]}/{splits[j]})"] if splits[i] != splits[j] else []
        rows.append(_row("duplicate, two labels" if two_labels else "duplicate", path=fs.paths[j], kind="duplicate",
                         given=names[fs.labels[j]], suggested=names[fs.labels[i]], score=float(cosine), split=splits[j],
                         other=fs.paths[i], detail=", ".join(what)))
    return rows


def _outlier_rows(fs: FeatureStore, findings: Findings) -> list[dict]:
    names, splits, rows = fs.class_names, _split_names(fs), []
    for i in np.flatnonzero(findings.outlier_score > findings.outlier_limit):
        rows.append(_row("outlier", path=fs.paths[i], kind="outlier", given=names[fs.labels[i]],
                         suggested=names[findings.labels.predicted[i]], score=float(findings.outlier_score[i]),
                         split=splits[i], detail=f"distance to the nearest class {findings.outlier_score[i]:.3f} "
                                                 f"(limit {findings.outlier_limit:.3f})"))
    return rows


def _row(tier: str, **fields) -> dict:
    row = {"tier": tier, "rank": 0, "likely": "", "other": "", "detail": "", "action": "", **fields}
    row["path"], row["other"], row["score"] = str(row["path"]), str(row["other"]), round(row["score"], 4)
    return row


def issues_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# --------------------------------------------------------------------------- summary and publishing


def summarize(cfg, fs: FeatureStore, dataset, findings: Findings, rows: list[dict], seconds: float) -> dict:
    found = findings.labels
    kinds = {kind: sum(r["kind"] == kind for r in rows) for kind in ("label", "duplicate", "outlier")}
    return {
        "images": len(fs.labels),
        "classes": list(fs.class_names),
        "data_root": str(dataset.root),
        "data_digest": dataset.digest(),
        "store": {"path": str(fs.path), "content_digest": fs.content_digest, "layer": fs.layers[0],
                  "label_model_layers": [fs.layers[0], *filter(None, [label_issues.lower_layer(fs)])]},
        "settings": {"folds": cfg.audit.folds, "seed": cfg.seed, "near_duplicate": cfg.audit.near_duplicate,
                     "label_repeats": label_issues.REPEATS, "neighbours": label_issues.NEIGHBOURS,
                     "logistic_c": label_issues.LOGISTIC_C, "lda_dims": label_issues.LDA_DIMS,
                     "svm_c": label_issues.SVM_C, "outlier_mad_limit": similar.MAD_LIMIT},
        "method": "out-of-fold ensemble (standardized logistic regression + cosine kNN + shrinkage LDA on a PCA, on "
                  "signed-sqrt avg+max pooled features): log p(best other) - log p(given), ranked together with the "
                  "nearest-neighbour similarity margin and a linear SVM's out-of-fold margin; cleanlab's "
                  "confident-learning estimate of the number of issues sets how many are 'likely'",
        "oof_accuracy": round(found.accuracy, 4),
        "likely_label_issues": int(found.likely.sum()),
        "counts": kinds,
        "duplicate_pairs": {"all": len(findings.pairs),
                            "two_labels": sum(r["kind"] == "duplicate" and r["given"] != r["suggested"] for r in rows)},
        "outlier_limit": round(findings.outlier_limit, 4),
        "confused_pairs": confused_pairs(fs, found),
        "learning_curve": findings.curve,
        "seconds": {**findings.seconds, "total": round(seconds, 2)},
        "versions": library_versions(),
    }


def library_versions() -> dict:
    """What the audit's numbers depend on (no TensorFlow: the audit never imports it)."""
    import importlib.metadata
    import platform

    found = {"python": platform.python_version()}
    for name in ("vggtl", "numpy", "scikit-learn", "scipy", "cleanlab", "h5py"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def confused_pairs(fs: FeatureStore, found: label_issues.LabelFindings, top: int = 5) -> list[dict]:
    """The class pairs the out-of-fold model mixes up most (both directions), with examples."""
    n = len(fs.class_names)
    counts = np.zeros((n, n), dtype=int)
    np.add.at(counts, (found.given, found.predicted), 1)
    np.fill_diagonal(counts, 0)
    both = counts + counts.T
    pairs = sorted(((int(both[a, b]), a, b) for a in range(n) for b in range(a + 1, n) if both[a, b]),
                   key=lambda t: (-t[0], t[1], t[2]))[:top]
    out = []
    for total, a, b in pairs:
        mixed = np.flatnonzero(((found.given == a) & (found.predicted == b)) | ((found.given == b) & (found.predicted == a)))
        mixed = mixed[np.argsort(found.score[mixed] * -1, kind="stable")][:EXAMPLES]
        out.append({"a": fs.class_names[a], "b": fs.class_names[b], "count": total,
                    "a_as_b": int(counts[a, b]), "b_as_a": int(counts[b, a]),
                    "examples": [fs.paths[i] for i in mixed]})
    return out


def publish(cfg, fs: FeatureStore, rows: list[dict], summary: dict, findings: Findings) -> Path:
    from vggtl.audits import page

    staging = artifact.begin(Path(cfg.output.dir) / cfg.name, "audit")
    try:
        (staging / "issues.csv").write_text(issues_csv(rows), encoding="utf-8")
        artifact.write_json(staging / "audit.json", {**summary, "issues": rows})
        page.write(staging / "audit.html", cfg, fs, rows, summary, findings.labels)
        return artifact.publish(staging)
    except BaseException:
        artifact.abandon(staging)
        raise


def summary_lines(rows: list[dict], summary: dict) -> list[str]:
    counts = summary["counts"]
    lines = [f"audited {summary['images']} images ({len(summary['classes'])} classes) in {summary['seconds']['total']:.1f} s; "
             f"out-of-fold accuracy {100 * summary['oof_accuracy']:.1f}%",
             f"found: {summary['likely_label_issues']} likely label issue(s) (of {counts['label']} images the other "
             f"images disagree with), {summary['duplicate_pairs']['all']} duplicate pair(s) "
             f"({summary['duplicate_pairs']['two_labels']} with two labels), {counts['outlier']} off-topic image(s)"]
    if rows:
        lines.append(f"most suspicious first (all {len(rows)} in issues.csv):")
        for row in rows[:TOP]:
            lines.append(f"  {row['rank']:>3}. {row['kind']:<9} {row['path']}  given {row['given']}, "
                         f"suggested {row['suggested']} ({row['detail']})")
    for pair in summary["confused_pairs"][:3]:
        lines.append(f"confused: {pair['a']} <-> {pair['b']}: {pair['count']} image(s)")
    if summary["learning_curve"]:
        lines.append(curves.verdict_line(summary["learning_curve"]["verdict"]))
    return lines
