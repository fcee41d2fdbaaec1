"""A small, complete vggtl artifact built without an extract/train run:
train's own end-to-end model (vggtl.backbones.build.end_to_end_model) on
random backbone weights, with a head biased towards one class."""

from __future__ import annotations

from pathlib import Path

import numpy as np

LABELS = ("blue", "green", "red")


def make_artifact(
    root: Path, favourite: str = "red", image_size: int = 32, resize: str = "stretch", seed: int = 7, backbone_name: str = "vgg16",
    width: float | None = None,
) -> Path:
    """Publish ``<root>/experiments/tiny/v<N>`` and return its path.

    The head's bias makes ``favourite`` the top label of every image (by a
    wide margin), so tests can assert on labels without training. ``width``:
    ``backbone.width`` (None: the tests' narrow VGG, where it applies).
    """
    from conftest import tiny_backbone
    from vggtl import config
    from vggtl.backbones import build
    from vggtl.backbones.resolve import random_weights
    from vggtl.training import artifact, heads

    cfg = config.from_dict(
        {
            "name": "tiny",
            "seed": seed,
            "data": {"root": str(root / "data"), "image_size": image_size, "resize": resize},
            "backbone": tiny_backbone({"name": backbone_name, "weights": None, **({"width": width} if width else {})}),
            "head": {"units": [8]},
        },
        "tiny_artifact",
    )
    weights = random_weights(seed)
    shape = cfg.spec.feature_shape(cfg.spec.head_layer)
    head = heads.build_head(shape, len(LABELS), cfg.head, stats=(np.zeros(shape[-1]), np.ones(shape[-1])))
    kernel, bias = head.get_layer("predictions").get_weights()
    bias[LABELS.index(favourite)] = 6.0
    head.get_layer("predictions").set_weights([kernel, bias])
    model = build.end_to_end_model(cfg.spec, weights, head, f"vggtl_{cfg.name}", seed)
    staging = artifact.begin(root / "experiments", "tiny")
    model.save(staging / "model.keras")
    artifact.write_json(staging / "labels.json", list(LABELS))
    (staging / "config.yaml").write_text(cfg.to_yaml())
    artifact.write_json(staging / "metrics.json", {"val": {}, "test": {}})
    artifact.write_json(staging / "info.json", {"format": artifact.FORMAT, "format_version": artifact.FORMAT_VERSION})
    return artifact.publish(staging)
