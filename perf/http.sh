#!/usr/bin/env bash
# Side-by-side HTTP comparison, one run on this machine, every contender through the same
# client (wrk -t1 -c64 --latency):
#   1. ringsock serve (--threads 1) vs nginx (worker_processes 1, `return 200` with the same
#      JSON body and type; sendfile on) vs aptly api serve (Go, release mode):
#      GET /api/version, a 2 KiB file and a 1 MiB file (aptly api serve serves no files).
#   2. The seed document's setup: wrk -> TCP -> forwarder -> aptly api serve on a Unix
#      socket, with systemd-socket-proxyd and with ringsock proxy (both started by
#      systemd-socket-activate, default flags as in the units), aptly direct on TCP as
#      reference: GET /api/version.
# Every contender is checked with curl (status, body, content type) before it is measured;
# one that fails is recorded as such and not measured.
#
# Usage: perf/http.sh [SECONDS_PER_RUN]    (default 8; each run is preceded by a 1 s warm-up)
# RINGSOCK_BASE=/path/to/an/older/ringsock adds it to part 1 as "ringsock serve (base)",
# measured in the same run, for before/after comparisons.
# Writes perf/results/http-YYYY-MM-DD.md (with perf/report_http.py). Traffic stays on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-8}
conns=64
work=$(mktemp -d /tmp/ringsock-http.XXXXXX)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

need() { command -v "$1" >/dev/null || { echo "perf/http.sh needs $1 (apt-get install $2)" >&2; exit 1; }; }
need wrk wrk; need /usr/bin/time time; need nginx nginx-light; need aptly aptly; need curl curl; need python3 python3
need systemd-socket-activate systemd
[ -x /lib/systemd/systemd-socket-proxyd ] || { echo "needs /lib/systemd/systemd-socket-proxyd (systemd)" >&2; exit 1; }

cargo build --release --quiet --bin ringsock
ringsock=$PWD/target/release/ringsock

# The mirror tree: a 2 KiB and a 1 MiB file, served by ringsock (--root) and nginx (root).
root=$work/public
mkdir -p "$root/pool"
head -c 2048 /dev/urandom > "$root/pool/small_2k.deb"
head -c 1048576 /dev/urandom > "$root/pool/large_1m.deb"
aptly_body='{"Version":"1.5.0+ds1-1+b4"}'
json_type='application/json; charset=utf-8'
deb_type='application/vnd.debian.binary-package'

out=$work/raw.txt
: > "$out"
port=18600
started=""   # pid of the contender now running

# Starts contender $1 on 127.0.0.1:$port (a fresh port each time); sets $started.
start() {
  port=$((port + 1))
  case $1 in
    ringsock)
      "$ringsock" serve --threads 1 --root "$root" --listen 127.0.0.1:$port 2>>"$work/$1.log" &
      ;;
    ringsock-base)
      "$RINGSOCK_BASE" serve --threads 1 --root "$root" --listen 127.0.0.1:$port 2>>"$work/$1.log" &
      ;;
    nginx)
      # The same body ringsock answers, byte for byte (its own version, not aptly's).
      cat > "$work/nginx.conf" <<CFG
daemon off;
worker_processes 1;
user root;
pid $work/nginx.pid;
error_log $work/nginx.err warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  client_body_temp_path $work/nginx-tmp;
  proxy_temp_path $work/nginx-tmp;
  fastcgi_temp_path $work/nginx-tmp;
  uwsgi_temp_path $work/nginx-tmp;
  scgi_temp_path $work/nginx-tmp;
  types { $deb_type deb; }
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:$port;
    root $root;
    location = /api/version {
      default_type "$json_type";
      return 200 '$ringsock_body';
    }
  }
}
CFG
      nginx -e "$work/nginx.err" -c "$work/nginx.conf" 2>>"$work/$1.log" &
      ;;
    aptly)
      aptly_start "-listen=127.0.0.1:$port" ;;
    aptly-unix)
      aptly_start "-listen=unix://$work/aptly.sock" ;;
    systemd-socket-proxyd)
      systemd-socket-activate -l 127.0.0.1:$port /lib/systemd/systemd-socket-proxyd "$work/aptly.sock" 2>>"$work/$1.log" &
      ;;
    ringsock-proxy)
      systemd-socket-activate -l 127.0.0.1:$port "$ringsock" proxy "$work/aptly.sock" 2>>"$work/$1.log" &
      ;;
  esac
  started=$!
  pids+=("$started")
}

