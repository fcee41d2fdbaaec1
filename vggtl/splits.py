"""The split rule: which images of each class are held out for validation and test.

Per class, the distinct images (by content hash) that can be used are put in a
fixed order by ``sha256("vggtl-split:<seed>:<content hash>")`` -- a function of
the content and the seed only, never of paths or of the other files -- and the
first ``quota(n, test)`` go to test, the next ``quota(n, val)`` to val, the
rest to train, where ``quota(n, f) = max(1, round(f * n))`` for ``f > 0``
(0 for ``f = 0``) and train always keeps at least one image.

So every class gets its asked fractions to within half an image (rounding),
every held-out split with a fraction > 0 gets at least one image of every
class, and a class needs ``1 + (number of held-out fractions > 0)`` usable
images (3 with the defaults). Identical files share a split.

What can move when images are added to a class: an image keeps its place in
the order; a new image that sorts among the held-out ones pushes the last
image of each quota it passes one step down (test -> val -> train), and a
quota that grows by one takes the next image up. So only the images at the
boundaries of a class's quotas move, at most one per boundary per added
image; other classes never change.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from dataclasses import dataclass

from vggtl.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Member:
    """One file as the rule sees it.

    Attributes:
        key: the file's content hash (identical files share a place).
        label: its class index.
        fixed: ``'val'`` or ``'test'`` when a pre-split folder decides, else None.
    """

    key: str
    label: int
    fixed: str | None = None


def order_key(seed: int, key: str) -> str:
    """Where a content hash sorts within its class for ``seed``."""
    return hashlib.sha256(f"vggtl-split:{seed}:{key}".encode()).hexdigest()


def quota(n: int, fraction: float) -> int:
    """Images of a class of ``n`` held out for ``fraction``: round half up, at least 1 if > 0."""
    return 0 if fraction <= 0 else max(1, math.floor(fraction * n + 0.5))


def class_quotas(n: int, val: float, test: float) -> tuple[int, int]:
    """``(n_val, n_test)`` for a class of ``n`` usable images, leaving train at least one."""
    n_val, n_test = quota(n, val), quota(n, test)
    while n - n_val - n_test < 1:
        # Only with very few images and large fractions: take from the larger quota, never below 1.
        if n_val >= n_test and n_val > 1:
            n_val -= 1
        elif n_test > 1:
            n_test -= 1
        else:
            break
    return n_val, n_test


def assign(members, seed: int, val: float, test: float, class_names, exclude=frozenset()) -> list[str]:
    """The split of each member, in the order given.

    Args:
        members: :class:`Member` per file.
        seed: the split seed (``data.split.seed``, by default the run's seed).
        val, test: fractions of each class to hold out (0 when a pre-split
            folder provides that split).
        class_names: for error messages.
        exclude: content hashes of files that cannot be used (undecodable);
            they are not counted and get ``'train'`` (they are skipped anyway).

    Raises:
        DataError: a class with too few usable images to give every held-out
            split one image and keep one for training, naming it and its count.
    """
    result = ["train"] * len(members)
    by_class: dict[int, list[str]] = defaultdict(list)
    for i, m in enumerate(members):
        if m.fixed is not None:
            result[i] = m.fixed
        elif m.key not in exclude:
            by_class[m.label].append(m.key)
    place: dict[tuple[int, str], str] = {}
    for label, keys in sorted(by_class.items()):
        distinct = sorted(set(keys), key=lambda k: order_key(seed, k))
        _check_size(class_names[label], len(distinct), val, test)
        n_val, n_test = class_quotas(len(distinct), val, test)
        for rank, key in enumerate(distinct):
            place[label, key] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    for i, m in enumerate(members):
        if m.fixed is None and m.key not in exclude:
            result[i] = place[m.label, m.key]
    return result


def _check_size(name: str, n: int, val: float, test: float) -> None:
    held_out = [s for s, f in (("val", val), ("test", test)) if f > 0]
    needed = 1 + len(held_out)
    if n < needed:
        raise DataError(
            f"class '{name}' has {n} usable image(s); it needs at least {needed} "
            f"(one for training{''.join(f', one for {s}' for s in held_out)}): add images to it, "
            "or set data.split.val / data.split.test to 0 for a split you do not need"
        )


def digest(assignments) -> str:
    """Digest of a split: sha256 over sorted ``(relative path, split)`` pairs."""
    h = hashlib.sha256()
    for relpath, split in sorted(assignments):
        h.update(f"{relpath}\t{split}\n".encode())
    return h.hexdigest()
