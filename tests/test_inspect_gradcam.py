"""Grad-CAM with a known answer, on nested models, and the overlay/file writers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vggtl.data import DecodeSettings
from vggtl.inspect import gradcam

SIZE = 32
RED, GRAY = (230, 20, 20), (128, 128, 128)


def red_square_image(quadrant: str = "top_left") -> np.ndarray:
    """Gray image with a red square inside one quadrant only."""
    image = np.full((SIZE, SIZE, 3), GRAY, np.uint8)
    half, q = SIZE // 2, SIZE // 4
    top = 0 if quadrant.startswith("top") else half
    left = 0 if quadrant.endswith("left") else half
    image[top + q // 2 : top + q // 2 + q, left + q // 2 : left + q // 2 + q] = RED
    return image


def red_detector(kind: str):
    """Class 0 = "there is red", class 1 = its opposite; deterministic weights.

    ``red`` (1x1 conv) fires on R - G - B > 0, ``last_conv`` copies it at 1/4
    resolution, the head averages it: the logit of class 0 is exactly the mean
    red activation. ``kind``: ``'flat'``; ``'nested'``, the layers in
    sub-models like a vggtl artifact (image -> features[rescale -> base[convs]]
    -> head); ``'dag'``, nested with a ResNet-like base (``last_conv`` plus a
    skip connection from ``pool``, so the base is not a chain).
    """
    import keras

    rescale = keras.layers.Rescaling(1 / 255, name="rescale")
    red = keras.layers.Conv2D(1, 1, activation="relu", name="red")
    pool = keras.layers.MaxPooling2D(4, name="pool")
    last = keras.layers.Conv2D(1, 1, activation="relu", name="last_conv")
    gap = keras.layers.GlobalAveragePooling2D(name="gap")
    dense = keras.layers.Dense(2, activation="softmax", name="predictions")
    image = keras.Input((SIZE, SIZE, 3), name="image")
    if kind != "flat":
        base_in = keras.Input((SIZE, SIZE, 3), name="base_in")
        pooled = pool(red(base_in))
        out = last(pooled) if kind == "nested" else keras.layers.Add(name="skip")([last(pooled), pooled])
        base = keras.Model(base_in, out, name="base")
        feat_in = keras.Input((SIZE, SIZE, 3), name="feat_in")
        features = keras.Model(feat_in, base(rescale(feat_in)), name="features")
        head_in = keras.Input(base.output.shape[1:], name="head_in")
        head = keras.Model(head_in, dense(gap(head_in)), name="head")
        model = keras.Model(image, head(features(image)), name=kind)
    else:
        model = keras.Model(image, dense(gap(last(pool(red(rescale(image)))))), name="flat")
    red.set_weights([np.array([1.0, -1.0, -1.0]).reshape(1, 1, 3, 1), np.zeros(1)])
    last.set_weights([np.ones((1, 1, 1, 1)), np.zeros(1)])
    dense.set_weights([np.array([[10.0, -10.0]]), np.zeros(2)])
    return model


def quadrant_mass(heat: np.ndarray) -> dict:
    h, w = heat.shape
    total = heat.sum()
    return {
        "top_left": heat[: h // 2, : w // 2].sum() / total,
        "top_right": heat[: h // 2, w // 2 :].sum() / total,
        "bottom_left": heat[h // 2 :, : w // 2].sum() / total,
        "bottom_right": heat[h // 2 :, w // 2 :].sum() / total,
    }


@pytest.fixture(scope="module")
def models():
    return {kind: red_detector(kind) for kind in ("flat", "nested", "dag")}


@pytest.mark.parametrize("kind", ["flat", "nested", "dag"])
@pytest.mark.parametrize("quadrant", ["top_left", "bottom_right"])
def test_heatmap_points_at_the_red_square(models, kind, quadrant):
    model = models[kind]
    heat = gradcam.gradcam(model, red_square_image(quadrant), 0, conv_layer="last_conv")
    assert heat.shape == (SIZE // 4, SIZE // 4) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() == pytest.approx(1.0)
    mass = quadrant_mass(heat)
    assert mass[quadrant] > 0.99, mass
    peak = np.unravel_index(np.argmax(heat), heat.shape)
    assert (peak[0] < SIZE // 8) == quadrant.startswith("top") and (peak[1] < SIZE // 8) == quadrant.endswith("left")


@pytest.mark.parametrize("kind", ["flat", "nested", "dag"])
def test_a_batch_gives_each_image_its_own_map(models, kind):
    """One pass for several images, each with its own class: the maps of one call per image."""
    model = models[kind]
    images = [red_square_image(q) for q in ("top_left", "bottom_right", "top_left")]
    classes = [0, 0, 1]
    together = gradcam.gradcams(model, images, classes, conv_layer="last_conv")
    for image, c, heat in zip(images, classes, together):
        np.testing.assert_allclose(heat, gradcam.gradcam(model, image, c, conv_layer="last_conv"), atol=1e-5)
    assert quadrant_mass(together[1])["bottom_right"] > 0.99 and not together[2].any()
    with pytest.raises(ValueError, match="need one class index per image"):
        gradcam.gradcams(model, images, [0], conv_layer="last_conv")
    with pytest.raises(ValueError, match=r"class_index must be in \[0, 2\), got 5"):
        gradcam.gradcams(model, images, [0, 5, 1], conv_layer="last_conv")


def test_a_head_explained_at_its_input_gives_the_maps_of_the_whole_model(models):
    """What the report does with cached features: the head alone, on the stored
    maps of the layer below it, gives the whole model's Grad-CAM at that layer."""
    model = models["nested"]
    images = [red_square_image(q) for q in ("top_left", "bottom_right", "top_left")]
    classes = [0, 0, 1]
    maps = np.asarray(model.get_layer("features")(np.stack(images).astype("float32")))
    at_input = gradcam.gradcams_at_input(model.get_layer("head"), maps, classes)
    for heat, expected in zip(at_input, gradcam.gradcams(model, images, classes, conv_layer="last_conv")):
        np.testing.assert_allclose(heat, expected, atol=1e-5)
    assert quadrant_mass(at_input[1])["bottom_right"] > 0.99 and not at_input[2].any()
    with pytest.raises(ValueError, match=r"need \(n, 8, 8, 1\) maps and one class index per map, got maps of shape \(3, 8, 8, 1\) and 2"):
        gradcam.gradcams_at_input(model.get_layer("head"), maps, [0, 1])
    with pytest.raises(ValueError, match=r"class_index must be in \[0, 2\), got 2"):
        gradcam.gradcams_at_input(model.get_layer("head"), maps, [0, 1, 2])


