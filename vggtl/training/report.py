"""The evaluation report: ``report.md`` with its figures (SVG charts, PNG thumbnails) inside the artifact."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vggtl.data import SPLITS, thumbnails

WORST_N = 12
PHASE_TITLES = {"phase1": "phase 1 (head on cached features)", "phase2": "phase 2 (fine-tuning)"}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def confusion_table(matrix, class_names) -> list[str]:
    """The test confusion matrix as a Markdown table: counts, each with its share
    of the true class (the diagonal's is the class's recall, in bold)."""
    matrix = np.asarray(matrix)
    rows = []
    for i, name in enumerate(class_names):
        total = int(matrix[i].sum())
        cells = [f"{int(c)} ({100 * c / total:.0f}%)" if total and c else "0" for c in matrix[i]]
        cells[i] = f"**{cells[i]}**"
        rows.append([f"**{name}**", *cells, total])
    return _table(["true \\ predicted", *class_names, "images"], rows)


def write_curves(history: dict, path: Path) -> None:
    """``learning_curves.svg``: per phase, the loss early stopping watched and
    the accuracies, the best epoch marked (the charts report.html shows)."""
    from vggtl.reports import artifact_page, svg

    charts = [artifact_page.phase_curves(phase, curves) for phase, curves in history.items()
              if isinstance(curves, dict) and curves.get("loss")]
    path.write_text(svg.document([c[key] for c in charts for key in ("loss", "accuracy")]), encoding="utf-8")


def worst_misclassified(test_rows, probs, labels) -> list[tuple[int, float, int]]:
    """(row, confidence of the wrong prediction, predicted label), most confident first."""
    preds = probs.argmax(axis=1)
    wrong = np.flatnonzero(preds != labels)
    order = wrong[np.argsort(-probs[wrong, preds[wrong]], kind="stable")]
    return [(int(test_rows[i]), float(probs[i, preds[i]]), int(preds[i])) for i in order[:WORST_N]]


THUMBNAIL = thumbnails.SIDE  # pixels, the longer side
TITLE_FONT = 13  # pixels


def plot_thumbnails(cells, cols: int, cfg, root: Path, path: Path) -> None:
    """A grid of ``(relative path, title)`` images as the model sees them, each
    under its title (one or two lines, shortened with "..." to fit, never clipped).

    The images are the thumbnails extraction cached (:class:`vggtl.reports.thumbs.Thumbnails`,
    as report.html's): decoding the files again cost seconds per giant image
    in every train. Drawn with Pillow: a matplotlib figure of 16 images took
    ~3 s per run.
    """
    from PIL import Image, ImageDraw

    from vggtl.reports.thumbs import Thumbnails

    thumbs = Thumbnails(cfg.spec.decode, root)
    font = _font(TITLE_FONT)
    cell_w, title_h, pad = THUMBNAIL + 40, 2 * (TITLE_FONT + 4), 8
    cols = min(cols, len(cells))
    rows = (len(cells) + cols - 1) // cols
    grid = Image.new("RGB", (cols * cell_w + pad, rows * (title_h + THUMBNAIL + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for i, (relpath, title) in enumerate(cells):
        x, y = pad + (i % cols) * cell_w, pad + (i // cols) * (title_h + THUMBNAIL + pad)
        lines = [_fit(draw, line, font, cell_w - pad) for line in title.splitlines()[:2]]
        draw.multiline_text((x, y), "\n".join(lines), fill="black", font=font, spacing=4)
        picture = thumbs.picture(relpath)
        if picture is None:
            draw.text((x, y + title_h), "(cannot be decoded)", fill="gray", font=font)
            continue
        grid.paste(Image.fromarray(picture), (x, y + title_h))
    grid.save(path)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size)
    except (OSError, TypeError, ImportError):  # Pillow without FreeType: its small bitmap font
        return ImageFont.load_default()


def _fit(draw, text: str, font, width: int) -> str:
    """``text``, shortened in the middle with "..." until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    keep = len(text)
    while keep > 4 and draw.textlength(text[: keep // 2] + "..." + text[-(keep - keep // 2):], font=font) > width:
        keep -= 1
    return text[: keep // 2] + "..." + text[-(keep - keep // 2):]


def plot_worst(items, fs, class_names, cfg, root: Path, path: Path) -> None:
    cells = [(fs.paths[row], f"true {class_names[fs.labels[row]]}\npred {class_names[pred]} ({conf:.2f})")
             for row, conf, pred in items]
    plot_thumbnails(cells, 4, cfg, root, path)


def _leakage_section(cfg, dataset, leakage: dict, out_dir: Path) -> list[str]:
    """Identical files and near-duplicates across splits, with thumbnails of the pairs."""
    lines = ["## Leakage audit", "", "Identical content in two splits (possible with a pre-split layout or a CSV):"]
    if not leakage["identical"]:
        lines += ["none.", ""]
    else:
        lines += [""] + _table(["sha256", "files"], [[g["sha256"][:12], ", ".join(f"`{f['path']}` ({f['split']})" for f in g["files"])]
                                                      for g in leakage["identical"]]) + [""]
    pairs, total = leakage["near_duplicates"], leakage["near_duplicates_total"]
    lines += [f"Near-duplicates across splits (cosine of the average-pooled cached features >= {leakage['threshold']:g}, "
              f"`audit.near_duplicate`): {total}" + ("." if not total else f", {len(pairs)} most similar listed:"), ""]
    if pairs:
        lines += _table(["cosine", "image", "split", "near-duplicate", "split"],
                        [[f"{p['cosine']:.4f}", f"`{p['a']}`", p["a_split"], f"`{p['b']}`", p["b_split"]] for p in pairs]) + [""]
        cells = [cell for p in pairs[:8] for cell in ((p["a"], f"{p['a_split']}: {Path(p['a']).name}"),
                                                        (p["b"], f"{p['b_split']}: {Path(p['b']).name} ({p['cosine']:.3f})"))]
        plot_thumbnails(cells, 4, cfg, dataset.root, out_dir / "leakage.png")
        lines += ["![near-duplicate pairs](leakage.png)", ""]
    if leakage["identical"] or total:
        lines += ["A test image with a copy in train measures memory, not generalisation: move or remove one of each pair.", ""]
    return lines


def write(out_dir: Path, run, metrics, history, probs, explain=None, unknown_scores: dict | None = None) -> Path:
    """Write ``report.md`` and its figures, then ``report.html`` (from the files
    written so far, :mod:`vggtl.reports.artifact_page`), into ``out_dir``;
    returns the path of ``report.md``.

    Args:
        out_dir: the artifact's staging directory.
        run: the :class:`~vggtl.training.inputs.RunInputs` (config, scanned
            data, open store, weights loaded: random weights get a warning).
        metrics: the :class:`~vggtl.training.results.RunMetrics` (``metrics.json``).
        history: the curves (``history.json``).
        probs: ``{split: probabilities}`` of the final model on each split's
            rows (``fs.split_rows``): the predictions CSV and the worst
            misclassified come from them.
        explain: report.html's Grad-CAM of the worst errors, ``(paths,
            class indices) -> maps`` with a ``layer`` attribute naming what
            it explains (:class:`vggtl.training.run.CachedGradcam`), saved in
            the artifact; None: the page runs ``model.keras`` for them.
        unknown_scores: ``{split: unknown scores}`` (val, test) when the run
            has unknown detection: a column of ``predictions.csv``.
    """
    cfg, dataset, fs = run.cfg, run.dataset, run.fs
    lines = _header(cfg, fs, metrics, run.weights)
    lines += _results(metrics)
    lines += _cv_section(metrics)
    lines += _dataset_section(dataset, fs)
    lines += _per_class(metrics.test)
    write_curves(history, out_dir / "learning_curves.svg")
    lines += ["", "## Confusion matrix (test)", ""]
    lines += confusion_table(metrics.test["confusion_matrix"], fs.class_names) if metrics.test["n"] else [
        "No test split (`data.split.test: 0`)."]
    lines += ["", "## Learning curves", "", "![learning curves](learning_curves.svg)", ""]
    lines += _calibration_section(metrics, out_dir)
    lines += _leakage_section(cfg, dataset, metrics.leakage, out_dir)
    lines += _unknown_section(metrics.unknown)
    write_predictions_csv(out_dir / "predictions.csv", fs, probs, unknown_scores)
    lines += ["## Every prediction", "", "`predictions.csv`: one row per image of every split (path, split, true and "
              "predicted class, confidence, the probability of each class; val and test: the unknown score).", ""]
    test_rows = fs.split_rows("test")
    lines += _worst_section(cfg, dataset, fs, test_rows, probs["test"], out_dir)
    lines += ["", "The same report with every image behind its numbers (click a confusion-matrix cell): `report.html`.", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    from vggtl.reports import artifact_page

    page = artifact_page.ReportPage.of(out_dir)  # read once: the saved maps are read lazily, when rendered
    if explain is not None:
        artifact_page.write_gradcams(page, explain, explain.layer)
    artifact_page.write_page(page)
    return path


def _header(cfg, fs, metrics, weights) -> list[str]:
    lines = [f"# vggtl report: {cfg.name}", ""]
    if weights.random:
        lines += [
            "**WARNING: the backbone has RANDOM weights (`backbone.weights: null`). "
            "These numbers say nothing about transfer learning.**",
            "",
        ]
    for phase, cap in (("phase1", cfg.train.epochs), ("phase2", cfg.finetune.epochs)):
        if getattr(metrics, phase) is not None and getattr(metrics, phase).hit_epoch_cap:
            lines += [f"**{PHASE_TITLES[phase]} hit the epoch cap ({cap}) before early stopping ended it: "
                      "the model may be under-trained; raise the epochs or check the learning rate.**", ""]
    return lines + [
        f"- backbone: {cfg.spec.name} up to `{cfg.spec.head_layer}`, weights: {weights.source}"
        + (f", {cfg.spec.arch.width:g} of its channels (`backbone.width`)" if cfg.spec.arch.width != 1.0 else "")
        + (", maps averaged with the mirror image's (`backbone.mirror_average`)" if cfg.spec.mirror_average else ""),
        f"- features computed by: {_runtime_text(fs.settings)}",
        f"- head: pooling `{cfg.head.pooling}`, units {cfg.head.units}, dropout {cfg.head.dropout}, l2 {cfg.head.l2}",
        f"- split: seed {metrics.split['seed']}, val {metrics.split['val']:g} / test {metrics.split['test']:g} "
        f"of each class, digest `{metrics.split['digest'][:12]}`",
        f"- seed {cfg.seed}, image size {cfg.spec.image_size}, resize `{cfg.spec.decode.resize}`, "
        f"phase 1 epochs {metrics.phase1.epochs_trained} (best {metrics.phase1.best_epoch})",
        f"- augmentation: {cfg.augment.views} stored view(s) per training image"
        + (f" (settings digest `{fs.augment.get('digest')}`)" if cfg.augment.views else ""),
        "- fine-tuning: " + _finetune_line(cfg, metrics),
        "",
        "## Results",
        "",
    ]


def _runtime_text(settings: dict) -> str:
    """``tensorflow fp32``, or the store's runtime and precision (int8: its calibration digest).
    ``model.keras`` always runs the base in TensorFlow fp32."""
    runtime = settings.get("runtime", "tensorflow-fp32").replace("-", " ")
    if "calibration" in settings:
        runtime += f" (calibration `{settings['calibration']}`)"
    if "runtime" in settings:
        runtime += ("; the artifact carries this base (`base/`, `head.keras`) and `vggtl predict` runs it when installed; "
                    "`model.keras` runs the base in TensorFlow fp32")
    return runtime


def _finetune_line(cfg, metrics) -> str:
    phase2 = metrics.phase2
    if phase2 is None:
        return "off"
    line = (
        f"top {cfg.finetune.blocks} block(s), {cfg.finetune.optimizer} lr {cfg.finetune.learning_rate}, "
        f"{phase2.epochs_trained} epochs (best {phase2.best_epoch})"
        + (f", on {phase2.devices}" if phase2.devices else "")
    )
    return line + ("" if phase2.kept else " -- **did not improve the validation cross-entropy and accuracy; phase-1 weights kept**")


def _results(metrics) -> list[str]:
    test, probe = metrics.test, metrics.baseline["linear_probe"]
    low, high = test["accuracy_ci95"] or (None, None)
    rows = []
    if metrics.phase2 is not None:
        rows.append(["after phase 1 (head only)", *(_pct(metrics.phase1.accuracy[s]) for s in SPLITS), ""])
    rows.append([
        "vggtl model" + (" (after fine-tuning)" if metrics.phase2 is not None else ""),
        _pct(metrics.train["accuracy"]),
        _pct(metrics.val["accuracy"]),
        f"**{_pct(test['accuracy'])}** ({_pct(low)}-{_pct(high)})" if test["n"] else "no test split",
        _num(test['macro_f1']),
    ])
    if metrics.tensorflow_fp32 is not None:
        rows.append(_tensorflow_row(metrics.tensorflow_fp32))
    rows.append(["linear probe (logistic regression, pooled features)", *(_pct(probe[f"{s}_accuracy"]) for s in SPLITS), ""])
    if "scratch" in metrics.baseline:
        scratch = metrics.baseline["scratch"]
        rows.append([
            f"from scratch (small CNN, {scratch['image_size']}px, augmentation, no transfer)",
            "", _pct(scratch["val_accuracy"]), _pct(scratch["test_accuracy"]), "",
        ])
    header = ["", "train accuracy", "val accuracy", "test accuracy (95% interval)", "test macro F1"]
    note = (f"Test accuracy on {test['n']} images; the interval is the 95% Wilson score interval: one image is "
            f"{100 / max(test['n'], 1):.1f} points. Train accuracy far above val/test means over-fitting; all three low, under-fitting."
            if test["n"] else "**No test split (`data.split.test: 0`): nothing here is measured on images the model "
            "was not trained or tuned on.**")
    return _table(header, rows) + ["", note]


def _tensorflow_row(tf32: dict) -> list[str]:
    """The final model with its base run by TensorFlow fp32 (``model.keras``), when the
    features came from another runtime: what exports and plain-Keras users get."""
    low, high = tf32["accuracy_ci95"]
    return [f"same model, base through TensorFlow fp32 (`model.keras`; top-1 agreement {_pct(tf32['top1_agreement'])})",
            "", "", f"{_pct(tf32['test_accuracy'])} ({_pct(low)}-{_pct(high)})", ""]


def _cv_section(metrics) -> list[str]:
    cv = metrics.cv
    if cv is None:
        return []
    rows = [[name, f"{cv[key]['mean']:.3f} ± {cv[key]['sd']:.3f}", " ".join(f"{v:.3f}" for v in cv[key]["per_fold"])]
            for name, key in (("head (as trained here)", "head"), ("linear probe", "probe"))]
    return ["", f"## Cross-validation ({cv['folds']} stratified folds of train + val, {cv['images']} images; test untouched)", ""] + _table(
        ["", "accuracy mean ± sd", "per fold"], rows
    ) + ["", f"Early stopping watched a slice of each fold's training part, never the fold it was scored on. {cv['seconds']:.1f} s."]


def _calibration_section(metrics, out_dir: Path) -> list[str]:
    """ECE of val and test and the test reliability diagram."""
    if not metrics.test["n"]:
        return ["## Calibration", "", "No test split (`data.split.test: 0`): calibration is not measured.", ""]
    write_reliability(metrics.test["calibration"], out_dir / "reliability.svg")
    ece = {s: metrics.of(s)["calibration"]["ece"] for s in ("val", "test")}
    return ["## Calibration", "",
            f"Expected calibration error (top-1 confidence, {len(metrics.test['calibration']['bins'])} non-empty bins of 10): "
            f"val {_num(ece['val'])}, test {_num(ece['test'])}. 0 means \"80% sure\" is right 80% of the time; "
            "with a few dozen held-out images each bin holds only a handful of them.", "",
            *_temperature_lines(metrics), "![reliability diagram](reliability.svg)", ""]


def _temperature_lines(metrics) -> list[str]:
    t = metrics.temperature
    if t is None:
        return ["No temperature scaling (`train.temperature: false`).", ""]
    after = {s: metrics.of(s)["calibration"]["ece"] for s in ("val", "test")}
    return [f"Temperature scaling (`train.temperature`), fitted on val and built into `model.keras`: T = {t['temperature']:.3f}; "
            f"ECE val {_num(t['ece_before']['val'])} -> {_num(after['val'])}, test {_num(t['ece_before']['test'])} -> {_num(after['test'])}; "
            f"val cross-entropy {t['val_loss_before']:.3f} -> {t['val_loss_after']:.3f}. The diagram is after scaling.", ""]


def write_reliability(calibration: dict, path: Path) -> None:
    """``reliability.svg``: accuracy against confidence per bin, with the
    diagonal of a calibrated model (the chart report.html shows)."""
    from vggtl.reports import svg

    path.write_text(svg.document([svg.reliability(calibration["bins"], calibration["ece"], "test reliability")], columns=1),
                    encoding="utf-8")


def _unknown_section(unknown: dict | None) -> list[str]:
    """``## Unknown images``: the operating point and what it costs in-scope images (or why there is none)."""
    lines = ["## Unknown images", ""]
    if not unknown or not unknown.get("available"):
        why = (unknown or {}).get("reason", "not recorded")
        return lines + [f"Unavailable: {why}.", ""]
    lines += [f"Score > {unknown['threshold']:.4f} = `unknown` (threshold: the {unknown['keep']:g} quantile of the "
              f"validation scores; {unknown['method']}). In-scope images it calls unknown are the price "
              "(docs/unknown.md):", ""]
    rows = [[s, unknown[s]["n"], f"{100 * unknown[s]['kept']:.1f}%" if unknown[s]["n"] else "-", unknown[s].get("unknown", 0),
             ", ".join(f"{q:.2f}" for q in unknown[s].get("quantiles", []))] for s in ("val", "test")]
    return lines + _table(["split", "images", "kept", "called unknown", "score min / 5% / 25% / 50% / 75% / 95% / max"],
                          rows) + [""]


def write_predictions_csv(path: Path, fs, probs: dict, unknown_scores: dict | None = None) -> None:
    """One row per image of every split: path, split, true, predicted, confidence, p(class)..."""
    import csv

    names = fs.class_names
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "split", "true", "predicted", "confidence", *(f"p_{name}" for name in names)]
                        + (["unknown_score"] if unknown_scores else []))
        for split in SPLITS:
            # Training images are the detector's own references (distance 0 to themselves): no score.
            scores = (unknown_scores or {}).get(split)
            for i, (row, p) in enumerate(zip(fs.split_rows(split), probs[split])):
                best = int(np.argmax(p))
                writer.writerow([fs.paths[row], split, names[fs.labels[row]], names[best], f"{p[best]:.6f}",
                                 *(f"{v:.6f}" for v in p)]
                                + ([f"{scores[i]:.6f}" if scores is not None else ""] if unknown_scores else []))


def _dataset_section(dataset, fs) -> list[str]:
    lines = ["", "## Dataset", "", f"Root `{dataset.root}` ({dataset.layout} layout).", ""]
    counts = dataset.counts(skipped=[path for path, _ in fs.skipped])
    lines += _table(
        ["class", *SPLITS, "total"],
        [[c, *(counts[s][c] for s in SPLITS), sum(counts[s][c] for s in SPLITS)] for c in fs.class_names],
    )
    lines += [""]
    if fs.skipped:
        lines += [f"**{len(fs.skipped)} file(s) skipped** (not counted above, not used):", ""]
        lines += [f"- `{p}`: {r}" for p, r in fs.skipped]
        lines += [""]
    return lines + [f"- note: {note}" for note in dataset.warnings]


def _per_class(test) -> list[str]:
    if not test["n"]:
        return []
    return ["", "## Per-class test metrics", ""] + _table(
        ["class", "precision", "recall", "F1", "support"],
        [[c, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", m["support"]] for c, m in test["per_class"].items()],
    )


def _worst_section(cfg, dataset, fs, test_rows, test_probs, out_dir: Path) -> list[str]:
    class_names = fs.class_names
    worst = worst_misclassified(test_rows, test_probs, fs.labels[test_rows])
    lines = ["## Worst misclassified test images", ""]
    if not len(test_rows):
        return lines + ["No test split (`data.split.test: 0`)."]
    if not worst:
        return lines + ["None: every test image is classified correctly."]
    plot_worst(worst, fs, class_names, cfg, dataset.root, out_dir / "worst_misclassified.png")
    lines += ["![worst misclassified](worst_misclassified.png)", ""]
    return lines + _table(
        ["image", "true", "predicted", "confidence"],
        [[f"`{fs.paths[r]}`", class_names[fs.labels[r]], class_names[p], f"{c:.3f}"] for r, c, p in worst],
    )
