"""The devices fine-tuning (phase 2) runs on: one, or several replicas with
``tf.distribute.MirroredStrategy`` (``finetune.devices``).

``auto`` uses every visible GPU when there are two or more, and otherwise
the default device, without a strategy. ``N`` asks for N replicas: N GPUs
when that many are visible, else the CPU split into N logical devices --
which makes nothing faster, but runs the multi-device code path on any
laptop (tests do). Splitting the CPU has to happen before TensorFlow
initialises its devices, so :func:`prepare` runs before any model is built.

Phase 1 (the head, seconds on pooled vectors) always runs on one device.
"""

from __future__ import annotations

from vggtl import tfquiet
from vggtl.errors import ConfigError

AUTO = "auto"


def prepare(devices) -> None:
    """Split the CPU into ``devices`` logical devices when that many replicas are
    asked for and fewer GPUs are visible. Call before TensorFlow builds anything.

    Raises:
        ConfigError: TensorFlow is already initialised in this process with
            fewer devices (a notebook that ran TensorFlow first).
    """
    if devices == AUTO or devices == 1:
        return
    tf = tfquiet.load()
    if len(tf.config.list_physical_devices("GPU")) >= devices:
        return
    (cpu,) = tf.config.list_physical_devices("CPU")[:1]
    wanted = [tf.config.LogicalDeviceConfiguration()] * devices
    if tf.config.get_logical_device_configuration(cpu) == wanted:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, wanted)
    except RuntimeError:  # the runtime is initialised: devices are fixed for this process
        have = len(tf.config.list_logical_devices("CPU"))
        if have < devices:
            raise ConfigError(
                f"key 'finetune.devices': {devices} devices asked, but TensorFlow is already initialised in this "
                f"process with {have} CPU device(s) and no {devices} GPUs; run training in a fresh process "
                "(e.g. `vggtl train`), or use finetune.devices: auto"
            ) from None


def strategy(devices):
    """``(strategy or None, description)`` for ``devices`` (after :func:`prepare`).

    The description (e.g. ``'2 logical CPU devices'``) goes into metrics.json.
    """
    tf = tfquiet.load()
    gpus = tf.config.list_logical_devices("GPU")
    if devices == AUTO:
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy([g.name for g in gpus]), f"{len(gpus)} GPUs"
        return None, "1 device"
    if devices == 1:
        return None, "1 device"
    if len(gpus) >= devices:
        return tf.distribute.MirroredStrategy([g.name for g in gpus[:devices]]), f"{devices} GPUs"
    cpus = tf.config.list_logical_devices("CPU")
    if len(cpus) < devices:
        raise ConfigError(f"key 'finetune.devices': {devices} devices asked, {len(cpus)} CPU device(s) visible; "
                          "call vggtl.training.devices.prepare first")
    return tf.distribute.MirroredStrategy([c.name for c in cpus[:devices]]), f"{devices} logical CPU devices"
