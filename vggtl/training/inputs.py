"""What one training run reads, opened once and passed down."""

from __future__ import annotations

from dataclasses import dataclass

from vggtl import config
from vggtl.data import Dataset
from vggtl.features.pipeline import StoreLocation
from vggtl.features.store import FeatureStore


@dataclass(frozen=True)
class RunInputs:
    """The inputs of one training run, resolved once by
    :func:`vggtl.training.run.run`: nothing downstream re-derives them.

    Attributes:
        cfg: the validated config (its ``spec`` the resolved backbone).
        dataset: the scanned data, split as this run splits it.
        fs: the open feature store, its index split the same way.
        where: the store's location, settings and the weights loaded.
    """

    cfg: config.Config
    dataset: Dataset
    fs: FeatureStore
    where: StoreLocation

    @property
    def weights(self):
        """The backbone weights the features were computed with."""
        return self.where.weights
