#!/usr/bin/env bash
# The io_uring receive path's slot size against three ingest scenarios,
# interleaved, 3 runs each (docs/RECEIVE_PATH.md, "Slot size"). Build first:
#   cargo build --profile bench -p ringest -p ringest-benches --features ringest-benches/ingest-peers --bins
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${CARGO_TARGET_DIR:-$PWD/target}/release
results=$(mktemp -d /tmp/ringest-slot-sweep-XXXXXX)
for rep in 1 2 3; do
    for scenario in "1 1048576" "16 65536" "256 1024"; do
        read -r connections size <<<"$scenario"
        for slot in 16384 65536 262144; do
            "$bin/bench-ingest" run --peer ringest --stage-key "receive_slot_size_b = $slot" \
                --purpose throughput --connections "$connections" --size "$size" --seconds 3 \
                --out "$results/rep$rep-${connections}x$size-$slot.json" 2>&1 | tail -1 | sed "s/^/slot $slot: /"
        done
    done
done
echo "raw results in $results" >&2
