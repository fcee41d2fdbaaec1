"""What one training run reads, opened once and passed down."""

from __future__ import annotations

from dataclasses import dataclass

from vggtl import config
from vggtl.data import Dataset
from vggtl.features.store import FeatureStore
from vggtl.plan import RunPlan, StoreLocation


@dataclass(frozen=True)
class RunInputs:
    """The inputs of one training run, resolved once by
    :func:`vggtl.training.run.run`: nothing downstream re-derives them.

    Attributes:
        plan: the run plan (config, scanned data, store location, weights).
        dataset: the plan's split over the usable images (``plan.split``).
        fs: the open feature store, its index split the same way.
    """

    plan: RunPlan
    dataset: Dataset
    fs: FeatureStore

    @property
    def cfg(self) -> config.Config:
        return self.plan.cfg

    @property
    def where(self) -> StoreLocation:
        return self.plan.store

    @property
    def weights(self):
        """The backbone weights the features were computed with."""
        return self.plan.weights
