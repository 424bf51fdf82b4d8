#!/usr/bin/env bash
# Before/after for `ringsock serve`: two binaries, alternating, one worker each, wrk -t1
# -c64 for 4 s after a 1 s warm-up; prints each one's own CPU per request. Loopback only.
# Usage: perf/ab-serve.sh NEW_BINARY BASE_BINARY [ROUNDS]   (default 2)
# NEW_ARGS / BASE_ARGS: extra serve flags for each side, e.g. the same binary twice with
# NEW_ARGS="--access-log /var/tmp/access.log" for the cost of the access log.
set -euo pipefail
new=$1; base=$2; rounds=${3:-2}
root=$(mktemp -d /tmp/ringsock-ab.XXXXXX)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/pool"
head -c 1048576 /dev/urandom > "$root/pool/large_1m.deb"
head -c 2048 /dev/urandom > "$root/pool/small_2k.deb"
hz=$(getconf CLK_TCK)
port=18700
for round in $(seq 1 "$rounds"); do
  for which in new base; do
    bin=$new; extra=${NEW_ARGS:-}
    [ "$which" = base ] && { bin=$base; extra=${BASE_ARGS:-}; }
    port=$((port + 1))
    # shellcheck disable=SC2086 # extra holds separate flags
    "$bin" serve --threads 1 --root "$root" --listen 127.0.0.1:$port $extra 2>/dev/null & pid=$!
    sleep 0.5
    for path in api/version pool/small_2k.deb pool/large_1m.deb; do
      wrk -t1 -c64 -d1s "http://127.0.0.1:$port/$path" >/dev/null 2>&1
      c0=$(awk '{print $14+$15}' "/proc/$pid/stat")
      rps=$(wrk -t1 -c64 -d4s "http://127.0.0.1:$port/$path" 2>/dev/null | awk '/Requests\/sec/{print $2}')
      c1=$(awk '{print $14+$15}' "/proc/$pid/stat")
      awk -v b="$which" -v p="$path" -v r="$rps" -v c=$((c1 - c0)) -v hz="$hz" -v rd="$round" \
        'BEGIN { printf "%s round %d %-22s %9.0f req/s  %6.1f us CPU/req\n", b, rd, p, r, c / hz * 1e6 / (r * 4) }'
    done
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done
