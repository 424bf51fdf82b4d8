#!/usr/bin/env bash
# Fault soak for `ringsock proxy` (issue 9): checksummed transfers through the proxy to a
# TCP and a Unix-socket backend on both drivers (io_uring, and epoll via
# MONOIO_FORCE_LEGACY_DRIVER=1) while backends are killed, stall, reset or stop
# accepting, clients reset, vanish or read slowly, fds and pipe memory run out, and
# half-closed connections go idle. perf/soak.py drives each scenario and classifies
# every transfer (see its header); this script builds, guards the sysctl it changes,
# runs both drivers one after the other and writes the report.
#
# Fails (exit 1) on any silently truncated or corrupt transfer, any transfer outside
# what its scenario allows, a proxy whose fds, threads or pipes do not come back to the
# idle level, a proxy that dies or does not exit on SIGTERM, or pipes over budget.
#
# Usage: sudo perf/soak.sh [DRIVER...]   (uring, epoll; default both). About 3 minutes
# per driver; loopback only. Writes perf/results/soak-YYYY-MM-DD.md.
set -euo pipefail
cd "$(dirname "$0")/.."
drivers=("$@")
[ $# -gt 0 ] || drivers=(uring epoll)

[ "$(id -u)" = 0 ] || { echo "perf/soak.sh needs root: it lowers fs.pipe-user-pages-soft and runs the proxies as unprivileged users" >&2; exit 1; }
for tool in python3 setpriv prlimit; do
  command -v "$tool" >/dev/null || { echo "perf/soak.sh needs $tool" >&2; exit 1; }
done

cargo build --release --quiet --bin ringsock
work=$(mktemp -d /tmp/ringsock-soak.XXXXXX)
chmod 755 "$work"
# A copy: others may rebuild target/ while the soak runs. 755: the proxies run as
# unprivileged users.
install -m 755 target/release/ringsock "$work/ringsock"

# soak.py restores the pipe limit itself; this catches an interrupted run.
pages=/proc/sys/fs/pipe-user-pages-soft
pages_before=$(cat "$pages")
cleanup() {
  echo "$pages_before" > "$pages"
  if [ "${keep:-0}" = 1 ]; then echo "soak: work files kept in $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

status=0
jsons=()
for driver in "${drivers[@]}"; do
  # nice: the machine is shared; the proxies inherit it, as do their clients.
  nice -n 5 python3 perf/soak.py run --ringsock "$work/ringsock" --driver "$driver" \
    --work "$work/$driver" --json "$work/$driver.json" || status=1
  if [ -f "$work/$driver.json" ]; then jsons+=("$work/$driver.json"); fi
done

out=perf/results/soak-$(date +%Y-%m-%d).md
{
  echo "# ringsock proxy fault soak, $(date +%Y-%m-%d)"
  echo
  echo "Command (as root): \`perf/soak.sh${*:+ $*}\`; ringsock $(git describe --always --dirty)," \
    "$(nproc) CPUs, Linux $(uname -r)."
  echo
  python3 perf/soak.py report "${jsons[@]}"
} > "$out"
echo "soak: report in $out" >&2
[ "$status" = 0 ] || keep=1
exit "$status"
