#!/usr/bin/env bash
# Instructions per proxied request of HAProxy or nginx, counted by callgrind:
# the plain proxy (bench/templates) against the configuration zerodown
# renders for it (`zerodown render`), same backends, same client.
#
#   bench/callgrind_proxy.sh haproxy|nginx plain|zerodown [REQUESTS] [CONNS]   # defaults 3000 and 10
#   UPSTREAMS=reload bench/callgrind_proxy.sh nginx zerodown   # `server` lines, not the Lua balancer
#
# Load-independent, as bench/callgrind.sh: the proxy alone runs under
# valgrind (nginx with one process: master_process off), with instrumentation
# on for the measured requests only. The backends and the fixed-count client
# are callgrind_load.py's. Health checks are taken out of both configs, so
# that timers do not count. User-space instructions only: the kernel's share
# of a request (its syscalls) is the same for all, so a ratio here overstates
# the difference in CPU time (bench/README.md).
set -euo pipefail
cd "$(dirname "$0")"
PROXY=${1:?haproxy or nginx}; KIND=${2:?plain or zerodown}
REQUESTS=${3:-3000}; CONNS=${4:-10}
PYTHON=${PYTHON:-$( [ -x ../.venv/bin/python ] && echo ../.venv/bin/python || echo python3 )}
ZERODOWN=${ZERODOWN:-$(dirname "$PYTHON")/zerodown}
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
wait_port() {  # port, the proxy's pid
    for _ in $(seq 300); do
        (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || break
        sleep 0.1
    done
    echo "the proxy did not listen on $1" >&2; cat "$WORK"/*.log >&2; exit 1
}
fill() {  # template -> stdout, @{name} replaced
    sed -e "s#@{dir}#$WORK#g; s/@{port}/$FRONT/g; s/@{workers}/1/g; s/@{admin}/$(free_port)/g" \
        -e "s/@{backend1}/$B1/g; s/@{backend2}/$B2/g; s/@{user}/${USER_LINE}/g" \
        -e "s/@{upstreams}/\"127.0.0.1:$B1\", \"127.0.0.1:$B2\"/g; s/@{extra}/dataplane = \"$PROXY\"$EXTRA/g" "$1"
}

B1=$(free_port); B2=$(free_port); FRONT=$(free_port)
EXTRA=$([ -n "${UPSTREAMS:-}" ] && echo "\\nnginx = { upstreams = \\\"$UPSTREAMS\\\" }" || echo "")
USER_LINE=$([ "$(id -u)" = 0 ] && echo "user root;" || echo "")
for port in "$B1" "$B2"; do
    "$PYTHON" callgrind_load.py backend "$port" >"$WORK/backend-$port.log" 2>&1 &
    pids+=($!)
    wait_ready "$WORK/backend-$port.log" 10
done

if [ "$KIND" = plain ]; then
    template=$([ "$PROXY" = haproxy ] && echo haproxy.cfg || echo nginx-proxy.conf)
    fill "templates/$template" >"$WORK/proxy.conf"
else
    fill templates/zerodown.toml >"$WORK/zerodown.toml"
    "$ZERODOWN" render "$PROXY" -c "$WORK/zerodown.toml" >"$WORK/proxy.conf"
fi
if [ "$PROXY" = haproxy ]; then
    # No checks, no runtime files: the request path alone.
    sed -i -E -e '/^ *server /s/ check( inter [^ ]+ rise [0-9]+ fall [0-9]+)?//' \
        -e '/stats socket|server-state-file|load-server-state|httpchk|http-check|timeout check/d' \
        "$WORK/proxy.conf"
    { grep -o 'map([^)]*)' "$WORK/proxy.conf" || true; } | sed 's/map(\(.*\))/\1/' | while read -r map; do
        mkdir -p "$(dirname "$map")"; touch "$map"  # the driver's map files, empty
    done
    argv=(haproxy -db -f "$WORK/proxy.conf")
else
    sed -i -e '/^daemon /d; /^master_process /d' "$WORK/proxy.conf"
    sed -i -e '1i daemon off;\nmaster_process off;' "$WORK/proxy.conf"
    grep -oE '(temp_path|access_log|pid|error_log|listen unix:)[ ]*[^ ;]+' "$WORK/proxy.conf" \
        | awk '{print $NF}' | sed 's/^unix://' | while read -r path; do
        case "$path" in /*) mkdir -p "$(dirname "$path")" ;; esac
    done
    grep -oE 'temp_path [^;]+' "$WORK/proxy.conf" | awk '{print $2}' | xargs -r mkdir -p
    # upstreams = "lua": the balancer's module and the table, where the driver puts them.
    table=$(sed -n 's/^# \(\/.*upstreams.txt\), which it loads:$/\1/p' "$WORK/proxy.conf")
    if [ -n "$table" ]; then
        sed -n '/which it loads:$/,$p' "$WORK/proxy.conf" | tail -n +2 | sed 's/^# //' >"$table"
        mkdir -p "$(dirname "$table")/lua"
        cp ../src/zerodown/dataplane/nginx/zerodown_upstreams.lua "$(dirname "$table")/lua/"
    fi
    argv=(nginx -p "$WORK" -c "$WORK/proxy.conf" -e "$WORK/error.log")
fi
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/callgrind.out" \
    "${argv[@]}" >"$WORK/proxy.log" 2>&1 &
proxy_pid=$!
pids+=($proxy_pid)
wait_port "$FRONT" "$proxy_pid"
"$PYTHON" callgrind_load.py client "$FRONT" 200 "$CONNS" >/dev/null  # warm-up, not counted
callgrind_control -i on "$proxy_pid" >/dev/null 2>&1
served=$("$PYTHON" callgrind_load.py client "$FRONT" "$REQUESTS" "$CONNS")
callgrind_control -i off "$proxy_pid" >/dev/null 2>&1
kill -"$([ "$PROXY" = haproxy ] && echo USR1 || echo QUIT)" "$proxy_pid" 2>/dev/null || true  # graceful
wait "$proxy_pid" || true
instructions=$(awk '/^totals:/ {print $2}' "$WORK/callgrind.out")
if [ "$served" != "$REQUESTS" ]; then echo "only $served of $REQUESTS requests got 200" >&2; exit 1; fi
echo "$PROXY $KIND: requests: $served  instructions: $instructions  per request: $(( instructions / served ))"
