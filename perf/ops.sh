#!/usr/bin/env bash
# Where a forwarder's work goes, per unit of work: syscalls by name, io_uring operations
# by opcode, context switches and CPU, counted in the kernel (bpftrace tracepoints) while
# loadgen drives one workload through it. The counts do not depend on how busy the shared
# cores are, so they compare forwarders and builds where CPU times on 2 cores are noisy.
#
# Usage: perf/ops.sh FORWARDER WORKLOAD [SECS]
#   FORWARDER: ringsock | nginx | haproxy | socat | systemd-socket-proxyd | /absolute/path/to/a/ringsock
#   WORKLOAD:  pingpong1 | pingpong32 | churn | bulk   (units: request, request, connection, GiB)
# Env: RINGSOCK_ARGS="..." extra `ringsock proxy` flags. Traffic stays on loopback.
# The forwarders are started as perf/proxy.sh starts them (perf/forwarders.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
fwd=$1; workload=$2; secs=${3:-5}
need() { command -v "$1" >/dev/null || { echo "perf/ops.sh needs $1 (apt-get install $2)" >&2; exit 1; }; }
need bpftrace bpftrace; need systemd-socket-activate systemd

cargo build --release --quiet --bin ringsock --example loadgen
loadgen=$PWD/target/release/examples/loadgen
work=$(mktemp -d /tmp/ringsock-ops.XXXXXX)
trap 'jobs -p | xargs -r kill 2>/dev/null; sleep 0.3; rm -rf "$work"' EXIT
backend=$work/backend.sock
"$loadgen" backend "$backend" & sleep 0.3
port=$((18900 + RANDOM % 100))

ringsock=$PWD/target/release/ringsock
case $fwd in
  nginx) need nginx nginx-light ;;
  haproxy) need haproxy haproxy ;;
esac
# shellcheck source=perf/forwarders.sh
source perf/forwarders.sh
start_forwarder "$fwd"
comm=$(forwarder_comm "$fwd")
# systemd-socket-activate execs the forwarder on the first connection.
"$loadgen" pingpong 127.0.0.1:$port 1 1 >/dev/null 2>&1 || true

case $workload in
  pingpong1) args=(pingpong 127.0.0.1:$port 1 "$secs" 5) ;;
  pingpong32) args=(pingpong 127.0.0.1:$port 32 "$secs") ;;
  churn) args=(churn 127.0.0.1:$port 4 "$secs") ;;
  bulk) args=(bulk 127.0.0.1:$port 4 1024) ;;
  *) echo "unknown workload $workload" >&2; exit 2 ;;
esac

cat > "$work/count.bt" <<BT
tracepoint:raw_syscalls:sys_enter /strncmp(comm, "$comm", ${#comm}) == 0/ { @sys[args->id] = count(); }
tracepoint:io_uring:io_uring_submit_req /strncmp(comm, "$comm", ${#comm}) == 0/ { @uring[args->opcode] = count(); }
tracepoint:sched:sched_switch /strncmp(args->prev_comm, "$comm", ${#comm}) == 0/ {
  @switch[args->prev_state == 0 ? "involuntary" : "sleeps"] = count();
}
tracepoint:sched:sched_stat_runtime /strncmp(comm, "$comm", ${#comm}) == 0/ { @cpu_ns["cpu"] = sum(args->runtime); }
BT
bpftrace "$work/count.bt" > "$work/counts.txt" 2>"$work/bpftrace.err" & bt=$!
# bpftrace needs a moment to attach its probes.
for _ in $(seq 50); do grep -q Attaching "$work/counts.txt" 2>/dev/null && break; sleep 0.1; done
sleep 0.5
result=$("$loadgen" "${args[@]}" | tail -1)
kill -INT $bt; wait $bt 2>/dev/null || true

python3 - "$work/counts.txt" "$workload" "$secs" "$fwd" "$result" <<'PY'
import re, sys
counts, workload, secs, fwd, result = sys.argv[1:6]
kv = dict(p.split("=", 1) for p in result.split() if "=" in p)
names = {}
for line in open("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"):
    m = re.match(r"#define __NR_(\w+) (\d+)", line)
    if m:
        names[m.group(2)] = m.group(1)
# io_uring opcodes in the kernel's order (include/uapi/linux/io_uring.h), as far as used.
OPS = ("NOP READV WRITEV FSYNC READ_FIXED WRITE_FIXED POLL_ADD POLL_REMOVE SYNC_FILE_RANGE "
       "SENDMSG RECVMSG TIMEOUT TIMEOUT_REMOVE ACCEPT ASYNC_CANCEL LINK_TIMEOUT CONNECT "
       "FALLOCATE OPENAT CLOSE FILES_UPDATE STATX READ WRITE FADVISE MADVISE SEND RECV").split()
# Units of work: loadgen's rate over the run's length (it ends on time), or the bulk bytes.
if workload == "bulk":
    unit, n = "GiB", 4.0
elif workload == "churn":
    unit, n = "connection", float(kv["conn_per_s"]) * float(secs)
else:
    unit, n = "request", float(kv["req_per_s"]) * float(secs)
rows = {}
for line in open(counts):
    m = re.match(r"@(\w+)\[(.*?)\]: (\d+)", line)
    if m:
        rows.setdefault(m.group(1), {})[m.group(2)] = int(m.group(3))
def per(v):
    return "%.3g" % (v / n)
print("%s %s: %s" % (fwd, workload, result))
print("  per %s: CPU %s µs; sleeps %s, preempted %s" % (
    unit, per(rows.get("cpu_ns", {}).get("cpu", 0) / 1000.0),
    per(rows.get("switch", {}).get("sleeps", 0)), per(rows.get("switch", {}).get("involuntary", 0))))
sys_rows = sorted(rows.get("sys", {}).items(), key=lambda kv: -kv[1])
print("  syscalls %s: %s" % (per(sum(v for _, v in sys_rows)),
      ", ".join("%s %s" % (names.get(k, k), per(v)) for k, v in sys_rows if v / n >= 0.01)))
ops = sorted(rows.get("uring", {}).items(), key=lambda kv: -kv[1])
if ops:
    print("  io_uring ops %s: %s" % (per(sum(v for _, v in ops)),
          ", ".join("%s %s" % (OPS[int(k)] if int(k) < len(OPS) else k, per(v)) for k, v in ops if v / n >= 0.01)))
PY
