#!/usr/bin/env bash
# Prepare, on a machine with PyPI access, what a GPU node without network needs for benchmarks/gpu_session.sh and
# benchmarks/gpu_calibration.sh (run from the repository root; all three paths are ignored by git):
#
#   bash benchmarks/gpu_prepare.sh [TRQAM_GIT]    # TRQAM_GIT: a git directory of yonghdong/trqam (for .peer-src/)
#
#   .gpu/whl/                the wheels (Python 3.12, x86-64) of the packages the node's image lacks: tyro, gymnasium,
#                            mujoco, ogbench and their needs, ml_collections, absl-py and pillow for the authors' code (~40 MB)
#   .gpu/site/dm_control/    the parts of dm_control that OGBench's envs import (_render, mjcf, mujoco, rl, utils;
#                            its wheel is 56 MB, mostly the suite and locomotion assets)
#   .peer-src/               git archive HEAD of TRQAM_GIT (the authors' main.py, agents/, utils/, envs/)
#
# A device call then names .gpu and .peer-src in its carry; the image's own jax, flax, optax, chex and numpy are used.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
pin() { grep -E "^$1==" requirements.txt | head -1; }  # the version tested here, where requirements.txt pins it
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
rm -rf .gpu/whl .gpu/site && mkdir -p .gpu/whl .gpu/site
python3 -m pip download -q --no-deps "${plat[@]}" -d .gpu/whl "$(pin tyro)" "$(pin gymnasium)" "$(pin mujoco)" \
  "mujoco-core==$(pin mujoco | cut -d= -f3)" "$(pin ogbench)" "$(pin tqdm)" docstring_parser rich markdown-it-py mdurl \
  pygments typeguard shtab cloudpickle farama-notifications glfw pyopengl absl-py etils dm-env dm-tree labmaze lxml \
  ml_collections pyyaml pillow
tmp=$(mktemp -d)
python3 -m pip download -q --no-deps "${plat[@]}" -d "$tmp" dm_control==1.0.50
python3 -m zipfile -e "$tmp"/dm_control-*.whl "$tmp/x"
mkdir -p .gpu/site/dm_control
cp "$tmp"/x/dm_control/__init__.py .gpu/site/dm_control/
for part in _render mjcf mujoco rl utils; do cp -r "$tmp/x/dm_control/$part" .gpu/site/dm_control/; done
rm -rf "$tmp"
if [ -n "${1:-}" ]; then
  rm -rf .peer-src && mkdir -p .peer-src && git --git-dir="$1" archive HEAD | tar -x -C .peer-src
  git --git-dir="$1" rev-parse HEAD >.peer-src/COMMIT
fi
du -sh .gpu .peer-src 2>/dev/null