# aptly with a throw-away rootDir, in gin's release mode; it logs every request on stdout
# (as it would into the journal), which goes to /dev/null here.
aptly_start() {
  mkdir -p "$work/aptly"
  echo "{\"rootDir\": \"$work/aptly\"}" > "$work/aptly.conf"
  rm -f "$work/aptly.sock"
  GIN_MODE=release aptly api serve -config="$work/aptly.conf" "$1" >/dev/null 2>>"$work/aptly.log" &
}

stop() {
  local p=$1
  [ -n "$p" ] || return 0
  kill "$p" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}

# Waits up to 5 s for $1 (a TCP port or a Unix socket path) to accept.
wait_listening() {
  for _ in $(seq 50); do
    case $1 in
      /*) [ -S "$1" ] && return 0 ;;
      *) (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0 ;;
    esac
    sleep 0.1
  done
  return 1
}

# check NAME URL BODY_FILE TYPE: one GET with curl; status 200, the exact body and type.
check() {
  local name=$1 url=$2 want=$3 type=$4 got
  got=$(curl -sS --max-time 5 -o "$work/body" -w '%{http_code} %{content_type}' "$url" 2>&1) || true
  if [ "$got" = "200 $type" ] && cmp -s "$work/body" "$want"; then
    echo "verified $name $url: $got, $(wc -c < "$work/body") bytes" >> "$out"
    return 0
  fi
  echo "FAILED $name $url: got '$got', $(wc -c < "$work/body" 2>/dev/null || echo 0) bytes, $(head -c 80 "$work/body" 2>/dev/null | tr -c '[:print:]' '.')" | tee -a "$out" >&2
  return 1
}

# CPU seconds (user + system, all threads, live or exited) the processes $@ used so far.
cpu_s() {
  local p t=0
  for p in "$@"; do [ -r "/proc/$p/stat" ] && t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}'))); done
  awk -v t=$t -v hz="$hz" 'BEGIN { printf "%.2f", t / hz }'
}

# bench NAME WORKLOAD URL: 1 s warm-up, then the timed wrk run appended to the raw output
# with the CPU time the server ($srv_pids), the backend behind it ($backend_pids) and wrk
# used during it.
bench() {
  local name=$1 workload=$2 url=$3 s0 b0 s1 b1
  wrk -t1 -c$conns -d1s "$url" >/dev/null 2>&1 || true
  echo "=== $name $workload $url" >> "$out"
  s0=$(cpu_s $srv_pids); b0=$(cpu_s $backend_pids)
  /usr/bin/time -f '%U %S' -o "$work/time" wrk -t1 -c$conns -d${secs}s --latency "$url" >> "$out" 2>&1 || echo "wrk exited $?" >> "$out"
  s1=$(cpu_s $srv_pids); b1=$(cpu_s $backend_pids)
  tail -1 "$work/time" | awk -v s0="$s0" -v s1="$s1" -v b0="$b0" -v b1="$b1" \
    '{ printf "cpu: server %.2f s, backend %.2f s, wrk %.2f s\n", s1 - s0, b1 - b0, $(NF-1) + $NF }' >> "$out"
  echo "$name $workload: $(grep Requests/sec "$out" | tail -1) $(tail -1 "$out")"
}

# measure NAME WORKLOAD URL BODY_FILE TYPE
measure() {
  if check "$1" "$3" "$4" "$5"; then bench "$@"; else echo "=== $1 $2 $3 NOT MEASURED (failed verification)" >> "$out"; fi
}

ulimit -n 20000 2>/dev/null || true
hz=$(getconf CLK_TCK)
srv_pids=""; backend_pids=""
printf '%s' "$aptly_body" > "$work/aptly_body"

# --- 1. servers side by side ---------------------------------------------------------
start ringsock
wait_listening $port || echo "ringsock serve did not listen" >> "$out"
ringsock_body=$(curl -s --max-time 5 http://127.0.0.1:$port/api/version)
printf '%s' "$ringsock_body" > "$work/ringsock_body"
contenders="ringsock nginx aptly"
[ -n "${RINGSOCK_BASE:-}" ] && contenders="$contenders ringsock-base"
for s in $contenders; do
  [ "$s" = ringsock ] || { start "$s"; wait_listening $port || echo "$s did not listen on $port" >> "$out"; }
  base=http://127.0.0.1:$port
  if [ "$s" = nginx ]; then for _ in $(seq 20); do pgrep -P "$started" >/dev/null && break; sleep 0.1; done; fi
  srv_pids="$started $(pgrep -P "$started" | tr '\n' ' ' || true)"   # nginx: master and worker
  case $s in
    aptly) measure "aptly api serve" version "$base/api/version" "$work/aptly_body" "$json_type" ;;
    *)
      label=$s; [ "$s" = ringsock ] && label="ringsock serve"
      [ "$s" = ringsock-base ] && label="ringsock serve (base)"
      measure "$label" version "$base/api/version" "$work/ringsock_body" "$json_type"
      measure "$label" file-2k "$base/pool/small_2k.deb" "$root/pool/small_2k.deb" "$deb_type"
      measure "$label" file-1m "$base/pool/large_1m.deb" "$root/pool/large_1m.deb" "$deb_type"
      ;;
  esac
  stop "$started"
done

# --- 2. the seed document's setup: wrk -> TCP -> forwarder -> aptly.sock ---------------
start aptly
wait_listening $port || echo "aptly did not listen on $port" >> "$out"
srv_pids=$started
measure "aptly direct (TCP)" e2e "http://127.0.0.1:$port/api/version" "$work/aptly_body" "$json_type"
stop "$started"
start aptly-unix
aptly_pid=$started
wait_listening "$work/aptly.sock" || echo "aptly did not create $work/aptly.sock" >> "$out"
backend_pids=$aptly_pid
for fwd in systemd-socket-proxyd ringsock-proxy; do
  start "$fwd"
  wait_listening $port || echo "$fwd: systemd-socket-activate did not listen on $port" >> "$out"
  label=$fwd; [ "$fwd" = ringsock-proxy ] && label="ringsock proxy"
  srv_pids=$started   # systemd-socket-activate execs the forwarder in place
  # The first connection makes systemd-socket-activate exec the forwarder; check() is it.
  measure "$label → aptly.sock" e2e "http://127.0.0.1:$port/api/version" "$work/aptly_body" "$json_type"
  # Still alive and answering after the run?
  check "$label → aptly.sock (after the run)" "http://127.0.0.1:$port/api/version" "$work/aptly_body" "$json_type" || true
  stop "$started"
done
stop "$aptly_pid"
for f in "$work"/*.log "$work/nginx.err"; do
  [ -s "$f" ] || continue
  echo "--- $(basename "$f") (last 5 lines)" >> "$out"; tail -5 "$f" >> "$out"
done

date=$(date -u +%Y-%m-%d)
result=perf/results/http-$date.md
mkdir -p perf/results
python3 perf/report_http.py "$out" "$secs" "$conns" "$(nginx -v 2>&1 | sed 's/.*\///')" "$(aptly version | sed 's/.*: //')" \
    "$("$ringsock" --version | awk '{print $2}')" > "$result"
cat "$result"
