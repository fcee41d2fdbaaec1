"""Store integrity: a changed byte is detected before any number is computed
from it, and the next extract repairs exactly what it cannot trust."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from conftest import make_dataset, write_config
from vggtl import config, extract, plan, train
from vggtl.errors import StoreError
from vggtl.features import integrity
from vggtl.training import run as training_run

QUIET = {"progress": False, "log": lambda _: None}


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """A tiny store (fine-tuning layers: two feature datasets) and a pristine copy of it."""
    tmp = tmp_path_factory.mktemp("integrity")
    cfg_path = write_config(tmp / "c.yaml", make_dataset(tmp / "data", per_class=6), tmp,
                            finetune={"blocks": 1, "epochs": 1})
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        the_plan = plan.resolve(config.load(cfg_path))
        extract.run(the_plan, **QUIET)
    pristine = tmp / "pristine.h5"
    shutil.copy(the_plan.store.path, pristine)
    return tmp, cfg_path, the_plan, pristine


def everything(the_plan) -> dict:
    """What training reads from the store, through the checks training makes."""
    fs, _ = training_run.open_current_store(the_plan)
    with fs:
        rows = np.arange(len(fs.paths))
        return {"paths": list(fs.paths), "labels": fs.labels.tolist(), "classes": fs.class_names,
                "skipped": fs.skipped, **{layer: fs.features(rows, layer) for layer in fs.layers}}


def same(a: dict, b: dict, atol: float = 0.0) -> bool:
    if a.keys() != b.keys():
        return False
    return all(np.allclose(a[k], b[k], atol=atol, rtol=0) if isinstance(a[k], np.ndarray) else a[k] == b[k] for k in a)


def feature_byte_ranges(path) -> list[tuple[int, int]]:
    """``(offset, size)`` of every stored feature chunk in the file."""
    ranges = []
    with h5py.File(path, "r") as fh:
        for layer in fh["features"]:
            dataset = fh["features"][layer]
            for i in range(dataset.id.get_num_chunks()):
                info = dataset.id.get_chunk_info(i)
                ranges.append((info.byte_offset, info.size))
    return ranges


def flip(path, offset: int, bit: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ (1 << bit)]))


def restore(extracted) -> None:
    _, _, the_plan, pristine = extracted
    shutil.copy(pristine, the_plan.store.path)


def test_every_store_is_sealed_and_its_rows_carry_checksums(extracted):
    _, _, the_plan, _ = extracted
    with h5py.File(the_plan.store.path, "r") as fh:
        assert integrity.seal_problem(fh) is None
        assert all(fh["features"][layer].fletcher32 and fh["features"][layer].chunks[0] == 1 for layer in fh["features"])


def test_a_flipped_feature_bit_stops_train_and_extract_recomputes_that_row(extracted, monkeypatch, capsys):
    tmp, cfg_path, the_plan, _ = extracted
    restore(extracted)
    clean = everything(the_plan)
    offset, size = feature_byte_ranges(the_plan.store.path)[3]
    flip(the_plan.store.path, offset + size // 2, 5)
    monkeypatch.chdir(tmp)
    assert train.main([str(cfg_path)]) == 2
    err = capsys.readouterr().err
    assert "1 stored row(s) fail their checksum" in err and "run extract: it recomputes exactly those rows" in err
    assert "Traceback" not in err
    assert extract.main([str(cfg_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "1 stored row(s) failed their checksum" in out and "computed 1, reused" in out
    assert same(everything(the_plan), clean, atol=1e-2)  # recomputed in another batch: float noise only


def test_a_store_with_other_settings_under_the_expected_name_is_refused(extracted, tmp_path):
    tmp, cfg_path, the_plan, _ = extracted
    restore(extracted)
    other = plan.resolve(config.load(cfg_path, ["data.image_size=64"]))
    assert other.store.path != the_plan.store.path
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        extract.run(other, **QUIET)
    shutil.copy(other.store.path, the_plan.store.path)
    with pytest.raises(StoreError, match="built with other settings than this config's"):
        training_run.open_current_store(the_plan)
    restore(extracted)


def test_an_older_unsealed_store_is_resealed_by_extract_without_computing(extracted, monkeypatch, capsys):
    tmp, cfg_path, the_plan, _ = extracted
    restore(extracted)
    clean = everything(the_plan)
    with h5py.File(the_plan.store.path, "r+") as fh:
        del fh.attrs[integrity.DIGEST_ATTR]
    with pytest.raises(StoreError, match=r"no integrity checksums \(written by an older vggtl\)"):
        training_run.open_current_store(the_plan)
    monkeypatch.chdir(tmp)
    assert extract.main([str(cfg_path), "--no-progress"]) == 0
    assert "nothing computed; store re-published" in capsys.readouterr().out
    assert same(everything(the_plan), clean)


def test_fuzz_200_single_bit_flips_are_harmless_or_detected_and_repaired(extracted, monkeypatch):
    """Seeded: 100 flips inside feature rows, 100 anywhere else in the file
    (HDF5 metadata, index, attributes, heaps, padding). Each one either reads
    back exactly as the pristine store (harmless) or is refused with a
    StoreError before anything is read from it; never a changed number. Every
    10th detected flip is then repaired by extract."""
    tmp, _, the_plan, pristine = extracted
    restore(extracted)
    clean = everything(the_plan)
    size = pristine.stat().st_size
    features = feature_byte_ranges(pristine)
    in_features = {o for offset, n in features for o in range(offset, offset + n)}
    rng = np.random.default_rng(0)
    offsets = [int(rng.choice(sorted(in_features))) for _ in range(100)]
    others = [o for o in range(size) if o not in in_features]
    offsets += [int(rng.choice(others)) for _ in range(100)]
    outcome = {"harmless": 0, "detected": 0, "repaired": 0}
    monkeypatch.chdir(tmp)
    for i, offset in enumerate(offsets):
        shutil.copy(pristine, the_plan.store.path)
        flip(the_plan.store.path, offset, int(rng.integers(8)))
        try:
            read = everything(the_plan)
        except StoreError:
            outcome["detected"] += 1
            if outcome["detected"] % 10 == 1:
                extract.run(the_plan, **QUIET)
                assert same(everything(the_plan), clean, atol=1e-2), f"flip at {offset} not repaired"
                outcome["repaired"] += 1
            continue
        assert same(read, clean), f"a flipped bit at byte {offset} changed what training reads, with no error"
        outcome["harmless"] += 1
    print(f"store fuzz ({size} bytes, {len(features)} feature chunks): {outcome}")
    assert outcome["detected"] >= 100  # every flip inside a feature row is caught
    restore(extracted)
