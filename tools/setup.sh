#!/usr/bin/env bash
# Prepare everything the notebooks and tests need, idempotently:
#   1. the data set: Debian's package dataset-fashion-mnist where apt-get and root are available
#      (elsewhere d2l_ext downloads it into ~/.cache/d2l_ext on first use);
#   2. a virtual environment in $VENV (default .venv) with PyTorch, d2l without its exact pins,
#      and this package with its notebook, test and site tools;
#   3. a first, verified load of the data set.
# Environment: PYTHON (interpreter, default python3), VENV, TORCH_SPEC (the torch and torchvision
# requirements; e.g. set it empty after installing CPU wheels yourself).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC-torch==2.14.1 torchvision==0.29.1}
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

# 2. Virtual environment and packages; a stamp of the inputs skips this when nothing changed.
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
stamp="$VENV/.d2l_ext-$(cat pyproject.toml tools/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  if [ -n "$TORCH_SPEC" ] && ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
    say "installing $TORCH_SPEC"
    # shellcheck disable=SC2086  # TORCH_SPEC is a list of requirements
    "${PIP[@]}" $TORCH_SPEC
  fi
  say "installing $D2L_SPEC without its pins, and d2l_ext with its lab, test and site tools"
  "${PIP[@]}" --no-deps "$D2L_SPEC"
  # pip then reports that d2l's exact pins are not met: that is the point, so keep that report out.
  "${PIP[@]}" -e ".[lab,test,site]" 2> >(grep -v -e "^d2l 1.0.3 requires" -e "dependency resolver does not" >&2)
  rm -f "$VENV"/.d2l_ext-*
  touch "$stamp"
fi

# 3. Find, verify and cache the data set once, so the first notebook does not wait for it.
"$VENV/bin/python" -c "import d2l_ext; print('[setup] Fashion-MNIST from', d2l_ext.find_fashion_mnist()[1])"