def test_class_without_positive_evidence_gives_zeros(models):
    # class 1's logit falls as red rises: no region raises it
    heat = gradcam.gradcam(models["nested"], red_square_image(), 1, conv_layer="last_conv")
    assert not heat.any()


def test_earlier_layer_has_finer_resolution(models):
    heat = gradcam.gradcam(models["nested"], red_square_image(), 0, conv_layer="red")
    assert heat.shape == (SIZE, SIZE)
    assert quadrant_mass(heat)["top_left"] > 0.99


def test_layer_discovery(models):
    assert gradcam.conv_layer_names(models["nested"]) == ["red", "last_conv"]
    assert gradcam.last_conv_layer(models["nested"]) == "last_conv"
    assert [layer.name for layer in gradcam.leaf_layers(models["nested"])] == [
        "rescale", "red", "pool", "last_conv", "gap", "predictions",
    ]


def test_bad_arguments(models):
    model = models["nested"]
    with pytest.raises(ValueError, match="conv_layer 'block5_conv3' is not a layer of model 'nested'; its conv layers are: red, last_conv"):
        gradcam.gradcam(model, red_square_image(), 0)
    with pytest.raises(ValueError, match=r"class_index must be in \[0, 2\), got 2"):
        gradcam.gradcam(model, red_square_image(), 2, conv_layer="last_conv")
    with pytest.raises(ValueError, match="image_uint8 is 16x16 but model 'nested' takes 32x32 images"):
        gradcam.gradcam(model, np.zeros((16, 16, 3), np.uint8), 0, conv_layer="last_conv")
    with pytest.raises(ValueError, match=r"must have shape \(height, width, 3\)"):
        gradcam.gradcam(model, np.zeros((SIZE, SIZE), np.uint8), 0, conv_layer="last_conv")


