"""Scan a labeled image tree.

Layouts accepted under ``data.root``:

* class-per-folder: ``root/<class>/**/<image>``; each class is split into
  train/val/test by :mod:`vggtl.splits` (per-class quotas over an order fixed by
  content and seed: path-independent, at least one image per held-out split);
* pre-split: ``root/train/<class>/...`` plus ``val/`` (or ``validation/``)
  and/or ``test/`` with the same class folders. A missing ``val`` or ``test``
  subtree is carved out of ``train`` with the same rule.

Classes are the sorted folder names. Hidden files and folders are ignored.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


from vggtl import csv_list
from vggtl.errors import DataError, path_error
from vggtl.files import sha256_file
from vggtl.data.dataset import SPLIT_ALIASES, Dataset, ImageFile, check_class_names

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SMALL_CLASS_WARNING = 20


# --------------------------------------------------------------------------- scanning


def _visible(name: str) -> bool:
    return not name.startswith(".") and not name.startswith("__")


def visible_subdirs(path: Path) -> list[str]:
    """Sorted names of the non-hidden subfolders of ``path`` (class names, split names)."""
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and _visible(e.name))


def list_images(folder: Path, extensions) -> list[Path]:
    """All image files under ``folder`` (recursive, hidden entries skipped, sorted)."""
    exts = tuple(e.lower() for e in extensions)
    found = []

    def unreadable(exc: OSError):  # os.walk skips a folder it cannot list: it would look empty
        raise path_error(exc, exc.filename, "list the folder") from None

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable):
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        for name in filenames:
            if _visible(name) and name.lower().endswith(exts):
                found.append(Path(dirpath) / name)
    return sorted(found)


def list_images_here(folder: Path, extensions) -> list[Path]:
    """The image files directly in ``folder`` (not in its subfolders)."""
    exts = tuple(e.lower() for e in extensions)
    return sorted(p for p in folder.iterdir() if _visible(p.name) and p.name.lower().endswith(exts) and p.is_file())


def file_sha256(path: Path) -> str:
    """Content hash of one image file; an unreadable file stops the scan with its path
    (its split and cache key depend on its bytes, so it cannot be skipped silently).

    Raises:
        DataError: a FIFO, device or socket under an image name (reading one
            would block forever or never end: ``/dev/zero``), named.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise DataError(f"{path} is not a regular file (a FIFO, device or socket, or a link to one); "
                            "remove it from data.root")
        return sha256_file(path)
    except OSError as exc:
        raise path_error(exc, path, "read the image file") from None


def detect_layout(root: Path) -> dict[str, Path] | None:
    """Map split name -> subtree when ``root`` is pre-split, else None."""
    dirs = visible_subdirs(root)
    aliased = [d for d in dirs if d in SPLIT_ALIASES]
    split_dirs = {SPLIT_ALIASES[d]: root / d for d in aliased}
    if "train" not in split_dirs or len(split_dirs) < 2:
        return None
    if len(split_dirs) < len(aliased):
        # val/ and validation/ side by side: the dict would silently keep only one.
        raise DataError(
            f"{root}: has both {', '.join(d + '/' for d in aliased if SPLIT_ALIASES[d] == 'val')}; "
            "keep one validation folder"
        )
    others = [d for d in dirs if d not in SPLIT_ALIASES]
    if others:
        raise DataError(
            f"{root}: looks pre-split (has {', '.join(d + '/' for d in aliased)}) but also holds "
            f"{', '.join(d + '/' for d in others)}; move those under train/ or remove them"
        )
    return split_dirs


def _class_files(base: Path, class_names: list[str], extensions, where: str) -> dict[str, list[Path]]:
    files = {}
    for name in class_names:
        images = list_images(base / name, extensions)
        if not images:
            raise DataError(
                f"class folder {str(base / name)!r} contains no image "
                f"(looked for {', '.join(extensions)}); add images or remove the folder"
            )
        files[name] = images
    return files


