"""Training curves as files other tools read: ``history.csv`` and TensorBoard event files.

Both are written into the artifact from the recorded history, after
training, so they hold exactly what ``history.json`` holds. The event files
are classic scalar summaries (written with TensorFlow alone: the
``tensorboard`` package is only needed to view them): ``tensorboard --logdir experiments/<name>`` shows every version.
"""

from __future__ import annotations

import csv
from pathlib import Path

CURVES = ("loss", "accuracy", "val_loss", "val_cross_entropy", "val_accuracy")


def curves(history: dict) -> dict[str, dict[str, list[float]]]:
    """``{phase: {curve: per-epoch values}}``: the per-epoch lists of each phase."""
    return {
        phase: {k: v for k, v in values.items() if k in CURVES and isinstance(v, list)}
        for phase, values in history.items()
    }


def write_history_csv(path: Path, history: dict) -> None:
    """One row per phase and epoch: ``phase, epoch, loss, accuracy, val_loss, val_cross_entropy, val_accuracy``."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["phase", "epoch", *CURVES])
        for phase, values in curves(history).items():
            epochs = max((len(v) for v in values.values()), default=0)
            for epoch in range(epochs):
                writer.writerow([phase, epoch + 1, *(_cell(values.get(key), epoch) for key in CURVES)])


def _cell(values, epoch: int) -> str:
    return "" if values is None or epoch >= len(values) else f"{values[epoch]:.6g}"


def write_tensorboard(log_dir: Path, history: dict) -> None:
    """Event files under ``log_dir/<phase>/``, one scalar series per curve (step = epoch).

    Written as classic ``simple_value`` scalar summaries through TensorFlow's
    raw-protobuf writer, which every TensorBoard reads as scalars and which
    needs no ``tensorboard`` package to write.
    """
    from tensorflow.core.framework import summary_pb2

    from vggtl import tfquiet

    tf = tfquiet.load()
    for phase, values in curves(history).items():
        writer = tf.summary.create_file_writer(str(log_dir / phase))
        with writer.as_default():
            for epoch in range(max((len(v) for v in values.values()), default=0)):
                summary = summary_pb2.Summary(value=[
                    summary_pb2.Summary.Value(tag=key, simple_value=float(series[epoch]))
                    for key, series in values.items() if epoch < len(series)
                ])
                tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step=epoch + 1)
        writer.close()
