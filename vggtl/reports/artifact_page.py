"""``report.html``: an artifact's report as one self-contained page.

Rendered from the artifact's own files only (``metrics.json``,
``history.json``, ``predictions.csv``, ``manifest.json``, ``info.json``,
``config.yaml``, ``exports.json``) plus thumbnails decoded from ``data.root``
as extraction decodes them, so ``vggtl train`` writes it and ``vggtl export``
renders it again with its new row. An image that cannot be read any more
(moved or deleted since training) is named in place of its thumbnail.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vggtl.files import write_text_atomic
from vggtl.reports import svg
from vggtl.reports.thumbs import Thumbnails, data_uri

EXAMPLES_PER_CLASS = 3  # correct and wrong thumbnails per class
GALLERY_SPLITS = ("test", "val")
LEAKAGE_PAIRS = 12  # near-duplicate pairs shown, most similar first
PHASE_TITLES = {"phase1": "phase 1 (head on cached features)", "phase2": "phase 2 (fine-tuning)"}


# Grad-CAM images per forward/backward pass: one pass instead of one per image, memory
# bounded (a VGG16 pass at 224 px keeps ~60 MB of activations per image for the gradients).
GRADCAM_BATCH = 8
# The worst errors' Grad-CAM maps, made by ``vggtl train`` from the cached
# features (:func:`write_gradcams`): the page is rendered again (``vggtl
# export``) without running the model.
GRADCAM_FILE = "gradcam.npz"


@dataclass(frozen=True)
class Prediction:
    """One image's row of ``predictions.csv``."""

    path: str
    split: str
    true: int
    predicted: int
    probs: tuple[float, ...]
    unknown_score: float | None = None

    @property
    def confidence(self) -> float:
        return self.probs[self.predicted]

    def top(self, labels, k: int = 3) -> list[tuple[str, float]]:
        order = np.argsort(-np.asarray(self.probs), kind="stable")[:k]
        return [(labels[i], self.probs[i]) for i in order]


def read_predictions(path: Path, labels: list[str]) -> list[Prediction]:
    """Every row of ``predictions.csv`` (path, split, true, predicted, confidence, p_<class>...)."""
    index = {name: i for i, name in enumerate(labels)}
    with open(path, newline="", encoding="utf-8") as fh:
        return [Prediction(row["path"], row["split"], index[row["true"]], index[row["predicted"]],
                           tuple(float(row[f"p_{name}"]) for name in labels),
                           float(row["unknown_score"]) if row.get("unknown_score") else None) for row in csv.DictReader(fh)]


def _read_json(path: Path, default=None):
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else default


def render(artifact_dir, model=None) -> Path:
    """Write ``<artifact_dir>/report.html`` (atomically) and return its path.

    Args:
        artifact_dir: a published artifact or a staging directory holding its
            files (``report.md`` and ``predictions.csv`` already written).
        model: the artifact's ``model.keras``, loaded, for the Grad-CAM
            overlays of the worst errors (``output.gradcam``) of an artifact
            without :data:`GRADCAM_FILE`; None loads it from the directory
            when they are needed.
    """
    return write_page(ReportPage.of(artifact_dir), model)


def write_page(page: ReportPage, model=None) -> Path:
    """:func:`render` of a page already read from its directory (``train``
    reads it once for :func:`write_gradcams` and the page)."""
    from vggtl.training import artifact as artifact_mod

    chosen, _ = worst_errors(page.by_split["test"], page.cfg.output.gradcam)
    if model is None and chosen and not (page.dir / GRADCAM_FILE).is_file():
        from vggtl.backbones.build import probabilities_model

        model = probabilities_model(artifact_mod.load_keras(page.dir / "model.keras"), page.cfg.spec)
    return write_text_atomic(page.dir / "report.html", page.html(model))


def worst_errors(predictions: list[Prediction], limit: int) -> tuple[list[Prediction], int]:
    """The ``limit`` most confident wrong test predictions, most confident first,
    and how many there are in all."""
    wrong = sorted((p for p in predictions if p.split == "test" and p.predicted != p.true), key=lambda p: -p.confidence)
    return wrong[:limit], len(wrong)


