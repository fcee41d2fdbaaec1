"""Versioned, checksummed model artifacts: ``<output.dir>/<name>/v<N>/``.

An artifact directory holds everything needed to use and audit a model:

    model.keras       end-to-end model: raw RGB uint8 images -> class probabilities
    base/, head.keras only when extraction ran OpenVINO / ONNX Runtime: the
                      converted base and the model on its features
                      (vggtl.training.features_runtime)
    labels.json       class names in output order
    config.yaml       the resolved config of the run
    metrics.json      {"val": {...}, "test": {"accuracy", "per_class", ...}, ...}
    history.json      per-epoch training curves
    manifest.json     data digest, per-split counts, skipped files
    info.json         versions (Python, TF, Keras, vggtl...), seed, digests
    report.md + PNGs  the evaluation report
    checksums.sha256  sha256 of every other file (sha256sum format)

Versions are published by renaming a finished temporary directory, so a
killed run never leaves a directory that looks like an artifact; ``latest``
is a symlink swapped atomically. Loading verifies every checksum first.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from vggtl.data import SPLITS
from vggtl.errors import ArtifactError, path_error
from vggtl.files import make_dir, sha256_file, write_text_atomic

FORMAT = "vggtl-artifact"
FORMAT_VERSION = 1
CHECKSUMS = "checksums.sha256"
REQUIRED = ("model.keras", "labels.json", "config.yaml", "metrics.json", "info.json")
_VERSION_DIR = re.compile(r"^v(\d+)$")


def versions() -> dict:
    """Library versions recorded in every artifact."""
    import h5py
    import keras
    import numpy
    import sklearn
    import tensorflow

    import vggtl

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "vggtl": vggtl.__version__,
        "tensorflow": tensorflow.__version__,
        "keras": keras.__version__,
        "numpy": numpy.__version__,
        "h5py": h5py.__version__,
        "scikit-learn": sklearn.__version__,
    }


def read_json(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_json(path: Path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- writing


def begin(output_dir, name: str) -> Path:
    """A fresh hidden staging directory under ``<output_dir>/<name>/``.

    Raises:
        PathError: ``output.dir`` cannot be created or written.
    """
    run_dir = make_dir(Path(output_dir) / name, "output.dir")
    staging = run_dir / f".staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir()
    except OSError as exc:
        raise path_error(exc, staging, "create the artifact's staging directory") from None
    return staging


def write_metadata(staging: Path, run, metrics, history: dict, *, seconds: float,
                   features_runtime: dict | None = None) -> None:
    """Write labels, config, metrics, history, manifest and info into ``staging``.

    ``info.json``'s end-to-end check result is null until
    :func:`record_end_to_end_gap` fills it in: the report is written from
    these files while the check still runs.

    Args:
        staging: from :func:`begin`; ``model.keras`` and the report are written
            by their own code.
        run: the :class:`~vggtl.training.inputs.RunInputs`: the config, the
            scanned data, the open feature store (its index is the manifest's
            file list) and its location (settings, weights loaded).
        metrics: the :class:`~vggtl.training.results.RunMetrics` (``metrics.json``).
        history: the curves (``history.json``).
        seconds: training wall time.
        features_runtime: the converted base the features came from, when
            not TensorFlow (:func:`vggtl.training.features_runtime.write`).
    """
    cfg, dataset, fs, weights = run.cfg, run.dataset, run.fs, run.weights
    store_settings = run.where.format.settings
    write_json(staging / "labels.json", fs.class_names)
    (staging / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
    write_json(staging / "metrics.json", metrics.to_json())
    write_json(staging / "history.json", history)
    manifest = _manifest(dataset, fs)
    write_json(staging / "manifest.json", manifest)
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": cfg.name,
        "seed": cfg.seed,
        "config_digest": cfg.digest(),
        "data_digest": dataset.digest(),
        "content_digest": dataset.content_digest(),
        "split": {"seed": cfg.split_seed, "digest": dataset.split_digest()},
        "store": {"path": str(fs.path), "settings": store_settings},
        "weights": {"source": weights.source, "digest": weights.digest, "random": weights.random},
        "backbone": {"name": cfg.spec.name, "layer": cfg.spec.head_layer, "preprocessing": store_settings["preprocessing"]},
        "image_size": cfg.spec.image_size,
        "input": "RGB uint8 (or float 0-255), shape (H, W, 3) = image_size; preprocessing inside the model",
        "end_to_end_check_max_abs_diff": None,  # record_end_to_end_gap(), once the check has run
        "labels_since_previous": label_changes(staging.parent, manifest),
        **({"features_runtime": features_runtime} if features_runtime else {}),
        "versions": versions(),
        "train_seconds": round(seconds, 1),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(staging / "info.json", info)


def record_end_to_end_gap(staging: Path, gap: float) -> None:
    """Complete ``info.json`` in ``staging`` with the end-to-end check's result:
    max |p| difference of the saved model vs the evaluated one on the checked images."""
    info = json.loads((staging / "info.json").read_text(encoding="utf-8"))
    info["end_to_end_check_max_abs_diff"] = gap
    write_json(staging / "info.json", info)


def _manifest(dataset, fs) -> dict:
    """Where the data came from and which file (by content) went to which split with which label."""
    sha_of = {f.relpath: f.sha256 for f in dataset.files}
    return {
        "data_root": str(dataset.root),
        "layout": dataset.layout,
        "data_digest": dataset.digest(),
        "counts": dataset.counts(skipped=[path for path, _ in fs.skipped]),
        "skipped": [{"path": p, "reason": r} for p, r in fs.skipped],
        "files": [
            {"path": fs.paths[i], "label": fs.class_names[fs.labels[i]], "split": SPLITS[fs.splits[i]],
             "sha256": sha_of.get(fs.paths[i])}
            for i in range(len(fs.paths))
        ],
    }


def label_changes(run_dir: Path, manifest: dict) -> dict | None:
    """How the labels of ``manifest`` differ from those of the newest published
    version in ``run_dir``, by image content (a relabelled file moved to another
    class folder is one image whose label changed): ``{"previous", "changed",
    "added", "removed"}``; None when there is no earlier version, and
    ``"changed": None`` when it predates content hashes in manifests."""
    published = existing_versions(run_dir)
    if not published:
        return None
    previous = f"v{published[-1]}"
    try:
        old_files = read_json(run_dir / previous / "manifest.json")["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return {"previous": previous, "changed": None, "added": None, "removed": None}
    if any("sha256" not in f for f in old_files):
        return {"previous": previous, "changed": None, "added": None, "removed": None}
    old, new = _labels_by_content(old_files), _labels_by_content(manifest["files"])
    return {"previous": previous, "changed": sum(old[sha] != new[sha] for sha in old.keys() & new.keys()),
            "added": len(new.keys() - old.keys()), "removed": len(old.keys() - new.keys())}


def _labels_by_content(files) -> dict[str, frozenset]:
    labels = {}
    for f in files:
        labels.setdefault(f["sha256"], set()).add(f["label"])
    return {sha: frozenset(names) for sha, names in labels.items()}


def label_change_line(changes: dict | None) -> str | None:
    """What ``train`` prints about :func:`label_changes`."""
    if changes is None:
        return None
    if changes["changed"] is None:
        return f"labels since {changes['previous']}: cannot tell (it predates content hashes in manifest.json)"
    return (f"labels since {changes['previous']}: {changes['changed']} image(s) relabelled, {changes['added']} added, "
            f"{changes['removed']} removed")


def existing_versions(run_dir: Path) -> list[int]:
    if not run_dir.is_dir():
        return []
    return sorted(int(m.group(1)) for p in run_dir.iterdir() if (m := _VERSION_DIR.match(p.name)))


def reseal(path: Path, names) -> None:
    """Recompute the ``checksums.sha256`` entries of ``names`` (files of the
    published artifact at ``path`` that a later command rewrote or added: an
    export's rows in the reports), by atomic replace, so the artifact still verifies."""
    listed = _read_checksums(path)
    for name in names:
        if (path / name).is_file():
            listed[name] = sha256_file(path / name)
    write_text_atomic(path / CHECKSUMS, "".join(f"{digest}  {rel}\n" for rel, digest in sorted(listed.items())))


def publish(staging: Path) -> Path:
    """Checksum ``staging``, rename it to the next ``v<N>`` and point ``latest`` at it."""
    lines = []
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        rel = path.relative_to(staging).as_posix()
        lines.append(f"{sha256_file(path)}  {rel}")
    (staging / CHECKSUMS).write_text("\n".join(lines) + "\n", encoding="utf-8")
    run_dir = staging.parent
    while True:
        version = (existing_versions(run_dir) or [0])[-1] + 1
        target = run_dir / f"v{version}"
        try:
            # rename() onto a non-existent path is atomic and fails if a
            # concurrent run took the same number, in which case we retry.
            os.rename(staging, target)
            break
        except OSError:
            if not target.exists():
                raise
    link_tmp = run_dir / f".latest-{uuid.uuid4().hex[:8]}"
    os.symlink(target.name, link_tmp)
    os.replace(link_tmp, run_dir / "latest")
    return target


def abandon(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


def clean_stale_staging(output_dir, name: str) -> None:
    """Remove staging directories of runs that were killed (best effort)."""
    run_dir = Path(output_dir) / name
    if run_dir.is_dir():
        for stale in run_dir.glob(".staging-*"):
            pid = stale.name.split("-")[1]
            if pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------- reading


@dataclass
class Artifact:
    """A verified artifact: paths and parsed metadata (the model loads lazily)."""

    path: Path
    labels: list[str]
    config: dict
    info: dict
    metrics: dict
    checksums: dict = field(default_factory=dict)  # {file: sha256}, as verified by load()

    def load_model(self, with_unknown: bool = False):
        """The end-to-end ``model.keras``: images -> probabilities, or with
        ``with_unknown`` (and an artifact that has it) -> ``{"probabilities",
        "unknown_score"}`` from the same pass. ArtifactError when its outputs
        are not one per label."""
        from vggtl.backbones.build import probabilities_model

        from vggtl.config import from_dict

        full = load_keras(self.path / "model.keras")
        model = probabilities_model(full, from_dict(self.config, f"{self.path}/config.yaml").spec) if isinstance(
            full.output, dict) else full
        width = model.output_shape[-1] if isinstance(model.output_shape, tuple) else None
        if isinstance(full.output, dict) and with_unknown and width == len(self.labels):
            return full
        if width != len(self.labels):
            raise ArtifactError(f"{self.path}: model.keras gives {width} outputs but labels.json names {len(self.labels)} "
                                "classes; the artifact was altered")
        return model

    @property
    def unknown(self) -> dict | None:
        """``unknown.json``: the out-of-scope threshold and how it was set, or
        None for an artifact without unknown detection."""
        from vggtl.unknown.detector import RECORD

        path = self.path / RECORD
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    @property
    def features_runtime(self) -> dict | None:
        """How the head's features were computed when not by TensorFlow
        (:mod:`vggtl.training.features_runtime`), else None."""
        return self.info.get("features_runtime")


def load_keras(path: Path):
    """A Keras file of an artifact (``model.keras``, ``head.keras``), uncompiled."""
    import keras

    import vggtl.backbones.preprocess  # noqa: F401 - registers the preprocessing layers for deserialisation

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for bad files
        raise ArtifactError(f"{path}: cannot be loaded ({exc})") from None


def resolve(path) -> Path:
    """Accept ``.../v3``, ``.../latest`` or the run directory (-> its newest version)."""
    path = Path(path)
    if (path / "latest").is_symlink() and not (path / "model.keras").exists():
        path = path / "latest"
    if path.is_symlink() and not path.exists():
        found = [p.name for p in sorted(path.parent.glob("v*"), key=lambda p: (len(p.name), p.name)) if _VERSION_DIR.match(p.name)]
        raise ArtifactError(f"{path} points to {os.readlink(path)}, which does not exist (deleted or moved); "
                            + (f"versions here: {', '.join(found)}" if found else "train again to publish a version"))
    if not path.exists():
        raise ArtifactError(f"artifact {str(path)!r} does not exist")
    return path.resolve()


_CHECKSUM_LINE = re.compile(r"^([0-9a-f]{64})  (\S(?:.*\S)?)$")


def verify(path: Path) -> None:
    """Raise ArtifactError unless ``checksums.sha256`` lists exactly the files of
    the artifact (each inside it, none missing, none extra, the required ones
    included) and every one matches its digest. The message names the file."""
    listed = _read_checksums(path)
    present = _artifact_files(path) - {CHECKSUMS}
    for name in REQUIRED:
        if name not in listed:
            raise ArtifactError(f"{path}: required file {name} is not listed in {CHECKSUMS}; the artifact was altered")
    for rel in sorted(set(listed) - present):
        raise ArtifactError(f"{path}: file {rel} listed in {CHECKSUMS} is missing")
    for rel in sorted(present - set(listed)):
        raise ArtifactError(f"{path}: file {rel} is not listed in {CHECKSUMS} (added after the artifact was published); "
                            "remove it, or train again")
    for rel, digest in listed.items():
        file = path / rel
        if file.is_symlink() or not file.resolve().is_relative_to(path.resolve()):
            raise ArtifactError(f"{path}: {rel} is a link or points outside the artifact; the artifact was altered")
        if sha256_file(file) != digest:
            raise ArtifactError(f"{path}: checksum mismatch for {rel}; the artifact was modified or is corrupt")


def _artifact_files(path: Path) -> set[str]:
    """Relative paths of the files (and links) in an artifact directory. Hidden
    ones are not part of it: an interrupted atomic rewrite may leave one, and
    nothing reads them."""
    found = set()
    for file in path.rglob("*"):
        rel = file.relative_to(path).as_posix()
        if (file.is_file() or file.is_symlink()) and not any(part.startswith(".") for part in rel.split("/")):
            found.add(rel)
    return found


def _read_checksums(path: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of ``checksums.sha256``, refusing malformed
    lines, repeated files and paths that leave the artifact."""
    sums = path / CHECKSUMS
    if not sums.is_file():
        raise ArtifactError(f"{path}: no {CHECKSUMS}; not a complete vggtl artifact")
    try:
        # split("\n"), not splitlines(): a byte turned into another line break must not pass
        lines = sums.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: {CHECKSUMS} cannot be read ({exc})") from None
    listed: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        if not line:
            continue
        match = _CHECKSUM_LINE.match(line)
        if not match:
            raise ArtifactError(f"{path}: {CHECKSUMS} line {number} is not '<sha256>  <file>': {line[:80]!r}")
        digest, rel = match.groups()
        parts = PurePosixPath(rel).parts
        if PurePosixPath(rel).is_absolute() or ".." in parts or "\\" in rel:
            raise ArtifactError(f"{path}: {CHECKSUMS} line {number} names {rel!r}, outside the artifact")
        if rel in listed:
            raise ArtifactError(f"{path}: {CHECKSUMS} lists {rel} twice")
        listed[rel] = digest
    return listed


def load(path, verify_checksums: bool = True) -> Artifact:
    """Resolve, verify checksums, and read the metadata of an artifact.

    Args:
        verify_checksums: False only where this process has just published the
            artifact (:func:`publish` checksummed the very files; hashing
            ~60 MB again would cost ~0.1 s and prove nothing more).
    """
    import yaml

    path = resolve(path)
    if verify_checksums:
        verify(path)
    info = _read(path, "info.json", json.loads, dict)
    if info.get("format") != FORMAT or info.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: format {info.get('format')} v{info.get('format_version')} is not readable by "
            f"this vggtl ({FORMAT} v{FORMAT_VERSION})"
        )
    labels = _read(path, "labels.json", json.loads, list)
    if not labels or not all(isinstance(label, str) for label in labels) or len(set(labels)) != len(labels):
        raise ArtifactError(f"{path}: labels.json must be a list of distinct class names; the artifact was altered")
    if (path / "manifest.json").is_file():
        files = _read(path, "manifest.json", json.loads, dict).get("files", [])
        unknown = sorted({f.get("label") for f in files if isinstance(f, dict)} - set(labels))
        if unknown:
            raise ArtifactError(f"{path}: manifest.json names class {unknown[0]!r}, which labels.json does not have; "
                                "the artifact was altered")
    return Artifact(path=path, labels=labels, config=_read(path, "config.yaml", yaml.safe_load, dict), info=info,
                    metrics=_read(path, "metrics.json", json.loads, dict), checksums=_read_checksums(path))


def _read(path: Path, name: str, parse, kind: type):
    """``parse`` of the artifact file ``name``, which must give a ``kind``; else ArtifactError naming it."""
    try:
        value = parse((path / name).read_text(encoding="utf-8"))
    except Exception as exc:  # noqa: BLE001 - json/yaml/decoding errors: all mean a damaged file
        raise ArtifactError(f"{path}: {name} cannot be read ({type(exc).__name__}: {exc}); the artifact was altered") from None
    if not isinstance(value, kind):
        raise ArtifactError(f"{path}: {name} holds a {type(value).__name__}, not a {kind.__name__}; the artifact was altered")
    return value
