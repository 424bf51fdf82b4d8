#!/usr/bin/env bash
# Cold-cache mirror benchmark (issue 11), side by side in one run, 2 workers each:
#   ringsock serve --threads 2 | nginx (worker_processes 2; sendfile on) |
#   nginx (worker_processes 2; sendfile on; aio threads)
# on a tree of 8 MiB files kept out of the page cache with posix_fadvise(DONTNEED) before
# and every second during each phase (perf/mirror_tool.py; the hot file is never evicted).
# Per contender and round, on a freshly started server:
#   idle   one wrk connection fetching the hot dists/stable/InRelease (4 KiB), nothing else
#          (`wrk -t1 -c1 --latency`, by default 1 ms between a response and the next request,
#          see MIRROR_PROBE_DELAY_MS): the probe's p50/p99/max with no cold load at all;
#   random the same probe while 32 connections download random pool files
#          (`wrk -t1 -c32`, a Lua script picks the path per request);
#   zipf   the same with a Zipf-like popularity mix (file of rank k weighted 1/k);
#   slow   (server restarted) 1,000 clients each reading one random pool file at 100 KB/s
#          through a 16 KiB SO_RCVBUF, with the probe running: the server's RSS and threads.
# Measured: cold throughput (bytes wrk read / time), probe p50/p99/max (wrk --latency),
# the server's CPU (utime + stime of all its processes from /proc/PID/stat, before and
# after) per GiB sent, its threads (/proc/PID/task: io-wq workers and nginx's aio pool
# included), RSS (VmRSS, summed over nginx's master and workers).
# Every contender is checked with curl (status 200 and the exact bytes of the hot file and
# of one pool file) before it is measured; one that fails is recorded and not measured.
#
# Usage: perf/mirror.sh                      (as root: nginx runs with `user root`)
# Environment (defaults):
#   ROUNDS=3 SECS=15         rounds, seconds per phase; the report gives min–max over rounds
#   MIRROR_GIB=4             size of the pool (files of 8 MiB)
#   MIRROR_DIR=/var/tmp      where the pool is created (a real disk, not tmpfs; checked)
#   MIRROR_TREE=DIR          reuse a pool made by an earlier run (kept, not deleted)
#   MIRROR_KEEP=1            keep the pool and the work directory (paths printed at the end)
#   MIRROR_CONNS=32          cold connections
#   MIRROR_SLOW_CLIENTS=1000 MIRROR_SLOW_RATE=100000 (bytes/s) MIRROR_SLOW_SECS=15
#   MIRROR_PROBE_DELAY_MS=1  pause of the probe between a response and its next request
#                            (wrk's Lua delay(); not part of the latency). 0 = closed loop as
#                            in issue 11's table: the probe then spins a core and samples the
#                            fast moments far more often than a stall (coordinated omission),
#                            and its own requests weigh in the server's CPU per GiB.
#   MIRROR_CONTENDERS="ringsock nginx nginx-aio"   (+ ringsock-base, ringsock-epoll)
#   RINGSOCK=/path           the binary to measure (default: cargo build --release, then
#                            target/release/ringsock; copied before the first round)
#   RINGSOCK_BASE=/path      adds an older binary as "ringsock serve (base)", same run
#   MIRROR_EPOLL=1           adds "ringsock serve (epoll)" (MONOIO_FORCE_LEGACY_DRIVER=1)
#   MIRROR_OUT=FILE          report path (default perf/results/mirror-YYYY-MM-DD.md)
# Runtime: about (3 × SECS + MIRROR_SLOW_SECS + 10 s) per contender and round, plus
# writing the pool once (~4 GiB at the disk's speed). Traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
secs=${SECS:-15}
gib=${MIRROR_GIB:-4}
conns=${MIRROR_CONNS:-32}
slow_clients=${MIRROR_SLOW_CLIENTS:-1000}
slow_rate=${MIRROR_SLOW_RATE:-100000}
slow_secs=${MIRROR_SLOW_SECS:-15}
probe_delay=${MIRROR_PROBE_DELAY_MS:-1}
workers=2
file_mib=8
for v in rounds secs gib conns slow_clients slow_rate slow_secs; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "perf/mirror.sh: $v must be a positive integer, got '${!v}'" >&2; exit 1; }
done
[[ $probe_delay =~ ^[0-9]+$ ]] || { echo "perf/mirror.sh: MIRROR_PROBE_DELAY_MS must be an integer, got '$probe_delay'" >&2; exit 1; }
contenders=${MIRROR_CONTENDERS:-ringsock nginx nginx-aio}
[ -n "${RINGSOCK_BASE:-}" ] && [[ " $contenders " != *" ringsock-base "* ]] && contenders="$contenders ringsock-base"
[ "${MIRROR_EPOLL:-0}" = 1 ] && [[ " $contenders " != *" ringsock-epoll "* ]] && contenders="$contenders ringsock-epoll"

