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
# Writes perf/results/proxy-YYYY-MM-DD.md. Traffic stays on loopback.
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

# Starts forwarder $1 listening on 127.0.0.1:$port; sets $fwd_pid.
start_forwarder() {
  case $1 in
    direct) fwd_pid="" ;;
    systemd-socket-proxyd)
      systemd-socket-activate -l 127.0.0.1:$port /lib/systemd/systemd-socket-proxyd --connections-max=10000 "$backend" 2>>"$work/$1.log" &
      fwd_pid=$! ;;
    ringsock)
      systemd-socket-activate -l 127.0.0.1:$port "$ringsock" proxy --connections-max=10000 "$backend" 2>>"$work/$1.log" &
      fwd_pid=$! ;;
    ringsock-base)
      systemd-socket-activate -l 127.0.0.1:$port "$RINGSOCK_BASE" proxy --connections-max=10000 "$backend" 2>>"$work/$1.log" &
      fwd_pid=$! ;;
    haproxy)
      cat > "$work/haproxy.cfg" <<CFG
global
  nbthread 2
  maxconn 6000
defaults
  mode tcp
  timeout connect 10s
  timeout client 1h
  timeout server 1h
  option splice-auto
listen fwd
  bind 127.0.0.1:$port
  server backend unix@$backend
CFG
      haproxy -f "$work/haproxy.cfg" -db 2>>"$work/$1.log" &
      fwd_pid=$! ;;
    nginx)
      cat > "$work/nginx.conf" <<CFG
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx.err warn;
user root;
worker_rlimit_nofile 19000;
events { worker_connections 9000; }
stream {
  server {
    listen 127.0.0.1:$port backlog=4096;
    proxy_pass unix:$backend;
    proxy_half_close on;
    proxy_timeout 1h;
  }
}
CFG
      nginx -c "$work/nginx.conf" 2>>"$work/$1.log" &
      fwd_pid=$! ;;
    socat)
      socat TCP-LISTEN:$port,bind=127.0.0.1,fork,reuseaddr,backlog=4096 UNIX-CONNECT:"$backend" 2>>"$work/$1.log" &
      fwd_pid=$! ;;
  esac
  sleep 0.5
}

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
  run pingpong "$addr" 1 "$secs"
  run pingpong "$addr" 32 "$secs"
  run bulk "$addr" 4 "$bulk_mib"
  run churn "$addr" 4 "$secs"
  if [ -n "$fwd_pid" ]; then run idle "$addr" 2000 "$fwd_pid"; fi
  stop_forwarder
done
done

date=$(date -u +%Y-%m-%d)
result=perf/results/proxy-$date.md
python3 - "$out" "$secs" "$bulk_mib" > "$result" <<'PY'
import sys, collections, platform, os
raw, secs, mib = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
ncpu = os.cpu_count()
# round -> forwarder -> workload -> the key=value fields loadgen and run() printed
rounds = collections.OrderedDict()
for line in open(raw):
    parts = line.split()
    if len(parts) < 2: continue
    fwd, kind = parts[0], parts[1]
    kv = dict(p.split("=", 1) for p in parts[2:] if "=" in p)
    r = rounds.setdefault(int(kv.get("round", "1")), collections.OrderedDict()).setdefault(fwd, {})
    if kind == "pingpong":
        r["pp%s" % kv["conns"]] = kv
    elif kind in ("bulk", "churn", "idle"):
        r[kind] = kv
last = rounds[next(reversed(rounds))]

def g(rows, fwd, key, field):
    try: return float(rows[fwd][key][field])
    except Exception: return None
def f(v, fmt="{:.0f}"):
    return "—" if v is None else fmt.format(v)
# Units of work per workload: requests and connections (CPU in µs each), GiB (ms each).
UNIT = {"pp32": "µs per request", "churn": "µs per connection", "bulk": "ms per GiB"}
def rate(rows, fwd, key):
    """Units per second: req/s, conn/s, GiB/s."""
    field = {"pp32": "req_per_s", "churn": "conn_per_s", "bulk": "gbit_per_s"}[key]
    v = g(rows, fwd, key, field)
    return None if v is None else (v / 8 if key == "bulk" else v)
