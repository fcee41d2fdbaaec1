"""End to end on tiny generated images: extract -> train -> artifact -> predict."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import make_dataset, needs_extra, run_pipeline, write_config
from vggtl import predict, train
from vggtl.training import artifact, fit, heads
from vggtl.training import run as training_run


def train_in(run_dir, config_name: str, *sets: str) -> int:
    """``vggtl train run_dir/config_name --set S ...`` run inside ``run_dir`` (its
    working directory and vggtl cache); returns the exit status."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(run_dir)
        mp.setenv("VGGTL_CACHE_DIR", str(run_dir / "vggtl-cache"))
        return train.main([str(run_dir / config_name), *(arg for s in sets for arg in ("--set", s))])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One extract + two identical train runs, shared by the tests of this module."""
    tmp = tmp_path_factory.mktemp("e2e")
    root = make_dataset(tmp / "data", per_class=16)
    cfg = write_config(tmp / "tiny.yaml", root, tmp)
    # the first train has no CONFIG: it uses the last extract's config
    return run_pipeline(tmp, cfg, [[], [str(cfg)]])


def test_versions_and_latest(run_dir):
    name_dir = run_dir / "experiments" / "tiny"
    assert sorted(p.name for p in name_dir.iterdir() if not p.name.startswith(".")) == ["latest", "v1", "v2"]
    assert (name_dir / "latest").resolve() == (name_dir / "v2").resolve()
    assert not list(name_dir.glob(".staging-*"))


def test_same_config_same_metrics(run_dir):
    v1 = (run_dir / "experiments/tiny/v1/metrics.json").read_text()
    v2 = (run_dir / "experiments/tiny/v2/metrics.json").read_text()
    assert v1 == v2
    metrics = json.loads(v1)
    assert set(metrics["test"]["per_class"]) == {"blue", "green", "red"}
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    assert "linear_probe" in metrics["baseline"]


def test_artifact_contents_and_checksums(run_dir):
    art = artifact.load(run_dir / "experiments/tiny")
    assert art.path.name == "v2"
    assert art.labels == ["blue", "green", "red"]
    for name in ("model.keras", "config.yaml", "metrics.json", "history.json", "manifest.json", "report.md", "report.html"):
        assert (art.path / name).is_file(), name
    info = art.info
    assert info["weights"]["random"] is True
    assert info["seed"] == 7
    assert len(info["data_digest"]) == 64 and len(info["config_digest"]) == 64
    assert {"python", "tensorflow", "keras", "vggtl"} <= set(info["versions"])
    # the end-to-end model reproduces the head's predictions on cached features
    assert info["end_to_end_check_max_abs_diff"] < training_run.E2E_TOLERANCE
    history = json.loads((art.path / "history.json").read_text())
    assert len(history["phase1"]["loss"]) == json.loads((art.path / "metrics.json").read_text())["epochs_trained"]


def test_report_flags_random_weights(run_dir):
    report = (run_dir / "experiments/tiny/latest/report.md").read_text()
    assert "**WARNING: the backbone has RANDOM weights" in report
    assert "weights: random initialisation (backbone.weights: null), 0.125 of its channels (`backbone.width`)" in report
    assert "| true \\ predicted | blue | green | red | images |" in report and "![learning curves](learning_curves.svg)" in report
    assert "linear probe" in report


def test_report_has_the_honest_numbers(run_dir):
    art = run_dir / "experiments/tiny/latest"
    report = (art / "report.md").read_text()
    metrics = json.loads((art / "metrics.json").read_text())
    low, high = metrics["test"]["accuracy_ci95"]
    assert low <= metrics["test"]["accuracy"] <= high and f"({100 * low:.1f}%-{100 * high:.1f}%)" in report
    assert "train accuracy" in report and "95% Wilson" in report
    assert "## Calibration" in report and (art / "reliability.svg").is_file() and 0 <= metrics["test"]["calibration"]["ece"] <= 1
    # the confusion table's counts are the metrics' matrix, each row's share of its true class beside them
    matrix = metrics["test"]["confusion_matrix"]
    for name, row in zip(("blue", "green", "red"), matrix):
        cells = [f"{c} ({100 * c / sum(row):.0f}%)" if c else "0" for c in row]
        cells[("blue", "green", "red").index(name)] = f"**{cells[('blue', 'green', 'red').index(name)]}**"
        assert f"| **{name}** | {' | '.join(cells)} | {sum(row)} |" in report
    rows = (art / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("path,split,true,predicted,confidence,p_blue")
    assert len(rows) - 1 == sum(metrics["split"]["sizes"].values())
    assert len(metrics["split"]["digest"]) == 64 and metrics["split"]["digest"][:12] in report


def test_learns_the_colors(run_dir):
    """Random conv features of solid noisy colors are still separable: the head must learn."""
    metrics = json.loads((run_dir / "experiments/tiny/latest/metrics.json").read_text())
    assert metrics["val"]["accuracy"] >= 0.75


def test_predict_from_artifact_alone(run_dir, capsys):
    image = next((run_dir / "data" / "red").glob("*.png"))
    code = predict.main([str(run_dir / "experiments/tiny/latest"), str(image), "--json", "--top-k", "2"])
    assert code == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["path"] == str(image)
    assert len(line["top"]) == 2
    assert line["top"][0]["probability"] >= line["top"][1]["probability"]


def test_predict_matches_metrics(run_dir):
    """Predictions through the artifact agree with the evaluation on cached features."""
    art = artifact.load(run_dir / "experiments/tiny/latest")
    manifest = json.loads((art.path / "manifest.json").read_text())
    test_files = [f for f in manifest["files"] if f["split"] == "test"]
    paths = [run_dir / "data" / f["path"] for f in test_files]
    results = list(predict.predict_paths(art, paths, top_k=1))
    accuracy = np.mean([r["top"][0][0] == f["label"] for r, f in zip(results, test_files)])
    assert accuracy == pytest.approx(art.metrics["test"]["accuracy"], abs=1e-6)


def test_predict_bad_inputs(run_dir, capsys, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    good = next((run_dir / "data" / "blue").glob("*.png"))
    code = predict.main([str(run_dir / "experiments/tiny/latest"), str(good), str(bad)])
    captured = capsys.readouterr()
    assert code == 1
    assert "bad.png: skipped: not an image" in captured.err
    assert str(good) in captured.out
    assert predict.main([str(run_dir / "experiments/tiny/latest"), str(tmp_path / "missing.jpg")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # one missing among others: the others are predicted, the missing one reported, exit 1
    assert predict.main([str(run_dir / "experiments/tiny/latest"), str(tmp_path / "missing.jpg"), str(good)]) == 1
    captured = capsys.readouterr()
    assert "missing.jpg: skipped: cannot read file: No such file or directory" in captured.err and str(good) in captured.out
    assert predict.main([str(run_dir / "experiments/tiny/latest"), str(good), "--top-k", "0"]) == 2


def test_train_refuses_stale_store(run_dir, capsys):
    make_dataset(run_dir / "data", per_class=1, classes=("red",), start=100)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(run_dir)
            assert train.main([str(run_dir / "tiny.yaml")]) == 2
        assert "out of date" in capsys.readouterr().err
    finally:
        (run_dir / "data" / "red" / "red_100.png").unlink()


def test_train_without_store(tmp_path, capsys, monkeypatch):
    root = make_dataset(tmp_path / "data", per_class=16)
    cfg = write_config(tmp_path / "c.yaml", root, tmp_path)
    monkeypatch.chdir(tmp_path)
    assert train.main([str(cfg)]) == 2
    assert "run: python -m vggtl.extract" in capsys.readouterr().err


def test_train_while_an_extract_writes_the_store_says_so(tmp_path, capsys, monkeypatch):
    import os

    from vggtl import config
    from vggtl.features import store
    from vggtl.plan import resolve

    cfg = write_config(tmp_path / "c.yaml", make_dataset(tmp_path / "data", per_class=4), tmp_path)
    monkeypatch.chdir(tmp_path)
    with store.locked(resolve(config.load(cfg)).store.path):  # as a running extract holds it
        assert train.main([str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"is being written by another extract (pid {os.getpid()}); wait for it to finish, then run train again" in err
    assert "run: python -m vggtl.extract" not in err


def test_class_weights():
    labels = np.array([0, 0, 0, 1])
    assert fit.class_weights(labels, 2, "none") is None
    weights = fit.class_weights(labels, 2, "balanced")
    assert weights[1] == pytest.approx(3 * weights[0])
    assert weights[0] * 3 + weights[1] * 1 == pytest.approx(4)


@pytest.fixture
def feature_reads(monkeypatch) -> list[int]:
    """Rows per FeatureStore.features / view_features call (small read batches set)."""
    from vggtl.features.store import FeatureStore

    reads: list[int] = []
    for name in ("features", "view_features"):
        real = getattr(FeatureStore, name)

        def spy(self, rows, *args, _real=real, **kwargs):
            reads.append(len(rows))
            return _real(self, rows, *args, **kwargs)

        monkeypatch.setattr(FeatureStore, name, spy)
    monkeypatch.setattr(fit, "POOL_BATCH", 5)
    monkeypatch.setattr(fit, "PREDICT_BATCH", 7)
    return reads


def train_phases_on(run_dir, name: str, *overrides: str):
    """``(trained, in-RAM splits)`` of training on ``run_dir``'s store."""
    from vggtl import config
    from vggtl.backbones import resolve
    from vggtl import plan
    from vggtl.features.store import FeatureStore

    cfg = config.load(run_dir / name, list(overrides))
    with FeatureStore(plan.resolve(cfg).store.path) as fs:
        trained = training_run.train_phases(cfg, fs, resolve.random_weights(cfg.seed), log=lambda _: None)
        return cfg, trained