def write_gradcams(page: ReportPage, explain, layer: str) -> Path | None:
    """Save the Grad-CAM maps of the page's worst errors as :data:`GRADCAM_FILE`.

    Args:
        page: the page of a staging directory with ``predictions.csv``,
            ``labels.json`` and ``config.yaml`` written (:meth:`ReportPage.of`).
        explain: ``(paths, class indices) -> [(h, w) map in [0, 1], ...]``,
            e.g. Grad-CAM of the head on the cached features of those images.
        layer: the layer the maps explain, shown under them.

    Returns:
        The file written, or None when there is nothing to explain
        (``output.gradcam: 0`` or no test errors).
    """
    chosen, _ = worst_errors(page.by_split["test"], page.cfg.output.gradcam)
    if not chosen:
        return None
    maps = explain([p.path for p in chosen], [p.predicted for p in chosen])
    path = page.dir / GRADCAM_FILE
    np.savez(path, paths=np.array([p.path for p in chosen]), classes=np.array([p.predicted for p in chosen]),
             maps=np.stack(maps).astype(np.float32), layer=np.array(layer))
    return path


def read_gradcams(artifact_dir) -> tuple[dict, str | None]:
    """``({(path, class index): map}, layer)`` from :data:`GRADCAM_FILE`; empty without it."""
    path = Path(artifact_dir) / GRADCAM_FILE
    if not path.is_file():
        return {}, None
    with np.load(path) as saved:
        keys = zip(saved["paths"].tolist(), saved["classes"].tolist())
        return dict(zip(keys, saved["maps"])), str(saved["layer"])


def _config(directory: Path) -> dict:
    import yaml

    return yaml.safe_load((directory / "config.yaml").read_text(encoding="utf-8"))


