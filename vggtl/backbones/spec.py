"""The resolved backbone of a run: one object every stage receives.

:func:`resolve` builds a :class:`Spec` once, when the config is loaded, and
checks ``backbone.*``, ``data.image_size`` and ``finetune.blocks`` against the
backbone (its layer rules live here, beside the registry); extraction, training, prediction and the
inspection tools read names, sizes and roles from it instead of looking the
backbone up again or passing layers by list position.
"""

from __future__ import annotations

from dataclasses import dataclass

from vggtl.backbones import registry
from vggtl.backbones.registry import Architecture
from vggtl.data import DecodeSettings
from vggtl.errors import ConfigError


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
        channel_stats: the store also holds :data:`~vggtl.backbones.registry.STATS_LAYER`,
            what the unknown-image detector reads (``predict.unknown.keep`` set).
    """

    arch: Architecture
    head_layer: str
    boundary_layer: str | None
    decode: DecodeSettings
    mirror_average: bool = False
    channel_stats: bool = False

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
        """Layers the feature store holds: the head's input first, then the
        boundary, then the channel statistics."""
        return ((self.head_layer,) + ((self.boundary_layer,) if self.boundary_layer else ())
                + ((registry.STATS_LAYER,) if self.channel_stats else ()))

    def feature_shape(self, layer: str) -> tuple[int, int, int]:
        """Activation shape of ``layer`` at this image size, e.g. (7, 7, 512)."""
        if layer == registry.STATS_LAYER:
            return (1, 1, self.arch.stats_channels())
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


def resolve(backbone, blocks: int, decode: DecodeSettings, source: str, channel_stats: bool = False) -> Spec:
    """The :class:`Spec` of a run's backbone settings, checked against the backbone.

    Args:
        backbone: the ``backbone`` config section: ``name`` (a key of the
            registry), ``layer`` (None: the backbone's top; several layers
            joined bottom to top with '+'), ``weights``, ``mirror_average``, ``width``.
        blocks: ``finetune.blocks``.
        decode: the image decoding, its size already resolved
            (``data.image_size``, the backbone's own when null).
        source: names the config file in errors.
        channel_stats: store the style layers' channel statistics too
            (``predict.unknown.keep`` is set).

    Raises:
        ConfigError: a layer the backbone lacks, layers joined out of order or
            onto a grid they do not pool evenly onto, too many fine-tuned
            blocks, a layer below the fine-tuning boundary, an image size
            too small for the layer, or a width the backbone or its weights
            do not have, each naming the key and what is allowed.
    """
    arch = _narrowed(registry.get(backbone.name), backbone.width, backbone.weights, source)
    layer = arch.default_layer if backbone.layer is None else backbone.layer
    boundary = _check_layers(arch, layer, blocks, source)
    spec = Spec(arch, layer, boundary, decode, backbone.mirror_average, channel_stats)
    smallest = max(arch.min_size, *(arch.smallest_input(part) for part in (layer, boundary or layer, *arch.style_layers)))
    if decode.image_size < smallest:
        raise ConfigError(
            f"{source}: key 'data.image_size': got {decode.image_size}; {arch.name} up to {layer} "
            f"needs at least {smallest} (its own size is {arch.default_size})"
        )
    _check_joined_grid(spec, source)
    return spec


def _narrowed(arch: Architecture, width: float, weights, source: str) -> Architecture:
    """``arch`` at ``backbone.width``: a narrower network exists only as a plain
    VGG stack with random weights (pretrained weights are for the full width)."""
    if width == 1.0:
        return arch
    if arch.name not in registry.NARROWABLE:
        raise ConfigError(f"{source}: key 'backbone.width': got {width:g}; only {', '.join(registry.NARROWABLE)} can "
                          f"be narrowed ({arch.name}: 1.0)")
    if weights is not None:
        raise ConfigError(f"{source}: key 'backbone.width': got {width:g} with backbone.weights {weights!r}; pretrained "
                          "weights exist for width 1.0 only: set backbone.width: 1.0, or backbone.weights: null for a "
                          "narrow random network (smoke tests)")
    return arch.narrowed(width)


def _check_layers(arch: Architecture, layer: str, blocks: int, source: str) -> str | None:
    """``backbone.layer`` (one layer, or several joined with '+') and
    ``finetune.blocks`` must exist for ``arch`` and fit each other; returns the
    fine-tuning boundary layer (None when fine-tuning is off)."""
    name, order = arch.name, list(arch.layers)
    parts = registry.layer_parts(layer)
    example = f"{arch.finetune_boundaries[0]}{registry.JOIN}{arch.default_layer}"
    for part in parts:
        if part not in arch.layers:
            raise ConfigError(
                f"{source}: key 'backbone.layer': got {layer!r}; allowed for {name}: {', '.join(order)}, "
                f"or several of them joined bottom to top with '{registry.JOIN}' (e.g. {example})"
            )
    positions = [order.index(part) for part in parts]
    if positions != sorted(set(positions)):
        raise ConfigError(
            f"{source}: key 'backbone.layer': got {layer!r}; join distinct layers from bottom to top, e.g. {example}"
        )
    if blocks > len(arch.finetune_boundaries):
        raise ConfigError(
            f"{source}: key 'finetune.blocks': got {blocks}; {name} allows 0-{len(arch.finetune_boundaries)}"
        )
    if blocks and parts[-1] != arch.default_layer:
        raise ConfigError(
            f"{source}: key 'finetune.blocks': fine-tuning needs the head on {arch.default_layer}, "
            f"but 'backbone.layer' is {layer!r}; set backbone.layer: {arch.default_layer} (or end it with it) or finetune.blocks: 0"
        )
    boundary = arch.finetune_boundaries[blocks - 1] if blocks else None
    if boundary and positions[0] < order.index(boundary):
        raise ConfigError(
            f"{source}: key 'backbone.layer': {parts[0]!r} is below the fine-tuning boundary {boundary!r} of "
            f"finetune.blocks: {blocks}, so fine-tuning could not reach it; join layers from {boundary} up, "
            "or fine-tune more blocks"
        )
    return boundary


def _check_joined_grid(spec: Spec, source: str) -> None:
    """Every lower part of a joined ``backbone.layer`` must pool exactly onto the top part's grid."""
    parts = registry.layer_parts(spec.head_layer)
    top = spec.feature_shape(parts[-1])[0]
    for part in parts[:-1]:
        side = spec.feature_shape(part)[0]
        if registry.pool_onto(side, top) is None:
            raise ConfigError(
                f"{source}: key 'backbone.layer': at data.image_size {spec.image_size}, {part}'s {side}x{side} map "
                f"does not pool evenly onto {parts[-1]}'s {top}x{top}; use another data.image_size "
                f"(e.g. {spec.arch.default_size}) or other layers"
            )
