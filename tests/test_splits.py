"""The split rule (vggtl.splits): per-class quotas over an order fixed by content and seed."""

from __future__ import annotations

import hashlib

import pytest

from vggtl import splits
from vggtl.errors import DataError

NAMES = ["a", "b", "c"]


def members(sizes, tag="x"):
    return [splits.Member(hashlib.sha256(f"{tag}{label}-{i}".encode()).hexdigest(), label) for label, n in enumerate(sizes) for i in range(n)]


def counts(assigned, items):
    table = {}
    for split, m in zip(assigned, items):
        table.setdefault(m.label, {"train": 0, "val": 0, "test": 0})[split] += 1
    return table


@pytest.mark.parametrize(
    "n, val, test, want",
    [(3, 0.15, 0.15, (1, 1)), (14, 0.15, 0.15, (2, 2)), (19, 0.15, 0.15, (3, 3)), (15, 0.2, 0.2, (3, 3)),
     (4, 0.4, 0.4, (1, 2)), (10, 0.0, 0.25, (0, 3)), (2, 0.0, 0.3, (0, 1)), (100, 0.125, 0.125, (13, 13))],
)
def test_quotas(n, val, test, want):
    n_val, n_test = splits.class_quotas(n, val, test)
    assert (n_val, n_test) == want
    assert n - n_val - n_test >= 1


def test_every_held_out_split_gets_every_class_and_fractions_are_kept():
    items = members([14, 17, 35, 3])
    for seed in range(20):
        table = counts(splits.assign(items, seed, 0.15, 0.15, NAMES + ["d"]), items)
        for label, n in enumerate([14, 17, 35, 3]):
            assert table[label]["val"] == table[label]["test"] == max(1, round(0.15 * n + 1e-9))


def test_deterministic_and_order_independent():
    items = members([10, 12, 9])
    a = dict(zip([m.key for m in items], splits.assign(items, 7, 0.2, 0.2, NAMES)))
    shuffled = list(reversed(items))
    b = dict(zip([m.key for m in shuffled], splits.assign(shuffled, 7, 0.2, 0.2, NAMES)))
    assert a == b


def test_identical_files_share_a_split():
    items = members([10, 10])
    items.append(splits.Member(items[0].key, 0))  # a duplicate of the first file
    assigned = splits.assign(items, 3, 0.2, 0.2, NAMES)
    assert assigned[0] == assigned[-1]


def test_excluded_files_do_not_count():
    items = members([5, 10])
    exclude = {items[0].key, items[1].key}
    assigned = splits.assign(items, 1, 0.2, 0.2, NAMES, exclude=exclude)
    assert assigned[0] == assigned[1] == "train"  # skipped anyway
    usable = [s for s, m in zip(assigned, items) if m.label == 0 and m.key not in exclude]
    assert sorted(usable) == ["test", "train", "val"]
    with pytest.raises(DataError, match=r"class 'a' has 2 usable image\(s\); it needs at least 3"):
        splits.assign(items, 1, 0.2, 0.2, NAMES, exclude=exclude | {items[2].key})


def test_fixed_files_keep_their_split():
    items = members([6, 6])
    items[0] = splits.Member(items[0].key, 0, fixed="test")
    assigned = splits.assign(items, 1, 0.3, 0.0, NAMES)
    assert assigned[0] == "test"
    assert "test" not in assigned[1:]


def test_adding_an_image_moves_at_most_one_image_per_boundary():
    for seed in range(30):
        base = members([20, 20])
        before = dict(zip([m.key for m in base], splits.assign(base, seed, 0.15, 0.15, NAMES)))
        grown = base + [splits.Member(hashlib.sha256(f"new{seed}".encode()).hexdigest(), 0)]
        after = dict(zip([m.key for m in grown], splits.assign(grown, seed, 0.15, 0.15, NAMES)))
        moved = [k for k in before if before[k] != after[k]]
        assert len(moved) <= 2
        assert all(m.label == 0 for m in base if m.key in moved)


def test_digest():
    assert splits.digest([("a", "train"), ("b", "val")]) == splits.digest([("b", "val"), ("a", "train")])
    assert splits.digest([("a", "train")]) != splits.digest([("a", "val")])
