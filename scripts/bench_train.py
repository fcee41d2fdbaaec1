"""Benchmark ``vggtl train`` on a warm store as a user waits for it: what the
whole command costs beyond importing TensorFlow and training the head.

One run, printed as a table (nothing asserted):

1. ``REPEATS`` rounds, in alternation, of three separate processes: ``python -c
   "import tensorflow, keras"`` alone, the same import made as vggtl's
   commands make it (no garbage collection during it or at exit), and the
   whole ``python -m vggtl.train CONFIG`` (a fresh output folder each time).
   The head's own training time is read from each artifact (``history.json``:
   phase 1's ``seconds``, and phase 2's when fine-tuning ran). The
   **ceremony** is whole command minus (import alone + head): everything else
   a user waits for; printed also beside vggtl's own import (what is left when
   the import and exit gains are not counted). Medians printed, with a 95%
   interval of the ceremony's median (order statistics) from 6 rounds on.
2. Every round's ``metrics.json`` compared (the same config, data and seed
   must give identical bytes).
3. Where the rest goes: one more ``train`` in this process, with the stages
   of ``vggtl.training.run`` timed by wrappers (the store opened, phase 1,
   the probe's and the splits' predictions, the unknown detector, the
   evaluation, the end-to-end model built and saved, the end-to-end check,
   the report, the publication).

Usage (from the repository root; the config's store must exist, extract first):

    python scripts/bench_train.py configs/clipart8.yaml [--repeats 3]

Compare times as ratios within one run: CPUs differ between machines.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMPORT_ONLY = "import tensorflow, keras"
# The same import as a vggtl command makes it (vggtl.tfquiet.load: garbage
# collection paused, then frozen) and its exit (errors.cli_entry: no final
# collections): the yardstick with the framework's fixed cost only.
IMPORT_AS_VGGTL = "from vggtl import errors, tfquiet; errors.cli_entry(lambda argv: tfquiet.load() and 0)()"


def timed(argv) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, argv[:5]))} failed:\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
    return time.perf_counter() - started


def head_seconds(artifact: Path) -> float:
    """The head's own training time: phase 1, plus phase 2 when it ran."""
    history = json.loads((artifact / "history.json").read_text())
    return sum(history[phase].get("seconds", 0.0) for phase in ("phase1", "phase2") if phase in history)


