"""Artifact versioning, atomic publication and checksum verification (no TF needed)."""

from __future__ import annotations

import json
import os
import re

import pytest

from vggtl.training import artifact
from vggtl.errors import ArtifactError


def fake_artifact(output, name="run"):
    staging = artifact.begin(output, name)
    for file in artifact.REQUIRED:
        (staging / file).write_text("x")
    artifact.write_json(staging / "info.json", {"format": artifact.FORMAT, "format_version": artifact.FORMAT_VERSION})
    artifact.write_json(staging / "labels.json", ["a", "b"])
    artifact.write_json(staging / "metrics.json", {"val": {}, "test": {}})
    (staging / "config.yaml").write_text("name: run\n")
    return artifact.publish(staging)


def test_versions_increment_and_latest_moves(tmp_path):
    v1 = fake_artifact(tmp_path)
    v2 = fake_artifact(tmp_path)
    assert (v1.name, v2.name) == ("v1", "v2")
    assert os.readlink(tmp_path / "run" / "latest") == "v2"
    assert artifact.resolve(tmp_path / "run") == v2.resolve()
    assert artifact.load(tmp_path / "run" / "v1").labels == ["a", "b"]


def test_tampered_file_is_refused(tmp_path):
    v1 = fake_artifact(tmp_path)
    (v1 / "labels.json").write_text('["b", "a"]')
    with pytest.raises(ArtifactError, match="checksum mismatch for labels.json"):
        artifact.load(v1)


def test_missing_file_and_missing_checksums(tmp_path):
    v1 = fake_artifact(tmp_path)
    (v1 / "metrics.json").unlink()
    with pytest.raises(ArtifactError, match="metrics.json listed in checksums.sha256 is missing"):
        artifact.load(v1)
    (v1 / artifact.CHECKSUMS).unlink()
    with pytest.raises(ArtifactError, match="not a complete vggtl artifact"):
        artifact.load(v1)
    with pytest.raises(ArtifactError, match="does not exist"):
        artifact.load(tmp_path / "nope")


def test_unknown_format_is_refused(tmp_path):
    staging = artifact.begin(tmp_path, "run")
    for file in artifact.REQUIRED:
        (staging / file).write_text("{}")
    artifact.write_json(staging / "info.json", {"format": "something-else", "format_version": 9})
    path = artifact.publish(staging)
    with pytest.raises(ArtifactError, match="not readable by this vggtl"):
        artifact.load(path)


def test_killed_run_leaves_no_version(tmp_path):
    staging = artifact.begin(tmp_path, "run")
    (staging / "model.keras").write_text("half")
    # a dead writer's staging dir: not a version, cleaned by the next run
    dead = staging.with_name(".staging-999999-deadbeef")
    staging.rename(dead)
    assert artifact.existing_versions(tmp_path / "run") == []
    artifact.clean_stale_staging(tmp_path, "run")
    assert not dead.exists()
    live = artifact.begin(tmp_path, "run")
    artifact.clean_stale_staging(tmp_path, "run")
    assert live.exists()  # our own pid is alive: kept


def test_checksums_cover_every_file(tmp_path):
    v1 = fake_artifact(tmp_path)
    listed = {line.split("  ", 1)[1] for line in (v1 / artifact.CHECKSUMS).read_text().splitlines()}
    on_disk = {p.name for p in v1.iterdir()} - {artifact.CHECKSUMS}
    assert listed == on_disk
    assert json.loads((v1 / "labels.json").read_text()) == ["a", "b"]


def commands(art, tmp_path):
    """``(name, main, argv)`` of every command that opens an artifact."""
    from vggtl import export, predict, summary

    image = tmp_path / "x.png"
    if not image.exists():
        from PIL import Image

        Image.new("RGB", (8, 8), "red").save(image)
    return [("predict", predict.main, [str(art), str(image)]),
            ("export", export.main, [str(art), "--format", "savedmodel", "--out", str(tmp_path / "exports")]),
            ("summary", summary.main, [str(art)])]


def refused_by_all(art, tmp_path, capsys, *named):
    for command, main, argv in commands(art, tmp_path):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, f"{command}: {err}"
        assert any(n in err for n in named), f"{command} does not name {named}: {err}"
    assert not (tmp_path / "exports").exists()


