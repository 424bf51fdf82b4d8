#!/usr/bin/env bash
# Side-by-side forwarder comparison, one run on this machine:
#   TCP client -> forwarder -> Unix-socket backend
# for direct (no forwarder), systemd-socket-proxyd, HAProxy (tcp, splice), nginx stream
# (proxy_half_close on), socat and ringsock proxy. Workloads: 64-byte ping-pong over 1
# and 32 connections, bulk 4 x 1 GiB with a checksummed half-close reply, connect churn,
# 2,000 idle connections (RSS, threads incl. io_uring workers).
#
# Besides each forwarder's own CPU it records the whole machine's busy CPU per run, so
# the report can say, for each target, how much CPU per request the client and backend
# leave the forwarder at the target rate: on a machine where they share the cores, that
# and not the forwarder alone decides what ratio is reachable.
#
# Usage: perf/proxy.sh [SECONDS_PER_RUN] [BULK_MIB] [ROUNDS]   (defaults 8, 1024, 1)
# ROUNDS > 1 repeats the whole comparison and reports the spread of the ratios.
# RINGSOCK_BASE=/path/to/an/older/ringsock adds it as `ringsock-base`, measured in the
# same run, for before/after comparisons; FORWARDERS="..." runs only those.
# Writes perf/results/proxy-YYYY-MM-DD.md (or $RESULT) with perf/report_proxy.py. Traffic stays on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-8}
bulk_mib=${2:-1024}
rounds=${3:-1}
work=$(mktemp -d /tmp/ringsock-perf.XXXXXX)
trap 'jobs -p | xargs -r kill 2>/dev/null; sleep 0.5; rm -rf "$work"' EXIT

need() { command -v "$1" >/dev/null || { echo "perf/proxy.sh needs $1 (apt-get install $2)" >&2; exit 1; }; }
need haproxy haproxy; need nginx nginx-light; need socat socat; need systemd-socket-activate systemd
[ -x /lib/systemd/systemd-socket-proxyd ] || { echo "needs /lib/systemd/systemd-socket-proxyd (systemd)" >&2; exit 1; }
[ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || { echo "needs libnginx-mod-stream" >&2; exit 1; }

cargo build --release --quiet --bin ringsock --example loadgen
ringsock=$PWD/target/release/ringsock
loadgen=$PWD/target/release/examples/loadgen

backend=$work/backend.sock
"$loadgen" backend "$backend" & sleep 0.3
port=18500
out=$work/raw.txt
: > "$out"

# start_forwarder NAME: the forwarders compared here, shared with perf/ops.sh.
# shellcheck source=perf/forwarders.sh
source perf/forwarders.sh

stop_forwarder() {
  [ -n "$fwd_pid" ] || return 0
  kill "$fwd_pid" 2>/dev/null || true
  pkill -P "$fwd_pid" 2>/dev/null || true
  wait "$fwd_pid" 2>/dev/null || true
  port=$((port + 1))
}

# CPU ticks (utime+stime) of a forwarder: its process tree, plus children it already
# reaped (socat forks one per connection).
cpu_ticks() {
  local root=$1 total=0 pids p
  [ -n "$root" ] || { echo 0; return; }
  pids=$root
  for p in $(pgrep -P "$root" 2>/dev/null); do pids="$pids $p $(pgrep -P "$p" 2>/dev/null)"; done
  for p in $pids; do
    [ -r /proc/$p/stat ] || continue
    if [ "$p" = "$root" ]; then
      total=$((total + $(awk '{print $14+$15+$16+$17}' /proc/$p/stat)))
    else
      total=$((total + $(awk '{print $14+$15}' /proc/$p/stat)))
    fi
  done
  echo $total
}

# Busy CPU ticks of the whole machine: user, nice, system, irq and softirq (loopback
# TCP's receive path runs as softirq and is not always charged to a process).
machine_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }

ulimit -n 20000 2>/dev/null || true
for round in $(seq 1 "$rounds"); do
forwarders=${FORWARDERS:-direct systemd-socket-proxyd haproxy nginx socat ringsock}
[ -n "${RINGSOCK_BASE:-}" ] && forwarders="$forwarders ringsock-base"
for fwd in $forwarders; do
  start_forwarder "$fwd"
  addr=127.0.0.1:$port
  [ "$fwd" = direct ] && addr=$backend
  run() {
    local before after machine_before machine_after start_ns end_ns line tck
    tck=$(getconf CLK_TCK)
    before=$(cpu_ticks "$fwd_pid"); machine_before=$(machine_ticks); start_ns=$(date +%s%N)
    line=$("$loadgen" "$@" 2>&1 | tail -1)
    end_ns=$(date +%s%N); machine_after=$(machine_ticks); after=$(cpu_ticks "$fwd_pid")
    echo "$fwd $line fwd_cpu_ms=$(( (after - before) * 1000 / tck ))" \
      "machine_cpu_ms=$(( (machine_after - machine_before) * 1000 / tck ))" \
      "wall_ms=$(( (end_ns - start_ns) / 1000000 )) round=$round" | tee -a "$out"
  }
  if [ "$fwd" = systemd-socket-proxyd ] || [ "${fwd%-base}" = ringsock ]; then
    # systemd-socket-activate execs the forwarder on the first connection.
    "$loadgen" pingpong "$addr" 1 1 >/dev/null 2>&1 || true
  fi
  run pingpong "$addr" 1 "$secs" 10
  run pingpong "$addr" 32 "$secs"
  run bulk "$addr" 4 "$bulk_mib"
  run churn "$addr" 4 "$secs"
  if [ -n "$fwd_pid" ]; then run idle "$addr" 2000 "$fwd_pid"; fi
  stop_forwarder
done
done

date=$(date -u +%Y-%m-%d)
result=${RESULT:-perf/results/proxy-$date.md}
python3 perf/report_proxy.py "$out" "$secs" "$bulk_mib" > "$result"
cat "$result"
