#!/usr/bin/env bash
# Side-by-side forwarder comparison, one run on this machine:
#   TCP client -> forwarder -> Unix-socket backend
# for direct (no forwarder), systemd-socket-proxyd, HAProxy (tcp, splice), nginx stream
# (proxy_half_close on), socat and ringsock proxy. Workloads: 64-byte ping-pong over 1
# and 32 connections, bulk 4 x 1 GiB with a checksummed half-close reply, connect churn,
# 2,000 idle connections (RSS, threads incl. io_uring workers).
#
# Usage: perf/proxy.sh [SECONDS_PER_RUN] [BULK_MIB]    (defaults 8 and 1024)
# Writes perf/results/proxy-YYYY-MM-DD.md. Traffic stays on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-8}
bulk_mib=${2:-1024}
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

ulimit -n 20000 2>/dev/null || true
for fwd in direct systemd-socket-proxyd haproxy nginx socat ringsock; do
  start_forwarder "$fwd"
  addr=127.0.0.1:$port
  [ "$fwd" = direct ] && addr=$backend
  run() {
    local before after
    before=$(cpu_ticks "$fwd_pid")
    local line
    line=$("$loadgen" "$@" 2>&1 | tail -1)
    after=$(cpu_ticks "$fwd_pid")
    echo "$fwd $line fwd_cpu_ms=$(( (after - before) * 1000 / $(getconf CLK_TCK) ))" | tee -a "$out"
  }
  if [ "$fwd" = systemd-socket-proxyd ] || [ "$fwd" = ringsock ]; then
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

date=$(date -u +%Y-%m-%d)
result=perf/results/proxy-$date.md
python3 - "$out" "$secs" "$bulk_mib" > "$result" <<'PY'
import sys, re, collections, platform, os
raw, secs, mib = sys.argv[1], sys.argv[2], sys.argv[3]
rows = collections.OrderedDict()
for line in open(raw):
    parts = line.split()
    if len(parts) < 2: continue
    fwd, kind = parts[0], parts[1]
    kv = dict(p.split("=", 1) for p in parts[2:] if "=" in p)
    r = rows.setdefault(fwd, {})
    if kind == "pingpong":
        r["pp%s" % kv["conns"]] = kv
    elif kind in ("bulk", "churn", "idle"):
        r[kind] = kv
    else:
        r.setdefault("errors", []).append(line.strip())
def g(fwd, key, field):
    try: return float(rows[fwd][key][field])
    except Exception: return None
def f(v, fmt="{:.0f}"):
    return "—" if v is None else fmt.format(v)
print("# Forwarder comparison: TCP client → forwarder → Unix-socket backend\n")
print("One run, %s, kernel %s, %d CPUs; %ss per timed workload, bulk 4 × %s MiB. Generated by perf/proxy.sh.\n"
      % (os.popen("date -u +'%Y-%m-%d %H:%M UTC'").read().strip(), platform.release(), os.cpu_count(), secs, mib))
print("| forwarder | ping-pong 1 conn req/s (p50/p99 µs) | ping-pong 32 conns req/s (p50/p99 µs) | bulk Gbit/s (failures) | churn conn/s (failures) | 2,000 idle: RSS MiB / threads |")
print("|---|---|---|---|---|---|")
for fwd, r in rows.items():
    def pp(k):
        return "%s (%s/%s)" % (f(g(fwd, k, "req_per_s")), f(g(fwd, k, "p50_us")), f(g(fwd, k, "p99_us")))
    idle = "—" if "idle" not in r else "%s / %s%s" % (r["idle"]["rss_mib"], r["idle"]["threads"],
        "" if r["idle"].get("failures", "0") == "0" else " (%s failed)" % r["idle"]["failures"])
    print("| %s | %s | %s | %s (%s) | %s (%s) | %s |" % (fwd, pp("pp1"), pp("pp32"),
        f(g(fwd, "bulk", "gbit_per_s"), "{:.2f}"), f(g(fwd, "bulk", "failures")),
        f(g(fwd, "churn", "conn_per_s")), f(g(fwd, "churn", "failures")), idle))
print("\nForwarder CPU (user+system, its whole process tree) per unit of work in the same runs —"
      " what the forwarder itself costs, apart from the client and backend it shares 2 cores with:\n")
print("| forwarder | µs per 32-conn ping-pong request | ms per GiB bulk | µs per churn connection |")
print("|---|---|---|---|")
def per(fwd, key, count_field, scale):
    try:
        kv = rows[fwd][key]
        ms = float(kv["fwd_cpu_ms"])
        n = float(kv[count_field])
        return ms * scale / n if n else None
    except Exception:
        return None
for fwd in rows:
    if fwd == "direct": continue
    pp = per(fwd, "pp32", "req_per_s", 1000.0 / float(secs))
    bulk = None
    try: bulk = float(rows[fwd]["bulk"]["fwd_cpu_ms"]) / (4 * float(mib) / 1024)
    except Exception: pass
    ch = per(fwd, "churn", "conn_per_s", 1000.0 / float(secs))
    print("| %s | %s | %s | %s |" % (fwd, f(pp, "{:.1f}"), f(bulk, "{:.0f}"), f(ch, "{:.1f}")))
others = [x for x in rows if x not in ("direct", "ringsock")]
def best(key, field, among):
    vals = [(g(x, key, field), x) for x in among if g(x, key, field) is not None]
    return max(vals) if vals else (None, None)
print("\n## ringsock against the targets\n")
checks = []
b, who = best("pp32", "req_per_s", others)
v = g("ringsock", "pp32", "req_per_s")
if b and v: checks.append(("32-conn ping-pong vs best other (%s)" % who, v / b, 1.5))
s = g("systemd-socket-proxyd", "bulk", "gbit_per_s"); v = g("ringsock", "bulk", "gbit_per_s")
if s and v: checks.append(("bulk vs systemd-socket-proxyd", v / s, 1.3))
b, who = best("churn", "conn_per_s", ["haproxy", "nginx"])
v = g("ringsock", "churn", "conn_per_s")
if b and v: checks.append(("churn vs best of HAProxy/nginx (%s)" % who, v / b, 1.3))
for name, ratio, target in checks:
    print("- %s: **%.2f×** (target ≥ %.1f×) %s" % (name, ratio, target, "met" if ratio >= target else "NOT met"))
try:
    rs, rt = float(rows["ringsock"]["idle"]["rss_mib"]), int(rows["ringsock"]["idle"]["threads"])
    hs = float(rows["haproxy"]["idle"]["rss_mib"])
    print("- 2,000 idle: %d threads (target < 16) %s; RSS %.1f MiB vs HAProxy %.1f MiB %s"
          % (rt, "met" if rt < 16 else "NOT met", rs, hs, "met" if rs < hs else "NOT met"))
except Exception:
    pass
fails = [(fwd, k) for fwd, r in rows.items() for k in ("bulk", "churn") if k in r and r[k].get("failures", "0") != "0"]
print("- failures: %s" % (", ".join("%s %s" % x for x in fails) or "none"))
if fails:
    print("\nA workload with failures measured failed work: systemd-socket-proxyd close()s instead of"
          " half-closing, so bulk transfers finish sending but their checksummed reply never arrives, and"
          " churn clients get empty replies; its Gbit/s and per-connection CPU there are not comparable.")
print("\n## Raw output\n\n```")
print(open(raw).read().rstrip())
print("```")
PY
cat "$result"