def test_phase1_reads_the_store_in_batches_and_matches_the_in_ram_head(run_dir, feature_reads):
    """Phase 1 holds pooled vectors only (streaming): no read of more than a
    batch of maps, and the same head as pooling every map in RAM."""
    from vggtl import plan
    from vggtl.features.store import FeatureStore

    cfg, trained = train_phases_on(run_dir, "tiny.yaml")
    reads = list(feature_reads)
    with FeatureStore(plan.resolve(cfg).store.path) as fs:
        in_ram = training_run.load_splits(fs)
    pool = functools.partial(heads.pool_numpy, pooling=cfg.head.pooling)
    head, _ = fit.fit_head_on_pooled(cfg, pool(in_ram["train"].x)[None], in_ram["train"].x.shape[1:], in_ram["train"].y,
                                     pool(in_ram["val"].x), in_ram["val"].y, 3)
    assert reads and max(reads) <= 7 and len(in_ram["train"].y) > 7
    for split in ("train", "val", "test"):
        np.testing.assert_allclose(trained.probs[split], head.predict(in_ram[split].x, verbose=0), atol=1e-6)


# --------------------------------------------------------------------------- fine-tuning + views


@pytest.fixture(scope="module")
def ft_dir(tmp_path_factory):
    """Phase 1 on clean + 2 views, then phase 2 (block5) on stored block4_pool activations."""
    tmp = tmp_path_factory.mktemp("ft")
    root = make_dataset(tmp / "data", per_class=16)
    cfg = write_config(
        tmp / "ft.yaml", root, tmp,
        finetune={"blocks": 1, "epochs": 3, "optimizer": "adam", "learning_rate": 1e-4},
        augment={"views": 2},
    )
    return run_pipeline(tmp, cfg, [[str(cfg)], [str(cfg)]])


