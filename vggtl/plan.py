"""The run plan: every decision a config implies, made once, before any work.

A :class:`RunPlan` holds the validated config (with its resolved backbone
``cfg.spec``), the scanned dataset (every file, not split), the resolved
weights, and the feature store's location and settings. ``extract``, ``train``,
``tune`` and cross-validation take a plan; none of them scans, locates a store
or splits on its own. (``export`` and ``predict`` take an artifact, which
records the plan it was trained from: its config, split digest and store.)

The split is computed in exactly one place, :meth:`RunPlan.split`, from the
plan and the content hashes of the files that cannot be decoded -- a fact only
decoding reveals, so extraction (as it finds such files) and training (from
the store's record of them) pass it in. The rule itself is
:func:`vggtl.splits.assign`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from vggtl import config, data
from vggtl.backbones.resolve import ResolvedWeights, resolve_weights
from vggtl.features import augment, runtimes, store


@dataclass(frozen=True)
class StoreLocation:
    """Where the run's features live and what they must be."""

    path: Path
    format: store.StoreFormat
    weights: ResolvedWeights
    calibration: tuple | None = None  # int8: the calibration images (data.ImageFile)


@dataclass(frozen=True)
class RunPlan:
    """One run's decisions, resolved once by :func:`resolve`.

    Attributes:
        cfg: the validated config; ``cfg.spec`` is the resolved backbone.
        dataset: the scanned files of ``data.root`` (or ``data.csv``), not
            split: see :meth:`split`.
        store: the feature store's path, format and weights.
        note: said once by extract and train when the plan chose something
            the user should know of (a store from before unknown detection).
    """

    cfg: config.Config
    dataset: data.Dataset
    store: StoreLocation
    note: str | None = None

    @property
    def weights(self) -> ResolvedWeights:
        return self.store.weights

    def split(self, skipped=()) -> data.Dataset:
        """The dataset split as the config asks, over its usable images.

        The only place vggtl splits: per class, by content and
        ``cfg.split_seed`` (:func:`vggtl.splits.assign`).

        Args:
            skipped: content hashes of files that cannot be decoded; they
                take no place in the split.

        Raises:
            DataError: a class has too few usable images (named, with its count).
        """
        cfg = self.cfg
        return self.dataset.with_split(cfg.split_seed, cfg.data.split.val, cfg.data.split.test, exclude=set(skipped))


def resolve(cfg: config.Config, allow_download: bool = True, reuse_older_store: bool = True) -> RunPlan:
    """Plan a run of ``cfg``: scan the data, resolve the weights, name the store.

    Args:
        cfg: a validated config (:func:`vggtl.config.load`).
        allow_download: fetch missing pretrained weights (``False``: a missing
            file is an error naming it).
        reuse_older_store: when the config's store does not exist but one of
            the same settings without the unknown detector's channel
            statistics does (extracted by a vggtl before it), plan on that one
            (nothing recomputed; no "unknown" from train) and say so.
            ``extract --add-unknown`` passes False: a new store, every image
            computed once more.

    Raises:
        DataError: the data cannot be scanned or a class is too small to split.
        WeightsError: the weights cannot be found or fetched.
    """
    dataset = scan(cfg)
    weights = resolve_weights(cfg.spec.arch, cfg.backbone.weights, cfg.seed, allow_download=allow_download)
    first_split = RunPlan(cfg, dataset, StoreLocation(Path(), None, weights)).split()  # refuses a too-small class now
    calibration = calibration_files(cfg, first_split) if cfg.extract.precision == "int8" else None
    where = _location(cfg, weights, calibration)
    if reuse_older_store and cfg.spec.channel_stats and not where.path.exists():
        older_cfg = dataclasses.replace(cfg, spec=dataclasses.replace(cfg.spec, channel_stats=False))
        older = _location(older_cfg, weights, calibration)
        if older.path.exists():
            return RunPlan(older_cfg, dataset, older, OLDER_STORE_NOTE.format(path=older.path))
    return RunPlan(cfg, dataset, where)


OLDER_STORE_NOTE = ("note: using {path}, extracted before unknown detection: nothing is recomputed, and train cannot say "
                    "'unknown'; extract --add-unknown adds it (a new store: every image computed once more)")


def _location(cfg: config.Config, weights: ResolvedWeights, calibration) -> StoreLocation:
    fmt = store.store_format(cfg.spec, weights.digest, cfg.cache, augment_attr(cfg),
                             cfg.extract.runtime, cfg.extract.precision, runtimes.calibration_digest(calibration))
    return StoreLocation(store.store_path(cfg.cache.path, cfg.name, fmt.settings), fmt, weights, calibration)


def as_plan(cfg_or_plan) -> RunPlan:
    """A plan as given, or the plan of a config (the Python API accepts either)."""
    return cfg_or_plan if isinstance(cfg_or_plan, RunPlan) else resolve(cfg_or_plan)


def scan(cfg: config.Config) -> data.Dataset:
    """The image tree of ``data.root`` (or the files ``data.csv`` lists), not split."""
    return data.scan(cfg.data.root, cfg.data.extensions, workers=max(2, cfg.extract.workers), csv=cfg.data.csv)


def augment_attr(cfg: config.Config) -> dict:
    """The store's record of the views ``augment.*`` asks for."""
    return store.augment_attr(cfg.augment.views, augment.settings_digest(cfg.augment))


def calibration_files(cfg: config.Config, first_split: data.Dataset) -> tuple:
    """The int8 calibration images: ``extract.calibration_images`` training images,
    evenly spaced in content-hash order.

    ``first_split`` is the split *before* undecodable files are known (what
    extract and train both know from the config alone), so that both name the
    same store; an undecodable one is left out when decoding. A new split
    (seed or fractions) means a new calibration set, hence a new int8 store:
    int8 features depend on the images they were calibrated on.
    """
    files = sorted((f for f in first_split.files if f.split == "train"), key=lambda f: f.sha256)
    by_hash = {f.sha256: f for f in files}
    return tuple(data.evenly_spaced(list(by_hash.values()), cfg.extract.calibration_images))
