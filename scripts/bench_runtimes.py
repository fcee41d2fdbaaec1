"""Speed, fidelity and accuracy of each extraction runtime and precision, in one run.

One row per ``extract.runtime`` x ``extract.precision`` (tensorflow fp32,
openvino fp32, onnxruntime fp32, openvino int8, onnxruntime int8; --runtimes
picks some; a row whose optional extra is missing is skipped with the reason),
one Markdown table with:

* compute-only img/s: the first --images images of CONFIG's data (sorted
  paths, images over --max-side px on a side left out so decoding does not
  matter), decoded up front and run through the runtime's forward pass in
  batches of extract.batch_size after one warm-up batch. This also builds the
  converted / quantized model into the runtime cache ($VGGTL_CACHE_DIR/runtimes)
  for CONFIG's own split, so the whole command below does not pay for it.
* whole-command img/s: ``python -m vggtl.extract CONFIG --no-progress --set
  extract.runtime=R --set extract.precision=P --set cache.path=<fresh dir>``
  timed as a subprocess (cold store: every image decoded and computed, giant
  images included; interpreter start and imports included); images = the
  entries the extract reports computed.
* whole-command seconds beside their floor on this machine: the compute-only
  time of the same images plus the CPU seconds of decoding them all (extract's
  own decoder and threads, timed alone) divided by the cores, since decoding
  and the convolutions share the cores.
* both ratios to TensorFlow fp32 measured in this run, and the min / mean
  cosine similarity of the compute-only average-pooled features to TF fp32's.
* test accuracy of the default head and of the linear probe, mean over the
  --seeds split seeds (per seed in parentheses), and of the same head with
  the base run by TensorFlow fp32 (``model.keras``, what exports ship): for each seed S,
  ``vggtl.extract`` (untimed; int8 stores are calibrated on the training
  images, so each split seed has its own) then ``python -m vggtl.train CONFIG
  --set data.split.seed=S --set output.dir=<temp dir>`` into the row's
  cache.path, read from <output.dir>/<name>/latest/metrics.json.

Commands run in the current directory with the current environment, as a
user runs them; the ./.vggtl/last-extract.json they record is put back as it
was. Stores and artifacts go to a temporary directory, removed at the end.
The full run trains rows x seeds heads and quantizes each int8 row once per
seed; --skip-accuracy / --skip-whole / --runtimes make quicker runs. Example:

    VGGTL_VGG16_WEIGHTS=../shared/weights/vgg16_imagenet_notop.weights.h5 \\
        python scripts/bench_runtimes.py configs/clipart8-fast.yaml --images 64

    # quicker: compute-only and whole command, two rows
    python scripts/bench_runtimes.py configs/clipart8-fast.yaml --skip-accuracy \\
        --runtimes tensorflow-fp32 openvino-int8
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vggtl import cli, config, plan
from vggtl.errors import MissingExtra
from vggtl.features import pipeline, runtimes

ROWS = ["tensorflow-fp32", "openvino-fp32", "onnxruntime-fp32", "openvino-int8", "onnxruntime-int8"]
REFERENCE = "tensorflow-fp32"
SPEED_FLAGS = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"]


@dataclass
class Row:
    """What was measured for one runtime / precision."""

    name: str  # e.g. "openvino-int8"
    speed: float = 0.0  # compute-only img/s
    pooled: np.ndarray | None = None  # compute-only avg-pooled features
    whole_seconds: float | None = None
    whole_images: int | None = None
    converted_in_timed_run: bool = False  # the timed extract had to convert (should not happen)
    head: list[float] = field(default_factory=list)  # test accuracy per seed
    probe: list[float] = field(default_factory=list)
    tf32: list[float] = field(default_factory=list)  # the same head through model.keras (TF fp32 base)

    @property
    def runtime(self) -> str:
        return self.name.rsplit("-", 1)[0]

    @property
    def precision(self) -> str:
        return self.name.rsplit("-", 1)[1]

    @property
    def whole_speed(self) -> float | None:
        return None if self.whole_seconds is None else self.whole_images / self.whole_seconds


# --------------------------------------------------------------------------- compute only


def decoded(cfg, files, n: int, max_side: int):
    """The first ``n`` of ``files`` (sorted paths) at most ``max_side`` px on a side, decoded as extract does."""
    from PIL import Image

    images = []
    for f in sorted(files, key=lambda f: f.relpath):
        with Image.open(f.path) as im:
            if max(im.size) > max_side:
                continue
        images.append(cfg.spec.decode.decode(f.path))
        if len(images) == n:
            break
    return np.stack(images)


def measure(cfg, runtime: str, precision: str, images: np.ndarray):
    """Compute-only img/s and avg-pooled features of ``images`` through ``runtime``
    (building its converted model into the runtime cache when absent; int8:
    calibrated on the training images of CONFIG's data)."""
    cfg = config.with_overrides(cfg, {"extract.runtime": runtime, "extract.precision": precision}, "bench")
    where = plan.resolve(cfg).store
    forward = pipeline.make_forward(cfg, where.weights, log=lambda _: None, calibration=where.calibration)
    batch = cfg.extract.batch_size
    forward(images[:batch])  # warm-up: graph building, allocation
    started = time.perf_counter()
    out = [np.asarray(forward(images[i : i + batch])[cfg.spec.head_layer]) for i in range(0, len(images), batch)]
    seconds = time.perf_counter() - started
    pooled = np.concatenate(out).reshape(len(images), -1, out[0].shape[-1]).mean(axis=1)
    return len(images) / seconds, pooled


def decode_cost(cfg, files) -> tuple[float, float]:
    """``(CPU seconds, wall seconds)`` to decode every file as extract does, with
    its thread pool (extract.workers threads), nothing else running: the part
    of a whole extract no runtime can speed up. On ``cores`` cores a whole
    extract cannot take less than compute + CPU seconds / cores."""
    jobs = [pipeline.Job(f, (f.sha256,)) for f in files]
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in pipeline.decoded_stream(jobs, pipeline.job_decoder(cfg), cfg.extract.workers, lookahead=2 * cfg.extract.batch_size):
        pass
    return time.process_time() - cpu, time.perf_counter() - wall


def oversized(files, max_side: int) -> int:
    """How many of ``files`` are images over ``max_side`` px on a side (reads headers only)."""
    from PIL import Image

    count = 0
    with warnings.catch_warnings():  # the giants are what we are counting
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for f in files:
            try:
                with Image.open(f.path) as im:
                    count += max(im.size) > max_side
            except (OSError, Image.DecompressionBombError):  # undecodable: extract skips it
                pass
    return count


# --------------------------------------------------------------------------- the project's commands


def vggtl_command(command: str, config_path: str, row: Row, sets: dict) -> str:
    """Run ``python -m vggtl.<command> CONFIG --set ...`` for ``row`` (current
    directory and environment); its stdout. Exits with its stderr if it fails."""
    argv = [sys.executable, "-m", f"vggtl.{command}", config_path]
    if command == "extract":
        argv.append("--no-progress")
    for key, value in {"extract.runtime": row.runtime, "extract.precision": row.precision, **sets}.items():
        argv += ["--set", f"{key}={value}"]
    done = subprocess.run(argv, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        sys.exit(f"bench_runtimes: {' '.join(argv)} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


@contextlib.contextmanager
def keeping_last_extract():
    """Put back ./.vggtl/last-extract.json (what ``vggtl train`` without CONFIG
    reuses) as it was: every extract below records itself there."""
    path = cli.LAST_EXTRACT
    before = path.read_bytes() if path.is_file() else None
    had_dir = path.parent.is_dir()
    try:
        yield
    finally:
        if before is not None:
            path.write_bytes(before)
        else:
            path.unlink(missing_ok=True)
            if not had_dir:
                with contextlib.suppress(OSError):
                    path.parent.rmdir()


def whole_command(config_path: str, row: Row, cache: Path) -> None:
    """Time one cold ``vggtl.extract`` of CONFIG's data into the empty ``cache``;
    fills ``row.whole_*`` from its summary line ("computed N, reused M ...")."""
    started = time.perf_counter()
    out = vggtl_command("extract", config_path, row, {"cache.path": cache})
    row.whole_seconds = time.perf_counter() - started
    match = re.search(r"^computed (\d+), reused (\d+)", out, re.MULTILINE)
    if match is None or int(match.group(2)) != 0:
        sys.exit(f"bench_runtimes: {row.name}: expected a cold extract computing every image, got:\n{out}")
    row.whole_images = int(match.group(1))
    row.converted_in_timed_run = "converted the frozen base" in out


def accuracy(config_path: str, row: Row, cache: Path, seed: int, output: Path, name: str) -> None:
    """Extract (untimed; a no-op when the store is up to date) and train on split
    ``seed``; appends the head's and the linear probe's test accuracy to ``row``."""
    sets = {"cache.path": cache, "data.split.seed": seed}
    vggtl_command("extract", config_path, row, sets)
    vggtl_command("train", config_path, row, {**sets, "output.dir": output})
    metrics = json.loads((output / name / "latest" / "metrics.json").read_text())
    row.head.append(metrics["test"]["accuracy"])
    row.probe.append(metrics["baseline"]["linear_probe"]["test_accuracy"])
    # A head trained on converted-base features, run on TensorFlow fp32 features:
    # what model.keras and the exports give (the tensorflow row: the head itself).
    row.tf32.append(metrics.get("tensorflow_fp32", {}).get("test_accuracy", metrics["test"]["accuracy"]))


# --------------------------------------------------------------------------- report


def cpu_line() -> str:
    """CPU model, core count and the instruction sets that matter for speed (from /proc/cpuinfo)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    line = re.search(r"^flags\s*:(.*)$", info, re.MULTILINE)
    flags = set(line.group(1).split()) if line else set()
    model = re.search(r"^model name\s*:\s*(.*)$", info, re.MULTILINE)
    usable = usable_cores()
    have = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in SPEED_FLAGS) if flags else "flags unknown"
    return f"CPU: {model.group(1) if model else 'unknown'}, {os.cpu_count()} logical cores ({usable} usable); {have}"


def cosines(pooled: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-image cosine similarity of two (images, channels) arrays."""
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    return np.sum(unit(pooled) * unit(ref), axis=1)


def accuracy_cell(values: list[float]) -> str:
    """``mean (seed 1 / seed 2 / ...)``, or a dash when not measured."""
    if not values:
        return "–"
    per_seed = " / ".join(f"{v:.3f}" for v in values)
    return f"{np.mean(values):.3f} ({per_seed})" if len(values) > 1 else f"{values[0]:.3f}"


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def floor_seconds(row: Row, decode_cpu: float | None) -> str:
    """The least a whole extract can take on this machine: the compute-only time
    of its images plus the decoding's CPU seconds spread over every core."""
    if row.whole_images is None or decode_cpu is None:
        return "–"
    return f"{row.whole_seconds:.1f} / {row.whole_images / row.speed + decode_cpu / usable_cores():.1f}"


def table(rows: list[Row], decode_cpu: float | None = None) -> list[str]:
    """The Markdown table: one line per measured row."""
    ref = next((r for r in rows if r.name == REFERENCE), None)
    lines = ["| `extract.runtime` / `precision` | compute-only img/s | whole command img/s "
             "| whole command s / floor s | vs TF fp32, compute / whole "
             "| pooled-feature cosine to TF fp32, min / mean | test accuracy, head | test accuracy, linear probe "
             "| test accuracy, head through `model.keras` (TF fp32 base) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        whole = "–" if r.whole_speed is None else f"{r.whole_speed:.2f}" + ("*" if r.converted_in_timed_run else "")
        ratio = cos = "–"
        if ref is not None:
            whole_ratio = "–" if r.whole_speed is None or ref.whole_speed is None else f"{r.whole_speed / ref.whole_speed:.2f}×"
            ratio = f"{r.speed / ref.speed:.2f}× / {whole_ratio}"
            c = cosines(r.pooled, ref.pooled)
            cos = "1 / 1" if r is ref else f"{c.min():.5f} / {c.mean():.6f}"
        lines.append(f"| `{r.runtime}` {r.precision} | {r.speed:.2f} | {whole} | {floor_seconds(r, decode_cpu)} | {ratio} | {cos} "
                     f"| {accuracy_cell(r.head)} | {accuracy_cell(r.probe)} | {accuracy_cell(r.tf32)} |")
    return lines


def header(cfg, args, rows: list[Row], n_compute: int, n_files: int, n_big: int, decode=None) -> list[str]:
    """What was measured and how, printed above the table."""
    lines = [f"{cfg.spec.name} -> {cfg.spec.head_layer}, batch {cfg.extract.batch_size}; int8 calibrated on "
             f"extract.calibration_images={cfg.extract.calibration_images} (at most; fewer if the split has fewer) "
             "training images of the split measured",
             f"compute only: the first {n_compute} images (sorted paths, none over {args.max_side} px on a side), "
             f"split seed {cfg.split_seed} for int8 calibration; one warm-up batch"]
    if not args.skip_whole:
        counts = sorted({r.whole_images for r in rows})
        lines.append(
            f"whole command: python -m vggtl.extract, cold store (fresh cache.path per row), split seed {cfg.split_seed}; "
            f"{'/'.join(map(str, counts))} images computed of the {n_files} files of data.root, the {n_big} over "
            f"{args.max_side} px on a side included (clipart8: its 4 giant PNGs); converted / quantized model "
            "already in the runtime cache (built by the compute-only measurement of the same config and split "
            "just before; not timed)")
        lines.append(
            f"decoding alone (extract's decoder, {cfg.extract.workers} threads, all {n_files} files): {decode[0]:.1f} CPU-s in "
            f"{decode[1]:.1f} s wall; floor = compute-only time + decode CPU-s / {usable_cores()} cores (decoding and "
            "the convolutions share the cores)")
        if any(r.converted_in_timed_run for r in rows):
            lines.append("* this extract converted the model anyway: its time includes the conversion")
    if not args.skip_accuracy:
        lines.append(f"accuracy: python -m vggtl.train, test accuracy mean over split seeds {' '.join(map(str, args.seeds))} "
                     "(per seed in parentheses); int8: one untimed extract per seed (its own calibration)")
    if rows and REFERENCE not in {r.name for r in rows}:
        lines.append(f"no ratios or cosines: they are to {REFERENCE}, not among --runtimes")
    return lines + [cpu_line(), ""]


# --------------------------------------------------------------------------- main


def parse_args(argv=None):
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--images", type=int, default=64, help="images for the compute-only measurement (default 64)")
    parser.add_argument("--max-side", type=int, default=4000, help="compute only: leave out images larger than this (px, default 4000); "
                        "the header counts the dataset's images over it")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="split seeds for accuracy (default 0 1 2)")
    parser.add_argument("--runtimes", nargs="+", choices=ROWS, default=ROWS, metavar="RUNTIME-PRECISION",
                        help=f"rows to measure (default all: {' '.join(ROWS)}); {REFERENCE} is the reference for ratios and cosines")
    parser.add_argument("--skip-whole", action="store_true", help="do not time the whole extract command")
    parser.add_argument("--skip-accuracy", action="store_true", help="do not train for test accuracy")
    return parser.parse_args(argv)


def installed_rows(names: list[str]) -> list[Row]:
    """The rows asked for, in table order, without those whose extra is missing (said on stderr)."""
    rows = []
    for name in [n for n in ROWS if n in names]:
        row = Row(name)
        try:
            runtimes.check_installed(row.runtime, row.precision)
        except MissingExtra as exc:
            print(f"{row.runtime} {row.precision}: skipped ({exc})", file=sys.stderr)
            continue
        rows.append(row)
    return rows


def note(row: Row, text: str) -> None:
    """A progress line on stderr (the table goes to stdout)."""
    print(f"[{row.runtime} {row.precision}] {text}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = config.load(args.config)
    rows = installed_rows(args.runtimes)
    files = plan.scan(cfg).files
    images = decoded(cfg, files, args.images, args.max_side)
    decode = None if args.skip_whole else decode_cost(cfg, files)
    for row in rows:
        row.speed, row.pooled = measure(cfg, row.runtime, row.precision, images)
        note(row, f"compute only: {row.speed:.2f} img/s")
    with tempfile.TemporaryDirectory(prefix="bench_runtimes-") as tmp, keeping_last_extract():
        for row in rows:
            cache = Path(tmp) / row.name / "cache"
            if not args.skip_whole:
                whole_command(args.config, row, cache)
                note(row, f"whole command: {row.whole_images} images in {row.whole_seconds:.1f} s")
            for seed in [] if args.skip_accuracy else args.seeds:
                accuracy(args.config, row, cache, seed, Path(tmp) / row.name / f"runs-seed{seed}", cfg.name)
                note(row, f"split seed {seed}: test accuracy head {row.head[-1]:.3f}, linear probe {row.probe[-1]:.3f}")
    lines = header(cfg, args, rows, len(images), len(files), oversized(files, args.max_side), decode)
    lines += table(rows, decode[0] if decode else None)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
