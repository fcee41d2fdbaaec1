"""``extract.engine: ray``: the frozen forward pass on Ray actors.

The driver (the ``extract`` process) keeps everything that makes the store
crash-safe: it scans the data, decides what is missing, reads each image's
*bytes* and writes the part files, exactly as the local engine does. Only
decoding and the convolutions move to ``extract.workers`` actors, each
loading the backbone once with weights shipped through Ray's object store.

Why bytes read on the driver and not paths read by workers: it needs no
filesystem shared by every node (a laptop driving a cloud cluster works), and
it costs little: reading a 43 KB clip-art file took 0.03 ms (page cache)
against 275 ms of VGG16 forward pass per image on one CPU core, so the driver
is not the bottleneck for images of ordinary size (docs/scale-out.md has the
numbers and where that stops holding). At most two batches per
actor are in flight, so driver memory stays bounded whatever the dataset size.

Failures: actors are created with unlimited restarts and task retries, so a
killed worker process is restarted by Ray (the backbone is loaded again) and
its unfinished batches run again; each batch's result reaches the driver
once, so nothing is lost or written twice. A killed driver leaves its
published part files, and the next run computes only what they lack.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
import uuid
from pathlib import Path
from typing import NamedTuple

import numpy as np

from vggtl import config, data
from vggtl.backbones.resolve import ResolvedWeights
from vggtl.errors import ConfigError, MissingExtra, VggtlError, require_extra
from vggtl.features import store

BATCHES_IN_FLIGHT = 2  # per actor: one running, one queued, so an actor never waits for the driver
ACTOR_PREFIX = "vggtl-extract"


def check_installed() -> None:
    """Raise :class:`MissingExtra` when Ray is absent, without importing it."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise MissingExtra("extract.engine: ray needs the optional package 'ray': pip install 'vggtl[ray]'")


class Extractor:
    """One Ray actor: decodes image bytes and runs the frozen base (TensorFlow).

    The backbone is loaded on the first call (:meth:`ready`, or :meth:`run`
    after Ray restarted a killed actor), from the weights reference every call
    carries: a constructor taking an object reference would have Ray warn on
    every run (ray-project/ray#53727). Loading never raises from ``ready``:
    the error (e.g. a weights file that does not fit the backbone) is
    returned, so the driver reports it as the local engine would.
    """

    def __init__(self, cfg: config.Config, weights: ResolvedWeights, dtype: str):
        self.cfg, self.weights, self.dtype = cfg, weights, np.dtype(dtype)
        self.forward = None

    def _load(self, weights_ref) -> None:
        if self.forward is not None:
            return
        import ray

        from vggtl import tfquiet
        from vggtl.features import forward as base_forward

        tf = tfquiet.load()
        # One TensorFlow thread per CPU Ray gave this actor: actors on one node
        # must not each spread over all of its cores.
        cpus = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
        tf.config.threading.set_intra_op_parallelism_threads(cpus)
        tf.config.threading.set_inter_op_parallelism_threads(cpus)
        weights = self.weights
        if weights_ref is not None:  # this node may not see the driver's file: write Ray's copy locally
            fd, local = tempfile.mkstemp(suffix=".weights.h5", prefix="vggtl-weights-")
            with os.fdopen(fd, "wb") as fh:
                fh.write(ray.get(weights_ref[0]))
            weights = ResolvedWeights(weights.kind, Path(local), weights.digest, weights.source)
        try:
            forward = base_forward.make_forward(self.cfg, weights, log=lambda _: None)
        finally:
            if weights_ref is not None:
                os.unlink(weights.path)
        self.decode = base_forward.job_decoder(self.cfg)
        self.forward = forward

    def ready(self, weights_ref):
        """Load the base; None, or the error that stopped it."""
        try:
            self._load(weights_ref)
        except Exception as exc:  # noqa: BLE001 - handed to the driver
            return exc if isinstance(exc, VggtlError) else RuntimeError(f"{type(exc).__name__}: {exc}")
        return None

    def pid(self) -> int:
        return os.getpid()

    def run(self, batch, weights_ref):
        """``[(job, content bytes or None, read error or None)]`` -> (keys, {layer: features}, skipped)."""
        self._load(weights_ref)
        keys, pixels, skipped = [], [], []
        for job, content, reason in batch:
            if content is not None:
                try:
                    items = self.decode(job, content)
                except data.UndecodableImage as exc:
                    reason = str(exc)
                else:
                    keys += [key for key, _ in items]
                    pixels += [p for _, p in items]
                    continue
            skipped.append((job.file.sha256, job.file.relpath, reason))
        size = self.cfg.extract.batch_size
        chunks = [self.forward(np.stack(pixels[i : i + size])) for i in range(0, len(pixels), size)]
        features = {layer: np.concatenate([np.asarray(c[layer]) for c in chunks]).astype(self.dtype) for layer in chunks[0]} if chunks else {}
        return keys, features, skipped


def _batches(jobs, batch_size: int):
    """Jobs grouped into batches of about ``batch_size`` store entries."""
    batch, entries = [], 0
    for job in jobs:
        batch.append(job)
        entries += len(job.keys)
        if entries >= batch_size:
            yield batch
            batch, entries = [], 0
    if batch:
        yield batch


