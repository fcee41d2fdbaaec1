"""Export an artifact, verify every export with its own runtime, hand it over.

For each requested format (and quantization) the export is written into a
hidden staging directory under ``out``, with ``labels.txt``; then the runner
script (:mod:`vggtl.exports.runner`, no vggtl code) loads each with its own
runtime, all in one subprocess, and classifies the artifact's test images, decoded
from ``data.root`` exactly as in extraction. Its top-1 agreement with
``model.keras`` (for an artifact trained on OpenVINO / ONNX Runtime features,
exported in that runtime's format: with the carried base + ``head.keras`` it
is made from, see :class:`CarriedBase`), test accuracy, max |delta p| and images/s go into
``export.json`` and the printed table; the directory is then renamed to
``<out>/<format>[-<quantize>]``. Below ``min_agreement`` (or with no test
images to check) the files are kept, marked ``"verified": false``. A
conversion that fails publishes nothing; an export its runtime cannot run is
removed, the others are published, and the error names it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vggtl.backbones.build import predict_eagerly
from vggtl.backbones.savedmodel import FloatSavedModels
from vggtl.data import UndecodableImage, evenly_spaced
from vggtl.errors import ConfigError, VggtlError, require_extra
from vggtl.exports import formats
from vggtl.exports.report import add_to_artifact
from vggtl.files import make_dir, sha256_file
from vggtl.training import artifact as artifact_mod
from vggtl.training import features_runtime

REPRESENTATIVE_MAX = 100
RUNNER = Path(__file__).with_name("runner.py")


@dataclass
class Result:
    """One export and what verifying it measured."""

    format: str
    quantize: str
    path: str
    size_bytes: int = 0
    verified: bool = False
    test_accuracy: float | None = None
    reference: str = "model.keras"  # what it was made from and is verified against
    reference_test_accuracy: float | None = None
    agreement: float | None = None
    max_abs_dprob: float | None = None
    images_per_second: float | None = None
    note: str = ""
    float_ops: dict | None = None  # tflite int8: {op type: count} of the ops kept in float
    unknown_agreement: float | None = None  # same unknown decision as model.keras (artifacts with unknown detection)
    max_abs_dscore: float | None = None
    files: dict = field(default_factory=dict)


def plan(names: list[str], modes: list[str]) -> list[tuple[formats.Format, str]]:
    """(format, quantization) pairs to write; refuses unknown names and modes no format takes.

    Raises:
        ConfigError: naming the value and what is allowed.
        MissingExtra: a format's optional runtime is not installed.
    """
    unknown = [n for n in names if n not in formats.FORMATS]
    if unknown:
        raise ConfigError(f"--format: got {unknown[0]!r}; allowed: {', '.join(formats.FORMATS)}")
    bad = [m for m in modes if m not in formats.QUANTIZE_MODES]
    if bad:
        raise ConfigError(f"--quantize: got {bad[0]!r}; allowed: {', '.join(formats.QUANTIZE_MODES)}")
    chosen = [formats.FORMATS[n] for n in dict.fromkeys(names)]
    for mode in modes:
        if not any(mode in f.quantize for f in chosen):
            takers = [f.name for f in formats.FORMATS.values() if mode in f.quantize]
            raise ConfigError(f"--quantize {mode}: none of the formats {', '.join(f.name for f in chosen)} takes it; "
                              f"formats with {mode}: {', '.join(takers)}")
    for f in chosen:
        for module in f.modules:
            require_extra(module, f.extra, f"--format {f.name}")
    modes = list(dict.fromkeys(modes or ["none"]))
    return [(f, m) for f in chosen for m in ([m for m in modes if m in f.quantize] or ["none"])]


def export(artifact_path, names: list[str], modes: list[str], out=None, min_agreement: float = 0.98, log=print) -> list[Result]:
    """Write, verify and publish each export of the artifact at ``artifact_path``,
    and add a row per export to its reports (:func:`vggtl.exports.report.add_to_artifact`).

    Returns:
        One :class:`Result` per export, in the order written.

    Raises:
        ConfigError / MissingExtra: before any work (see :func:`plan`).
        ArtifactError: no artifact there, or its checksums do not match.
    """
    jobs = plan(names, modes)
    art = artifact_mod.load(artifact_path)
    # Absolute: each export is verified by a subprocess running in a temporary directory.
    out = (Path(out) if out is not None else art.path.parent / "exports" / art.path.name).absolute()
    make_dir(out, "--out")
    from vggtl.inspect.predictions import artifact_config

    spec = artifact_config(art).spec
    model = art.load_model(with_unknown=True)
    images, labels, note = test_images(art, spec.decode)
    reference, reference_scores = _outputs(predict_eagerly(model, images)) if len(images) else (None, None)
    representative = lambda: training_images(art, spec.decode)  # noqa: E731 - decoded only for int8
    threshold = art.unknown["threshold"] if art.unknown else None
    sources = FloatSavedModels(model)  # the converters' SavedModels, each written once for all the exports
    context = _Context(art, sources, out, representative, (images, labels, reference, note, reference_scores), min_agreement,
                       CarriedBase(art, images), threshold)
    staged = []
    try:
        with sources:
            for fmt, mode in jobs:
                log(f"export {fmt.name}" + (f" ({mode})" if mode != "none" else "") + " ...")
                staged.append(_stage(context, fmt, mode))
        measured = run_runtimes([(job.fmt.name, job.target) for job in staged if job.check[2] is not None], images)
        results, failed = _publish_all(context, staged, measured)
    except BaseException:
        for job in staged:  # a published one was renamed away: nothing left to remove
            shutil.rmtree(job.staging, ignore_errors=True)
        raise
    from vggtl.backbones.build import probabilities_model

    add_to_artifact(art.path, results, probabilities_model(model, spec))
    if failed:
        raise VggtlError("; ".join(failed) + (f" (published: {', '.join(r.path for r in results)})" if results else ""))
    return results


@dataclass(frozen=True)
class _Staged:
    """One export written into its staging directory, not yet verified or published.

    Attributes:
        fmt, mode: the format and quantization.
        staging: the hidden directory it was written into.
        target: the file or directory its runtime loads (inside ``staging``).
        on_base: made from the artifact's carried base (see :class:`CarriedBase`).
        check: ``(test images, labels, the reference's probabilities or None, note,
            the reference's unknown scores or None)``.
    """

    fmt: formats.Format
    mode: str
    staging: Path
    target: Path
    on_base: bool
    check: tuple

    @property
    def name(self) -> str:
        return self.fmt.name + ("" if self.mode == "none" else f"-{self.mode}")


@dataclass(frozen=True)
class _Context:
    """What every export of one ``vggtl export`` run shares.

    Attributes:
        art: the artifact.
        sources: its ``model.keras`` (with the unknown score when it has one,
            ``sources.model``) and the float SavedModels converters start from.
        out: the directory exports are published in.
        representative: () -> training images, decoded only for int8 calibration.
        check: ``(test images, labels, model.keras's probabilities, note)``.
        min_agreement: the top-1 agreement below which an export is unverified.
        carried: the converted base the artifact carries, if any.
        threshold: the artifact's unknown threshold, or None.
    """

    art: object
    sources: FloatSavedModels
    out: Path
    representative: object
    check: tuple
    min_agreement: float
    carried: CarriedBase
    threshold: float | None = None


class CarriedBase:
    """The converted base an artifact trained on OpenVINO / ONNX Runtime features
    carries (:mod:`vggtl.training.features_runtime`): an export in that
    runtime's format is made from it and ``head.keras``, so it computes what the
    metrics were computed with, and is verified against that, not ``model.keras``."""

    def __init__(self, art, images):
        self.art, self.images, self.record, self._reference = art, images, art.features_runtime, None

    def serves(self, fmt, mode: str) -> bool:
        return self.record is not None and fmt.base_runtime == self.record["runtime"] and mode == "none"

    @property
    def name(self) -> str:
        return f"{features_runtime.describe(self.record)} base + head.keras"

    @property
    def scored(self) -> bool:
        """Its ``head.keras`` returns the unknown score too."""
        return self.record is not None and len(features_runtime.head_inputs(self.record)) > 1

    def reference(self):
        """The evaluated model's ``(probabilities, unknown scores or None)`` of the test images (computed once)."""
        if self._reference is None and len(self.images):
            predictor = features_runtime.load_predictor(self.art.path, self.record, artifact_mod.load_keras, with_unknown=True)
            batches = [_pair(predictor(self.images[i : i + 16])) for i in range(0, len(self.images), 16)]
            self._reference = (np.concatenate([p for p, _ in batches]),
                               np.concatenate([s for _, s in batches]) if self.scored else None)
        return self._reference or (None, None)

    def write(self, fmt, staging: Path) -> Path:
        record = self.record
        head = artifact_mod.load_keras(self.art.path / record["head"])
        feeds = {name: record["layers"].index(layer) for name, layer in features_runtime.head_inputs(record).items()}
        return fmt.write_on_base(self.art.path / record["model"], feeds, head, staging, self.art.labels)

    def note(self, on_base: bool) -> str:
        """What an export of a carried-base artifact was made from ("" for other artifacts)."""
        if self.record is None:
            return ""
        if on_base:
            return f"made from the artifact's {self.name} (what the metrics were computed with) and verified against it"
        own = next(f.name for f in formats.FORMATS.values() if f.base_runtime == self.record["runtime"])
        return (f"made from model.keras (TensorFlow fp32 base); the head was trained on {features_runtime.describe(self.record)} "
                f"features (export --format {own} carries that base)")


def _stage(context: _Context, fmt, mode: str) -> _Staged:
    """Write one export, with ``labels.txt``, into a new staging directory (from
    the carried base when it serves this format, else from ``model.keras``)."""
    art, carried, check = context.art, context.carried, context.check
    staging = context.out / f".staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        on_base = carried.serves(fmt, mode)
        target = carried.write(fmt, staging) if on_base else fmt.write(context.sources, staging, art.labels, mode,
                                                                        context.representative, context.threshold)
        (staging / "labels.txt").write_text("\n".join(art.labels) + "\n", encoding="utf-8")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if on_base:
        probs, scores = carried.reference()
        check = (check[0], check[1], probs, check[3], scores)
    elif mode in formats.WITHOUT_UNKNOWN:
        check = check[:4] + (None,)
    return _Staged(fmt, mode, staging, target, on_base, check)


def _publish_all(context: _Context, staged: list[_Staged], measured: list) -> tuple[list[Result], list[str]]:
    """Score, record and publish every staged export whose runtime ran; one that
    could not be run is removed. Returns the published results and what failed."""
    runs = iter(measured)
    results, failed = [], []
    for job in staged:
        outcome = next(runs) if job.check[2] is not None else None
        if isinstance(outcome, str):
            shutil.rmtree(job.staging, ignore_errors=True)
            failed.append(f"the {job.name} export could not be run by its runtime: {outcome}")
            continue
        results.append(_publish(context, job, outcome))
    return results, failed


def _publish(context: _Context, job: _Staged, outcome) -> Result:
    """Fill in what verifying ``job`` measured (``outcome``: ``(probabilities, seconds)``,
    None when there was nothing to verify on), write its export.json, rename it into place."""
    art, model, carried, staging = context.art, context.sources.model, context.carried, job.staging
    result = Result(job.fmt.name, job.mode, str(context.out / job.name), reference=carried.name if job.on_base else "model.keras")
    score(result, outcome, job.check, context.min_agreement, context.threshold)
    if job.fmt.name == "tflite" and job.mode == "int8" and not job.on_base:
        result.float_ops = formats.float_ops(job.target)
        in_float = ", ".join(f"{op} x{n}" for op, n in result.float_ops.items()) or "none"
        result.note = f"convolutions and max pooling in int8; in float: {in_float}" + (f"; {result.note}" if result.note else "")
    carries_unknown = (context.threshold is not None and job.mode not in formats.WITHOUT_UNKNOWN
                       and (carried.scored or not job.on_base))
    dropped = (f"probabilities only: {job.mode} quantization stores the unknown score's matrices in int8 (use float16 "
               "or int8 for a LiteRT export that says 'unknown')") if context.threshold is not None and not carries_unknown else ""
    result.note = "; ".join(filter(None, [carried.note(job.on_base), result.note, dropped]))
    result.files = {p.relative_to(staging).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                    for p in sorted(staging.rglob("*")) if p.is_file()}
    result.size_bytes = sum(f["bytes"] for name, f in result.files.items() if name != "labels.txt")
    record = export_record(art, model, job.fmt, job.mode, job.target.relative_to(staging), result,
                           context.threshold if carries_unknown else None)
    artifact_mod.write_json(staging / "export.json", record)
    _replace(staging, context.out / job.name)
    return result


def _replace(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; an older export there is removed only afterwards."""
    old = None
    if target.exists():
        old = target.with_name(f".old-{uuid.uuid4().hex[:8]}")
        os.rename(target, old)
    os.rename(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def split_files(art, split: str) -> tuple[Path, list[dict]]:
    """``data.root`` as recorded in the artifact's manifest, and the manifest's entries of ``split``."""
    manifest = json.loads((art.path / "manifest.json").read_text())
    return Path(manifest["data_root"]), [f for f in manifest["files"] if f["split"] == split]


def test_images(art, decode):
    """The artifact's test images decoded from ``data.root`` as recorded:
    ``(images, labels, note)``; an empty batch and the reason when there are none."""
    root, files = split_files(art, "test")
    images, labels = [], []
    for f in files if root.is_dir() else []:
        try:
            images.append(decode.decode(root / f["path"]))
            labels.append(art.labels.index(f["label"]))
        except (UndecodableImage, OSError):
            continue
    if images:
        return np.stack(images), np.array(labels), ""
    if not files:
        note = "the artifact has no test split (data.split.test: 0)"
    elif not root.is_dir():
        note = f"data.root {root} is gone: the test images cannot be decoded"
    else:
        note = f"none of the {len(files)} test images under {root} could be decoded"
    return np.zeros((0,)), np.zeros(0, int), note


def training_images(art, decode, limit: int = REPRESENTATIVE_MAX):
    """Up to ``limit`` training images (an even, deterministic sample), decoded as in extraction."""
    root, files = split_files(art, "train")
    if not files or not root.is_dir():
        raise VggtlError(f"int8 calibration needs the artifact's training images under data.root {root}; "
                         "they are gone: restore them or use --quantize dynamic")
    for path in evenly_spaced(sorted(f["path"] for f in files), limit):
        try:
            yield decode.decode(root / path)
        except (UndecodableImage, OSError):
            continue


def _outputs(predicted):
    """``(probabilities, unknown scores or None)`` of a ``model.keras`` prediction."""
    from vggtl.backbones.build import split_outputs

    return _pair(split_outputs(predicted))


def _pair(predicted):
    """``(probabilities, unknown scores or None)`` of a predictor's output."""
    return predicted if isinstance(predicted, tuple) else (predicted, None)


def score(result: Result, outcome, check, min_agreement: float, threshold: float | None = None) -> None:
    """Fill in ``result`` from what its runtime measured (``outcome``:
    ``(probabilities, seconds, unknown scores or None)``; None: unverified,
    ``check``'s note says why). An artifact with unknown detection also needs
    the export's unknown decisions to agree with ``model.keras``'s."""
    images, labels, reference, note, reference_scores = check
    if outcome is None:
        result.note = f"unverified: {note}"
        return
    probs, seconds, scores = outcome
    result.reference_test_accuracy = round(float(np.mean(reference.argmax(1) == labels)), 6)
    result.test_accuracy = round(float(np.mean(probs.argmax(1) == labels)), 6)
    result.agreement = round(float(np.mean(probs.argmax(1) == reference.argmax(1))), 6)
    result.max_abs_dprob = round(float(np.abs(probs - reference).max()), 6)
    result.images_per_second = round(len(images) / seconds, 2)
    result.verified = result.agreement >= min_agreement
    if not result.verified:
        result.note = f"unverified: top-1 agreement {result.agreement:.3f} < --min-agreement {min_agreement}"
        return
    if reference_scores is None:
        return
    if scores is None:
        result.verified, result.note = False, "unverified: the export returns no unknown score"
        return
    result.unknown_agreement = round(float(np.mean((scores > threshold) == (reference_scores > threshold))), 6)
    result.max_abs_dscore = round(float(np.abs(scores - reference_scores).max()), 6)
    if result.unknown_agreement < min_agreement:
        result.verified = False
        result.note = f"unverified: unknown-decision agreement {result.unknown_agreement:.3f} < --min-agreement {min_agreement}"


def run_runtimes(jobs: list[tuple[str, Path]], images: np.ndarray) -> list:
    """Run each ``(format, model path)`` in ``jobs`` on ``images`` with its own runtime,
    all in one runner subprocess (each runtime imported once).

    Returns:
        Per job, in order: ``(probabilities, inference seconds, unknown scores or None)``, or the
        runtime's error message (a str) when it could not run that model.

    Raises:
        VggtlError: the runner process itself failed.
    """
    if not jobs:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "images.npy", images)
        outs = [str(tmp / f"probs-{i}.npy") for i in range(len(jobs))]
        (tmp / "jobs.json").write_text(json.dumps([[fmt, str(Path(target).absolute()), out] for (fmt, target), out in zip(jobs, outs)]))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"TF_CPP_MIN_LOG_LEVEL": "3"}
        done = subprocess.run([sys.executable, str(RUNNER), str(tmp / "images.npy"), str(tmp / "jobs.json")],
                              cwd=tmp, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            tail = " ".join(done.stderr.strip().splitlines()[-3:])[-600:]
            raise VggtlError(f"the exports could not be run by their runtimes: {tail}")
        return [_runner_outcome(out) for out in outs]


def _runner_outcome(out: str):
    timing = json.loads(Path(out + ".json").read_text())
    if "error" in timing:
        return timing["error"]
    scores = Path(out + ".unknown.npy")
    return np.load(out), timing["seconds"], (np.load(scores) if scores.is_file() else None)


def export_record(art, model, fmt, mode: str, relpath: Path, result: Result, threshold: float | None = None) -> dict:
    """``export.json``: what was exported, how to feed it, what verification measured
    (and for a model with unknown detection: its score output and the threshold)."""
    import tensorflow as tf

    import vggtl

    height, width = formats.input_spec(model)
    return {
        "format": fmt.name, "quantize": mode, "model": relpath.as_posix(),
        "input": {"shape": [None, height, width, 3], "dtype": fmt.input_dtype, "channel_order": "RGB",
                  "value_range": [0, 255], "resize": "as vggtl: see the artifact's config (data.resize, data.background)"},
        "output": {"probabilities": len(art.labels), "labels": "labels.txt (one per line, output order)",
                   **({"unknown_score": "one number per image (the one-dimensional output); higher = further from the "
                                        "training images", "unknown_threshold": threshold,
                       "unknown": "unknown_score > unknown_threshold: the image is none of the classes"}
                      if threshold is not None else {})},
        **({"compile_options": {"INFERENCE_PRECISION_HINT": "f32"},
            "compile_note": "compile in f32: OpenVINO's default bf16 on CPUs that have it moves the unknown score"}
           if threshold is not None and fmt.name == "openvino" else {}),
        "artifact": str(art.path), "artifact_model_sha256": sha256_file(art.path / "model.keras"),
        "verification": {k: v for k, v in asdict(result).items() if k not in ("files", "path", "format", "quantize")},
        "files": result.files,
        "versions": {"vggtl": vggtl.__version__, "tensorflow": tf.__version__},
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