need() { command -v "$1" >/dev/null || { echo "perf/mirror.sh needs $1 (apt-get install $2)" >&2; exit 1; }; }
need wrk wrk; need nginx nginx-light; need curl curl; need python3 python3
[ "$(id -u)" = 0 ] || { echo "perf/mirror.sh runs nginx as root (user root;): run it as root" >&2; exit 1; }
if [[ " $contenders " == *" nginx-aio "* ]] && ! nginx -V 2>&1 | grep -q -- --with-threads; then
  echo "perf/mirror.sh: this nginx is built without --with-threads: no 'aio threads' contender" >&2
  contenders=${contenders/nginx-aio/}
fi

work=$(mktemp -d /tmp/ringsock-mirror.XXXXXX)
tree=""; own_tree=0
pids=()   # every background process this script started
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  if [ "${MIRROR_KEEP:-0}" = 1 ]; then
    echo "perf/mirror.sh: kept the work directory $work${tree:+ and the pool $tree (MIRROR_TREE=$tree reuses it)}" >&2
  else
    rm -rf "$work"
    [ "$own_tree" = 1 ] && [ -n "$tree" ] && rm -rf "$tree"
  fi
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the binaries (copies: target/ may be rebuilt while this runs) ---------------------
if [ -n "${RINGSOCK:-}" ]; then
  src_bin=$RINGSOCK
else
  cargo build --release --quiet --bin ringsock || {
    echo "perf/mirror.sh: cargo build failed; set RINGSOCK=/path/to/ringsock to measure a built binary" >&2; exit 1; }
  src_bin=$PWD/target/release/ringsock
fi
install -m 755 "$src_bin" "$work/ringsock"
if [[ " $contenders " == *" ringsock-base "* ]]; then
  [ -n "${RINGSOCK_BASE:-}" ] || { echo "perf/mirror.sh: ringsock-base needs RINGSOCK_BASE=/path" >&2; exit 1; }
  install -m 755 "$RINGSOCK_BASE" "$work/ringsock-base"
fi

# --- the pool ---------------------------------------------------------------------------
files=$(( gib * 1024 / file_mib ))
if [ -n "${MIRROR_TREE:-}" ]; then
  tree=$MIRROR_TREE
  mkdir -p "$tree"
else
  parent=${MIRROR_DIR:-/var/tmp}
  tree=$(mktemp -d "$parent/ringsock-mirror-pool.XXXXXX")
  own_tree=1
fi
fstype=$(df -PT "$tree" | awk 'NR==2 {print $2}')
case $fstype in
  tmpfs|ramfs|overlayfs|squashfs) echo "perf/mirror.sh: $tree is on $fstype: the pool must be on a real disk (MIRROR_DIR=...)" >&2; exit 1 ;;
esac
need_kib=$(( files * file_mib * 1024 + 65536 ))
have_kib=$(df -Pk "$tree" | awk 'NR==2 {print $4}')
existing_kib=$(du -sk "$tree" | awk '{print $1}')
[ $(( have_kib + existing_kib )) -ge "$need_kib" ] || { echo "perf/mirror.sh: $tree needs $need_kib KiB free" >&2; exit 1; }
echo "perf/mirror.sh: the pool ($files × $file_mib MiB) in $tree ($fstype)" >&2
python3 perf/mirror_tool.py tree "$tree" "$files" "$file_mib" >> "$work/tree.log"
hot=dists/stable/InRelease
probe_file=pool/00000.deb

