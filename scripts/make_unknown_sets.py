"""Assemble the real image sets unknown detection is measured on, from Debian packages.

    python scripts/make_unknown_sets.py OUT [--debs DIR]

Downloads (``apt-get download``, no install, no root needed for the
download itself) and unpacks four packages of Debian 12, then copies:

- ``OUT/tuxphoto/<class>/``: a photo classifier's data -- the photographic
  (non-cartoon) stamps of Tux Paint (``tuxpaint-stamps-default``
  2022.06.04-1, GPL-2): birds, mammals, food, plants, household; cut-out
  photos on transparent backgrounds. A stamp that also ships as SVG is
  vector art and left out, as are ``cartoon``/``toys`` folders.
- ``OUT/photos/``: real scene photographs -- the JPEG backdrops of Scratch 1.4
  (``scratch`` 1.4.0.6~dfsg1-6.1, Media/ CC-BY-SA-3.0, MIT) minus the 9
  that are drawings, and the photos among MATE's nature wallpapers
  (``mate-backgrounds`` 1.26.0-1, GPL-2+).
- ``OUT/symbols/``: clip-art icons and signs of other subjects -- Tux Paint's
  ``symbols`` stamps (same package as tuxphoto).

None of it is committed (licenses and size); docs/unknown.md has the
measurements and data/README.md the provenance.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGES = ("tuxpaint-stamps-default", "scratch", "mate-backgrounds")
TUX = "usr/share/tuxpaint/stamps"
SCRATCH_BACKDROPS = "usr/share/scratch/Media/Backgrounds"
# Scratch JPEG backdrops that are drawings, not photographs (checked by eye).
DRAWN = {"chalkboard", "party-room", "room1", "room2", "room3", "spotlight-stage", "woods-and-bench", "school2",
         "basketball-court1-a"}
MATE_PHOTOS = ("Garden", "Dune", "Wood", "Aqua", "TwoWings", "Storm", "GreenMeadow", "RainDrops", "FreshFlower",
               "LadyBird", "YellowFlower")
TUX_CLASSES = {"birds": "animals/birds", "mammals": "animals/mammals", "food": "food", "plants": "plants",
               "household": "household"}


def unpack(debs: Path) -> Path:
    """Download (if absent) and unpack the packages; returns the unpacked root."""
    debs.mkdir(parents=True, exist_ok=True)
    missing = [p for p in PACKAGES if not list(debs.glob(f"{p}_*.deb"))]
    if missing:
        subprocess.run(["apt-get", "download", *missing], cwd=debs, check=True)
    root = debs / "unpacked"
    for deb in sorted(d for p in PACKAGES for d in debs.glob(f"{p}_*.deb")):
        target = root / deb.name.split("_")[0]
        if not target.is_dir():
            target.mkdir(parents=True)
            subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], check=True)
    return root


def photo_stamps(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.rglob("*.png"))
            if not {"cartoon", "toys"} & set(p.parts) and not p.name.endswith("_thumb.png")
            and not p.with_suffix(".svg").exists()]


def copy(files, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy2(f, out / f.name)
    return len(files)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--debs", type=Path, default=None, help="where the .deb files are (downloaded there if absent)")
    args = parser.parse_args(argv)
    root = unpack(args.debs or args.out / "_debs")
    tux = root / "tuxpaint-stamps-default" / TUX
    for name, folder in TUX_CLASSES.items():
        print(f"tuxphoto/{name}: {copy(photo_stamps(tux / folder), args.out / 'tuxphoto' / name)}")
    print(f"symbols: {copy(photo_stamps(tux / 'symbols'), args.out / 'symbols')}")
    backdrops = [p for p in sorted((root / "scratch" / SCRATCH_BACKDROPS).glob("*/*.jpg")) if p.stem not in DRAWN]
    mate = [root / "mate-backgrounds" / "usr/share/backgrounds/mate/nature" / f"{n}.jpg" for n in MATE_PHOTOS]
    print(f"photos: {copy(backdrops + mate, args.out / 'photos')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