def scan(root, extensions, workers: int = 4, csv=None) -> Dataset:
    """Find the classes and images under ``root`` (or listed in ``csv``).

    The files are not split here (their ``split`` is None): a run splits them
    once, over its usable images (:meth:`vggtl.plan.RunPlan.split`, by
    :meth:`Dataset.with_split`).

    Args:
        root: dataset directory (class-per-folder or pre-split, see module doc).
        extensions: lower-case extensions with a dot, e.g. ``('.jpg', '.png')``
            (not applied to the files a CSV lists).
        workers: threads used to hash file contents.
        csv: a CSV file ``path,label[,split]`` listing the images
            (:mod:`vggtl.csv_list`), or None for folders.

    Returns:
        A :class:`Dataset`.

    Raises:
        DataError: fewer than 2 classes, a class folder with no image, class
            folders that differ between splits, or a CSV that cannot be read
            unambiguously.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data root {str(root)!r} is not a directory")
    if csv is not None:
        class_names, entries, carve, notes = csv_list.read(root, csv)
        layout = "csv"
    else:
        class_names, entries, carve, layout = _folder_entries(root, extensions)
        notes = []
    # Hashing is I/O + hashlib, which releases the GIL: threads parallelise it.
    with ThreadPoolExecutor(max(1, workers)) as pool:
        digests = list(pool.map(file_sha256, (p for p, _, _ in entries)))
    files = [
        ImageFile(path.resolve(), relative_path(path, root), label, None, sha, None if fixed == "train" else fixed)
        for (path, label, fixed), sha in zip(entries, digests)
    ]
    dataset = Dataset(root.resolve(), class_names, files, layout, notes, carve)
    notes.extend(_dataset_warnings(dataset))
    return dataset


def relative_path(path: Path, root: Path) -> str:
    """What reports show: the path relative to ``data.root`` (a CSV may list files elsewhere)."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _folder_entries(root: Path, extensions):
    """``(class_names, entries, carve, layout)`` of a class-folder or pre-split tree."""
    split_dirs = detect_layout(root)
    layout = "pre-split" if split_dirs else "class-folders"
    if split_dirs is None:
        split_dirs = {"train": root}
    class_names = visible_subdirs(split_dirs["train"])
    check_class_names(class_names, split_dirs["train"])
    if len(class_names) < 2 and (loose := list_images_here(split_dirs["train"], extensions)):
        raise DataError(
            f"{split_dirs['train']}: holds {len(loose)} image(s) but {len(class_names)} class folder(s): it looks like "
            f"one class's folder; point data.root at the folder that holds one folder per class "
            f"(perhaps {str(split_dirs['train'].resolve().parent)!r})"
        )
    if len(class_names) < 2:
        raise DataError(
            f"{split_dirs['train']}: found {len(class_names)} class folder(s) "
            f"({', '.join(class_names) or 'none'}); need at least 2, one folder of images per class"
        )
    entries: list[tuple[Path, int, str | None]] = []  # (path, label, fixed split or None)
    for split_name, base in split_dirs.items():
        if split_name != "train" and visible_subdirs(base) != class_names:
            raise DataError(
                f"{base}: class folders {visible_subdirs(base)} differ from train/'s {class_names}; "
                "every split needs the same class folders"
            )
        fixed = None if split_name == "train" and layout == "class-folders" else split_name
        for label, (name, paths) in enumerate(_class_files(base, class_names, extensions, split_name).items()):
            entries.extend((p, label, fixed) for p in paths)
    return class_names, entries, ("val" not in split_dirs, "test" not in split_dirs), layout


def _dataset_warnings(dataset: Dataset) -> list[str]:
    notes = []
    totals = Counter(f.label for f in dataset.files)
    for label, name in enumerate(dataset.class_names):
        if totals[label] < SMALL_CLASS_WARNING:
            notes.append(f"class '{name}' has only {totals[label]} images (< {SMALL_CLASS_WARNING}); its metrics will be noisy")
    by_hash: dict[str, set[int]] = {}
    for f in dataset.files:
        by_hash.setdefault(f.sha256, set()).add(f.label)
    clashes = [
        sorted(f.relpath for f in dataset.files if f.sha256 == sha)
        for sha, labels in by_hash.items()
        if len(labels) > 1
    ]
    for paths in clashes:
        notes.append(f"identical image under different classes: {', '.join(paths)}")
    return notes