def test_finetune_records_both_phases(ft_dir):
    art = artifact.load(ft_dir / "experiments/tiny/latest")
    assert set(art.metrics["phase2"]) >= {"blocks", "epochs_trained", "best_epoch", "kept"}
    assert art.metrics["phase2"]["blocks"] == 1
    history = json.loads((art.path / "history.json").read_text())
    assert set(history) == {"phase1", "phase2"}
    assert len(history["phase2"]["loss"]) == art.metrics["phase2"]["epochs_trained"]
    report = (art.path / "report.md").read_text()
    assert "after phase 1 (head only)" in report and "fine-tuning: top 1 block(s)" in report
    assert art.info["end_to_end_check_max_abs_diff"] < training_run.E2E_TOLERANCE
    # Unknown detection on the fine-tuned features (publishing checked model.keras's score against them).
    assert art.metrics["unknown"]["available"] and art.unknown["threshold"] == pytest.approx(art.metrics["unknown"]["threshold"], abs=1e-6)


def test_phase2_above_the_in_ram_limit_reads_batches_and_matches(ft_dir, feature_reads, monkeypatch):
    """Phase 2 past FINETUNE_IN_RAM_MAX: boundary maps (and views) read from the
    store a batch at a time, with the same batches, hence the same model."""
    _, in_ram = train_phases_on(ft_dir, "ft.yaml", "finetune.batch_size=6")
    feature_reads.clear()
    monkeypatch.setattr(training_run, "FINETUNE_IN_RAM_MAX", 0)
    _, streamed = train_phases_on(ft_dir, "ft.yaml", "finetune.batch_size=6")
    assert feature_reads and max(feature_reads) <= 7
    assert streamed.phase2 == in_ram.phase2 and streamed.phase2.epochs_trained == 3
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(streamed.history["phase2"][key], in_ram.history["phase2"][key], rtol=1e-5)
    for split in ("train", "val", "test"):
        np.testing.assert_allclose(streamed.probs[split], in_ram.probs[split], atol=1e-5)