# --- wrk scripts ------------------------------------------------------------------------
# MIRROR_MODE=random: uniform over the pool; zipf: file of rank k with weight 1/k.
cat > "$work/cold.lua" <<'LUA'
local n = tonumber(os.getenv("MIRROR_FILES"))
local zipf = os.getenv("MIRROR_MODE") == "zipf"
local cum = {}
init = function(args)
  math.randomseed(tonumber(os.getenv("MIRROR_SEED") or "1"))
  local s = 0
  for k = 1, n do s = s + 1 / k; cum[k] = s end
  for k = 1, n do cum[k] = cum[k] / s end
end
request = function()
  local i
  if zipf then
    local u, lo, hi = math.random(), 1, n
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if cum[mid] < u then lo = mid + 1 else hi = mid end
    end
    i = lo - 1
  else
    i = math.random(n) - 1
  end
  return wrk.format("GET", string.format("/pool/%05d.deb", i))
end
LUA
probe_args=(--latency)
if [ "$probe_delay" -gt 0 ]; then
  echo "delay = function() return $probe_delay end" > "$work/probe.lua"
  probe_args+=(-s "$work/probe.lua")
fi

raw=$work/raw.txt
: > "$raw"
hz=$(getconf CLK_TCK)
port=18900
started=""; srv_pids=""

label_of() {
  case $1 in
    ringsock) echo "ringsock serve" ;;
    ringsock-base) echo "ringsock serve (base)" ;;
    ringsock-epoll) echo "ringsock serve (epoll)" ;;
    nginx) echo "nginx, sendfile" ;;
    nginx-aio) echo "nginx, sendfile + aio threads" ;;
    *) echo "$1" ;;
  esac
}

nginx_conf() {   # nginx_conf AIO(0|1)
  local aio=""
  [ "$1" = 1 ] && aio="aio threads;"
  mkdir -p "$work/nginx-tmp"
  cat > "$work/nginx.conf" <<CFG
daemon off;
worker_processes $workers;
user root;
pid $work/nginx.pid;
error_log $work/nginx.err warn;
worker_rlimit_nofile 20000;
events { worker_connections 8192; }
http {
  access_log off;
  sendfile on;
  $aio
  tcp_nopush on;
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  client_body_temp_path $work/nginx-tmp;
  proxy_temp_path $work/nginx-tmp;
  fastcgi_temp_path $work/nginx-tmp;
  uwsgi_temp_path $work/nginx-tmp;
  scgi_temp_path $work/nginx-tmp;
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:$port;
    root $tree;
  }
}
CFG
}

# start NAME: on 127.0.0.1:$port (a fresh port each time); sets $started and $srv_pids.
start() {
  port=$((port + 1))
  case $1 in
    ringsock|ringsock-base)
      "$work/$1" serve --root "$tree" --listen 127.0.0.1:$port --threads $workers 2>>"$work/$1.log" & ;;
    ringsock-epoll)
      MONOIO_FORCE_LEGACY_DRIVER=1 "$work/ringsock" serve --root "$tree" --listen 127.0.0.1:$port --threads $workers 2>>"$work/$1.log" & ;;
    nginx|nginx-aio)
      nginx_conf "$([ "$1" = nginx-aio ] && echo 1 || echo 0)"
      nginx -e "$work/nginx.err" -c "$work/nginx.conf" 2>>"$work/$1.log" & ;;
  esac
  started=$!
  pids+=("$started")
  wait_listening $port || echo "$(label_of "$1") did not listen on $port" >> "$raw"
  srv_pids=$started
  if [[ $1 == nginx* ]]; then
    local n=0
    for _ in $(seq 50); do
      n=$(pgrep -P "$started" | wc -l || true)
      [ "$n" -ge $workers ] && break
      sleep 0.1
    done
    srv_pids="$started $(pgrep -P "$started" | tr '\n' ' ' || true)"   # master and workers
  fi
}

