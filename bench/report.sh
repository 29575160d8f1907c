#!/usr/bin/env bash
# Runs every benchmark (about fifteen minutes on 2 cores) and regenerates bench/README.md's figures and plots.
#   bench/report.sh            # all of it
# Results: bench/results/*.json, *.txt; plots: bench/plots/*.png.
set -euo pipefail
cd "$(dirname "$0")/.."

out=bench/results
mkdir -p "$out" bench/plots
cargo build --release --locked -p hyphae-router -p hyphae-bench --bins
# The day and machine of this run, for the results that do not record theirs (criterion, msgbench).
python3 bench/report.py --describe-machine > "$out/machine.txt"

echo "== criterion (codecs, control plane, forwarding table)"
cargo bench --locked -p hyphae-bench --bench wire --bench control --bench fib -- \
    --warm-up-time 1 --measurement-time 3 2>&1 | tee "$out/criterion.txt"

# The uring run also measures hyphae on the portable driver in every round (the drivers
# compared round by round); the portable run measures it against stock and paced.
for driver in uring portable; do
    echo "== transit ($driver)"
    vs=()
    [ "$driver" = uring ] && vs=(--vs-driver portable)
    target/release/transit --driver "$driver" "${vs[@]}" --json "$out/transit-$driver.json" \
        | tee "$out/transit-$driver.txt"
done

echo "== transit at light load (paced only, 5,000 frames/s: every frame wakes a sleeping worker)"
target/release/transit --driver portable --seconds 0 --rate 5000 --json "$out/transit-light.json" \
    | tee "$out/transit-light.txt"

# Stock mycelium is measured beside hyphae when $HYPHAE_STOCK_MYCELIUM or
# ../shared/bin/mycelium-0.7.10 is there (about five minutes with it, half without).
echo "== mixbench (4096 destinations, TCP and QUIC links, hyphae and stock mycelium)"
target/release/mixbench --json "$out/mixbench.json" | tee "$out/mixbench.txt"

echo "== message round trip"
target/release/msgbench --json "$out/msgbench.json" | tee "$out/msgbench.txt"

if ! python3 -c 'import matplotlib' 2>/dev/null; then
    python3 -m pip install --quiet matplotlib || echo "matplotlib unavailable: no plots"
fi
python3 bench/report.py