def cost(rows, fwd, key, field):
    """CPU `field` (fwd_cpu_ms or machine_cpu_ms) per unit of work."""
    try:
        ms = float(rows[fwd][key][field])
        if key == "bulk":
            return ms / (4 * mib / 1024)
        return ms * 1000 / (rate(rows, fwd, key) * secs)
    except Exception:
        return None
def busy(rows, fwd, key):
    try:
        kv = rows[fwd][key]
        return float(kv["machine_cpu_ms"]) / (ncpu * float(kv["wall_ms"]))
    except Exception:
        return None

print("# Forwarder comparison: TCP client → forwarder → Unix-socket backend\n")
print("%s, kernel %s, %d CPUs; %.0fs per timed workload, bulk 4 × %.0f MiB; %d round%s, tables from the last. Generated by perf/proxy.sh.\n"
      % (os.popen("date -u +'%Y-%m-%d %H:%M UTC'").read().strip(), platform.release(), ncpu, secs, mib,
         len(rounds), "" if len(rounds) == 1 else "s"))
print("| forwarder | ping-pong 1 conn req/s (p50/p99 µs) | ping-pong 32 conns req/s (p50/p99 µs) | bulk Gbit/s (failures) | churn conn/s (failures) | 2,000 idle: RSS MiB / threads |")
print("|---|---|---|---|---|---|")
for fwd, r in last.items():
    def pp(k):
        return "%s (%s/%s)" % (f(g(last, fwd, k, "req_per_s")), f(g(last, fwd, k, "p50_us")), f(g(last, fwd, k, "p99_us")))
    idle = "—" if "idle" not in r else "%s / %s%s" % (r["idle"]["rss_mib"], r["idle"]["threads"],
        "" if r["idle"].get("failures", "0") == "0" else " (%s failed)" % r["idle"]["failures"])
    print("| %s | %s | %s | %s (%s) | %s (%s) | %s |" % (fwd, pp("pp1"), pp("pp32"),
        f(g(last, fwd, "bulk", "gbit_per_s"), "{:.2f}"), f(g(last, fwd, "bulk", "failures")),
        f(g(last, fwd, "churn", "conn_per_s")), f(g(last, fwd, "churn", "failures")), idle))

print("\nCPU per unit of work in the same runs: the forwarder's own (user+system, its whole process tree),"
      " then the whole machine's (every process plus irq and softirq) with how busy the machine was."
      " The difference is what the client, the backend and the kernel's loopback work cost around the forwarder.\n")
print("| forwarder | µs per 32-conn ping-pong request: own / machine (busy) | ms per GiB bulk: own / machine (busy) | µs per churn connection: own / machine (busy) |")
print("|---|---|---|---|")
for fwd in last:
    cells = []
    for key, fmt in (("pp32", "{:.1f}"), ("bulk", "{:.0f}"), ("churn", "{:.1f}")):
        own = None if fwd == "direct" else cost(last, fwd, key, "fwd_cpu_ms")
        b = busy(last, fwd, key)
        cells.append("%s / %s (%s)" % (f(own, fmt), f(cost(last, fwd, key, "machine_cpu_ms"), fmt),
                                       f(None if b is None else b * 100, "{:.0f}%")))
    print("| %s | %s |" % (fwd, " | ".join(cells)))

others = [x for x in last if x not in ("direct", "ringsock", "ringsock-base")]
def reference(rows, key):
    """The forwarder a target compares with, and its rate."""
    if key == "bulk":
        among = ["systemd-socket-proxyd"]
    elif key == "churn":
        among = ["haproxy", "nginx"]
    else:
        among = [x for x in rows if x not in ("direct", "ringsock", "ringsock-base")]
    vals = [(rate(rows, x, key), x) for x in among if rate(rows, x, key)]
    return max(vals) if vals else (None, None)