@pytest.mark.parametrize("how", ["removed", "truncated", "one byte changed"])
def test_every_file_damaged_is_refused_by_every_command_naming_it(tmp_path, capsys, how):
    v1 = fake_artifact(tmp_path)
    for path in sorted(v1.iterdir()):
        original = path.read_bytes()
        if how == "removed":
            path.unlink()
        elif how == "truncated":
            path.write_bytes(original[: len(original) // 2])
        else:
            path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        # a damaged checksums.sha256 shows as the file whose line it broke
        refused_by_all(v1, tmp_path, capsys, path.name, "checksum")
        path.write_bytes(original)
    artifact.load(v1)  # restored: loads again


@pytest.mark.parametrize("edit, message", [
    (lambda lines: [line for line in lines if not line.endswith("  model.keras")], "required file model.keras is not listed"),
    (lambda lines: [], "required file"),
    (lambda lines: lines + ["0" * 64 + "  extra.bin"], "extra.bin listed in checksums.sha256 is missing"),
    (lambda lines: lines + ["0" * 64 + "  ../../../../etc/hostname"], "outside the artifact"),
    (lambda lines: lines + ["0" * 64 + "  /etc/hostname"], "outside the artifact"),
    (lambda lines: lines + ["not a checksum line"], "is not '<sha256>  <file>'"),
    (lambda lines: lines + lines[:1], "twice"),
])
def test_every_manifest_edit_is_refused(tmp_path, capsys, edit, message):
    v1 = fake_artifact(tmp_path)
    sums = v1 / artifact.CHECKSUMS
    sums.write_text("\n".join(edit(sums.read_text().splitlines())) + "\n")
    with pytest.raises(ArtifactError, match=re.escape(message)):
        artifact.load(v1)
    refused_by_all(v1, tmp_path, capsys, message)


def test_a_file_added_after_publishing_or_a_link_is_refused(tmp_path):
    v1 = fake_artifact(tmp_path)
    (v1 / "notes.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="notes.txt is not listed in checksums.sha256"):
        artifact.load(v1)
    (v1 / "notes.txt").unlink()
    (v1 / ".report.md.tmp").write_text("left by an interrupted rewrite")  # hidden: not part of the artifact
    artifact.load(v1)
    other = fake_artifact(tmp_path, "other")
    (v1 / "labels.json").unlink()
    (v1 / "labels.json").symlink_to(other / "labels.json")
    with pytest.raises(ArtifactError, match="labels.json is a link or points outside the artifact"):
        artifact.load(v1)


def test_metadata_that_parses_wrong_is_refused_naming_the_file(tmp_path):
    """Even with checksums recomputed (a deliberate edit), malformed metadata is an ArtifactError."""
    v1 = fake_artifact(tmp_path)

    def rewrite(name: str, text: str) -> None:
        (v1 / name).write_text(text)
        lines = [f"{artifact.sha256_file(v1 / name)}  {name}" if line.endswith(f"  {name}") else line
                 for line in (v1 / artifact.CHECKSUMS).read_text().splitlines()]
        (v1 / artifact.CHECKSUMS).write_text("\n".join(lines) + "\n")

    for name, text, message in [("labels.json", "{not json", "labels.json cannot be read"),
                                ("labels.json", '["a", "a"]', "labels.json must be a list of distinct class names"),
                                ("metrics.json", "[]", "metrics.json holds a list, not a dict")]:
        rewrite(name, text)
        with pytest.raises(ArtifactError, match=re.escape(message)):
            artifact.load(v1)
        rewrite(name, '["a", "b"]' if name == "labels.json" else "{}")


def test_labels_that_disagree_with_the_manifest_are_refused(tmp_path):
    """labels.json edited (checksums recomputed): the manifest's classes give it away."""
    staging = artifact.begin(tmp_path, "run")
    for file in artifact.REQUIRED:
        (staging / file).write_text("x")
    artifact.write_json(staging / "info.json", {"format": artifact.FORMAT, "format_version": artifact.FORMAT_VERSION})
    artifact.write_json(staging / "labels.json", ["a", "c"])
    artifact.write_json(staging / "metrics.json", {})
    artifact.write_json(staging / "manifest.json", {"files": [{"path": "b/1.png", "label": "b", "split": "test"}]})
    (staging / "config.yaml").write_text("name: run\n")
    with pytest.raises(ArtifactError, match="manifest.json names class 'b', which labels.json does not have"):
        artifact.load(artifact.publish(staging))


def test_labels_that_disagree_with_the_models_outputs_are_refused(tmp_path, capsys):
    """labels.json edited and resealed in an artifact without a manifest: model.keras's
    three outputs give it away when predict loads it (exit 2, no traceback)."""
    from tiny_artifact import make_artifact
    from vggtl import predict
    from conftest import make_image

    art = make_artifact(tmp_path)
    artifact.write_json(art / "labels.json", ["blue", "green"])
    artifact.reseal(art, ["labels.json"])
    image = make_image(tmp_path / "x.png", (200, 40, 40))
    assert predict.main([str(art), str(image)]) == 2
    err = capsys.readouterr().err
    assert "model.keras gives 3 outputs but labels.json names 2 classes; the artifact was altered" in err
    assert "Traceback" not in err
