#!/usr/bin/env bash
#: Builds and runs every fuzz target (or the ones named) for SECONDS each, default 30.
#: Exits non-zero if any target crashed, hung or broke a property, naming the reproducer.
#: Usage: fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail

# Pinned: cargo-fuzz's flags and output are what this script relies on.
CARGO_FUZZ_VERSION=0.13.2
seconds=${1:-30}
shift || true
cd "$(dirname "$0")"

if [[ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    mapfile -t targets < <(cargo fuzz list)
fi

# -s none: no sanitizer, the only mode stable Rust builds (see README.md); safe Rust
# needs none. -a: debug assertions, so an integer overflow is a crash, not a wrap.
flags=(-s none -a)
cargo fuzz build "${flags[@]}"

failed=()
for target in "${targets[@]}"; do
    # Runs grow a scratch corpus in corpus/ (not committed) from the seeds in seeds/.
    mkdir -p "corpus/$target" "artifacts/$target"
    extra=()
    if [[ -f "$target.dict" ]]; then
        extra+=("-dict=$target.dict")
    fi
    # Room past MAX_HEAD (16 KiB) and MAX_URI (8 KiB), whose limits are code paths too;
    # libFuzzer's default stops at 4 KiB.
    case $target in
        http_head | resolve) extra+=(-max_len=20480) ;;
    esac
    before=$(find "artifacts/$target" -type f | wc -l)
    # libFuzzer logs every new input: kept in a file, summed up here, shown on failure.
    log="artifacts/$target.log"
    # -timeout: an input taking 10 s is a hang (every parser here is linear).
    if cargo fuzz run "${flags[@]}" "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        "${extra[@]}" >"$log" 2>&1 &&
        [[ $(find "artifacts/$target" -type f | wc -l) -eq $before ]]; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        echo "fuzz: $target: ${runs:-?} inputs in ${seconds}s, no failure"
    else
        tail -n 60 "$log"
        failed+=("$target")
    fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
    for target in "${failed[@]}"; do
        reproducer=$(ls -t "artifacts/$target"/* 2>/dev/null | head -n 1)
        echo "fuzz: $target failed; reproducer: fuzz/${reproducer:-artifacts/$target/ (none written)}"
        echo "  rerun: (cd fuzz && cargo fuzz run ${flags[*]} $target ${reproducer:-})"
    done
    exit 1
fi
echo "fuzz: ${#targets[@]} targets ran ${seconds}s each without a failure"
