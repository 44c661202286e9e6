#!/bin/sh
# Start a zerodown deploy through its signed hook, from any CI job:
#
#   ZERODOWN_HOOK_SECRET=... zerodown-hook.sh URL SERVICE VERSION [STRATEGY]
#   zerodown-hook.sh https://deploy.example.com web "$GITHUB_SHA" canary
#
# URL is the daemon's admin listener (or the proxy in front of it). The body
# carries the time it was signed: the daemon refuses it after 5 minutes, and
# refuses it a second time (a replay). Prints the daemon's answer,
# {"deploy_id": N, "url": "/v1/deploys/N"}; exits non-zero when it is refused
# (401 signature, 403 hook off, 404 service, 409 busy or replayed).
# Needs curl and openssl.
set -eu

if [ $# -lt 3 ] || [ -z "${ZERODOWN_HOOK_SECRET:-}" ]; then
    echo "usage: ZERODOWN_HOOK_SECRET=... $0 URL SERVICE VERSION [STRATEGY]" >&2
    exit 2
fi
url=${1%/} service=$2 version=$3 strategy=${4:-}

strategy_field=""
if [ -n "$strategy" ]; then
    strategy_field="\"strategy\":\"$strategy\","
fi
body=$(printf '{"service":"%s","version":"%s",%s"timestamp":%s}' \
    "$service" "$version" "$strategy_field" "$(date +%s)")
# HMAC-SHA256 of the exact bytes sent, as hex: GitHub's X-Hub-Signature-256 form.
signature=$(printf '%s' "$body" | openssl dgst -sha256 -hmac "$ZERODOWN_HOOK_SECRET" -r | cut -d' ' -f1)

curl --silent --show-error --fail-with-body --max-time 30 \
    -X POST "$url/v1/hooks/deploy" \
    -H "Content-Type: application/json" \
    -H "X-Hub-Signature-256: sha256=$signature" \
    --data-binary "$body"
echo
