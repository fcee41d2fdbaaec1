"""The resolved backbone of a run: one object every stage receives.

``config`` builds a :class:`Spec` once, when it validates ``backbone.*``,
``data.*`` and ``finetune.blocks``; extraction, training, prediction and the
inspection tools read names, sizes and roles from it instead of looking the
backbone up again or passing layers by list position.
"""

from __future__ import annotations

from dataclasses import dataclass

from vggtl.backbones import registry
from vggtl.backbones.registry import Architecture
from vggtl.data import DecodeSettings


@dataclass(frozen=True)
class Spec:
    """One backbone setting, resolved.

    Attributes:
        arch: the :class:`~vggtl.backbones.registry.Architecture`.
        head_layer: the layer whose cached activations the head reads
            (``backbone.layer``).
        boundary_layer: the frozen layer below the fine-tuned blocks
            (``finetune.blocks`` > 0), whose activations are cached too; None
            when fine-tuning is off.
        decode: how image files become the network's input (size, resize
            policy, background, pixel limit).
        mirror_average: features are the average of the image's maps and
            its left-right mirror image's maps, flipped back
            (``backbone.mirror_average``).
    """

    arch: Architecture
    head_layer: str
    boundary_layer: str | None
    decode: DecodeSettings
    mirror_average: bool = False

    @property
    def name(self) -> str:
        """``backbone.name``."""
        return self.arch.name

    @property
    def image_size(self) -> int:
        return self.decode.image_size

    @property
    def preprocessing(self) -> str:
        """``'caffe'`` or ``'tf'``: the mode of the preprocessing layer."""
        return self.arch.preprocessing

    @property
    def stored_layers(self) -> tuple[str, ...]:
        """Layers the feature store holds: the head's input first, then the boundary."""
        return (self.head_layer,) + ((self.boundary_layer,) if self.boundary_layer else ())

    def feature_shape(self, layer: str) -> tuple[int, int, int]:
        """Activation shape of ``layer`` at this image size, e.g. (7, 7, 512)."""
        return self.arch.feature_shape(layer, self.image_size)

    @property
    def feature_shapes(self) -> dict[str, tuple[int, int, int]]:
        """``{layer: shape}`` for every stored layer."""
        return {layer: self.feature_shape(layer) for layer in self.stored_layers}


def default_spec(name: str, image_size: int | None = None) -> Spec:
    """Backbone ``name`` with its head on the default layer, no fine-tuning, and
    the default decoding at ``image_size`` (None: its own size). For scripts
    and tests; runs get theirs from the config."""
    arch = registry.get(name)
    return Spec(arch, arch.default_layer, None, DecodeSettings(image_size or arch.default_size))
