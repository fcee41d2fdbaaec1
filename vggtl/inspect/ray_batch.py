"""``predict ARTIFACT DIR --out FILE --engine ray``: the batches of
:mod:`vggtl.inspect.batch` on Ray actors.

The driver keeps everything that makes the output resumable: it decides
which fixed 32-image slices are left, writes their rows in input order, and
flushes and fsyncs each batch before the next, exactly as the local engine
does. Only decoding and prediction move to the actors. Each loads the
artifact once (checksums verified, the fastest installed runtime, as
``predict`` picks it) and returns a slice's rows made by the very function
the local engine uses (:func:`vggtl.inspect.batch.batch_rows`), so the file
is byte for byte the local one.

Actors read the artifact and the images by path (a folder of millions is not
shipped through the driver): on a cluster of several machines both must be
at the same path on every node (a shared or synced filesystem); a local
instance or a one-machine cluster needs nothing. At most
:data:`BATCHES_IN_FLIGHT` slices per actor are outstanding, computed or
waiting to be written, so the driver's memory stays bounded.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from vggtl.errors import VggtlError
from vggtl.features.ray_engine import ACTOR_PREFIX, BATCHES_IN_FLIGHT, RayPurpose, actor_count, connected

PREDICT = RayPurpose("predict", "predict --engine ray", "--ray-address", "leave out --ray-address")


class BatchPredictor:
    """One Ray actor: ``rows_of(artifact)`` for the artifact at ``artifact_path``, loaded on first use."""

    def __init__(self, artifact_path: str, rows_of):
        self.artifact_path, self.rows_of, self.run = artifact_path, rows_of, None

    def _load(self) -> None:
        if self.run is not None:
            return
        from vggtl.training import artifact as artifact_mod

        _one_thread_per_cpu()
        self.run = self.rows_of(artifact_mod.load(self.artifact_path), warn=lambda _: None)  # the driver said it once

    def ready(self):
        """Load the artifact; None, or the error that stopped it (reported by the driver)."""
        try:
            self._load()
        except Exception as exc:  # noqa: BLE001 - handed to the driver
            return exc if isinstance(exc, VggtlError) else RuntimeError(f"{type(exc).__name__}: {exc}")
        return None

    def rows(self, paths: list[str]) -> list[list]:
        self._load()
        return self.run([Path(p) for p in paths])


def _one_thread_per_cpu() -> None:
    """Actors on one node must not each spread over all of its cores: as many
    threads as CPUs Ray gave this actor, for whichever runtime predicts."""
    import os

    import ray

    from vggtl.features.runtimes import THREADS_ENV

    cpus = str(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
    # TensorFlow reads its two before it is first imported (the predictor imports it, if it runs it).
    for name in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", THREADS_ENV):
        os.environ[name] = cpus


@contextlib.contextmanager
def engine(artifact_path, rows_of, workers: int, address: str | None = None, log=print):
    """Yield ``slices -> rows of each slice, in order``, computed by ``workers``
    actors (one CPU each) on the Ray cluster at ``address`` (None: a local
    instance started here); the actors go away on exit.

    Args:
        artifact_path: the artifact, at this path on every node.
        rows_of: a module-level function ``(artifact, warn) -> (paths -> rows)``
            (:func:`vggtl.inspect.predictions.batch_rows_of`), run on each actor.
    """
    import uuid

    with connected(address, log, PREDICT) as ray:
        remote = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=-1)(BatchPredictor)
        n = actor_count(workers, ray.cluster_resources().get("CPU", 0), log)
        run_id = uuid.uuid4().hex[:8]
        actors = [remote.options(name=f"{ACTOR_PREFIX}-predict-{run_id}-{i}").remote(str(Path(artifact_path).absolute()), rows_of)
                  for i in range(n)]
        try:
            for error in ray.get([a.ready.remote() for a in actors]):
                if error is not None:
                    raise error
            yield lambda slices: _in_order(ray, actors, slices)
        finally:
            for actor in actors:
                ray.kill(actor)


def _in_order(ray, actors, slices):
    """Each slice's rows, in order, with at most BATCHES_IN_FLIGHT slices per
    actor outstanding (running, queued, or done and waiting for an earlier one)."""
    window = BATCHES_IN_FLIGHT * len(actors)
    pending: dict = {}  # slice index -> result ref
    free = list(actors) * BATCHES_IN_FLIGHT
    owner: dict = {}
    submitted = 0
    for index in range(len(slices)):
        while submitted < len(slices) and submitted - index < window:
            actor = free.pop(0)
            ref = actor.rows.remote([str(p) for p in slices[submitted]])
            pending[submitted], owner[submitted] = ref, actor
            submitted += 1
        rows = ray.get(pending.pop(index))
        free.append(owner.pop(index))
        yield rows