def test_finetune_is_reproducible(ft_dir):
    v1 = (ft_dir / "experiments/tiny/v1/metrics.json").read_text()
    v2 = (ft_dir / "experiments/tiny/v2/metrics.json").read_text()
    assert v1 == v2


def assert_predicts_what_was_evaluated(run_dir):
    """predict on the artifact alone reproduces the test accuracy train reported."""
    art = artifact.load(run_dir / "experiments/tiny/latest")
    manifest = json.loads((art.path / "manifest.json").read_text())
    test_files = [f for f in manifest["files"] if f["split"] == "test"]
    results = list(predict.predict_paths(art, [run_dir / "data" / f["path"] for f in test_files], top_k=1))
    accuracy = np.mean([r["top"][0][0] == f["label"] for r, f in zip(results, test_files)])
    assert accuracy == pytest.approx(art.metrics["test"]["accuracy"], abs=1e-6)


def test_finetuned_artifact_predicts_what_was_evaluated(ft_dir):
    assert_predicts_what_was_evaluated(ft_dir)


def test_phase2_that_does_not_help_is_reverted(ft_dir, capsys):
    """A destructive phase 2 (huge learning rate, no early stopping to restore
    a better epoch) must leave the phase-1 model in the artifact."""
    out = ft_dir / "reverted"
    assert train_in(
        ft_dir, "ft.yaml", f"output.dir={out}", "finetune.optimizer=sgd", "finetune.learning_rate=1.0",
        "finetune.early_stopping_patience=0",
    ) == 0
    assert "phase-1 weights kept" in capsys.readouterr().out
    art = artifact.load(out / "tiny/latest")
    assert art.metrics["phase2"]["kept"] is False
    assert art.metrics["test"]["accuracy"] == art.metrics["phase1"]["test"]["accuracy"]
    before, after = json.loads((art.path / "history.json").read_text())["phase2"]["val_cross_entropy_before_after"]
    assert not after < before
    assert "phase-1 weights kept" in (art.path / "report.md").read_text()
    assert art.info["end_to_end_check_max_abs_diff"] < training_run.E2E_TOLERANCE


def test_train_refuses_store_with_other_views(ft_dir, capsys):
    assert train_in(ft_dir, "ft.yaml", "augment.rotation=30") == 2
    assert "other augmented views" in capsys.readouterr().err


