"""The detector of one training run, from the feature store (no image is decoded again).

:func:`fit_for_run` reads each split's channel statistics and head-layer
features (through the fine-tuned blocks when phase 2 was kept), fits the
detector on train, calibrates it on val and scores val and test: what
``metrics.json`` and the report record, before ``model.keras`` is built
with the same score inside.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vggtl.backbones import registry
from vggtl.unknown import detector as detector_mod


@dataclass(frozen=True)
class RunUnknown:
    """The unknown detection of a run.

    Attributes:
        detector: the fitted detector, or None when unavailable.
        reason: why it is unavailable (None when it is not).
        scores: split -> scores of the final model's features (val, test).
    """

    detector: detector_mod.Detector | None
    reason: str | None
    scores: dict

    def metrics(self) -> dict:
        """``metrics.json``'s ``unknown``: the operating point and each split's score summary."""
        if self.detector is None:
            return {"available": False, "reason": self.reason}
        d = self.detector
        return {"available": True, "keep": d.keep, "threshold": round(d.threshold, 6), "method": d.record["method"],
                **{split: detector_mod.summary(s, d.threshold) for split, s in self.scores.items()}}


def unavailable(reason: str) -> RunUnknown:
    return RunUnknown(None, reason, {})


def split_inputs(fs, rows, head_layer: str, top=None, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``(pooled head-layer features, channel statistics)`` of ``rows``, read in batches.

    ``top``: the fine-tuned blocks as a model on stored ``boundary`` activations
    (``(boundary, model)``), whose output replaces the stored head-layer maps.
    """
    rows = np.asarray(rows, dtype=np.int64)
    width = fs.feature_shapes[registry.STATS_LAYER][-1]
    stats = [np.zeros((0, width), np.float32)]
    stats += [batch.reshape(len(chunk), -1) for chunk, batch in fs.iter_batches(rows, batch_size, registry.STATS_LAYER)]
    if top is None:  # the stored maps' averages, which the store keeps for the whole run
        return fs.averaged(rows, head_layer, batch_size), np.concatenate(stats)
    pooled = [np.zeros((0, fs.feature_shape[-1]), np.float32)]
    for _, maps in fs.iter_batches(rows, batch_size, top[0]):
        # called eagerly: a few batches cost less than tracing the function
        # Keras' predict builds (~1 s for ResNet50's conv5 stage)
        pooled.append(detector_mod.pooled(np.asarray(top[1](maps, training=False))))
    return np.concatenate(pooled), np.concatenate(stats)


def fit_for_run(cfg, fs, top=None, batch_size: int = 256) -> RunUnknown:
    """Fit, calibrate and score the run's detector, or say why there is none.

    Args:
        cfg: the run's config (``predict.unknown.keep``, ``seed``, ``spec``).
        fs: the open feature store, its split applied.
        top: ``(boundary layer, model)`` when phase 2's fine-tuned blocks were kept.
        batch_size: store rows read at a time (memory stays one batch of maps).
    """
    keep = cfg.predict.unknown.keep
    if keep is None:
        return unavailable("predict.unknown.keep is null (off)")
    if registry.STATS_LAYER not in fs.layers:
        return unavailable("the feature store was extracted before unknown detection; extract --add-unknown adds it "
                           "(every image computed once more), then train again")
    rows = {split: fs.split_rows(split) for split in ("train", "val", "test")}
    if len(rows["val"]) < 2:
        return unavailable(f"needs at least 2 validation images to set its threshold on (got {len(rows['val'])}; "
                           "data.split.val is 0 or val/ is nearly empty)")
    inputs = {split: split_inputs(fs, r, cfg.spec.head_layer, top, batch_size) for split, r in rows.items()}
    arch = cfg.spec.arch
    split_at = 2 * sum(arch.layers[name].channels for name in arch.style_layers[:-1])
    fitted = detector_mod.fit(inputs["train"], inputs["val"], keep, split_at, cfg.seed)
    return RunUnknown(fitted, None, {split: fitted.scores(*inputs[split]) for split in ("val", "test")})
