#!/usr/bin/env bash
# Prepare everything the notebooks and tests need, idempotently:
#   1. Debian's packages where apt-get and root are available: the data set dataset-fashion-mnist
#      (elsewhere d2l_ext downloads it into ~/.cache/d2l_ext on first use) and Chromium for the
#      browser test (elsewhere, point E2E_CHROMIUM at a Chromium binary);
#   2. a virtual environment in $VENV (default .venv) with exactly the versions of the lock,
#      requirements.txt (`make lock` writes it with uv), then d2l and this package without their
#      dependencies (d2l's exact pins break Python 3.12; what it imports is in the lock);
#   3. a first, verified load of the data set.
# Environment: PYTHON (interpreter, default python3), VENV.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
D2L_SPEC="d2l==1.0.3"

say() { printf '[setup] %s\n' "$*"; }

# apt_install WHAT ELSEWHERE ARG...: apt-get install ARG... as root or with sudo; without either,
# say what happens ELSEWHERE.
apt_install() {
  local what=$1 elsewhere=$2 sudo=()
  shift 2
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  if ! command -v apt-get >/dev/null || { [ ${#sudo[@]} = 1 ] && ! sudo -n true 2>/dev/null; }; then
    say "$elsewhere"
    return
  fi
  say "installing $what from Debian${sudo:+ (sudo)}"
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# 1. The data set and the browser, unless they are there or the user points elsewhere.
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ -z "${FASHION_MNIST_DIR:-}" ]; then
  apt_install "the data set, dataset-fashion-mnist" \
    "no root for apt-get: Fashion-MNIST will be downloaded into ~/.cache/d2l_ext on first use" \
    dataset-fashion-mnist
fi
if [ ! -x /usr/bin/chromium ] && [ -z "${E2E_CHROMIUM:-}" ]; then
  # Debian's Chromium, driven headless by Playwright (tests/test_lab_e2e.py); Playwright's own browser
  # download is not used.
  apt_install "Chromium for the browser test" \
    "no /usr/bin/chromium and no root for apt-get: the browser test needs E2E_CHROMIUM=<chromium binary>" \
    --no-install-recommends chromium chromium-driver fonts-liberation
fi

# 2. Virtual environment: the lock, whatever has been released since; a stamp of the inputs skips
#    this when nothing changed.
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps)
stamp="$VENV/.d2l_ext-$(cat requirements.txt pyproject.toml tools/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  say "installing requirements.txt (the lock), then $D2L_SPEC and d2l_ext without dependencies"
  "${PIP[@]}" -r requirements.txt
  "${PIP[@]}" "$D2L_SPEC" -e .
  # What an older lock installed and this one does not name goes; then the venv must be the lock.
  "$VENV/bin/python" tools/lock.py --sync
  rm -f "$VENV"/.d2l_ext-*
  touch "$stamp"
fi

# 3. Find, verify and cache the data set once, so the first notebook does not wait for it.
"$VENV/bin/python" -c "import d2l_ext; print('[setup] Fashion-MNIST from', d2l_ext.find_fashion_mnist()[1])"