def test_a_network_that_is_not_a_chain_is_explained_as_one_unit():
    import keras

    # ResNet-like at the top level: no nested models, a skip connection.
    inputs = keras.Input((SIZE, SIZE, 3))
    red = keras.layers.Conv2D(1, 1, activation="relu", name="red")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    skip = keras.layers.Add(name="add")([red(x), keras.layers.Conv2D(1, 1, name="zero")(x)])
    dense = keras.layers.Dense(2, activation="softmax")
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(skip)), name="resnetish")
    red.set_weights([np.array([1.0, -1.0, -1.0]).reshape(1, 1, 3, 1), np.zeros(1)])
    model.get_layer("zero").set_weights([np.zeros((1, 1, 3, 1)), np.zeros(1)])
    dense.set_weights([np.array([[10.0, -10.0]]), np.zeros(2)])
    assert not gradcam.is_chain(model)
    heat = gradcam.gradcam(model, red_square_image("bottom_right"), 0, conv_layer="red")
    assert quadrant_mass(heat)["bottom_right"] > 0.99


def test_a_layer_inside_a_nested_network_that_is_not_a_chain_is_explained():
    """A nested network with a merge (here a residual Add) is replayed through
    its own graph; the heatmap equals Grad-CAM computed by hand."""
    import keras
    import tensorflow as tf

    # Seeded: with some random kernels the class-1 map is negative everywhere
    # and Grad-CAM is all zeros (nothing left to compare; it failed so once).
    keras.utils.set_random_seed(0)
    base_in = keras.Input((8, 8, 3))
    inner = keras.Model(base_in, keras.layers.Conv2D(3, 3, padding="same", name="deep")(base_in), name="inner")
    x = keras.layers.Add()([inner(base_in), base_in])
    dag = keras.Model(base_in, x, name="dag_base")
    image = keras.Input((8, 8, 3))
    model = keras.Model(image, keras.layers.GlobalAveragePooling2D()(dag(image)), name="wrapped")
    picture = np.random.default_rng(0).integers(0, 256, (8, 8, 3)).astype(np.uint8)
    heat = gradcam.gradcam(model, picture, 1, conv_layer="deep")
    batch = tf.constant(picture[None].astype("float32"))
    with tf.GradientTape() as tape:
        maps = inner(batch)
        tape.watch(maps)
        score = tf.reduce_mean(maps + batch, axis=(1, 2))[:, 1]
    weights = tf.reduce_mean(tape.gradient(score, maps), axis=(1, 2))
    want = np.maximum(tf.reduce_sum(maps * weights[:, None, None, :], axis=-1)[0].numpy(), 0)
    assert want.max() > 0
    np.testing.assert_allclose(heat, want / want.max(), atol=1e-5)


def test_a_layer_applied_twice_is_refused():
    import keras

    inputs = keras.Input((8, 8, 3))
    conv2 = keras.layers.Conv2D(4, 3, name="conv2")
    shared = keras.layers.Dense(4, name="shared")
    final = keras.layers.Dense(2, name="scores")
    x = keras.layers.GlobalAveragePooling2D()(conv2(inputs))
    model = keras.Model(inputs, final(shared(shared(x))), name="shared_twice")  # one layer, two calls
    conv2.set_weights([np.full((3, 3, 3, 4), 0.01), np.zeros(4)])
    shared.set_weights([3 * np.eye(4), np.ones(4)])
    final.set_weights([np.ones((4, 2)), np.zeros(2)])
    with pytest.raises(ValueError, match="differs from the model by .*chains of layers and nested networks"):
        gradcam.gradcam(model, np.full((8, 8, 3), 10, np.uint8), 0, conv_layer="conv2")