stop() {
  local p=$started
  [ -n "$p" ] || return 0
  kill "$p" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  started=""
}

wait_listening() {   # up to 5 s
  for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# check NAME PATH: one GET with curl; status 200 and the exact bytes of $tree/PATH.
check() {
  local got size
  : > "$work/body"
  got=$(curl -sS --max-time 20 -o "$work/body" -w '%{http_code}' "http://127.0.0.1:$port/$2" 2>"$work/curl.err") || true
  size=$(wc -c < "$work/body")
  if [ "$got" = 200 ] && cmp -s "$work/body" "$tree/$2"; then
    echo "verified $1 /$2: 200, $size bytes" >> "$raw"
    rm -f "$work/body"; return 0
  fi
  echo "FAILED $1 /$2: status $got, $size bytes (want $(wc -c < "$tree/$2") and the same content) $(tr '\n' ' ' < "$work/curl.err")" | tee -a "$raw" >&2
  rm -f "$work/body"; return 1
}

# CPU seconds (user + system, all threads) the processes $srv_pids used so far.
cpu_s() {
  local p t=0
  for p in $srv_pids; do
    [ -r "/proc/$p/stat" ] && t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
  done
  awk -v t=$t -v hz="$hz" 'BEGIN { printf "%.2f", t / hz }'
}

# phase LABEL ROUND MODE: MODE idle, random or zipf; the probe for $secs s, the cold wrk
# beside it unless idle; eviction before and every second during it.
phase() {
  local label=$1 round=$2 mode=$3 ev sm cold="" c0 c1
  python3 perf/mirror_tool.py evict "$tree"
  python3 perf/mirror_tool.py evict "$tree" --every 1 --for $((secs + 3)) > "$work/evict.out" & ev=$!; pids+=("$ev")
  python3 perf/mirror_tool.py sample --pids "$srv_pids" --for "$secs" > "$work/sample.out" & sm=$!; pids+=("$sm")
  c0=$(cpu_s)
  if [ "$mode" != idle ]; then
    MIRROR_FILES=$files MIRROR_MODE=$mode MIRROR_SEED=$round \
      timeout $((secs + 30)) wrk -t1 -c"$conns" -d"${secs}s" --timeout 60s -s "$work/cold.lua" \
      "http://127.0.0.1:$port/" > "$work/cold.out" 2>&1 & cold=$!; pids+=("$cold")
  fi
  timeout $((secs + 30)) wrk -t1 -c1 -d"${secs}s" --timeout 60s "${probe_args[@]}" "http://127.0.0.1:$port/$hot" > "$work/probe.out" 2>&1 \
    || echo "probe wrk exited $?" >> "$work/probe.out"
  if [ -n "$cold" ]; then wait "$cold" || echo "cold wrk exited $?" >> "$work/cold.out"; fi
  c1=$(cpu_s)
  kill -0 "$started" 2>/dev/null || echo "DIED: $label exited during round $round $mode" | tee -a "$raw" >&2
  wait "$sm" || true
  kill "$ev" 2>/dev/null || true; wait "$ev" 2>/dev/null || true
  {
    echo "=== $label | $round | $mode"
    if [ -n "$cold" ]; then echo "--- cold"; cat "$work/cold.out"; fi
    echo "--- probe"; cat "$work/probe.out"
    echo "--- server"
    echo "cpu_s: $(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.2f", b - a }')"
    cat "$work/sample.out" "$work/evict.out"
  } >> "$raw"
  echo "round $round $label $mode: $(grep -h 'Transfer/sec' "$work/cold.out" 2>/dev/null | tail -1 | sed 's/ *Transfer.sec: */cold /') probe $(awk '/^ +99%/ {print "p99 " $2}' "$work/probe.out")" >&2
  rm -f "$work/cold.out"
}

