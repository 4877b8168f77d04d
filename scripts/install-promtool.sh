#!/usr/bin/env bash
# Install Debian's prometheus package for promtool, which checks the alert rules and the
# dashboard's queries (tests/test_dashboards.py). Optional: without it, or without root or
# password-less sudo to install it, those two tests skip and the rules get the structure
# test only. Idempotent and non-interactive; one line when it does nothing.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo"
    else
        echo "install-promtool: no root or sudo to install promtool: the alert rules get the" \
            "structure test only" >&2
        exit 0
    fi
fi

export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y -q --no-install-recommends prometheus; then
    echo "install-promtool: apt-get could not install prometheus: the alert rules get the" \
        "structure test only" >&2
fi
