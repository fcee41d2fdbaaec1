"""One training run, top to bottom: cached features in, a published artifact out.

Reads the feature store built by extraction (refusing one that is out of date
with ``data.root``), trains the head with early stopping on the validation
split, optionally fine-tunes the top blocks on stored boundary activations,
evaluates on the test split beside the baselines, and publishes a new
artifact version with its report. Same config + same data + same seed gives
the same ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vggtl import config, data
from vggtl.backbones import build, registry
from vggtl.data import SPLITS, iter_probabilities
from vggtl.errors import ConfigError, StoreError, invocation
from vggtl.features import store
from vggtl.features.store import FeatureStore
from vggtl.files import make_dir
from vggtl.plan import RunPlan, as_plan
from vggtl.training import artifact, baselines, cv, devices, features_runtime, fit, leakage, logs, report, temperature
from vggtl.training.fit import Split
from vggtl.training.inputs import RunInputs
from vggtl.training.results import FinetunePhase, HeadPhase, RunMetrics
from vggtl.training.metrics import accuracy, best_epoch, calibration, split_metrics
from vggtl.unknown import detector as unknown_detector, fitting as unknown_fitting
from vggtl.unknown.fitting import RunUnknown

# float16 features shift probabilities by ~1e-3; more means the artifact is wrong.
E2E_TOLERANCE = 0.02
# Up to this many training images phase 2 holds the boundary maps in RAM
# (float16, ~200 KB each for VGG16: 2 GB); above, it reads them batch by batch.
FINETUNE_IN_RAM_MAX = 10_000


@dataclass(frozen=True)
class Trained:
    """What the phases produced: the models, curves, and each split's probabilities.

    Each phase returns a new one (:meth:`with_final`, ``dataclasses.replace``);
    nothing is changed in place.

    Attributes:
        base: the backbone the final model sits on (fine-tuned blocks included).
        head: the trained head (phase 2's when it was kept).
        history: ``{"phase1": curves, "phase2": curves}``.
        phase1, phase2: what :mod:`vggtl.training.results` records of each phase.
        final: the final model on cached features; ``final_layer`` the stored
            layer it reads (None: the head's); ``final_splits`` that layer's splits.
        probs: split -> probabilities of the final model (clean features).
        temperature: the fitted temperature scaling, or None.
        unknown: the out-of-scope detector and its val/test scores (or why there is none).
    """

    base: object
    head: object
    history: dict
    phase1: HeadPhase
    final: object
    final_layer: str | None
    final_splits: dict
    probs: dict
    phase2: FinetunePhase | None = None
    temperature: dict | None = None
    unknown: RunUnknown | None = None

    def with_final(self, model, layer: str | None, splits: dict, **changes) -> "Trained":
        """A copy whose final model is ``model`` (on ``layer``'s features), every split predicted with it."""
        return dataclasses.replace(self, final=model, final_layer=layer, final_splits=splits,
                                   probs=predict_splits(model, splits), **changes)

    def evaluate_cached(self, fs: FeatureStore, rows):
        """Probabilities of the final model from the cached features of ``rows``
        (the few the artifact is checked on: called eagerly, nothing traced)."""
        return build.predict_eagerly(self.final, fs.features(rows, self.final_layer), fit.PREDICT_BATCH)


def run(plan, config_arg: str | None = None, log=print) -> artifact.Artifact:
    """Train on the cached features of a plan and publish a new artifact version.

    Args:
        plan: a :class:`~vggtl.plan.RunPlan`, or a validated config
            (:func:`vggtl.config.load`) to plan here; its store must be up to
            date (:func:`vggtl.extract.run`).
        config_arg: how the user named the config, for the "run extract"
            hint in errors.
        log: progress lines (phases, accuracies, paths).

    Returns:
        The published, verified :class:`~vggtl.training.artifact.Artifact`.

    Raises:
        StoreError: no store, or one out of date with the data or augment settings.
        PathError: ``output.dir`` cannot be written (nothing is published).
    """
    started = time.perf_counter()
    plan = as_plan(plan)
    cfg, where = plan.cfg, plan.store
    make_dir(Path(cfg.output.dir) / cfg.name, "output.dir")  # before minutes of training, not after
    fs, dataset = open_current_store(plan, config_arg)
    if plan.note:
        log(plan.note)
    log(f"split: seed {cfg.split_seed}, digest {dataset.split_digest()[:12]}, "
        + ", ".join(f"{s} {len(fs.split_rows(s))}" for s in SPLITS))
    try:
        if cfg.train.folds:  # refuse too-small classes before training, not after
            cv.check_folds(fs, cfg.train.folds)
        check_validation_split(cfg, fs)
        if fs.skipped:
            log(f"skipped {len(fs.skipped)} file(s) that could not be decoded (not used):")
            for path, reason in fs.skipped:
                log(f"  {path}: {reason}")
        trained = train_phases(cfg, fs, where.weights, log)
        with Publication(RunInputs(plan, dataset, fs), trained, log) as publication:
            metrics = evaluate(cfg, fs, dataset, trained, log)  # beside the artifact's end-to-end check
            target = publication.publish(metrics, time.perf_counter() - started)
    finally:
        fs.close()
    published = artifact.load(target, verify_checksums=False)  # publish() checksummed it just now
    if line := artifact.label_change_line(published.info.get("labels_since_previous")):
        log(line)
    log(f"artifact: {target}")
    log(f"report:   {target / 'report.html'} (open it in a browser; summary: report.md)")
    return published


def open_current_store(plan: RunPlan, config_arg=None) -> tuple[FeatureStore, data.Dataset]:
    """The plan's store, refused unless it holds the data as it is now, with its
    index split as the plan splits the usable images (a new seed or fractions
    need no extract).

    Returns:
        ``(fs, dataset)``: the open store with its index split, and the
        dataset split over its usable images.

    Raises:
        StoreError: no store, a store out of date with the data, or one
            lacking augmented views of this split's training images.
        DataError: a class too small to split once undecodable files are left out.
    """
    cfg, where = plan.cfg, plan.store
    again = f"{invocation('extract')} {config_arg or 'CONFIG'}"
    if busy := store.being_written(where.path):  # not "run extract": it is running
        raise StoreError(busy.replace("then run again", "then run train again"))
    if not where.path.is_file():
        raise StoreError(f"no feature store for this config at {where.path}; run: {again}")
    fs = FeatureStore(where.path)
    try:
        if fs.content_digest != plan.dataset.content_digest():
            raise StoreError(
                f"feature store {where.path} is out of date with {cfg.data.root} (images added, edited or removed, "
                f"or written by an older vggtl); run {again} first (it computes only what is missing)"
            )
        if fs.settings_key != where.format.key:
            raise StoreError(f"feature store {where.path} was built with other settings than this config's (another "
                             f"backbone, layer, image size, weights or runtime); run {again}: it sets the file aside and rebuilds it")
        if not fs.sealed:
            raise StoreError(f"feature store {where.path} has no integrity checksums (written by an older vggtl); "
                             f"run {again} first (it reuses every stored feature and adds them)")
        fs.verify()  # every row's checksum, before any number is computed from it
        dataset = plan.split(fs.skipped_hashes)
        fs.use_split({f.relpath: f.split for f in dataset.files})
        _check_views(cfg, fs, where, again)
    except BaseException:
        fs.close()
        raise
    return fs, dataset


def check_validation_split(cfg: config.Config, fs: FeatureStore) -> None:
    """Phase 2 and the from-scratch baseline decide on the validation split
    (whether fine-tuning helped; when the CNN stops): refuse them without one,
    before training. Phase 1 trains without it (all epochs, no early stopping).

    Raises:
        ConfigError: naming the key that needs a validation split.
    """
    if len(fs.split_rows("val")):
        return
    needs = [key for key, on in (("finetune.blocks", cfg.finetune.blocks), ("baseline.scratch", cfg.baseline.scratch)) if on]
    if needs:
        raise ConfigError(f"{needs[0]}: needs a validation split to decide on (there is none: data.split.val is 0 or "
                          f"val/ is empty); set data.split.val above 0, or turn {needs[0]} off")


def _check_views(cfg: config.Config, fs: FeatureStore, where, again: str) -> None:
    """Every training image of this split must have its stored augmented views."""
    if not cfg.augment.views:
        return
    if fs.augment.get("digest") != where.format.augment["digest"]:
        raise StoreError(f"feature store {where.path} holds other augmented views than augment.* asks for; run {again} first")
    missing = fs.missing_views(fs.split_rows("train"), cfg.augment.views)
    if missing:
        raise StoreError(
            f"{missing} training image(s) of this split have no augmented views in {where.path} "
            f"(they were held out in the split the store was extracted for); run {again}: "
            "it computes only those views"
        )


def load_splits(fs: FeatureStore, layer: str | None = None) -> dict[str, Split]:
    """Every split's clean features of ``layer`` (the head's input by default), in RAM."""
    splits = {}
    for split in SPLITS:
        rows, x, y = fit.load_split(fs, split, layer)
        splits[split] = Split(rows, y, fs, layer, x)
    return splits


def streamed_splits(fs: FeatureStore, layer: str | None = None) -> dict[str, Split]:
    """Every split's rows and labels; features of ``layer`` stay in the store until used."""
    rows = {split: fs.split_rows(split) for split in SPLITS}
    return {split: Split(rows[split], fs.labels[rows[split]], fs, layer) for split in SPLITS}


def predict_splits(model, splits: dict[str, Split]) -> dict:
    return {name: split.predict(model) for name, split in splits.items()}


def train_phases(cfg: config.Config, fs: FeatureStore, weights, log=print) -> Trained:
    """Phase 1 (the head on cached features), then phase 2 when ``finetune.blocks`` > 0."""
    if cfg.spec.boundary_layer:  # before TensorFlow builds anything: it may split the CPU
        devices.prepare(cfg.finetune.devices)
    # Phase 1 holds pooled vectors only: maps are read and pooled in batches,
    # and every split is predicted batch by batch from the store.
    splits = streamed_splits(fs)
    train, val = splits["train"], splits["val"]
    log(
        f"train: {len(train.y)} (+{cfg.augment.views} views each)  val: {len(val.y)}  "
        f"test: {len(splits['test'].y)}  classes: {len(fs.class_names)}  features: {fs.feature_shape}"
    )
    if not len(val.y):
        log(f"no validation split (data.split.val: 0): phase 1 runs all {cfg.train.epochs} epochs, without early "
            "stopping, and keeps the last; no temperature scaling")
    head, history1 = fit.train_head(cfg, fs, train, val)
    log(_phase_line("phase 1 (head)", history1, cfg.train.epochs))
    probs = predict_splits(head, splits)
    phase1 = HeadPhase({s: accuracy(splits[s].y, probs[s]) if len(splits[s].y) else None for s in SPLITS},
                       len(history1["loss"]), best_epoch(history1), _hit_cap(history1, cfg.train.epochs))
    base = build.build_base(cfg.spec, weights, cfg.seed)
    trained = Trained(base, head, {"phase1": history1}, phase1, head, None, splits, probs)
    if cfg.spec.boundary_layer:
        trained = _finetune(cfg, fs, trained, log)
    if cfg.train.temperature:
        trained = _scale_temperature(trained, log)
    return dataclasses.replace(trained, unknown=_fit_unknown(cfg, fs, trained, log))


def _fit_unknown(cfg: config.Config, fs: FeatureStore, trained: Trained, log) -> RunUnknown:
    """The out-of-scope detector on the final model's features (fine-tuned blocks included)."""
    boundary = trained.final_layer
    top = (boundary, build.top_model(trained.base, boundary, cfg.spec.head_layer)) if boundary else None
    found = unknown_fitting.fit_for_run(cfg, fs, top, fit.PREDICT_BATCH)
    log(unknown_line(found))
    return found


def unknown_line(found: RunUnknown) -> str:
    """``unknown detection: ...`` -- the operating point and what it costs on test, or why there is none."""
    if found.detector is None:
        return f"unknown detection: unavailable ({found.reason})"
    d, test = found.detector, found.metrics()["test"]
    line = (f"unknown detection (fitted on train, threshold on val): score > {d.threshold:.3f} = unknown; keeps "
            f"{100 * d.record['val_kept']:.1f}% of val (asked {100 * d.keep:g}%)")
    if test["n"]:
        line += f", {100 * test['kept']:.1f}% of test ({test['unknown']} of {test['n']} in-scope test images called unknown)"
    return line


def _scale_temperature(trained: Trained, log) -> Trained:
    """Fit the temperature on val and build it into the final model (every split re-predicted)."""
    val = trained.final_splits["val"]
    if not len(val.y):
        log("temperature scaling skipped: no validation split to fit it on")
        return trained
    before = {s: calibration(trained.final_splits[s].y, trained.probs[s])["ece"] for s in ("val", "test")}
    fitted = {**temperature.fit_temperature(trained.final, val.predict, val.y), "ece_before": before}
    log(f"temperature scaling (fitted on val): T = {fitted['temperature']:.3f}, "
        f"val cross-entropy {fitted['val_loss_before']:.4f} -> {fitted['val_loss_after']:.4f}")
    # fit_temperature builds T into the final model: predict again with it.
    return trained.with_final(trained.final, trained.final_layer, trained.final_splits, temperature=fitted)


def _hit_cap(history: dict, cap: int) -> bool:
    """Training ran every allowed epoch without early stopping ending it (with no
    validation split there is no early stopping to end it: not a cap hit)."""
    watched = history.get("val_cross_entropy") or [0.0]
    validated = bool(np.isfinite(watched[-1]))
    return len(history["loss"]) >= cap and not history.get("stopped_early", False) and validated


def _phase_line(title: str, history: dict, cap: int) -> str:
    line = f"{title}: {len(history['loss'])} epochs (best: {best_epoch(history)})"
    if "seconds" in history:
        line += f" in {history['seconds']:.1f} s"
    if _hit_cap(history, cap):
        line += f" -- HIT THE EPOCH CAP ({cap}) before early stopping: raise the epochs or check the learning rate"
    return line


def _finetune(cfg: config.Config, fs: FeatureStore, trained: Trained, log) -> Trained:
    """Phase 2 on the stored boundary activations: ``trained`` with the fine-tuned final model."""
    boundary = cfg.spec.boundary_layer
    if len(fs.split_rows("train")) > FINETUNE_IN_RAM_MAX:
        # Boundary maps are large (VGG16 block4_pool: 200 KB per image in
        # float16): read them from the store one batch at a time.
        splits = streamed_splits(fs, boundary)
        train, val = splits["train"], splits["val"]
        bank = fit.StoreBank(fs, train.rows, boundary, cfg.augment.views)
        x_val = fit.store_batches(fs, val.rows, boundary, fit.PREDICT_BATCH, val.y, len(fs.class_names))
    else:
        splits = load_splits(fs, boundary)
        train, val = splits["train"], splits["val"]
        bank, x_val = fit.training_bank(fs, train.rows, boundary, cfg.augment.views), val.x
    tuned, history, kept = fit.finetune(cfg, trained.base, trained.head, bank, train.y, (x_val, val.y), len(fs.class_names))
    del bank
    log(
        _phase_line(f"phase 2 (fine-tune {cfg.finetune.blocks} block(s) from {boundary}, on {history['devices']})", history,
                    cfg.finetune.epochs)
        + ("" if kept else "; validation cross-entropy/accuracy not better than phase 1's, phase-1 weights kept")
    )
    hit_cap = _hit_cap(history, cfg.finetune.epochs) if cfg.finetune.early_stopping_patience else False
    phase2 = FinetunePhase(cfg.finetune.blocks, len(history["loss"]), best_epoch(history), kept, history["devices"], hit_cap)
    return trained.with_final(tuned, boundary, splits, history={**trained.history, "phase2": history}, phase2=phase2)


def evaluate(cfg: config.Config, fs: FeatureStore, dataset, trained: Trained, log=print) -> RunMetrics:
    """``metrics.json``: train/val/test metrics of the final model (test with its
    95% interval), the baselines, the split, both phases."""
    per_split = {s: split_metrics(fs.labels[fs.split_rows(s)], trained.probs[s], fs.class_names) for s in SPLITS}
    baseline = {"linear_probe": baselines.linear_probe(fs, cfg.seed)}
    cross_validation = _cross_validate(cfg, fs, log) if cfg.train.folds else None
    findings = leakage.audit(fs, dataset, cfg.audit.near_duplicate)
    log(leakage.summary_line(findings))
    if cfg.baseline.scratch:
        baseline["scratch"] = baselines.train_scratch(cfg, fs, dataset.root)
        log(f"from-scratch CNN baseline: test {baseline['scratch']['test_accuracy']:.4f}")
    metrics = RunMetrics(**per_split, baseline=baseline, split=split_record(cfg, fs, dataset), phase1=trained.phase1,
                         leakage=findings, cv=cross_validation, phase2=trained.phase2, temperature=trained.temperature,
                         unknown=trained.unknown.metrics() if trained.unknown is not None else None)
    log(_accuracy_line(metrics, trained.phase1 if trained.phase2 is not None else None))
    return metrics


def _accuracy_line(metrics: RunMetrics, before_finetuning: HeadPhase | None) -> str:
    """``accuracy: train .. val .. test .. (95% CI ..)``; an empty split is named, not given a number."""
    def acc(value) -> str:
        return "-" if value is None else f"{value:.4f}"

    test = metrics.test
    if test["n"]:
        low, high = test["accuracy_ci95"]
        held_out = f"test {acc(test['accuracy'])} (95% CI {low:.3f}-{high:.3f}, n={test['n']})"
    else:
        held_out = "no test split (data.split.test: 0): nothing measured on held-out images"
    return (f"accuracy: train {acc(metrics.train['accuracy'])}   val {acc(metrics.val['accuracy'])}   {held_out}   ("
            + (f"before fine-tuning: test {acc(before_finetuning.accuracy['test'])}; " if before_finetuning else "")
            + f"linear probe: test {acc(metrics.baseline['linear_probe']['test_accuracy'])})")


def _cross_validate(cfg: config.Config, fs: FeatureStore, log) -> dict:
    result = cv.cross_validate(cfg, fs, cfg.train.folds)
    head, probe = result["head"], result["probe"]
    log(f"{cfg.train.folds}-fold cross-validation on train + val ({result['images']} images, test untouched): "
        f"head {head['mean']:.4f} ± {head['sd']:.4f}, linear probe {probe['mean']:.4f} ± {probe['sd']:.4f} "
        f"({result['seconds']:.1f} s)")
    return result


def split_record(cfg: config.Config, fs: FeatureStore, dataset) -> dict:
    """Which split the numbers are on: seed, fractions, digest and sizes."""
    return {
        "seed": cfg.split_seed,
        "val": cfg.data.split.val,
        "test": cfg.data.split.test,
        "digest": dataset.split_digest(),
        "sizes": {s: int(len(fs.split_rows(s))) for s in SPLITS},
    }


class Publication:
    """One artifact version being written, from the moment the run's models are final.

    Entering makes the staging folder, builds the end-to-end model (what
    ``model.keras`` holds), starts its end-to-end check in a thread and
    writes ``model.keras`` (~70 MB) in another: the check's convolutions and
    the file's writing release the GIL, so both run while this thread computes
    the metrics and the report. :meth:`publish` joins them, writes every other
    file and publishes the version. Leaving without
    publishing (an error, a failed check, Ctrl-C) removes the staging folder:
    nothing that looks like an artifact is left, earlier versions untouched.
    """

    def __init__(self, run: RunInputs, trained: Trained, log=print):
        self.run, self.trained, self.log = run, trained, log
        self.published: Path | None = None

    def __enter__(self) -> "Publication":
        cfg, where = self.run.cfg, self.run.where
        artifact.clean_stale_staging(cfg.output.dir, cfg.name)
        self.staging = artifact.begin(cfg.output.dir, cfg.name)
        self._pool = futures.ThreadPoolExecutor(2, thread_name_prefix="vggtl-publication")
        try:
            trained = self.trained
            self.detector = trained.unknown.detector if trained.unknown is not None else None
            self.full = build.end_to_end_model(cfg.spec, where.weights, trained.head, f"vggtl_{cfg.name}", cfg.seed,
                                               base=trained.base, unknown=self.detector)
            predictor, self.record = build.batch_predictor(self.full), None
            if features_runtime.is_converted(cfg):
                self.record = _write_carried_base(self.staging, self.run, trained, self.detector, self.log)
                predictor = features_runtime.load_predictor(self.staging, self.record, artifact.load_keras, with_unknown=True)
            self.test_images = SplitImages(self.run.fs, cfg.spec.decode, self.run.dataset.root)
            self._checked = self._pool.submit(self.test_images.predict, predictor,
                                              self.test_images.check_rows[:E2E_CHECK_IMAGES])
            self._saved = self._pool.submit(self.full.save, self.staging / "model.keras")
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._close()

    def _close(self) -> None:
        self._pool.shutdown(wait=True)  # the check (one image) and model.keras: ~1 s at most
        if self.published is None:
            artifact.abandon(self.staging)

    def publish(self, metrics: RunMetrics, seconds: float) -> Path:
        """Write every file of the artifact, check it end to end and publish the next version.

        Raises:
            RuntimeError: the artifact's model does not compute what was evaluated
                (:func:`end_to_end_gap`); nothing is published.
        """
        run, trained, staging, fs = self.run, self.trained, self.staging, self.run.fs
        if self.detector is not None:
            unknown_detector.save(self.detector, staging)
        if self.record is not None and len(self.test_images.rows):
            model = build.probabilities_model(self.full, run.cfg.spec)
            fp32 = _through_tensorflow(model, trained, self.test_images, self.record, self.log)
            metrics = dataclasses.replace(metrics, tensorflow_fp32=fp32)
        logs.write_history_csv(staging / "history.csv", trained.history)
        logs.write_tensorboard(staging / "tensorboard", trained.history)
        artifact.write_metadata(staging, run, metrics, trained.history, seconds=seconds, features_runtime=self.record)
        # The report while the check and model.keras's writing finish: it reads neither.
        report.write(staging, run, metrics, trained.history, trained.probs, CachedGradcam(run.cfg, fs, trained),
                     trained.unknown.scores if self.detector is not None else None)
        gap = end_to_end_gap(self._checked.result(), lambda rows: trained.evaluate_cached(fs, rows), fs, trained.unknown)
        artifact.record_end_to_end_gap(staging, gap)
        self._saved.result()  # model.keras written (an error writing it is raised here)
        self.published = artifact.publish(staging)
        return self.published


def _write_carried_base(staging, run: RunInputs, trained: Trained, detector, log) -> dict:
    """The converted base extraction ran and ``head.keras`` on its outputs (with
    the unknown score when there is a detector): what predict runs."""
    layer = trained.final_layer or run.cfg.spec.head_layer
    if detector is None:
        return features_runtime.write(staging, run.cfg, run.where, trained.final, [layer], log)
    head = build.scored_head(run.cfg.spec, trained.base, trained.head, layer, detector)
    return features_runtime.write(staging, run.cfg, run.where, head, [layer, registry.STATS_LAYER], log)


class CachedGradcam:
    """Grad-CAM of the final head at its input, from the store: the report's
    worst errors explained without running the base (VGG16 at 224 px: 7x7
    maps of ``block5_pool`` instead of 14x14 of ``block5_conv3``, in
    milliseconds instead of ~2 s per image). A fine-tuned model's top
    blocks run on the stored boundary maps first."""

    def __init__(self, cfg: config.Config, fs: FeatureStore, trained: Trained):
        self.fs, self.trained = fs, trained
        self.top = build.top_model(trained.base, trained.final_layer, cfg.spec.head_layer) if trained.final_layer else None
        grid = "x".join(map(str, trained.head.input_shape[1:3]))
        self.layer = f"{cfg.spec.head_layer}, the head's input: {grid}, from the cached features"

    def __call__(self, paths, class_indices) -> list[np.ndarray]:
        from vggtl.inspect import gradcam

        row_of = {path: row for row, path in enumerate(self.fs.paths)}
        rows = [row_of[path] for path in paths]
        if self.top is None:
            maps = self.fs.features(rows)
        else:
            maps = self.top(self.fs.features(rows, self.trained.final_layer), training=False)
        return gradcam.gradcams_at_input(self.trained.head, maps, class_indices)


class SplitImages:
    """The test split's images, decoded from ``dataset_root`` as extraction decodes them.

    ``check_rows`` are the images the end-to-end check runs on: the test
    split's, or with ``data.split.test: 0`` the validation's, else the training's
    (an artifact is always checked against what was evaluated)."""

    def __init__(self, fs: FeatureStore, decode, dataset_root):
        self.fs, self.decode, self.root = fs, decode, Path(dataset_root)
        self.rows = fs.split_rows("test")
        self.check_rows = next((rows for rows in map(fs.split_rows, ("test", "val", "train")) if len(rows)), self.rows)

    def predict(self, predictor, rows):
        """``(probabilities, rows, unknown scores or None)`` of ``predictor`` on
        ``rows`` (a file no longer decodable is left out), decoded in batches."""
        row_of = {str(self.root / self.fs.paths[row]): row for row in rows}
        done = [r for r in iter_probabilities(list(row_of), self.decode.decode, predictor) if "error" not in r]
        probs = np.stack([r["probs"] for r in done]) if done else np.zeros((0, len(self.fs.class_names)))
        scores = np.array([r["unknown_score"] for r in done]) if done and "unknown_score" in done[0] else None
        return probs, np.asarray([row_of[r["path"]] for r in done], int), scores


# The score is in units of the validation spread; float16 features move it by ~1e-3.
UNKNOWN_E2E_TOLERANCE = 0.05


# Images the end-to-end check runs: a wiring error (preprocessing, mirror
# averaging, fine-tuned weights, the head, the unknown score) shows on every
# image, so one proves the wiring. Each costs a pass of the whole base (VGG16
# at 224 px: ~0.3 s on 2 cores), two when mirror-averaged.
E2E_CHECK_IMAGES = 1


def end_to_end_gap(ran, evaluate_cached, fs: FeatureStore, unknown: RunUnknown | None = None) -> float:
    """Max |p_artifact - p_cached| on the checked images: ``ran`` is what
    :meth:`SplitImages.predict` returned for them running the artifact,
    ``evaluate_cached(rows)`` the probabilities the metrics were computed from.
    Proves the artifact computes what was trained and evaluated (the fp16 cache
    gives ~1e-3). With ``unknown``, also checks the artifact's unknown score
    against the one the metrics were computed from.

    Raises:
        RuntimeError: the probabilities differ by more than :data:`E2E_TOLERANCE`,
            or the unknown scores by more than :data:`UNKNOWN_E2E_TOLERANCE`.
    """
    direct, kept, scores = ran
    if not len(kept):
        return 0.0
    if scores is not None and unknown is not None and unknown.detector is not None:
        by_row = {int(row): s for split in ("val", "test") for row, s in zip(fs.split_rows(split), unknown.scores[split])}
        score_gap = float(np.max(np.abs(scores - np.array([by_row[int(row)] for row in kept]))))
        if score_gap > UNKNOWN_E2E_TOLERANCE:
            raise RuntimeError(f"internal: model.keras's unknown score differs from the cached features' by {score_gap:.4f}")
    gap = float(np.max(np.abs(direct - evaluate_cached(kept))))
    if gap > E2E_TOLERANCE:
        raise RuntimeError(f"internal: the artifact's model differs from the evaluated model on cached features by {gap:.4f}")
    return gap


def _through_tensorflow(model, trained: Trained, test_images: SplitImages, record: dict, log) -> dict:
    """Every test image through ``model.keras`` (TensorFlow fp32 base) beside the
    recorded runtime's cached-feature probabilities."""
    probs, kept, _ = test_images.predict(build.batch_predictor(model), test_images.rows)
    position = {row: i for i, row in enumerate(test_images.rows)}
    runtime_probs = trained.probs["test"][[position[row] for row in kept]]
    result = features_runtime.compare_with_tensorflow(probs, runtime_probs, test_images.fs.labels[kept])
    low, high = result["accuracy_ci95"]
    log(f"test accuracy through TensorFlow fp32 (model.keras): {result['test_accuracy']:.4f} (95% CI {low:.3f}-{high:.3f}, "
        f"n={result['n']}); same top-1 as {features_runtime.describe(record)} on {100 * result['top1_agreement']:.1f}% of them")
    return result
