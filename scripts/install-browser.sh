#!/usr/bin/env bash
# Install Debian's Chromium (+ chromium-driver) for the browser test (tests/test_demo.py).
# Idempotent: does nothing when /usr/bin/chromium is already there. Non-interactive.
# Playwright drives this binary (executable_path="/usr/bin/chromium"); never run
# `playwright install`, which downloads a browser build of its own.
#
# Without root or password-less sudo it installs nothing and says so in one line: the
# browser test then skips. Under CI=true the browser is required, so that is a failure.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    echo "install-browser: $(/usr/bin/chromium --version 2>/dev/null || echo chromium) already installed"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo"
    elif [ "${CI:-}" = "true" ]; then
        echo "install-browser: chromium is missing and this is not root (no password-less sudo);" \
            "CI=true requires the browser test" >&2
        exit 1
    else
        echo "install-browser: no root or sudo to install chromium: the browser test" \
            "(tests/test_demo.py) will skip" >&2
        exit 0
    fi
fi

export DEBIAN_FRONTEND=noninteractive
apt_install() {
    $SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver fonts-liberation
}
# A fresh machine has no package lists yet: update first when the install cannot find them.
if ! apt_install; then
    $SUDO apt-get update -q
    apt_install
fi
echo "install-browser: $(/usr/bin/chromium --version 2>/dev/null || echo chromium) installed"
