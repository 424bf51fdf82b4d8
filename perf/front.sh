#!/usr/bin/env bash
# The aptly host's front, side by side in one run (issue 21): aptly api serve on a Unix
# socket, and in front of it on TCP, one worker each:
#   - ringsock serve --route /api/=aptly.sock (HTTP-aware, backend connections kept alive)
#   - nginx proxy_pass to the same socket, upstream keepalive on (HTTP/1.1, Connection "")
#   - ringsock proxy aptly.sock (bytes only, no parsing): the blind hop, as a reference
# 1. GET /api/version with wrk -t1 -c32: requests/s, latency percentiles, and each
#    forwarder's own CPU per request (user + system, from /proc; aptly's is not counted).
# 2. A 1 GiB package upload with curl -F to /api/files/: each forwarder's own CPU per GiB,
#    wall time and peak RSS (VmHWM), nginx both as it ships (proxy_request_buffering on:
#    the whole body goes to a temporary file first) and with it off (streamed).
# ROUNDS rounds of everything; the report gives ranges.
#
# Usage: perf/front.sh [SECONDS_PER_RUN] [ROUNDS]   (defaults 8 and 3)
# Writes perf/results/front-YYYY-MM-DD.md. Traffic stays on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-8}
rounds=${2:-3}
conns=32
work=$(mktemp -d /tmp/ringsock-front.XXXXXX)
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

need() { command -v "$1" >/dev/null || { echo "perf/front.sh needs $1 (apt-get install $2)" >&2; exit 1; }; }
need wrk wrk; need nginx nginx-light; need aptly aptly; need curl curl; need python3 python3

cargo build --release --quiet --bin ringsock
ringsock=$PWD/target/release/ringsock
hz=$(getconf CLK_TCK)
out=$work/raw.txt
: > "$out"
port=18700
ulimit -n 20000 2>/dev/null || true

# aptly on its Unix socket, release mode, a throw-away rootDir.
mkdir -p "$work/aptly"
echo "{\"rootDir\": \"$work/aptly\"}" > "$work/aptly.conf"
GIN_MODE=release aptly api serve -config="$work/aptly.conf" -listen="unix://$work/aptly.sock" \
  >/dev/null 2>>"$work/aptly.log" &
pids+=($!)
for _ in $(seq 50); do [ -S "$work/aptly.sock" ] && break; sleep 0.1; done

# nginx in front of the same socket; $1: proxy_request_buffering on or off.
nginx_conf() {
  mkdir -p "$work/nginx-tmp"
  cat > "$work/nginx.conf" <<CFG
daemon off;
worker_processes 1;
user root;
pid $work/nginx.pid;
error_log $work/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx-tmp;
  proxy_temp_path $work/nginx-tmp;
  fastcgi_temp_path $work/nginx-tmp;
  uwsgi_temp_path $work/nginx-tmp;
  scgi_temp_path $work/nginx-tmp;
  keepalive_requests 1000000;
  upstream aptly { server unix:$work/aptly.sock; keepalive 32; }
  server {
    listen 127.0.0.1:$port;
    client_max_body_size 0;
    location /api/ {
      proxy_pass http://aptly;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_request_buffering $1;
    }
  }
}
CFG
}

# Starts forwarder $1 on a fresh port; sets $started and $srv_pids (nginx: its worker).
start() {
  port=$((port + 1))
  case $1 in
    ringsock-serve)
      "$ringsock" serve --threads 1 --listen 127.0.0.1:$port --route "/api/=$work/aptly.sock" 2>>"$work/$1.log" & ;;
    ringsock-proxy)
      "$ringsock" proxy --threads 1 --listen 127.0.0.1:$port "$work/aptly.sock" 2>>"$work/$1.log" & ;;
    nginx|nginx-stream)
      local buffering=on; [ "$1" = nginx-stream ] && buffering=off
      nginx_conf $buffering
      nginx -e "$work/nginx.err" -c "$work/nginx.conf" 2>>"$work/$1.log" & ;;
  esac
  started=$!
  pids+=("$started")
  for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  srv_pids=$started
  case $1 in nginx*)
    for _ in $(seq 20); do pgrep -P "$started" >/dev/null && break; sleep 0.1; done
    srv_pids=$(pgrep -P "$started" | tr '\n' ' ') ;;
  esac
}

stop() {
  kill "$started" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$started" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$started" 2>/dev/null || true
  wait "$started" 2>/dev/null || true
}

# CPU seconds (user + system) the processes $@ used so far.
cpu_s() {
  local p t=0
  for p in "$@"; do [ -r "/proc/$p/stat" ] && t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}'))); done
  awk -v t=$t -v hz="$hz" 'BEGIN { printf "%.3f", t / hz }'
}

peak_kib() {
  local p m=0 v
  for p in "$@"; do v=$(awk '/VmHWM/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0); [ "${v:-0}" -gt $m ] && m=$v; done
  echo $m
}

want=$(curl -s --unix-socket "$work/aptly.sock" http://x/api/version)
version() {
  local name=$1 round=$2 got s0 s1
  got=$(curl -s --max-time 5 "http://127.0.0.1:$port/api/version")
  if [ "$got" != "$want" ]; then echo "FAILED $name version: $got" | tee -a "$out" >&2; return; fi
  wrk -t1 -c$conns -d1s "http://127.0.0.1:$port/api/version" >/dev/null 2>&1 || true
  echo "=== version $name round $round" >> "$out"
  s0=$(cpu_s $srv_pids)
  wrk -t1 -c$conns -d${secs}s --latency "http://127.0.0.1:$port/api/version" >> "$out" 2>&1
  s1=$(cpu_s $srv_pids)
  echo "cpu: forwarder $(awk -v a="$s0" -v b="$s1" 'BEGIN {printf "%.3f", b - a}') s" >> "$out"
}

head -c $((1 << 30)) /dev/zero | tr '\0' 'x' > "$work/upload.bin"   # 1 GiB
upload() {
  local name=$1 round=$2 s0 s1 t0 t1 got
  echo "=== upload $name round $round" >> "$out"
  s0=$(cpu_s $srv_pids); t0=$(date +%s.%N)
  got=$(curl -sS --max-time 300 -F "file=@$work/upload.bin" "http://127.0.0.1:$port/api/files/up$round" 2>&1)
  t1=$(date +%s.%N); s1=$(cpu_s $srv_pids)
  [ "$got" = "[\"up$round/upload.bin\"]" ] || echo "FAILED $name upload: $got" >> "$out"
  echo "upload: forwarder $(awk -v a="$s0" -v b="$s1" 'BEGIN {printf "%.3f", b - a}') s cpu, $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}') s wall, peak $(peak_kib $srv_pids) KiB" >> "$out"
  curl -s -X DELETE --unix-socket "$work/aptly.sock" "http://x/api/files/up$round" >/dev/null
}

for round in $(seq "$rounds"); do
  for f in ringsock-serve nginx ringsock-proxy; do
    start $f; version $f "$round"; stop
  done
  [ -n "${SKIP_UPLOAD:-}" ] && continue
  for f in ringsock-serve nginx nginx-stream; do
    start $f; upload $f "$round"; stop
  done
done

date=$(date -u +%Y-%m-%d)
result=perf/results/front-$date.md
python3 perf/report_front.py "$out" "$secs" "$conns" "$(nginx -v 2>&1 | sed 's/.*\///')" \
  "$(aptly version | sed 's/.*: //')" "$("$ringsock" --version | awk '{print $2}')" > "$result"
cat "$result"