def median_interval(values, confidence: float = 0.95) -> tuple[float, float] | None:
    """A distribution-free interval for the median of what ``values`` sample:
    order statistics ``(x_(k), x_(n-k+1))`` with ``P(Binomial(n, 1/2) < k)``
    at most ``(1 - confidence) / 2`` on each side. None below 6 values (no
    such interval at 95%). The rounds of this machine spread by seconds: an
    interval says whether a median is under a target or only happened to be."""
    ordered, n = sorted(values), len(values)
    tail = (1 - confidence) / 2
    below = [sum(math.comb(n, i) for i in range(k)) / 2**n for k in range(n + 1)]
    k = max((k for k in range(1, n // 2 + 1) if below[k] <= tail), default=None)
    return None if k is None else (ordered[k - 1], ordered[n - k])


def rounds(config: str, repeats: int, out: Path) -> list[dict]:
    results = []
    for i in range(repeats):
        imported = timed([sys.executable, "-c", IMPORT_ONLY])
        as_vggtl = timed([sys.executable, "-c", IMPORT_AS_VGGTL])
        folder = out / f"round{i}"
        whole = timed([sys.executable, "-m", "vggtl.train", config, "--set", f"output.dir={folder}"])
        artifact = next(folder.glob("*/v1"))
        head = head_seconds(artifact)
        results.append({"import": imported, "import_as_vggtl": as_vggtl, "whole": whole, "head": head,
                        "ceremony": whole - imported - head, "ceremony_vs_vggtl_import": whole - as_vggtl - head,
                        "metrics": (artifact / "metrics.json").read_bytes()})
        print(f"round {i + 1}: whole {whole:.2f} s, import alone {imported:.2f} s (as vggtl imports: {as_vggtl:.2f} s), "
              f"head {head:.2f} s -> ceremony {whole - imported - head:.2f} s ({whole - as_vggtl - head:.2f} s beside "
              "vggtl's import)", flush=True)
    return results


# The end-to-end check and model.keras's writing run in threads beside the
# metrics and the report: timed, but not added to the others (the wait for them is).
OVERLAPPED = ("end-to-end check (in a thread, beside the metrics and the report)",
              "model.keras written (in a thread, beside the metrics and the report)")
# (module, function) of vggtl.training.run's stages, in the order they run.
STAGES = [
    ("vggtl.training.run", "open_current_store", "store opened and verified"),
    ("vggtl.training.fit", "train_head", "phase 1 (the head; its import of TensorFlow included)"),
    ("vggtl.training.run", "predict_splits", "every split predicted from the store"),
    ("vggtl.backbones.build", "build_base", "the base built, weights loaded"),
    ("vggtl.training.run", "_finetune", "phase 2 (fine-tuning)"),
    ("vggtl.training.run", "_fit_unknown", "unknown detector fitted"),
    ("vggtl.backbones.build", "end_to_end_model", "end-to-end model built"),
    ("vggtl.training.run", "evaluate", "metrics, baselines, leakage audit"),
    ("vggtl.training.run", "SplitImages.predict", OVERLAPPED[0]),
    ("keras", "Model.save", OVERLAPPED[1]),
    ("vggtl.training.artifact", "write_metadata", "metadata"),
    ("vggtl.training.report", "write", "report.md, its figures, report.html"),
    ("concurrent.futures", "Future.result", "waiting for the end-to-end check and model.keras"),
    ("vggtl.training.artifact", "publish", "checksums, published"),
]


def breakdown(config: str, out: Path) -> None:
    """One ``train`` in this process, its stages timed (wrappers around the functions above)."""
    import importlib

    spent: dict[str, float] = {}

    def wrap(module, name, label):
        original = getattr(module, name)

        @functools.wraps(original)
        def timed_call(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - started

        setattr(module, name, timed_call)

    for module_name, name, label in STAGES:
        owner = importlib.import_module(module_name)
        *path, name = name.split(".")
        for part in path:  # a method: keras.Model.save
            owner = getattr(owner, part)
        wrap(owner, name, label)
    # vggtl.training.run calls these through their modules (fit.train_head, build.build_base...)
    # or as its own globals, so replacing the module attribute times every call.
    from vggtl import train

    started = time.perf_counter()
    with contextlib.redirect_stdout(open("/dev/null", "w")):  # noqa: SIM115 - closed at exit
        code = train.main([config, "--set", f"output.dir={out / 'breakdown'}"])
    total = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"train exited {code}")
    print(f"\nwhere one train's {total:.2f} s go (in this process, TensorFlow imported by phase 1):")
    print("| stage | seconds |\n|---|---|")
    for _, _, label in STAGES:
        if label in spent:
            print(f"| {label} | {spent[label]:.2f} |")
    alone = sum(seconds for label, seconds in spent.items() if label not in OVERLAPPED)
    print(f"| everything else (config, plan, prints) | {total - alone:.2f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        out = Path(tmp)
        results = rounds(args.config, args.repeats, out)
        keys = ("whole", "import", "import_as_vggtl", "head", "ceremony", "ceremony_vs_vggtl_import")
        median = {key: statistics.median(r[key] for r in results) for key in keys}
        print(f"\nmedians of {args.repeats}: whole command {median['whole']:.2f} s, import tensorflow+keras alone "
              f"{median['import']:.2f} s, head {median['head']:.2f} s; ceremony {median['ceremony']:.2f} s "
              f"(target <= 1.5 s)")
        if interval := median_interval([r["ceremony"] for r in results]):
            print(f"95% interval of the ceremony's median (order statistics over {args.repeats} rounds): "
                  f"{interval[0]:.2f}-{interval[1]:.2f} s")
        else:
            print("(6 rounds or more give a 95% interval of the median)")
        print(f"beside the same import made as vggtl makes it ({median['import_as_vggtl']:.2f} s: no collections during "
              f"it or at exit): ceremony {median['ceremony_vs_vggtl_import']:.2f} s")
        same = len({r["metrics"] for r in results}) == 1
        print(f"metrics.json identical in every round: {'yes' if same else 'NO'}")
        breakdown(args.config, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
