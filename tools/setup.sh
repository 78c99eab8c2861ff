#!/usr/bin/env bash
# Prepare everything the notebooks and tests need, idempotently:
#   1. the data set: Debian's package dataset-fashion-mnist where apt-get and root are available
#      (elsewhere d2l_ext downloads it into ~/.cache/d2l_ext on first use);
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

# 1. Data set: the Debian package, unless it is there or the user points elsewhere.
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ -z "${FASHION_MNIST_DIR:-}" ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    say "installing the Debian package dataset-fashion-mnist"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  elif command -v apt-get >/dev/null && sudo -n true 2>/dev/null; then
    say "installing the Debian package dataset-fashion-mnist (sudo)"
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    say "no root for apt-get: Fashion-MNIST will be downloaded into ~/.cache/d2l_ext on first use"
  fi
fi

# --- browser for the JupyterLab end-to-end test (tests/test_lab_e2e.py) ---------------------------
# Debian's Chromium, driven headless by Playwright; Playwright's own browser download is not used.
# Elsewhere, point E2E_CHROMIUM at a Chromium binary.
if [ ! -x /usr/bin/chromium ] && [ -z "${E2E_CHROMIUM:-}" ]; then
  browser_pkgs="chromium chromium-driver fonts-liberation"
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    say "installing Debian's $browser_pkgs for the browser test"
    # shellcheck disable=SC2086  # a list of packages
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $browser_pkgs >/dev/null
  elif command -v apt-get >/dev/null && sudo -n true 2>/dev/null; then
    say "installing Debian's $browser_pkgs for the browser test (sudo)"
    # shellcheck disable=SC2086
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $browser_pkgs >/dev/null
  else
    say "no /usr/bin/chromium and no root for apt-get: the browser test needs E2E_CHROMIUM=<chromium binary>"
  fi
fi
# --- end of the browser block ----------------------------------------------------------------------

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