slow_phase() {
  local label=$1 round=$2 ev probe c0 c1
  python3 perf/mirror_tool.py evict "$tree"
  sleep 1   # the idle sample: no connection since the start
  python3 perf/mirror_tool.py evict "$tree" --every 1 --for $((slow_secs + 10)) > "$work/evict.out" & ev=$!; pids+=("$ev")
  timeout $((slow_secs + 30)) wrk -t1 -c1 -d"${slow_secs}s" --timeout 60s "${probe_args[@]}" "http://127.0.0.1:$port/$hot" > "$work/probe.out" 2>&1 & probe=$!; pids+=("$probe")
  c0=$(cpu_s)
  timeout $((slow_secs + 30)) python3 perf/mirror_tool.py slow --port "$port" --files "$files" --pids "$srv_pids" \
    --clients "$slow_clients" --rate "$slow_rate" --secs "$slow_secs" --seed "$round" > "$work/slow.out" 2>&1 \
    || echo "slow clients exited $?" >> "$work/slow.out"
  wait "$probe" || echo "probe wrk exited $?" >> "$work/probe.out"
  c1=$(cpu_s)
  kill -0 "$started" 2>/dev/null || echo "DIED: $label exited during round $round slow" | tee -a "$raw" >&2
  kill "$ev" 2>/dev/null || true; wait "$ev" 2>/dev/null || true
  {
    echo "=== $label | $round | slow"
    echo "--- probe"; cat "$work/probe.out"
    echo "--- server"
    echo "cpu_s: $(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.2f", b - a }')"
    cat "$work/slow.out" "$work/evict.out"
  } >> "$raw"
  echo "round $round $label slow: $(grep -E 'slow_(status200|rate_median|rss_idle_kib|rss_max_kib|threads_max):' "$work/slow.out" | tr '\n' ' ')" >&2
}

ulimit -n 20000 2>/dev/null || true
echo "loadavg at the start: $(cat /proc/loadavg)" >> "$raw"
for round in $(seq 1 "$rounds"); do
  for s in $contenders; do
    label=$(label_of "$s")
    start "$s"
    if check "$label" "$hot" && check "$label" "$probe_file"; then
      for mode in idle random zipf; do phase "$label" "$round" "$mode"; done
      stop
      start "$s"   # a fresh server for the slow clients: its idle RSS is the baseline
      if check "$label" "$hot"; then slow_phase "$label" "$round"; else echo "=== $label | $round | slow NOT MEASURED (failed verification)" >> "$raw"; fi
    else
      echo "=== $label | $round | all NOT MEASURED (failed verification)" >> "$raw"
    fi
    stop
  done
done
echo "loadavg at the end: $(cat /proc/loadavg)" >> "$raw"
for f in "$work"/*.log "$work/nginx.err"; do
  [ -s "$f" ] || continue
  echo "--- $(basename "$f") (last 5 lines)" >> "$raw"; tail -5 "$f" >> "$raw"
done

date=$(date -u +%Y-%m-%d)
result=${MIRROR_OUT:-perf/results/mirror-$date.md}
mkdir -p "$(dirname "$result")"
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ] || rev="$rev+uncommitted"
[ -n "${RINGSOCK:-}" ] && rev="binary $RINGSOCK"
python3 perf/report_mirror.py "$raw" --rounds "$rounds" --secs "$secs" --gib "$gib" --files "$files" --file-mib "$file_mib" \
  --conns "$conns" --probe-delay-ms "$probe_delay" --slow-clients "$slow_clients" --slow-rate "$slow_rate" --slow-secs "$slow_secs" --workers "$workers" \
  --nginx "$(nginx -v 2>&1 | sed 's/.*\///')" --ringsock "$("$work/ringsock" --version | awk '{print $2}') ($rev)" \
  --fs "$fstype on $(df -P "$tree" | awk 'NR==2 {print $1}')" --contenders "$(for s in $contenders; do label_of "$s"; done | paste -sd '|')" \
  > "$result"
cat "$result"
echo "perf/mirror.sh: wrote $result" >&2
