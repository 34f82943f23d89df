#!/usr/bin/env bash
# A non-editable install, as users install: `pip install .` into a scratch venv (its dependencies
# are borrowed from .venv, so nothing is downloaded twice), then the command from another folder.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
.venv/bin/python -m venv "$scratch/venv"
site=$("$scratch/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))' > "$site/_openhermes_deps.pth"
"$scratch/venv/bin/python" -m pip install -q --no-deps "$repo"
cd "$scratch"
"$scratch/venv/bin/python" -c 'import openhermes, sys; assert "site-packages" in openhermes.__file__, openhermes.__file__'
"$scratch/venv/bin/openhermes" --help >/dev/null
OPENHERMES_CACHE="$scratch/cache" "$scratch/venv/bin/openhermes" data prepare tiny --out "$scratch/prepared" \
  >"$scratch/prepare.log" 2>&1 || { cat "$scratch/prepare.log"; exit 1; }
test -f "$scratch/prepared/report.json"
"$scratch/venv/bin/python" -c 'from importlib.resources import files; assert files("openhermes").joinpath("serve/static/index.html").is_file()'
"$scratch/venv/bin/python" -c 'from openhermes.config import Recipe; from pathlib import Path; assert Path(Recipe(deepspeed="zero3").deepspeed).is_file()'
echo "check_install: the non-editable install finds its recipes, static files and DeepSpeed configs"
