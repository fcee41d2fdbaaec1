"""Benchmark ``vggtl predict`` as a user waits for it: whole commands, one run, a table.

For each runtime (``VGGTL_PREDICT_RUNTIME``: tensorflow = model.keras, and
onnxruntime / openvino where installed) it times, as separate processes in
alternation (REPEATS rounds, medians printed): ``vggtl predict ARTIFACT`` on
one image and on 8 images, and beside them ``python -c "import tensorflow,
keras"`` alone. Each converted runtime is converted once before timing
(that one-off cost is printed too). It also checks that every runtime gives
the same labels as model.keras on the artifact's test images (first 64) and
the largest probability difference.

Usage (from the repository root; an artifact trained on real weights, e.g.
configs/clipart8-fast.yaml):

    python scripts/bench_predict.py ARTIFACT [--repeats 5]
    python scripts/bench_predict.py ARTIFACT --folder DIR [--int8 INT8_ARTIFACT] [--ray]

``--folder``: instead, the throughput of ``predict ARTIFACT DIR --out
FILE.csv`` (whole command, one run each) for every installed runtime, for
``INT8_ARTIFACT`` (trained on ``extract.runtime`` int8 features: its
carried int8 base) and with ``--ray`` the fastest of them again with
``--engine ray --workers 2``; images per second and the ratio to
TensorFlow fp32, and whether every output file has the same labels.

Compare times as ratios within one run: CPUs differ between machines.
Everything is printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNTIMES = ("tensorflow", "onnxruntime", "openvino")


def installed(runtime: str) -> bool:
    import importlib.util

    modules = {"tensorflow": ["tensorflow"], "onnxruntime": ["onnxruntime", "tf2onnx"], "openvino": ["openvino"]}[runtime]
    return all(importlib.util.find_spec(m) is not None for m in modules)


def timed(argv, env) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(argv[:4])}... failed: {done.stderr[-800:]}")
    return time.perf_counter() - started, done.stdout


def test_images(art_dir: Path, limit: int = 64) -> list[str]:
    manifest = json.loads((art_dir / "manifest.json").read_text())
    root = Path(manifest["data_root"])
    return [str(root / f["path"]) for f in manifest["files"] if f["split"] == "test"][:limit]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--folder", type=Path, help="time predict DIR --out FILE.csv instead")
    parser.add_argument("--int8", type=Path, help="with --folder: also this artifact trained on int8 features")
    parser.add_argument("--ray", action="store_true", help="with --folder: also the fastest case on 2 Ray actors")
    args = parser.parse_args(argv)
    art_dir = Path(args.artifact).resolve()
    if args.folder is not None:
        return folder_throughput(art_dir, args.folder.resolve(), args.int8, args.ray)
    images = test_images(art_dir)
    runtimes = [r for r in RUNTIMES if installed(r)]
    predict = [sys.executable, "-m", "vggtl.predict", str(art_dir), "--json", "--top-k", "1"]
    labels, probs = {}, {}
    for runtime in runtimes:  # converts once (timed), and checks the labels on the test images
        env = {**os.environ, "VGGTL_PREDICT_RUNTIME": runtime}
        seconds, out = timed(predict + images, env)
        rows = [json.loads(line) for line in out.splitlines() if line.startswith("{") and "top" in line]
        labels[runtime] = [r["top"][0]["label"] for r in rows]
        probs[runtime] = [r["top"][0]["probability"] for r in rows]
        print(f"{runtime}: first run on {len(images)} test images (includes a one-off conversion): {seconds:.1f} s")
    for runtime in runtimes[1:]:
        same = sum(a == b for a, b in zip(labels[runtime], labels["tensorflow"]))
        gap = max(abs(a - b) for a, b in zip(probs[runtime], probs["tensorflow"]))
        print(f"{runtime} vs model.keras on {len(images)} test images: same top-1 on {same}, max |dp| of top-1 {gap:.2g}")
    cases = {"import tensorflow, keras": ([sys.executable, "-c", "import tensorflow, keras"], "tensorflow")}
    for runtime in runtimes:
        cases[f"predict 1 image ({runtime})"] = (predict + images[:1], runtime)
        cases[f"predict 8 images ({runtime})"] = (predict + images[:8], runtime)
    times = {name: [] for name in cases}
    for _ in range(args.repeats):  # alternate, so a busy moment hits every case alike
        for name, (command, runtime) in cases.items():
            times[name].append(timed(command, {**os.environ, "VGGTL_PREDICT_RUNTIME": runtime})[0])
    base = statistics.median(times["import tensorflow, keras"])
    print(f"\n| whole command ({args.repeats} rounds) | median s | vs importing TensorFlow + Keras |\n|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} | {statistics.median(values) / base:.2f}x |")
    return 0


def folder_throughput(art_dir: Path, folder: Path, int8: Path | None, ray: bool) -> int:
    """Whole ``predict DIR --out`` commands, one run each, after a warm-up run that converts."""
    import csv
    import tempfile

    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    count = len(images)
    cases = {f"{runtime} (fp32 artifact)": (art_dir, runtime, []) for runtime in RUNTIMES if installed(runtime)}
    if int8 is not None:  # its carried base's runtime runs it (and its converted head) whatever else is installed
        cases["int8 artifact (its carried int8 base)"] = (Path(int8).resolve(), "openvino", [])
    rows, labels = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        def run(name, artifact, runtime, extra):
            out = Path(tmp) / f"{len(labels)}.csv"
            env = {**os.environ, "VGGTL_PREDICT_RUNTIME": runtime}
            command = [sys.executable, "-m", "vggtl.predict", str(artifact), str(folder), "--out", str(out), *extra]
            timed([sys.executable, "-m", "vggtl.predict", str(artifact), str(images[0])], env)  # converts once, if it must
            seconds, _ = timed(command, env)
            with open(out, newline="") as fh:
                labels[name] = [r["predicted"] for r in csv.DictReader(fh)]
            rows.append((name, seconds))
            print(f"{name}: {seconds:.1f} s", flush=True)

        for name, case in cases.items():
            run(name, *case)
        if ray:
            fastest = min(rows, key=lambda r: r[1])[0]
            run(f"{fastest}, --engine ray --workers 2", *cases[fastest][:2], ["--engine", "ray", "--workers", "2"])
    base = next(seconds for name, seconds in rows if name.startswith("tensorflow"))
    print(f"\n| predict {count} images --out FILE.csv (whole command) | s | images/s | vs TensorFlow fp32 |\n|---|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.1f} | {count / seconds:.1f} | {base / seconds:.2f}x |")
    reference = labels[rows[0][0]]
    for name, got in labels.items():
        print(f"{name}: same label as {rows[0][0]} on {sum(a == b for a, b in zip(got, reference))} of {len(reference)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