TARGETS = [("pp32", "32-conn ping-pong vs best other", 1.5),
           ("bulk", "bulk vs systemd-socket-proxyd", 1.3),
           ("churn", "churn vs best of HAProxy/nginx", 1.3)]
def ratio(rows, key):
    ref, who = reference(rows, key)
    v = rate(rows, "ringsock", key)
    return (v / ref, who) if ref and v else (None, who)

print("\n## ringsock against the targets\n")
for key, name, target in TARGETS:
    r, who = ratio(last, key)
    if r is None: continue
    line = "- %s (%s): **%.2f×** (target ≥ %.1f×) %s." % (name, who, r, target, "met" if r >= target else "NOT met")
    machine, own = cost(last, "ringsock", key, "machine_cpu_ms"), cost(last, "ringsock", key, "fwd_cpu_ms")
    b = busy(last, "ringsock", key)
    if r < target and None not in (machine, own, b):
        # At the target rate the machine has ncpu seconds of CPU per second to spend.
        scale = 1000.0 if key == "bulk" else 1e6
        allowed = ncpu * scale / (target * reference(last, key)[0])
        rest = machine - own
        unit = UNIT[key]
        line += (" The machine was %.0f%% busy and spent %.1f %s, %.1f of it outside ringsock;"
                 " at %.1f× it could spend at most %.1f, which %s (ringsock used %.1f)."
                 % (b * 100, machine, unit, rest, target, allowed,
                    "leaves the forwarder %.1f" % (allowed - rest) if allowed > rest
                    else "the client, backend and loopback work alone exceed", own))
    print(line)
try:
    rs, rt = float(last["ringsock"]["idle"]["rss_mib"]), int(last["ringsock"]["idle"]["threads"])
    hs = float(last["haproxy"]["idle"]["rss_mib"])
    print("- 2,000 idle: %d threads (target < 16) %s; RSS %.1f MiB vs HAProxy %.1f MiB %s"
          % (rt, "met" if rt < 16 else "NOT met", rs, hs, "met" if rs < hs else "NOT met"))
except Exception:
    pass
fails = sorted({(fwd, k) for rows in rounds.values() for fwd, r in rows.items()
                for k in ("bulk", "churn") if k in r and r[k].get("failures", "0") != "0"})
print("- failures: %s" % (", ".join("%s %s" % x for x in fails) or "none"))
if fails:
    print("\nA workload with failures measured failed work: systemd-socket-proxyd close()s instead of"
          " half-closing, so bulk transfers finish sending but their checksummed reply never arrives, and"
          " churn clients get empty replies; its Gbit/s and per-connection CPU there are not comparable.")

if len(rounds) > 1:
    print("\n## Spread over the %d rounds\n" % len(rounds))
    print("| round | ping-pong 32 ratio | bulk ratio | churn ratio | own CPU per ping-pong request, µs: ringsock / nginx / haproxy | per GiB, ms: ringsock / systemd-socket-proxyd / haproxy | per churn connection, µs: ringsock / nginx / haproxy |")
    print("|---|---|---|---|---|---|---|")
    for n, rows in rounds.items():
        cells = []
        for key, _, _ in TARGETS:
            r, who = ratio(rows, key)
            cells.append("—" if r is None else "%.2f× (%s)" % (r, who))
        for key, fmt, peers in (("pp32", "{:.1f}", ("ringsock", "nginx", "haproxy")),
                                ("bulk", "{:.0f}", ("ringsock", "systemd-socket-proxyd", "haproxy")),
                                ("churn", "{:.1f}", ("ringsock", "nginx", "haproxy"))):
            cells.append(" / ".join(f(cost(rows, x, key, "fwd_cpu_ms"), fmt) for x in peers))
        print("| %d | %s |" % (n, " | ".join(cells)))

print("\n## Raw output\n\n```")
print(open(raw).read().rstrip())
print("```")
PY
cat "$result"