@pytest.fixture(scope="module")
def resnet_dir(tmp_path_factory):
    """Another backbone end to end: ResNet50 (BatchNorm, residual adds), fine-tuned.
    (Not MobileNetV2: with random weights its activations vanish to ~1e-12.)"""
    tmp = tmp_path_factory.mktemp("resnet")
    root = make_dataset(tmp / "data", per_class=16)
    cfg = write_config(
        tmp / "rn.yaml", root, tmp,
        backbone={"name": "resnet50", "weights": None},
        data={"root": str(root), "image_size": 32, "split": {"val": 0.25, "test": 0.25}},
        # one short phase 1, so phase 2 has something to improve and is kept; SGD
        # (phase 2's default): one optimizer slot per conv5 weight (15 M), Adam's
        # two cost ~2 s of each run here (Adam fine-tunes the VGG tests' block5)
        train={"epochs": 1, "batch_size": 8, "early_stopping_patience": 5, "learning_rate": 0.001},
        finetune={"blocks": 1, "epochs": 2, "optimizer": "sgd", "learning_rate": 1e-3},
    )
    return run_pipeline(tmp, cfg, [[str(cfg)], [str(cfg)]])


def test_other_backbone_end_to_end(resnet_dir):
    art = artifact.load(resnet_dir / "experiments/tiny/latest")
    assert art.info["backbone"] == {
        "name": "resnet50",
        "layer": "conv5_block3_out",
        "preprocessing": "keras.applications.resnet.preprocess_input (caffe: RGB->BGR, minus ImageNet means)",
    }
    assert art.info["store"]["settings"]["backbone"] == "resnet50"
    assert art.info["store"]["settings"]["layers"] == ["conv5_block3_out", "conv4_block6_out", "channel_stats"]
    assert art.config["backbone"]["layer"] == "conv5_block3_out" and art.config["data"]["image_size"] == 32
    assert art.metrics["test"]["accuracy"] >= 0.8  # random ResNet features still separate the colors
    # phase 2 kept its fine-tuned conv5 stage (BatchNorm included), so the
    # end-to-end check below compares the fine-tuned artifact with what was evaluated
    assert art.metrics["phase2"]["kept"] is True
    assert art.info["end_to_end_check_max_abs_diff"] < training_run.E2E_TOLERANCE
    # only the conv5 stage trained, and its BatchNorm statistics did not move
    from vggtl.backbones import build
    from vggtl.backbones.resolve import random_weights
    from vggtl.backbones.spec import default_spec

    fresh = build.build_base(default_spec("resnet50", 32), random_weights(art.config["seed"]), art.config["seed"])
    tuned = art.load_model().get_layer("resnet50_conv5_block3_out").get_layer("resnet50")
    assert not np.array_equal(tuned.get_layer("conv5_block3_3_conv").get_weights()[0], fresh.get_layer("conv5_block3_3_conv").get_weights()[0])
    np.testing.assert_array_equal(tuned.get_layer("conv4_block6_3_conv").get_weights()[0], fresh.get_layer("conv4_block6_3_conv").get_weights()[0])
    for a, b in zip(tuned.get_layer("conv5_block3_3_bn").get_weights(), fresh.get_layer("conv5_block3_3_bn").get_weights()):
        np.testing.assert_array_equal(a, b)
    assert "- backbone: resnet50 up to `conv5_block3_out`" in (art.path / "report.md").read_text()
    # reproducible with BatchNorm in the network too
    v1, v2 = (resnet_dir / f"experiments/tiny/v{n}/metrics.json" for n in (1, 2))
    assert v1.read_text() == v2.read_text()
    assert_predicts_what_was_evaluated(resnet_dir)


def test_stores_of_different_backbones_do_not_mix(resnet_dir, capsys):
    assert train_in(resnet_dir, "rn.yaml", "backbone.name=mobilenet_v2", "finetune.blocks=0") == 2
    err = capsys.readouterr().err
    assert "no feature store for this config" in err and "python -m vggtl.extract" in err


