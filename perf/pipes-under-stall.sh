#!/usr/bin/env bash
# One upload beside downloads whose clients never read (issue 19, item 6):
#   TCP client -> ringsock proxy -> Unix-socket backend (loadgen backend)
# `loadgen bulk ADDR 1 MIB` (one connection, checksummed), first with nothing else open,
# then beside STALLED connections that ask the backend for an endless download and read
# nothing (`loadgen stall`), on both drivers. Each run prints the upload's Gbit/s, the
# proxy's CPU per GiB (user+system of its whole process, io_uring workers included), the
# bytes /metrics counted as spliced during the run, and the pipe fds the proxy held
# during the run (sampled every 0.2 s: the largest count).
#
# With COUNT=1 (needs bpftrace and root) each run also counts, in the kernel and for the
# proxy's pid alone, its CPU time and its syscalls and io_uring operations per GiB: the
# counts do not depend on how busy the 2 shared cores are, the CPU times do.
#
# Usage: perf/pipes-under-stall.sh [ROUNDS] [STALLED] [MIB]   (defaults 3, 64, 1024)
# RINGSOCK=/path/to/ringsock measures another build (e.g. the one before a change).
# Prints one line per run; traffic stays on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
stalled=${2:-64}
mib=${3:-1024}
work=$(mktemp -d /tmp/ringsock-stall.XXXXXX)
trap 'jobs -p | xargs -r kill 2>/dev/null; sleep 0.5; rm -rf "$work"' EXIT

cargo build --release --quiet --bin ringsock --example loadgen
ringsock=${RINGSOCK:-$PWD/target/release/ringsock}
loadgen=$PWD/target/release/examples/loadgen
backend=$work/backend.sock
"$loadgen" backend "$backend" &
sleep 0.3
port=18700
tck=$(getconf CLK_TCK)
ulimit -n 20000 2>/dev/null || true

ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

# count_start PID: starts bpftrace counting what PID does (COUNT=1 only).
count_start() {
  [ "${COUNT:-}" = 1 ] || return 0
  cat > "$work/count.bt" <<BT
tracepoint:raw_syscalls:sys_enter /pid == $1/ { @sys[args->id] = count(); }
tracepoint:io_uring:io_uring_submit_req /pid == $1/ { @uring[args->opcode] = count(); }
tracepoint:sched:sched_stat_runtime /pid == $1/ { @cpu_ns = sum(args->runtime); }
BT
  bpftrace "$work/count.bt" > "$work/counts.txt" 2>"$work/bpftrace.err" &
  bt=$!
  for _ in $(seq 100); do grep -q Attaching "$work/counts.txt" 2>/dev/null && break; sleep 0.1; done
  sleep 0.5
}

# count_stop: stops bpftrace (it prints its maps as it exits) and prints its counts per
# GiB on one line. Not in a subshell: only the shell that started bpftrace can wait for it.
count_stop() {
  [ "${COUNT:-}" = 1 ] || return 0
  kill -INT "$bt"; wait "$bt" 2>/dev/null || true
  python3 - "$work/counts.txt" "$mib" <<'PY'
import re, sys
counts, mib = sys.argv[1], int(sys.argv[2])
names = {}
for line in open("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"):
    m = re.match(r"#define __NR_(\w+) (\d+)", line)
    if m:
        names[m.group(2)] = m.group(1)
OPS = ("NOP READV WRITEV FSYNC READ_FIXED WRITE_FIXED POLL_ADD POLL_REMOVE SYNC_FILE_RANGE "
       "SENDMSG RECVMSG TIMEOUT TIMEOUT_REMOVE ACCEPT ASYNC_CANCEL LINK_TIMEOUT CONNECT "
       "FALLOCATE OPENAT CLOSE FILES_UPDATE STATX READ WRITE FADVISE MADVISE SEND RECV").split()
gib = mib / 1024
rows, cpu = {}, 0
for line in open(counts):
    m = re.match(r"@(\w+)\[(.*?)\]: (\d+)", line)
    if m:
        rows.setdefault(m.group(1), {})[m.group(2)] = int(m.group(3))
    m = re.match(r"@cpu_ns: (\d+)", line)
    if m:
        cpu = int(m.group(1))
def top(kind, name):
    items = sorted(rows.get(kind, {}).items(), key=lambda kv: -kv[1])
    return ",".join("%s:%d" % (name(k), v / gib) for k, v in items if v / gib >= 1)
print("  counted per GiB: cpu_ms=%d syscalls=%s uring=%s" % (
    cpu / 1e6 / gib, top("sys", lambda k: names.get(k, k)),
    top("uring", lambda k: OPS[int(k)] if int(k) < len(OPS) else k)))
PY
}
spliced() { curl -s "http://127.0.0.1:$1/metrics" | awk '/^ringsock_proxy_spliced_bytes_total /{print $2}'; }
to_clients() { curl -s "http://127.0.0.1:$1/metrics" | awk '/^ringsock_proxy_bytes_total\{direction="to_client"\}/{print $2}'; }

