"""Artifact versioning, atomic publication and checksum verification (no TF needed)."""

from __future__ import annotations

import json
import os

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
