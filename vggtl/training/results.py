"""What a training run measured, as frozen dataclasses with one JSON form.

:class:`RunMetrics` is ``metrics.json``: built once by
:func:`vggtl.training.run.evaluate` (plus, for a converted base, the
TensorFlow fp32 check :meth:`~vggtl.training.run.Publication.publish` makes), written
by :meth:`RunMetrics.to_json` and read back by :meth:`RunMetrics.from_json`
(the report and ``vggtl runs`` read it, older artifacts included). Nothing
changes it after it is built: a later measurement makes a new one
(``dataclasses.replace``).

Per-split metrics (:func:`vggtl.training.metrics.split_metrics`), the
baselines, cross-validation and leakage findings are JSON documents of their
own and stay mappings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class HeadPhase:
    """Phase 1, the head on cached features."""

    accuracy: dict  # split -> accuracy of the head alone
    epochs_trained: int
    best_epoch: int
    hit_epoch_cap: bool

    def to_json(self) -> dict:
        return {**{s: {"accuracy": self.accuracy[s]} for s in SPLITS}, "epochs_trained": self.epochs_trained,
                "best_epoch": self.best_epoch, "hit_epoch_cap": self.hit_epoch_cap}

    @classmethod
    def from_json(cls, d: dict) -> "HeadPhase":
        return cls({s: d.get(s, {}).get("accuracy") for s in SPLITS}, d.get("epochs_trained"), d.get("best_epoch"),
                   bool(d.get("hit_epoch_cap", False)))


@dataclass(frozen=True)
class FinetunePhase:
    """Phase 2, the top blocks fine-tuned with the head; ``kept`` is False when
    it did not beat phase 1 on validation and phase 1's weights were kept."""

    blocks: int
    epochs_trained: int
    best_epoch: int
    kept: bool
    devices: str
    hit_epoch_cap: bool

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "FinetunePhase":
        return cls(d.get("blocks"), d.get("epochs_trained"), d.get("best_epoch"), bool(d.get("kept", True)),
                   d.get("devices", ""), bool(d.get("hit_epoch_cap", False)))


@dataclass(frozen=True)
class RunMetrics:
    """``metrics.json`` of one artifact version.

    Attributes:
        train, val, test: the final model's metrics per split
            (:func:`~vggtl.training.metrics.split_metrics`; test with its 95% interval).
        baseline: ``linear_probe`` (always) and ``scratch`` (``baseline.scratch``).
        split: seed, fractions, digest and sizes of the split the numbers are on.
        phase1: the head alone.
        leakage: the train/test leakage audit.
        cv: K-fold cross-validation on train + val (``train.folds``), else None.
        phase2: fine-tuning (``finetune.blocks`` > 0), else None.
        temperature: temperature scaling (``train.temperature``), else None.
        tensorflow_fp32: the test split through ``model.keras`` when the
            features came from another runtime, else None.
        unknown: out-of-scope detection: the operating point and the val/test
            score summaries, or why it is unavailable (None: an older vggtl).
    """

    train: dict
    val: dict
    test: dict
    baseline: dict
    split: dict
    phase1: HeadPhase
    leakage: dict
    cv: dict | None = None
    phase2: FinetunePhase | None = None
    temperature: dict | None = None
    tensorflow_fp32: dict | None = None
    unknown: dict | None = None

    def of(self, split: str) -> dict:
        """The metrics of ``split`` (``'train'``, ``'val'`` or ``'test'``)."""
        return {"train": self.train, "val": self.val, "test": self.test}[split]

    def to_json(self) -> dict:
        """The ``metrics.json`` document (key order fixed: the file is byte-reproducible)."""
        doc = {"train": self.train, "val": self.val, "test": self.test, "baseline": self.baseline, "split": self.split,
               "phase1": self.phase1.to_json(), "epochs_trained": self.phase1.epochs_trained,
               "best_epoch": self.phase1.best_epoch}
        if self.cv is not None:
            doc["cv"] = self.cv
        doc["leakage"] = self.leakage
        optional = {"phase2": self.phase2.to_json() if self.phase2 else None, "temperature": self.temperature,
                    "tensorflow_fp32": self.tensorflow_fp32, "unknown": self.unknown}
        return {**doc, **{key: value for key, value in optional.items() if value is not None}}

    @classmethod
    def from_json(cls, doc: dict) -> "RunMetrics":
        """Read a ``metrics.json`` document; what an older vggtl did not record is empty or None."""
        if not isinstance(doc, dict):
            raise ValueError(f"expected a JSON object, got {type(doc).__name__}")
        return cls(
            train=doc.get("train", {}), val=doc.get("val", {}), test=doc.get("test", {}),
            baseline=doc.get("baseline", {}), split=doc.get("split", {}),
            phase1=HeadPhase.from_json(doc.get("phase1", doc)), leakage=doc.get("leakage", {}), cv=doc.get("cv"),
            phase2=FinetunePhase.from_json(doc["phase2"]) if "phase2" in doc else None,
            temperature=doc.get("temperature"), tensorflow_fp32=doc.get("tensorflow_fp32"),
            unknown=doc.get("unknown"),
        )
