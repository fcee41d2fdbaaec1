"""The scanned dataset: its files, classes, splits and digests."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path


from vggtl import splits
from vggtl.errors import DataError

SPLITS = ("train", "val", "test")
SPLIT_CODES = {name: code for code, name in enumerate(SPLITS)}
SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val", "test": "test"}


@dataclass(frozen=True)
class ImageFile:
    """One image of the dataset.

    Attributes:
        path: absolute path on disk.
        relpath: POSIX path relative to ``data.root`` (what reports show).
        label: index into the sorted class names.
        split: ``'train'``, ``'val'`` or ``'test'``; None in a scanned
            dataset that is not split yet (:meth:`Dataset.with_split`).
        sha256: hex digest of the file's bytes; the cache key of its features.
        fixed: ``'val'`` or ``'test'`` when a pre-split folder decides the
            split, else None (the split rule decides).
    """

    path: Path
    relpath: str
    label: int
    split: str | None
    sha256: str
    fixed: str | None = None


@dataclass
class Dataset:
    """The scanned dataset: class names, files and notes for the report."""

    root: Path
    class_names: list[str]
    files: list[ImageFile]
    layout: str  # "class-folders" or "pre-split"
    warnings: list[str]
    # Which held-out splits the rule carves (False where a pre-split folder provides it).
    carve: tuple[bool, bool] = (True, True)

    def digest(self) -> str:
        """Manifest digest: changes when any file's content, label or split changes."""
        h = hashlib.sha256()
        h.update("\n".join(self.class_names).encode())
        for f in sorted(self.files, key=lambda f: f.relpath):
            h.update(f"\n{f.relpath}\t{f.label}\t{f.split}\t{f.sha256}".encode())
        return h.hexdigest()

    def content_digest(self) -> str:
        """Digest of the classes, paths, labels and contents, not the split: what
        a feature store must match (splits are made at train time)."""
        h = hashlib.sha256(b"vggtl-content\n")
        h.update("\n".join(self.class_names).encode())
        for f in sorted(self.files, key=lambda f: f.relpath):
            h.update(f"\n{f.relpath}\t{f.label}\t{f.sha256}".encode())
        return h.hexdigest()

    def split_digest(self) -> str:
        """Digest of which file is in which split (:func:`vggtl.splits.digest`)."""
        return splits.digest((f.relpath, f.split) for f in self.files)

    def with_split(self, seed: int, val: float, test: float, exclude=frozenset()) -> "Dataset":
        """The same files split by :func:`vggtl.splits.assign` for ``seed`` and
        the fractions; ``exclude`` are content hashes of unusable files.

        Raises:
            DataError: a class has too few usable images (named, with its count).
        """
        carve_val, carve_test = self.carve
        members = [splits.Member(f.sha256, f.label, f.fixed) for f in self.files]
        assigned = splits.assign(
            members, seed, val if carve_val else 0.0, test if carve_test else 0.0, self.class_names, frozenset(exclude)
        )
        files = [dataclasses.replace(f, split=s) for f, s in zip(self.files, assigned)]
        return dataclasses.replace(self, files=files)

    def counts(self, skipped=()) -> dict[str, dict[str, int]]:
        """``{split: {class_name: n}}`` of the usable files (``skipped``: relative
        paths of undecodable ones, which are in no split's count)."""
        skipped = set(skipped)
        table = {s: {c: 0 for c in self.class_names} for s in SPLITS}
        for f in self.files:
            if f.relpath not in skipped:
                table[f.split][self.class_names[f.label]] += 1
        return table


def check_class_names(class_names, where) -> None:
    """Refuse a class name with a line break or another control character: it
    would break every line of text and table row that names the class."""
    bad = [name for name in class_names if not name.isprintable()]
    if bad:
        raise DataError(f"{where}: class {bad[0]!r} has a line break or another control character in its name; "
                        "rename it (its name is the label every prediction, table and report prints)")
