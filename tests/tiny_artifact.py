"""A small, complete vggtl artifact built directly (no extract/train run):
the end-to-end structure train writes (image -> vgg16_<layer>[preprocess ->
vgg16] -> head), random backbone weights, a head biased towards one class."""

from __future__ import annotations

from pathlib import Path

import numpy as np

LABELS = ("blue", "green", "red")


def make_artifact(root: Path, favourite: str = "red", image_size: int = 32, resize: str = "stretch", seed: int = 7) -> Path:
    """Publish ``<root>/experiments/tiny/v<N>`` and return its path.

    The head's bias makes ``favourite`` the top label of every image (by a
    wide margin), so tests can assert on labels without training.
    """
    import keras

    from vggtl import artifact, backbone, config, heads

    cfg = config.from_dict(
        {
            "name": "tiny",
            "seed": seed,
            "data": {"root": str(root / "data"), "image_size": image_size, "resize": resize},
            "backbone": {"weights": None},
            "head": {"units": [8]},
        },
        "tiny_artifact",
    )
    weights = backbone.resolve_weights(None, seed)
    features = backbone.feature_model(weights, image_size, cfg.backbone.layer, seed)
    shape = backbone.feature_shape(cfg.backbone.layer, image_size)
    head = heads.build_head(shape, len(LABELS), cfg.head, stats=(np.zeros(shape[-1]), np.ones(shape[-1])))
    kernel, bias = head.get_layer("predictions").get_weights()
    bias[LABELS.index(favourite)] = 6.0
    head.get_layer("predictions").set_weights([kernel, bias])
    inputs = keras.Input((image_size, image_size, 3), name="image")
    model = keras.Model(inputs, head(features(inputs)), name="vggtl_tiny")
    staging = artifact.begin(root / "experiments", "tiny")
    model.save(staging / "model.keras")
    artifact.write_json(staging / "labels.json", list(LABELS))
    (staging / "config.yaml").write_text(cfg.to_yaml())
    artifact.write_json(staging / "metrics.json", {"val": {}, "test": {}})
    artifact.write_json(staging / "info.json", {"format": artifact.FORMAT, "format_version": artifact.FORMAT_VERSION})
    return artifact.publish(staging)