def _with_bytes(batch) -> list:
    """Read each job's file on the driver: ``(job, bytes, None)`` or ``(job, None, reason)``."""
    from vggtl.features import forward as base_forward

    out = []
    for job in batch:
        try:
            content = base_forward.read_as_scanned(job.file)
        except data.UndecodableImage as exc:
            out.append((job, None, str(exc)))
            continue
        base_forward.check_unchanged(job.file, content)  # here, so the error is the driver's, not an actor's
        out.append((job, content, None))
    return out


class RayPurpose(NamedTuple):
    """What a Ray session is for, as messages name it."""

    command: str  # prefixes the log line
    feature: str  # what needs the extra
    setting: str  # where the cluster address is set
    local: str  # how to ask for a local instance instead


EXTRACT = RayPurpose("extract", "extract.engine: ray", "key 'extract.ray_address'", "set extract.ray_address: null")


@contextlib.contextmanager
def connected(address: str | None, log, purpose: RayPurpose = EXTRACT):
    """Ray, initialised: a new local instance for ``address`` None, else the
    cluster at ``address``; a session the caller opened is reused as is."""
    ray = require_extra("ray", "ray", purpose.feature)
    if ray.is_initialized():
        yield ray
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage-stats prompt or upload
    _check_reachable(address, purpose)
    try:
        ray.init(address="local" if address is None else address, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR", configure_logging=True)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise _unreachable(address, exc, purpose) from None
    try:
        log(f"{purpose.command}: Ray {ray.__version__} "
            f"{'local instance' if address is None else 'cluster ' + address}, "
            f"{int(ray.cluster_resources().get('CPU', 0))} CPU(s) on {len(ray.nodes())} node(s)")
        yield ray
    finally:
        ray.shutdown()


def _check_reachable(address: str | None, purpose: RayPurpose, timeout: float = 5.0) -> None:
    """Fail in seconds on a ``HOST:PORT`` nobody listens on (``ray.init`` would
    retry for minutes); ``auto`` and a local instance are left to Ray."""
    host_port = address[len("ray://"):] if address and address.startswith("ray://") else address
    if not host_port or host_port == "auto" or ":" not in host_port:
        return
    host, port = host_port.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        raise _unreachable(address, exc, purpose) from None


def _unreachable(address: str | None, reason, purpose: RayPurpose) -> ConfigError:
    return ConfigError(
        f"{purpose.setting}: cannot reach a Ray cluster at {address!r}: {reason}; start one with "
        f"`ray start --head` or {purpose.local} for a local instance"
    )


def actor_count(wanted: int, cluster_cpus: float, log) -> int:
    """``extract.workers`` actors of one CPU each, capped at the cluster's CPUs
    (more would wait forever for a CPU), saying so when capped."""
    n = max(1, min(wanted, int(cluster_cpus)))
    if n < wanted:
        log(f"warning: extract.workers={wanted} but the Ray cluster has {int(cluster_cpus)} CPU(s); using {n} actor(s)")
    return n


def _start_actors(ray, cfg: config.Config, weights: ResolvedWeights, weights_ref, dtype: str, log) -> list:
    remote = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=-1)(Extractor)
    n = actor_count(cfg.extract.workers, ray.cluster_resources().get("CPU", 0), log)
    run_id = uuid.uuid4().hex[:8]
    actors = [remote.options(name=f"{ACTOR_PREFIX}-{run_id}-{i}").remote(cfg, weights, dtype) for i in range(n)]
    for error in ray.get([a.ready.remote(weights_ref) for a in actors]):
        if error is not None:
            raise error
    return actors


@contextlib.contextmanager
def engine(cfg: config.Config, weights: ResolvedWeights, fmt: store.StoreFormat, log=print):
    """Yield ``compute(jobs, writer, progress)`` running on Ray actors; the
    actors (and a local Ray instance started here) go away on exit."""
    with connected(cfg.extract.ray_address, log) as ray:
        # Put in the object store once, wrapped in a list so that Ray passes
        # the reference (an actor fetches the bytes once) rather than the
        # bytes with every call; held here for the whole run.
        weights_ref = [ray.put(weights.path.read_bytes())] if weights.kind == "file" else None
        actors = _start_actors(ray, cfg, weights, weights_ref, fmt.dtype, log)
        try:
            yield lambda jobs, writer, progress=True: _compute(ray, actors, weights_ref, jobs, cfg, writer, progress)
        finally:
            for actor in actors:
                ray.kill(actor)


def _compute(ray, actors, weights_ref, jobs, cfg: config.Config, writer: store.PartWriter, progress: bool) -> None:
    """Stream the jobs' batches through the actors, at most BATCHES_IN_FLIGHT each,
    handing results to ``writer`` as they come back (any order: the store is keyed by content)."""
    from tqdm import tqdm

    batches = _batches(jobs, cfg.extract.batch_size)
    in_flight: dict = {}  # result ref -> actor

    def submit(actor) -> None:
        batch = next(batches, None)
        if batch is not None:
            in_flight[actor.run.remote(_with_bytes(batch), weights_ref)] = actor

    for actor in actors:
        for _ in range(BATCHES_IN_FLIGHT):
            submit(actor)
    total = sum(len(job.keys) for job in jobs)
    with tqdm(total=total, unit="img", desc="extract (ray)", disable=None if progress else True, file=sys.stderr) as bar:
        while in_flight:
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            actor = in_flight.pop(ref)
            keys, features, skipped = ray.get(ref)
            for sha, relpath, reason in skipped:
                writer.add_skipped(sha, relpath, reason)
            if keys:
                writer.add(keys, features)
            bar.update(len(keys))
            submit(actor)
        bar.update(total - bar.n)
    writer.flush()
