#!/usr/bin/env bash
# The Python interpreters >= 3.11 on this machine, newest first, one command per line.
#
#   bash scripts/pythons.sh         python3.13, python3.12, python3.11, then python3 if it is
#                                   >= 3.11 and none of those has its version
#   bash scripts/pythons.sh 3.13    only an interpreter of that version (or nothing)
#
# Each candidate is run, not only looked up: a pyenv shim answers `command -v` for every
# installed version but runs only the selected ones. For an installed pyenv version that is
# not selected, its own binary under $(pyenv root)/versions is printed instead.
set -euo pipefail

# "3.13" when $1 runs and is Python 3.x with x >= 11, else nothing.
version_of() {
    "$1" -c 'import sys; v = sys.version_info; print(f"{v[0]}.{v[1]}" if v >= (3, 11) else "")' \
        2>/dev/null || true
}

PYENV_ROOT=$(pyenv root 2>/dev/null || true)

# One runnable command for version $1 (3.13), or nothing.
find_version() {
    local want=$1 candidate
    local -a candidates=("python$want")
    if [[ -n $PYENV_ROOT ]]; then
        shopt -s nullglob
        candidates+=("$PYENV_ROOT"/versions/"$want".*/bin/"python$want")
        shopt -u nullglob
    fi
    for candidate in "${candidates[@]}"; do
        if [[ $(version_of "$candidate") == "$want" ]]; then
            echo "$candidate"
            return 0
        fi
    done
}

if [[ $# -gt 0 ]]; then
    find_version "$1"
    exit 0
fi

seen=""
for want in 3.13 3.12 3.11; do
    found=$(find_version "$want")
    if [[ -n $found ]]; then
        echo "$found"
        seen="$seen $want"
    fi
done
fallback=$(version_of python3)
if [[ -n $fallback && " $seen " != *" $fallback "* ]]; then
    echo python3
fi