@pytest.fixture(scope="module")
def keras_vgg16():
    """The Keras ImageNet classifier architecture (include_top), small input, random weights."""
    import keras

    keras.utils.set_random_seed(0)
    return keras.applications.VGG16(include_top=True, weights=None, input_shape=(SIZE, SIZE, 3))


def test_works_on_the_keras_vgg16_classifier(keras_vgg16):
    import keras

    image = red_square_image()
    heat = gradcam.gradcam(keras_vgg16, image, 3, preprocess=keras.applications.vgg16.preprocess_input)
    assert gradcam.last_conv_layer(keras_vgg16) == "block5_conv3"
    assert heat.shape == (2, 2) and 0.0 <= heat.min() and heat.max() <= 1.0
    finer = gradcam.gradcam(keras_vgg16, image, 3, "block4_conv3", keras.applications.vgg16.preprocess_input)
    assert finer.shape == (4, 4)


# --------------------------------------------------------------------------- overlay and files


def test_colorize_uses_jet():
    colors = gradcam.colorize(np.array([[0.0, 1.0]]), (2, 1))
    low, high = colors[0, 0], colors[0, 1]
    assert low[2] > 100 and low[0] == 0  # dark blue
    assert high[0] > 100 and high[2] == 0  # dark red


def test_overlay_blends_and_resizes():
    original = np.full((30, 50, 3), 200, np.uint8)
    heat = np.zeros((4, 4), np.float32)
    np.testing.assert_array_equal(gradcam.overlay(original, heat, alpha=0.0), original)
    pure = gradcam.overlay(original, np.ones((4, 4)), alpha=1.0)
    assert pure.shape == (30, 50, 3) and pure.dtype == np.uint8
    np.testing.assert_array_equal(pure, gradcam.colorize(np.ones((4, 4)), (50, 30)))
    boxed = gradcam.overlay(original, np.ones((2, 2)), alpha=1.0, box=(10, 0, 40, 30))
    np.testing.assert_array_equal(boxed[:, :10], original[:, :10])
    np.testing.assert_array_equal(boxed[:, 40:], original[:, 40:])
    assert (boxed[:, 10:40] != 200).any()


def test_overlay_rejects_bad_input():
    original = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got 1.5"):
        gradcam.overlay(original, np.zeros((2, 2)), alpha=1.5)
    with pytest.raises(ValueError, match="uint8 array"):
        gradcam.overlay(original.astype(float), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="non-empty 2-D array"):
        gradcam.overlay(original, np.zeros((2, 2, 1)))
    with pytest.raises(ValueError, match="is not inside the 10x10 image"):
        gradcam.overlay(original, np.zeros((2, 2)), box=(0, 0, 11, 10))


def test_write_caps_the_overlay_size_and_keeps_the_raw_heatmap(tmp_path):
    heat = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    original = np.full((500, 2000, 3), 255, np.uint8)
    jpg, npy = gradcam.write(tmp_path / "out", "photo", original, heat)
    assert jpg == tmp_path / "out" / "photo_gradcam.jpg" and npy.name == "photo_gradcam.npy"
    with Image.open(jpg) as im:
        assert im.format == "JPEG" and im.size == (1024, 256)
    np.testing.assert_array_equal(np.load(npy), heat)
    small = np.full((60, 40, 3), 255, np.uint8)
    jpg, _ = gradcam.write(tmp_path / "out", "small", small, heat, box=(0, 10, 40, 50))
    with Image.open(jpg) as im:
        assert im.size == (40, 60)  # never upscaled
        arr = np.asarray(im)
    assert arr[:8].min() > 240  # outside the box: untouched white (up to JPEG noise)


