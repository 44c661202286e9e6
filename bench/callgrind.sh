#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: independent of
# machine load, so before/after figures compare on a busy machine.
#
#   bench/callgrind.sh [REQUESTS] [CONNECTIONS]     # defaults 2000 and 10
#
# A backend and a fixed-count keep-alive client run natively; only the proxy
# (one ProxyServer, uvloop, no health checks) runs under valgrind, with
# instrumentation switched on for the measured requests alone (after a
# warm-up that opens the upstream connections), so start-up is not counted.
# Uses PYTHON (default: .venv/bin/python, else python3) and the zerodown it
# imports (set PYTHONPATH=src to measure a work tree).
set -euo pipefail
cd "$(dirname "$0")"
REQUESTS=${1:-2000}
CONNS=${2:-10}
PYTHON=${PYTHON:-$( [ -x ../.venv/bin/python ] && echo ../.venv/bin/python || echo python3 )}
WORK=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    [ -n "${KEEP:-}" ] && echo "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() {  # file, seconds
    for _ in $(seq $(( $2 * 10 ))); do grep -q ready "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "not ready: $1" >&2; cat "$1" >&2; exit 1
}

BACKEND=$(free_port); PROXY=$(free_port)
"$PYTHON" callgrind_load.py backend "$BACKEND" >"$WORK/backend.log" 2>&1 &
pids+=($!)
wait_ready "$WORK/backend.log" 10
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/callgrind.out" \
    "$PYTHON" callgrind_load.py proxy "$PROXY" "127.0.0.1:$BACKEND" >"$WORK/proxy.log" 2>&1 &
proxy_pid=$!
pids+=($proxy_pid)
wait_ready "$WORK/proxy.log" 120
"$PYTHON" callgrind_load.py client "$PROXY" 200 "$CONNS" >/dev/null  # warm-up, not counted
callgrind_control -i on "$proxy_pid" >/dev/null 2>&1
served=$("$PYTHON" callgrind_load.py client "$PROXY" "$REQUESTS" "$CONNS")
callgrind_control -i off "$proxy_pid" >/dev/null 2>&1
kill -TERM "$proxy_pid"
wait "$proxy_pid" || true
instructions=$(awk '/^totals:/ {print $2}' "$WORK/callgrind.out")
if [ "$served" != "$REQUESTS" ]; then echo "only $served of $REQUESTS requests got 200" >&2; exit 1; fi
echo "requests: $served  instructions: $instructions  per request: $(( instructions / served ))"