def test_view_sampler_draws_one_version_per_image_per_epoch():
    bank = np.stack([np.full((6, 1), v, np.float16) for v in range(3)])  # version v has value v
    bank[:, :, 0] += np.arange(6)[None, :] * 10  # and image i adds 10*i
    labels = np.array([0, 1, 0, 1, 0, 1])
    a = fit.view_sampler(bank, labels, 2, batch_size=4, seed=5)
    b = fit.view_sampler(bank, labels, 2, batch_size=4, seed=5)
    assert len(a) == 2

    def epoch(sampler):
        xs = np.concatenate([sampler[i][0] for i in range(len(sampler))])[:, 0]
        sampler.on_epoch_end()
        return xs

    first, again = epoch(a), epoch(b)
    np.testing.assert_array_equal(first, again)  # reproducible
    images = (first // 10).astype(int)
    assert sorted(images) == list(range(6))  # every image exactly once per epoch
    assert set((first % 10).astype(int)) <= {0, 1, 2}
    seen = {int(v) for _ in range(6) for v in epoch(a) % 10}
    assert seen == {0, 1, 2}  # over epochs, clean and both views are used
    unbalanced = np.array([0, 0, 0, 0, 1, 1])  # balanced weights: 6 / (2 * 4) and 6 / (2 * 2)
    x, y, w = fit.view_sampler(bank, unbalanced, 2, 3, 5, class_weight="balanced")[0]
    assert w.tolist() == [0.75 if yy.argmax() == 0 else 1.5 for yy in y]


def test_history_csv_and_tensorboard_events(run_dir):
    """history.csv mirrors history.json; TensorBoard's own reader finds every curve."""
    import csv

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    art = run_dir / "experiments/tiny/latest"
    history = json.loads((art / "history.json").read_text())["phase1"]
    rows = list(csv.DictReader((art / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == list(range(1, len(history["loss"]) + 1))
    assert float(rows[-1]["val_accuracy"]) == pytest.approx(history["val_accuracy"][-1], rel=1e-5)
    events = EventAccumulator(str(art / "tensorboard" / "phase1"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"loss", "accuracy", "val_loss", "val_cross_entropy", "val_accuracy"}
    loss = events.Scalars("loss")
    assert [e.step for e in loss] == list(range(1, len(history["loss"]) + 1))
    assert loss[0].value == pytest.approx(history["loss"][0], rel=1e-6)


@pytest.fixture(scope="module")
def mirror_dir(tmp_path_factory):
    """backbone.mirror_average with a square-root pooling: extract, train, predict."""
    tmp = tmp_path_factory.mktemp("mirror")
    root = make_dataset(tmp / "data", per_class=12)
    cfg = write_config(tmp / "tiny.yaml", root, tmp, backbone={"weights": None, "mirror_average": True}, head={"units": [16], "pooling": "avgmax_sqrt"})
    return run_pipeline(tmp, cfg, [[str(cfg)]])


def test_mirror_average_end_to_end(mirror_dir):
    import keras

    art = artifact.load(mirror_dir / "experiments/tiny/latest")
    assert art.info["store"]["settings"]["mirror_average"] is True
    assert "maps averaged with the mirror image's (`backbone.mirror_average`)" in (art.path / "report.md").read_text()
    assert art.metrics["test"]["accuracy"] >= 0.8
    assert art.info["end_to_end_check_max_abs_diff"] < training_run.E2E_TOLERANCE
    assert_predicts_what_was_evaluated(mirror_dir)
    # the model is symmetric: an image and its mirror image get the same probabilities
    model = keras.saving.load_model(art.path / "model.keras")  # loads without vggtl: Keras layers and ops
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    plain, mirrored = model.predict(x, verbose=0), model.predict(x[:, :, ::-1], verbose=0)
    np.testing.assert_allclose(plain["probabilities"], mirrored["probabilities"], atol=1e-6)
    np.testing.assert_allclose(plain["unknown_score"], mirrored["unknown_score"], rtol=1e-4, atol=1e-3)


def test_mirror_average_needs_its_own_store(mirror_dir, capsys):
    assert train_in(mirror_dir, "tiny.yaml", "backbone.mirror_average=false") == 2
    assert "no feature store for this config" in capsys.readouterr().err


def test_gradcam_explains_a_mirror_average_artifact(mirror_dir):
    """Both branches are explained, the mirror branch's map flipped back: the
    model is symmetric, so the heatmap of the mirror image is the mirror of
    the heatmap (summing the branches without the flip back would make it
    equal to the heatmap instead)."""
    import keras

    from vggtl.inspect import gradcam

    latest = mirror_dir / "experiments/tiny/latest"
    image = next((mirror_dir / "data" / "red").iterdir())
    assert predict.main([str(latest), str(image), "--gradcam", str(mirror_dir / "gc")]) == 0
    assert (mirror_dir / "gc" / f"{image.stem}_gradcam.jpg").is_file()
    with pytest.raises(ValueError, match=r"explain its probabilities alone: artifact.load\(path\).load_model\(\)"):
        gradcam.gradcam(keras.saving.load_model(artifact.load(latest).path / "model.keras"), np.zeros((32, 32, 3), np.uint8), 0)
    model = artifact.load(latest).load_model()  # the probabilities alone, rebuilt as the chain Grad-CAM replays
    layer = gradcam.default_layer(model, "block5_conv3")
    x = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)  # an asymmetric picture
    # random backbone weights: explain a class some region raises
    heat, c = next((h, c) for c in range(3) if (h := gradcam.gradcam(model, x, c, layer)).max() > 0)
    mirror_heat = gradcam.gradcam(model, x[:, ::-1].copy(), c, layer)
    assert heat.shape == (2, 2) and heat.max() == pytest.approx(1.0)
    assert not np.allclose(heat, heat[:, ::-1], atol=1e-3)
    np.testing.assert_allclose(mirror_heat, heat[:, ::-1], atol=1e-4)


EXPORT_FORMATS = [["savedmodel", "tflite"], pytest.param(["onnx"], marks=needs_extra("onnx")),
                  pytest.param(["openvino"], marks=needs_extra("openvino"))]


def export_verified(art_dir: Path, formats: list[str], out: Path) -> int:
    """``vggtl export`` of ``formats``; it checks each one agrees with the Keras model before writing it."""
    from vggtl import export

    return export.main([str(art_dir / "experiments/tiny/latest"), "--out", str(out)] + [a for f in formats for a in ("--format", f)])


@pytest.mark.parametrize("formats", EXPORT_FORMATS)
def test_a_mirror_average_artifact_exports_to_every_format(mirror_dir, tmp_path, formats):
    """The mirror branch is built from plain layers (Permute, Dense, Average):
    every export format converts it."""
    assert export_verified(mirror_dir, formats, tmp_path / "exported") == 0


# --------------------------------------------------------------------------- joined layers


@pytest.fixture(scope="module")
def joined_dir(tmp_path_factory):
    """The head on block4_pool+block5_pool, and block5 fine-tuned on stored block4_pool maps."""
    tmp = tmp_path_factory.mktemp("joined")
    root = make_dataset(tmp / "data", per_class=12)
    cfg = write_config(
        tmp / "tiny.yaml", root, tmp,
        data={"image_size": 64}, backbone={"weights": None, "layer": "block4_pool+block5_pool"},
        head={"units": [16], "pooling": "avgmax"},
        finetune={"blocks": 1, "epochs": 2, "optimizer": "adam", "learning_rate": 1e-4},
    )
    return run_pipeline(tmp, cfg, [[str(cfg)]])


def test_joined_layer_end_to_end(joined_dir):
    """Stored maps are block4_pool max-pooled onto block5_pool's grid, next to
    block5_pool: the head reads both layers' channels (64 + 64 at backbone.width
    1/8; 1024 at full width), the artifact taps both layers,
    and predictions from the artifact alone equal the evaluation."""
    import keras

    art = artifact.load(joined_dir / "experiments/tiny/latest")
    assert art.info["store"]["settings"]["layers"] == ["block4_pool+block5_pool", "block4_pool", "channel_stats"]
    with h5py.File(art.info["store"]["path"], "r") as fh:
        assert fh["features/block4_pool+block5_pool"].shape[1:] == (2, 2, 128)
    assert art.info["backbone"]["layer"] == "block4_pool+block5_pool"
    assert art.metrics["phase2"]["blocks"] == 1
    assert "up to `block4_pool+block5_pool`" in (art.path / "report.md").read_text()
    assert art.info["end_to_end_check_max_abs_diff"] < training_run.E2E_TOLERANCE
    assert_predicts_what_was_evaluated(joined_dir)
    model = keras.saving.load_model(art.path / "model.keras")  # plain Keras, no vggtl code
    names = {layer.name for layer in model.get_layer("vgg16_block4_pool_and_block5_pool").get_layer("vgg16").layers}
    assert {"block4_pool_onto_block5_pool", "block4_pool_and_block5_pool"} <= names


def test_joined_layer_maps_are_the_parts_concatenated(joined_dir):
    """The joined tensor is exactly [2x2 max-pool of block4_pool, block5_pool]."""
    from vggtl import config
    from vggtl.backbones import build, resolve

    cfg = config.load(joined_dir / "tiny.yaml")
    weights = resolve.resolve_weights(cfg.spec.arch, None, cfg.seed)
    model = build.feature_model(cfg.spec, weights, ["block4_pool+block5_pool", "block4_pool", "block5_pool"], cfg.seed)
    x = np.random.default_rng(1).integers(0, 256, (3, 64, 64, 3)).astype(np.uint8)
    joined, b4, b5 = (np.asarray(m) for m in model.predict_on_batch(x))
    pooled = b4.reshape(3, 2, 2, 2, 2, b4.shape[-1]).max(axis=(2, 4))
    np.testing.assert_array_equal(joined, np.concatenate([pooled, b5], axis=-1))


def test_joined_layer_needs_its_own_store(joined_dir, capsys):
    assert train_in(joined_dir, "tiny.yaml", "backbone.layer=block5_pool") == 2
    assert "no feature store for this config" in capsys.readouterr().err


@pytest.mark.parametrize("formats", EXPORT_FORMATS)
def test_a_joined_layer_artifact_exports_to_every_format(joined_dir, tmp_path, formats):
    assert export_verified(joined_dir, formats, tmp_path / "exported") == 0


def test_a_joined_layer_artifact_is_explained(joined_dir):
    latest = joined_dir / "experiments/tiny/latest"
    image = next((joined_dir / "data" / "red").iterdir())
    assert predict.main([str(latest), str(image), "--gradcam", str(joined_dir / "gc")]) == 0
    assert [p.name for p in (joined_dir / "gc").iterdir()] and (joined_dir / "gc" / f"{image.stem}_gradcam.jpg").is_file()


def test_a_model_keras_that_cannot_be_written_publishes_nothing(run_dir, tmp_path, monkeypatch, capsys):
    """model.keras is written in a thread beside the metrics and the report:
    its error still stops the publication, and its half-written file goes."""
    import keras

    def full_disk(self, path, *args, **kwargs):
        Path(path).write_bytes(b"half")  # what a full disk leaves behind
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(keras.Model, "save", full_disk)
    assert train_in(run_dir, "tiny.yaml", f"output.dir={tmp_path / 'out'}") != 0
    assert "No space left on device" in capsys.readouterr().err
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]  # no version, no staging folder


def test_one_train_averages_the_stored_maps_once(run_dir, tmp_path, monkeypatch):
    """The linear probe, the leakage audit and the unknown detector all read the
    store's averaged maps (``FeatureStore.averaged``): one pass for the run."""
    from vggtl.features.store import FeatureStore

    computed, real = [], FeatureStore.averaged

    def spy(self, rows, layer=None, batch_size=256):
        computed.append((layer or self.layers[0]) not in self._averaged)
        return real(self, rows, layer, batch_size)

    monkeypatch.setattr(FeatureStore, "averaged", spy)
    assert train_in(run_dir, "tiny.yaml", f"output.dir={tmp_path / 'out'}") == 0
    assert computed.count(True) == 1 and len(computed) >= 9  # 3 readers x 3 splits