def test_unique_stem():
    used = set()
    assert gradcam.unique_stem("a/cat.jpg", used) == "cat"
    assert gradcam.unique_stem("b/cat.png", used) == "cat-2"
    assert gradcam.unique_stem("c/cat.gif", used) == "cat-3"
    assert gradcam.unique_stem("dog.jpg", used) == "dog"


def test_file_explainer_overlays_only_what_the_model_saw(models, tmp_path):
    from vggtl import data

    path = tmp_path / "wide.png"
    wide = np.full((SIZE, 2 * SIZE, 3), 255, np.uint8)
    wide[:, SIZE // 2 : SIZE // 2 + SIZE] = red_square_image()  # the central square
    Image.fromarray(wide).save(path)
    image = data.decode_image(path, SIZE, "center_crop")
    written = gradcam.FileExplainer(models["nested"], tmp_path / "out", DecodeSettings(image.shape[0], "center_crop")).explain(path, image, 0, "wide")
    assert written["layer"] == "last_conv"
    heat = np.load(written["npy"])
    assert quadrant_mass(heat)["top_left"] > 0.99
    overlay = np.asarray(Image.open(written["jpg"]))
    assert overlay.shape == (SIZE, 2 * SIZE, 3)
    # outside the central square the white original is untouched (up to JPEG noise)
    assert overlay[:, : SIZE // 2 - 2].min() > 235 and overlay[:, SIZE // 2 + SIZE + 2 :].min() > 235
    assert overlay[:, SIZE // 2 : SIZE // 2 + SIZE].min() < 200


def test_heatmap_window_cuts_the_padding_off():
    heat = np.zeros((4, 4), np.float32)
    heat[1:3] = 1.0  # the picture fills the middle rows of the model's input
    window = gradcam.heatmap_window(heat, (0, 8, 32, 16), 32)
    assert window.shape == (16, 32)
    assert window.min() > 0.5


def test_file_explainer_with_trim_pad_overlays_the_content_box_only(models, tmp_path):
    from vggtl import data

    path = tmp_path / "sprite.png"
    sprite = np.full((3 * SIZE, 3 * SIZE, 3), 255, np.uint8)
    sprite[SIZE : 2 * SIZE, SIZE : 2 * SIZE] = red_square_image()  # content in the middle, white margins
    Image.fromarray(sprite).save(path)
    image = data.decode_image(path, SIZE, "trim_pad")
    # the model sees the content alone (within the 4% margin): gray, red square top left
    assert np.mean(np.all(image == 255, axis=-1)) < 0.15
    red = np.argwhere((image[..., 0] > 200) & (image[..., 1] < 100))
    assert red.max() < SIZE // 2
    written = gradcam.FileExplainer(models["nested"], tmp_path / "out", DecodeSettings(image.shape[0], "trim_pad")).explain(path, image, 0, "sprite")
    assert quadrant_mass(np.load(written["npy"]))["top_left"] > 0.99
    overlay = np.asarray(Image.open(written["jpg"]))
    assert overlay.shape == (3 * SIZE, 3 * SIZE, 3)
    assert overlay[: SIZE - 2].min() > 235 and overlay[:, 2 * SIZE + 2 :].min() > 235  # margins untouched
    assert overlay[SIZE : 2 * SIZE, SIZE : 2 * SIZE].min() < 200


def test_the_overlay_colours_are_matplotlibs_jet_without_importing_it():
    import matplotlib

    values = np.concatenate([np.linspace(0, 1, 1001), [0.35, 0.66, 0.89, 0.125, 0.375, 0.64, 0.91, 0.11, 0.34, 0.65]])
    heat = values[None, :].astype(np.float32)
    expected = (matplotlib.colormaps["jet"](np.clip(heat, 0, 1))[..., :3] * 255.0 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(gradcam.colorize(heat, (heat.shape[1], 1)), expected)
