"""Which weights a run loads (``backbone.weights``), their digest, and loading them.

Import-light on purpose: working out *which* weights a run uses and their
digest needs only h5py, so a warm ``extract`` that has nothing to compute
never imports TensorFlow.

Every backbone takes ImageNet weights from Keras' cache or Keras' download,
or a file the user names. A backbone with an :class:`OfflineWeights` provider
in :data:`OFFLINE_WEIGHTS` (VGG16: :mod:`vggtl.backbones.vgg16_offline`) gets
that provider's search order, digest and loader instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from vggtl.backbones import keras_files, vgg16_offline
from vggtl.backbones.registry import Architecture
from vggtl.errors import WeightsError, invocation


class OfflineWeights(Protocol):
    """What provisions and fingerprints a backbone's ImageNet weights without
    Keras' download host (a module or an object with these functions)."""

    def digest(self, path: Path) -> str:
        """A fingerprint of the weights in ``path`` (the same for every file format holding them)."""

    def load(self, model, path: Path) -> None:
        """Load ``path`` into ``model``, the backbone's base; WeightsError when it does not fit."""

    def resolve_imagenet(self, allow_download: bool = True) -> tuple[Path, str, str]:
        """``(path, digest, source description)`` of the ImageNet weights; WeightsError with remedies."""


# Backbone name -> its offline provider. Others use Keras' cache and download,
# their digest the sha256 of the file.
OFFLINE_WEIGHTS: dict[str, OfflineWeights] = {"vgg16": vgg16_offline}


@dataclass(frozen=True)
class ResolvedWeights:
    """Which weights a run loads.

    Attributes:
        kind: ``'file'`` or ``'random'``.
        path: weights file for ``'file'``.
        digest: digest of the file's weights, or ``'random-init:seed=<seed>'``.
        source: human-readable origin, shown in logs and reports.
    """

    kind: str
    path: Path | None
    digest: str
    source: str

    @property
    def random(self) -> bool:
        return self.kind == "random"


def random_weights(seed: int) -> ResolvedWeights:
    """Random initialisation (``backbone.weights: null``), seeded."""
    return ResolvedWeights("random", None, f"random-init:seed={seed}", "random initialisation (backbone.weights: null)")


def _provider(arch: Architecture) -> OfflineWeights | None:
    """What provisions ``arch``'s weights offline, or None."""
    return OFFLINE_WEIGHTS.get(arch.name)


def file_digest(arch: Architecture, path: Path) -> str:
    """Digest of a weights file for ``arch``: its provider's (VGG16: a tensor
    digest independent of the file format), else the sha256 of the bytes."""
    provider = _provider(arch)
    return provider.digest(path) if provider else keras_files.memoized_sha256(path)


def resolve_weights(arch: Architecture, spec: str | None, seed: int, allow_download: bool = True) -> ResolvedWeights:
    """Decide which weights ``backbone.weights = spec`` means, without TensorFlow.

    Args:
        arch: the backbone (``cfg.spec.arch``).
        spec: ``'imagenet'``, a file path, or None for random initialisation.
        seed: used only to make random-init digests seed-specific.
        allow_download: try Keras' download when nothing local is found.

    Raises:
        WeightsError: the file does not exist, or no ImageNet weights can be
            found or downloaded (the message lists the remedies). Never falls
            back to random weights.
    """
    if spec is None:
        return random_weights(seed)
    if spec != "imagenet":
        path = Path(spec)
        if not path.is_file():
            raise WeightsError(f"backbone.weights: file {spec!r} does not exist")
        return ResolvedWeights("file", path, file_digest(arch, path), f"file {path}")
    provider = _provider(arch)
    if provider is not None:
        return ResolvedWeights("file", *provider.resolve_imagenet(allow_download))
    return _keras_imagenet(arch, allow_download)


def _keras_imagenet(arch: Architecture, allow_download: bool) -> ResolvedWeights:
    """ImageNet weights from Keras' cache, else Keras' download."""
    try:
        path, origin = keras_files.keras_cached_or_download(arch.notop_file, arch.notop_url, arch.notop_md5, allow_download)
        return ResolvedWeights("file", path, file_digest(arch, path), f"{origin} ({path})")
    except WeightsError as exc:
        reason = str(exc)
    cached = keras_files.keras_cache_path(arch.notop_file)
    raise WeightsError(
        f"no ImageNet {arch.name} weights available ({reason}). Remedies, any one of:\n"
        f"  1. run once with internet access: Keras downloads {arch.notop_file} to {cached}\n"
        f"  2. set backbone.weights: /path/to/{arch.notop_file} in the config (or --set backbone.weights=PATH)\n"
        f"  3. put the file at {cached} (downloaded elsewhere from {arch.notop_url})\n"
        f"(the offline copy `{invocation('weights')} fetch` provisions covers vgg16 only)"
    )


def load_weights(model, arch: Architecture, weights: ResolvedWeights) -> None:
    """Load ``weights`` into ``model``, the base of ``arch`` (nothing for random weights).

    Raises:
        WeightsError: the file does not fit this network.
    """
    if weights.random:
        return
    provider = _provider(arch)
    if provider is not None:
        provider.load(model, weights.path)
        return
    keras_files.load_into(
        model, weights.path, f"{arch.application}(include_top=False)",
        f"it must be that network's notop weights, e.g. Keras' {arch.notop_file}",
    )
