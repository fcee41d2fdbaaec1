"""The backbone table must describe the real Keras applications exactly."""

from __future__ import annotations

import importlib
import inspect

import numpy as np
import pytest

from vggtl.backbones import registry

NAMES = list(registry.ARCHITECTURES)


@pytest.fixture(scope="module")
def built():
    """Every backbone at its smallest size and at an odd size, random weights."""
    import keras

    models = {}
    for name in NAMES:
        arch = registry.get(name)
        for size in (arch.min_size, 97):
            application = getattr(keras.applications, arch.application)
            models[name, size] = application(include_top=False, weights=None, input_shape=(size, size, 3))
    return models


@pytest.mark.parametrize("name", NAMES)
def test_feature_shapes_match_the_real_networks(built, name):
    arch = registry.get(name)
    for size in (arch.min_size, 97):
        model = built[name, size]
        for layer in arch.layers:
            want = tuple(model.get_layer(layer).output.shape[1:])
            assert arch.feature_shape(layer, size) == want, (name, layer, size)


@pytest.mark.parametrize("name", registry.NARROWABLE)
def test_a_narrowed_vgg_is_the_real_network_with_fewer_channels(built, name):
    """backbone.width: the same layers (names, kinds, kernels, grids) as Keras'
    network, every width times the channels, and the narrowed table's shapes."""
    from vggtl.backbones import build

    full, arch = registry.get(name), registry.get(name).narrowed(0.125)
    for size in (full.min_size, 97):
        real, narrow = built[name, size], build.narrow_vgg(arch, size)
        assert [(type(a), a.name) for a in real.layers[1:]] == [(type(b), b.name) for b in narrow.layers[1:]]
        for a, b in zip(real.layers[1:], narrow.layers[1:]):
            assert a.output.shape[1:3] == b.output.shape[1:3] and a.output.shape[-1] == 8 * b.output.shape[-1], a.name
            if hasattr(a, "kernel_size"):
                assert (a.kernel_size, a.padding, a.activation) == (b.kernel_size, b.padding, b.activation)
        for layer in arch.layers:
            assert arch.feature_shape(layer, size) == tuple(narrow.get_layer(layer).output.shape[1:]), (name, layer)
    assert arch.narrowed(1.0) == arch and full.narrowed(1.0) is full and arch.style_layers == full.style_layers
    with pytest.raises(ValueError, match="resnet50 cannot be narrowed"):
        registry.get("resnet50").narrowed(0.5)


def test_feature_shapes_at_the_default_sizes():
    # the classic bottlenecks
    assert registry.get("vgg16").feature_shape("block5_pool", 224) == (7, 7, 512)
    assert registry.get("vgg19").feature_shape("block5_pool", 224) == (7, 7, 512)
    assert registry.get("resnet50").feature_shape("conv5_block3_out", 224) == (7, 7, 2048)
    assert registry.get("inception_v3").feature_shape("mixed10", 299) == (8, 8, 2048)
    assert registry.get("mobilenet_v2").feature_shape("out_relu", 224) == (7, 7, 1280)


@pytest.mark.parametrize("name", NAMES)
def test_table_is_consistent(built, name):
    arch = registry.get(name)
    model = built[name, arch.min_size]
    order = [layer.name for layer in model.layers]
    assert arch.default_layer == order[-1]  # the top of the conv base
    assert arch.default_layer in arch.layers and arch.gradcam_layer in order
    positions = [order.index(b) for b in arch.finetune_boundaries]
    assert positions == sorted(positions, reverse=True)  # blocks: 1, 2, ... go deeper
    assert set(arch.finetune_boundaries) <= set(arch.layers)  # stored, so their shapes are needed


@pytest.mark.parametrize("name", NAMES)
def test_every_finetune_boundary_cuts_the_network(built, name):
    """Above each boundary, the layers form a model on the stored activations
    that reproduces the base's output: no path bypasses the boundary."""
    from vggtl.backbones import build

    arch = registry.get(name)
    base = built[name, arch.min_size]
    x = np.random.default_rng(0).uniform(-1, 1, (2, arch.min_size, arch.min_size, 3)).astype("float32")
    import keras

    for boundary in arch.finetune_boundaries:
        both = keras.Model(base.input, [base.get_layer(boundary).output, base.output])
        stored, want = both(x, training=False)
        got = build.top_model(base, boundary, arch.default_layer)(stored, training=False)
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"{name} above {boundary}")


@pytest.mark.parametrize("name", NAMES)
def test_weight_files_are_keras_own(name):
    """File names, URLs and md5s as in keras/src/applications (so downloads
    land where Keras itself would put and look for them)."""
    arch = registry.get(name)
    source = inspect.getsource(importlib.import_module(f"keras.src.applications.{arch.module}"))
    assert arch.notop_url.startswith(registry.KERAS_WEIGHTS_URL + arch.module + "/")
    assert arch.notop_file.endswith(("_notop.h5", "_no_top.h5"))
    if name == "mobilenet_v2":
        assert "_no_top.h5" in source and f"{registry.KERAS_WEIGHTS_URL}mobilenet_v2/" in source
        assert arch.notop_md5 is None  # Keras pins none for MobileNetV2
    else:
        assert arch.notop_file in source or arch.notop_file.replace(name, "{weights_name}") in source.replace('f"', "")
        assert arch.notop_md5 in source


def test_unknown_name_lists_the_choices():
    with pytest.raises(KeyError, match="unknown backbone 'resnet18'; allowed: vgg16, vgg19, resnet50, inception_v3, mobilenet_v2"):
        registry.get("resnet18")


def test_vgg16_preprocessing_description_is_unchanged():
    # Part of every vgg16 store's settings: changing it would orphan existing caches.
    assert registry.get("vgg16").preprocessing_description == (
        "keras.applications.vgg16.preprocess_input (caffe: RGB->BGR, minus ImageNet means)"
    )


@pytest.mark.parametrize("name", NAMES)
def test_joined_layer_shapes_match_the_tapped_networks(built, name):
    """A joined layer (the first fine-tuning boundary + the top) has the top's
    grid and both parts' channels, through the real pooling arithmetic of
    each network (floor halving for VGG, ceil for ResNet and MobileNetV2)."""
    from vggtl.backbones import build

    arch = registry.get(name)
    joined = f"{arch.finetune_boundaries[0]}{registry.JOIN}{arch.default_layer}"
    for size in (arch.min_size, 97):
        tensor = build.tap(built[name, size], joined)
        assert arch.feature_shape(joined, size) == tuple(tensor.shape[1:]), (name, size)


def test_layer_parts_and_pool_onto():
    assert registry.layer_parts("block5_pool") == ("block5_pool",)
    assert registry.layer_parts("block4_pool+block5_pool") == ("block4_pool", "block5_pool")
    assert registry.keras_name("block4_pool+block5_pool") == "block4_pool_and_block5_pool"
    assert registry.get("vgg16").feature_shape("block3_pool+block4_pool+block5_pool", 224) == (7, 7, 1280)
    assert registry.pool_onto(14, 7) == (2, "valid")
    assert registry.pool_onto(15, 7) == (2, "valid")  # VGG: 15 -> 7 drops the last row, as block5_pool does
    assert registry.pool_onto(7, 4) == (2, "same")  # ResNet: 7 -> 4
    assert registry.pool_onto(7, 7) == (1, "valid")
    assert registry.pool_onto(12, 5) is None and registry.pool_onto(3, 7) is None and registry.pool_onto(4, 0) is None
