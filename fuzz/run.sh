#!/usr/bin/env bash
# Runs every cargo-fuzz target of the repository for a set time each and records what happened.
#
#   ./fuzz/run.sh [SECONDS] [RESULTS]
#
# SECONDS (default 60) is the time per target; RESULTS (default fuzz/results.txt) gets the
# summary too. For each target: executions, executions per second, crashes found (new files in
# the crate's artifacts/<target>/ or a failing run) and the corpus size afterwards. Exits
# non-zero if any target found a crash.
#
# Environment:
#   FUZZ_TARGETS    space-separated crate:target pairs to run (default: all of both crates),
#                   e.g. "wire/fuzz:deframer router/proto/fuzz:babel"
#   FUZZ_RUNS       also stop a target after this many executions (default: time only)
#   FUZZ_SANITIZER  cargo fuzz --sanitizer (default address, as CI; "none" runs ~2x faster)
#   FUZZ_ARGS       extra libFuzzer arguments
# Targets run one after another (-workers is left at 1): the machine is shared.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
results="${2:-fuzz/results.txt}"
sanitizer="${FUZZ_SANITIZER:-address}"
crates=(wire/fuzz router/proto/fuzz)

if ! [[ "$seconds" =~ ^[0-9]+$ ]]; then
    echo "usage: $0 [SECONDS] [RESULTS]" >&2
    exit 2
fi

# The crate:target pairs to run.
targets=()
if [[ -n "${FUZZ_TARGETS:-}" ]]; then
    read -r -a targets <<<"$FUZZ_TARGETS"
else
    for crate in "${crates[@]}"; do
        while read -r t; do
            [[ -n "$t" ]] && targets+=("$crate:$t")
        done < <(cd "$crate" && cargo +nightly fuzz list)
    done
fi

# Build each crate involved once, with debug assertions (overflow checks) on.
built=()
for pair in "${targets[@]}"; do
    crate="${pair%%:*}"
    if [[ " ${built[*]} " != *" $crate "* ]]; then
        (cd "$crate" && cargo +nightly fuzz build --sanitizer "$sanitizer" --debug-assertions)
        built+=("$crate")
    fi
done

logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT
summary="$logs/summary"
{
    echo "# fuzz/run.sh $seconds s per target$([[ -n "${FUZZ_RUNS:-}" ]] && echo " or $FUZZ_RUNS executions")," \
        "sanitizer $sanitizer, debug assertions on, $(date -u +%Y-%m-%dT%H:%MZ)"
    printf '%-28s %14s %10s %8s %8s %9s\n' target executions exec/s crashes corpus seconds
} >"$summary"
cat "$summary"

failed=0
for pair in "${targets[@]}"; do
    crate="${pair%%:*}"
    target="${pair#*:}"
    corpus="$crate/corpus/$target"
    artifacts="$crate/artifacts/$target"
    mkdir -p "$corpus" "$artifacts"
    # Read-only seed directories: a crate-wide seeds/ (wire) or seeds/<target>/.
    seeds=()
    if [[ -d "$crate/seeds/$target" ]]; then
        seeds=("seeds/$target")
    elif [[ -d "$crate/seeds" ]] && [[ -z "$(find "$crate/seeds" -mindepth 1 -type d -print -quit)" ]]; then
        seeds=("seeds")
    fi
    before="$(find "$artifacts" -type f | wc -l)"
    log="$logs/$target.log"
    extra=()
    [[ -n "${FUZZ_RUNS:-}" ]] && extra+=("-runs=$FUZZ_RUNS")
    if [[ -n "${FUZZ_ARGS:-}" ]]; then
        read -r -a more <<<"$FUZZ_ARGS"
        extra+=("${more[@]}")
    fi
    start="$(date +%s)"
    status=0
    (
        cd "$crate"
        cargo +nightly fuzz run --sanitizer "$sanitizer" --debug-assertions "$target" \
            "corpus/$target" "${seeds[@]}" -- \
            -max_total_time="$seconds" -print_final_stats=1 "${extra[@]}"
    ) >"$log" 2>&1 || status=$?
    elapsed=$(($(date +%s) - start))
    execs="$(awk '/^stat::number_of_executed_units:/ {n = $2} END {print n}' "$log")"
    rate="$(awk '/^stat::average_exec_per_sec:/ {n = $2} END {print n}' "$log")"
    crashes=$(($(find "$artifacts" -type f | wc -l) - before))
    if [[ "$status" -ne 0 ]] && [[ "$crashes" -eq 0 ]]; then
        crashes=1 # failed without leaving an artifact (a build error, say): count it
    fi
    size="$(find "$corpus" -type f | wc -l)"
    printf '%-28s %14s %10s %8s %8s %9s\n' "$target" "${execs:-?}" "${rate:-?}" "$crashes" \
        "$size" "$elapsed" | tee -a "$summary"
    if [[ "$crashes" -ne 0 ]]; then
        failed=1
        echo "  $crate: exit $status; last lines of the log:" | tee -a "$summary"
        { grep -a -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" || true; } | head -n 8 |
            sed 's/^/    /' | tee -a "$summary"
    fi
done

mkdir -p "$(dirname "$results")"
cp "$summary" "$results"
echo "summary written to $results"
exit "$failed"