# Waits until the proxy has delivered nothing more to the clients for 2 s: their receive
# buffers fill before the proxy's send buffers do, so `loadgen stall` alone says so too
# early. Needs byte counters that move while connections are open.
wait_still() {
  local last=-1 now still=0
  for _ in $(seq 300); do
    now=$(to_clients "$1")
    if [ "$now" = "$last" ]; then still=$((still + 1)); else still=0; last=$now; fi
    [ "$still" -ge 10 ] && return 0
    sleep 0.2
  done
  echo "the proxy never stopped sending to the stalled clients" >&2; exit 1
}
# Pipe fds past stdin, stdout and stderr (which may be this script's pipes).
pipes() { find "/proc/$1/fd" -lname 'pipe:*' ! -name 0 ! -name 1 ! -name 2 2>/dev/null | wc -l; }

for driver in io_uring epoll; do
  for load in 0 "$stalled"; do
    metrics_port=$((port + 1))
    legacy=""
    [ "$driver" = epoll ] && legacy=1
    MONOIO_FORCE_LEGACY_DRIVER=$legacy "$ringsock" proxy --listen "127.0.0.1:$port" \
      --metrics "127.0.0.1:$metrics_port" --connections-max=10000 "$backend" 2>>"$work/ringsock.log" &
    pid=$!
    for _ in $(seq 50); do curl -sf "http://127.0.0.1:$metrics_port/metrics" >/dev/null && break; sleep 0.1; done
    stall_pid=""
    if [ "$load" -gt 0 ]; then
      "$loadgen" stall "127.0.0.1:$port" "$load" 3600 > "$work/stall.out" &
      stall_pid=$!
      for _ in $(seq 600); do [ -s "$work/stall.out" ] && break; sleep 0.1; done
      [ -s "$work/stall.out" ] || { echo "the downloads never stalled" >&2; exit 1; }
      wait_still "$metrics_port"
    fi
    for round in $(seq 1 "$rounds"); do
      before=$(ticks "$pid"); spliced_before=$(spliced "$metrics_port")
      echo 0 > "$work/pipes"
      ( most=0; while :; do n=$(pipes "$pid"); [ "$n" -gt "$most" ] && most=$n && echo "$most" > "$work/pipes"; sleep 0.2; done ) &
      sampler=$!
      count_start "$pid"
      line=$("$loadgen" bulk "127.0.0.1:$port" 1 "$mib" 2>&1 | tail -1)
      count_stop > "$work/counted"
      kill "$sampler"; wait "$sampler" 2>/dev/null || true
      after=$(ticks "$pid"); spliced_after=$(spliced "$metrics_port")
      cpu_ms=$(( (after - before) * 1000 / tck ))
      echo "driver=$driver stalled=$load round=$round $line proxy_cpu_ms_per_gib=$(( cpu_ms * 1024 / mib ))" \
        "spliced_mib=$(( (spliced_after - spliced_before) >> 20 )) most_pipe_fds=$(cat "$work/pipes")"
      cat "$work/counted"
    done
    [ -n "$stall_pid" ] && { kill "$stall_pid"; wait "$stall_pid" 2>/dev/null || true; }
    kill "$pid"; wait "$pid" 2>/dev/null || true
    port=$((port + 2))
  done
done
