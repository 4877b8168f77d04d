#!/usr/bin/env bash
# callauth from the shell: start a flash call, fall back to a voice call (resend), read the
# code from the sandbox, check it. `curl.sh inbound`: the inbound-call flow instead (the user
# calls a number, nothing to type; the sandbox plays the call). Needs curl and jq; the service
# in sandbox mode.
#   CALLAUTH_URL (default http://127.0.0.1:8080), CALLAUTH_API_KEY (dev),
#   CALLAUTH_PHONE (+7 903 567-51-24)
set -euo pipefail
URL="${CALLAUTH_URL:-http://127.0.0.1:8080}"
KEY="${CALLAUTH_API_KEY:-dev}"
PHONE="${CALLAUTH_PHONE:-+7 903 567-51-24}"
FLOW="${1:-code}"

api() { # METHOD PATH [JSON]: prints the body on 2xx; the problem document and exit 1 otherwise
    local out
    if ! out=$(curl -sS --fail-with-body -X "$1" "$URL$2" -H "Authorization: Bearer $KEY" \
                    -H 'Content-Type: application/json' ${3:+--data "$3"}); then
        echo "callauth: $1 $2 failed: $out" >&2
        exit 1
    fi
    printf '%s\n' "$out"
}

if [ "$FLOW" = inbound ]; then
    # 1. Start an inbound call: New-Tel waits for the user's call; there is no code.
    started=$(api POST /v1/verifications "$(jq -nc --arg phone "$PHONE" '{phone: $phone, channel: "inbound_call"}')")
    id=$(jq -r .id <<<"$started")
    phone=$(jq -r .phone <<<"$started")
    echo "started $id: inbound call, no code"
    # Show the user the number (and .inbound.qr_code_uri, when not null) until call_before.
    echo "the user calls +$(jq -r .inbound.call_to <<<"$started") before $(jq -r .inbound.call_before <<<"$started")"
    call_before=$(jq -r '.inbound.call_before | fromdateiso8601' <<<"$started")

    # 2. Sandbox only: play the user's call (in production the user dials; New-Tel calls back).
    api POST /v1/sandbox/inbound-calls "$(jq -nc --arg phone "$phone" '{phone: $phone}')" >/dev/null
    echo "sandbox: the call was played"

    # 3. Poll the status until it is no longer pending, or New-Tel stopped waiting (10 s grace).
    while :; do
        status=$(api GET "/v1/verifications/$id" | jq -r .status)
        if [ "$status" != pending ] || [ "$(date +%s)" -gt $((call_before + 10)) ]; then
            break
        fi
        sleep 1
    done
    if [ "$status" = approved ]; then
        echo "approved"
    else
        echo "not approved: $status" >&2
        exit 1
    fi
    exit 0
fi

# 1. Start: the service calls the phone (201; 200 if it resent a pending verification).
started=$(api POST /v1/verifications "$(jq -nc --arg phone "$PHONE" '{phone: $phone, channel: "flash_call"}')")
id=$(jq -r .id <<<"$started")
phone=$(jq -r .phone <<<"$started")
echo "started $id: flash call, $(jq -r .code_length <<<"$started") digits"

# 2. The sandbox shows the call: a flash call's code is the last digits of the caller.
call=$(api GET "/v1/sandbox/calls?phone=$phone" | jq -c --arg id "$id" '[.calls[] | select(.verification_id == $id)][0]')
echo "flash call from +$(jq -r .caller <<<"$call")"

# 3. No call arrived? Resend by voice (after CALLAUTH_RESEND_COOLDOWN_S); the latest code counts.
api POST "/v1/verifications/$id/resend" '{"channel": "voice_call"}' >/dev/null
call=$(api GET "/v1/sandbox/calls?phone=$phone" | jq -c --arg id "$id" '[.calls[] | select(.verification_id == $id)][0]')
echo "voice call says: $(jq -r .text <<<"$call")"
code=$(jq -r .code <<<"$call")

# 4. Check the code the user typed.
checked=$(api POST "/v1/verifications/$id/check" "$(jq -nc --arg code "$code" '{code: $code}')")
if [ "$(jq -r .valid <<<"$checked")" = true ]; then
    echo "approved"
else
    echo "not approved: $checked" >&2
    exit 1
fi