class ReportPage:
    """The sections of one artifact's page, each a small method over the artifact's files."""

    @classmethod
    def of(cls, artifact_dir) -> "ReportPage":
        """The page of an artifact (or staging) directory, from its files."""
        from vggtl import config

        directory = Path(artifact_dir)
        labels = _read_json(directory / "labels.json")
        cfg = config.from_dict(_config(directory), f"{directory}/config.yaml")
        return cls(directory, labels, cfg, read_predictions(directory / "predictions.csv", labels))

    def __init__(self, directory: Path, labels, cfg, predictions: list[Prediction]):
        self.dir, self.labels, self.cfg = directory, labels, cfg
        self.metrics = _read_json(directory / "metrics.json")
        self.info = _read_json(directory / "info.json")
        self.history = _read_json(directory / "history.json", {})
        self.manifest = _read_json(directory / "manifest.json")
        self.thumbs = Thumbnails(cfg.spec.decode, Path(self.manifest["data_root"]))
        self.exports = _read_json(directory / "exports.json", [])
        self.by_split = {s: [p for p in predictions if p.split == s] for s in ("train", "val", "test")}

    def html(self, model) -> str:
        from vggtl.reports import templates

        sections = {
            "confusion": [self.confusion(s) for s in GALLERY_SPLITS if self.by_split[s]],
            "per_class": self.per_class(),
            "worst": self.worst(model),
            "calibration": self.calibration(),
            "unknown": self.unknown(),
            "curves": self.curves(),
            "leakage": self.leakage(),
        }
        # Thumbnails are decoded while the sections are built: list what was missing last.
        return templates.render("report.html.j2", title=f"vggtl report: {self.info['name']}", page=self,
                                headline=self.headline(), missing=sorted(self.thumbs.missing.items()),
                                skipped=self.manifest.get("skipped", []), exports=self.exports,
                                provenance=self.provenance(), **sections)

    def item(self, p: Prediction) -> dict:
        """What a gallery shows of one image: thumbnail (or None), path, true label, top-3."""
        return {"uri": self.thumbs(p.path), "path": p.path, "split": p.split, "true": self.labels[p.true],
                "predicted": self.labels[p.predicted], "correct": p.true == p.predicted, "top": p.top(self.labels)}

    # ------------------------------------------------------------------- sections

    def headline(self) -> dict:
        m = self.metrics
        test, probe = m["test"], m["baseline"]["linear_probe"]
        caps = [PHASE_TITLES[phase] for phase in ("phase1", "phase2") if (m.get(phase) or {}).get("hit_epoch_cap")]
        return {"test": test, "probe_test": probe.get("test_accuracy"), "val": m["val"], "split": m["split"],
                "skipped": len(self.manifest.get("skipped", [])), "caps": caps, "random": self.info["weights"]["random"],
                "backbone": self.info["backbone"], "scratch": m["baseline"].get("scratch")}

    def confusion(self, split: str) -> dict:
        """The split's confusion matrix; each cell's images, for its gallery."""
        n = len(self.labels)
        cells = [[[] for _ in range(n)] for _ in range(n)]
        for p in sorted(self.by_split[split], key=lambda p: -p.confidence):
            cells[p.true][p.predicted].append(self.item(p))
        return {"split": split, "cells": cells, "n": len(self.by_split[split]),
                "row_totals": [sum(len(c) for c in row) for row in cells]}

    def per_class(self) -> dict:
        """Per class: precision, recall, F1, support (test), and a few correct and wrong examples."""
        split = "test" if self.by_split["test"] else "val"
        rows = []
        for i, name in enumerate(self.labels):
            mine = sorted((p for p in self.by_split[split] if p.true == i), key=lambda p: -p.confidence)
            rows.append({"name": name, "metrics": (self.metrics[split].get("per_class") or {}).get(name),
                         "correct": [self.item(p) for p in mine if p.predicted == i][:EXAMPLES_PER_CLASS],
                         "wrong": [self.item(p) for p in mine if p.predicted != i][:EXAMPLES_PER_CLASS]})
        return {"split": split, "rows": rows}

    def worst(self, model) -> dict:
        """The most confident test errors (``output.gradcam`` of them), each with a
        Grad-CAM overlay of the predicted class."""
        limit = self.cfg.output.gradcam
        chosen, total = worst_errors(self.by_split["test"], limit)
        overlays, layer = self._gradcams(model, chosen)
        return {"items": [dict(self.item(p), gradcam=o) for p, o in zip(chosen, overlays)], "total": total, "max": limit,
                "layer": layer}

    def _gradcams(self, model, chosen: list[Prediction]) -> tuple[list[str | None], str | None]:
        """Overlay data URIs of ``chosen``'s predicted classes (None for an image
        no longer readable: its thumbnail's "missing" note names it) and the
        layer explained. The maps ``vggtl train`` saved (:data:`GRADCAM_FILE`)
        are drawn over the cached thumbnails, so no file is decoded again (a
        giant one takes seconds); for an artifact from before them, Grad-CAM of
        ``model`` on the decoded images, GRADCAM_BATCH images per pass."""
        from vggtl.inspect import gradcam

        saved, layer = read_gradcams(self.dir)
        heats = {i: saved[(p.path, p.predicted)] for i, p in enumerate(chosen) if (p.path, p.predicted) in saved}
        pictures = {i: self.thumbs.picture(chosen[i].path) for i in heats}
        # Without a model (the saved maps were expected) an image left out has no overlay.
        todo = [i for i in range(len(chosen)) if i not in heats] if model is not None else []
        decoded = {i: rgb for i in todo if (rgb := self._decoded(chosen[i].path)) is not None}
        if decoded:
            layer = gradcam.default_layer(model, self.cfg.spec.arch.gradcam_layer)
        explained = list(decoded)
        for start in range(0, len(explained), GRADCAM_BATCH):
            part = explained[start : start + GRADCAM_BATCH]
            maps = gradcam.gradcams(model, [decoded[i] for i in part], [chosen[i].predicted for i in part], conv_layer=layer)
            heats.update(zip(part, maps))
        pictures.update(decoded)
        overlays = {i: data_uri(gradcam.overlay(pictures[i], heat)) for i, heat in heats.items() if pictures.get(i) is not None}
        return [overlays.get(i) for i in range(len(chosen))], layer

    def _decoded(self, relpath: str) -> np.ndarray | None:
        """The model's input for ``relpath``, or None when it cannot be read any more."""
        from vggtl.data import UndecodableImage

        try:
            return self.cfg.spec.decode.decode(self.thumbs.root / relpath)
        except (UndecodableImage, OSError):
            return None

    def unknown(self) -> dict:
        """The operating point, the share of in-scope val/test images each
        threshold keeps (the chosen one marked), and the test images it calls
        unknown -- what saying "unknown" costs, image by image."""
        record = self.metrics.get("unknown") or {"available": False, "reason": "trained by a vggtl without it"}
        if not record.get("available"):
            return {"record": record}
        threshold = record["threshold"]
        scores = {s: sorted(p.unknown_score for p in self.by_split[s] if p.unknown_score is not None) for s in ("val", "test")}
        every = sorted(v for values in scores.values() for v in values)
        xs = list(np.linspace(every[0], every[-1], 60)) if every else []
        xs = sorted(set(xs) | {threshold}) if every and every[0] <= threshold <= every[-1] else xs
        series = [(f"{s} (n={len(v)})", [float(np.searchsorted(v, x, side="right")) / len(v) for x in xs])
                  for s, v in scores.items() if v]
        marker = (threshold, series[0][1][xs.index(threshold)], f"threshold {threshold:.2f}") \
            if threshold in xs and series else None
        chart = svg.line_chart("share of in-scope images kept, by threshold", series, "kept", marker, (0.0, 1.0), xs,
                               "unknown score threshold") if series else None
        flagged = sorted((p for p in self.by_split["test"] if p.unknown_score is not None and p.unknown_score > threshold),
                         key=lambda p: -p.unknown_score)
        items = [dict(self.item(p), caption=f"score {p.unknown_score:.2f}; true") for p in flagged]
        return {"record": record, "chart": chart, "items": items}

    def calibration(self) -> dict:
        charts = {s: svg.reliability(self.metrics[s]["calibration"]["bins"], self.metrics[s]["calibration"]["ece"],
                                     f"{s} reliability")
                  for s in ("val", "test") if (self.metrics[s].get("calibration") or {}).get("bins")}
        return {"charts": charts, "temperature": self.metrics.get("temperature"),
                "ece": {s: (self.metrics[s].get("calibration") or {}).get("ece") for s in ("val", "test")}}

    def curves(self) -> list[dict]:
        """Per phase: the loss early stopping watched and the accuracies, the best epoch marked."""
        return [phase_curves(phase, curves) for phase, curves in self.history.items()
                if isinstance(curves, dict) and curves.get("loss")]

    def leakage(self) -> dict:
        findings = self.metrics.get("leakage") or {}
        pairs = [dict(p, a_uri=self.thumbs(p["a"]), b_uri=self.thumbs(p["b"])) for p in findings.get("near_duplicates", [])[:LEAKAGE_PAIRS]]
        return {"identical": findings.get("identical", []), "pairs": pairs, "total": findings.get("near_duplicates_total", 0),
                "threshold": findings.get("threshold")}

    def provenance(self) -> dict:
        info = self.info
        digests = {"config": info.get("config_digest"), "data": info.get("data_digest"), "content": info.get("content_digest"),
                   "split": (info.get("split") or {}).get("digest"), "weights": (info.get("weights") or {}).get("digest")}
        return {"versions": info.get("versions", {}), "digests": digests, "created": info.get("created_utc"),
                "weights": (info.get("weights") or {}).get("source"), "seconds": info.get("train_seconds"),
                "artifact": self.dir.name}


