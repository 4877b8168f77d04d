#!/usr/bin/env bash
# The API, store, inbound and webhook tests on every interpreter but the main one (`make test` runs the whole
# suite on that), each in its own .venv-3.x made by `make install`; one summary line each.
#
#   bash scripts/test-pythons.sh MAIN_VERSION PYTHON...    (what `make test-pythons` runs)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TESTS=(
    tests/test_api.py
    tests/test_checks.py
    tests/test_limits.py
    tests/test_resend.py
    tests/test_idempotency.py
    tests/test_abuse.py
    tests/test_inbound.py
    tests/test_webhooks.py
)
main=$1
shift

failed=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for py in "$@"; do
    version=$("$py" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
    if [[ ${version%.*} == "$main" ]]; then
        continue
    fi
    venv=.venv-${version%.*}
    t0=$SECONDS
    if ! "${MAKE:-make}" --no-print-directory install PYTHON="$py" VENV="$venv" >"$log" 2>&1; then
        cat "$log"
        echo "python $version ($py): could not install into $venv"
        failed=1
        continue
    fi
    t1=$SECONDS
    # pytest exits 5 when it collects nothing: a broken run, not a pass.
    if "$venv/bin/pytest" -q "${TESTS[@]}" >"$log" 2>&1; then
        echo "python $version: $(tail -n1 "$log") (API, store, inbound and webhook tests; venv $((t1 - t0))s)"
    else
        cat "$log"
        echo "python $version: FAILED (API, store, inbound and webhook tests in $venv)"
        failed=1
    fi
done
exit $failed