def phase_curves(phase: str, curves: dict) -> dict:
    """Two charts of one phase: loss (train, and the validation cross-entropy
    early stopping watched) and accuracy (train, val of the model trained, val
    of the model the table reports), with the best epoch marked by its values."""
    best = curves.get("best_epoch") or len(curves["loss"])
    watched = curves.get("val_cross_entropy") or []
    final = curves.get("val_accuracy_final") or curves.get("val_accuracy") or []
    at = best - 1
    has_probe = phase == "phase1" and curves.get("val_accuracy_final") is not None and final != curves.get("val_accuracy")
    loss = svg.line_chart(f"{PHASE_TITLES.get(phase, phase)}: loss", [
        ("train loss (as optimised)", curves["loss"]), ("val cross-entropy (early stopping watched it)", watched)],
        "loss", marker=(best, watched[at] if at < len(watched) else None, f"best epoch {best}"))
    series = [("train accuracy", curves.get("accuracy", [])), ("val accuracy: model being trained", curves.get("val_accuracy", []))]
    if has_probe:
        series.append(("val accuracy: head + probe average (the table's model)", final))
    value = final[at] if at < len(final) else None
    accuracy = svg.line_chart(f"{PHASE_TITLES.get(phase, phase)}: accuracy", series, "accuracy",
                              marker=(best, value, f"best epoch {best}: {value:.3f}" if value is not None else ""), y_range=(0, 1))
    return {"phase": phase, "title": PHASE_TITLES.get(phase, phase), "loss": loss, "accuracy": accuracy, "best_epoch": best,
            "best_val_accuracy": value, "epochs": len(curves["loss"]), "stopped_early": curves.get("stopped_early"),
            "has_probe": has_probe}
