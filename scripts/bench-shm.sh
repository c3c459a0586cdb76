#!/usr/bin/env bash
# Benchmarks shm-bus against iceoryx2 (throughput, one-way latency, fan-out)
# and inserts a dated results section into docs/BENCHMARKS.md (part
# "shm-bus", above its results-end marker).
#
#   scripts/bench-shm.sh            # 3 repetitions
#   REPS=5 scripts/bench-shm.sh
#
# Each repetition runs the three benchmarks once; inside each, the two
# transports alternate. The report gives every run and the medians.
set -euo pipefail

cd "$(dirname "$0")/.."
reps=${REPS:-3}
# A target directory of its own, so other cargo runs do not block this one.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target/bench}
# Raw results stay here, for a second look with bench-report.
results=$CARGO_TARGET_DIR/bench-results/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$results"

bench=(cargo bench -q -p ringest-benches --features peers)
report=(cargo run -q --profile bench -p ringest-benches --bin bench-report)

"${bench[@]}" --no-run
cargo build -q --profile bench -p ringest-benches --bin bench-report
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date +%s)
for rep in $(seq 1 "$reps"); do
    out=$results/rep$rep
    mkdir -p "$out"
    echo "== repetition $rep of $reps" >&2
    CRITERION_HOME=$out/criterion "${bench[@]}" --bench throughput
    "${bench[@]}" --bench latency -- --json "$out/latency.json"
    "${bench[@]}" --bench fanout -- --json "$out/fanout.json"
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
minutes=$((($(date +%s) - started + 59) / 60))

commit=$(git rev-parse --short HEAD)
if [ -n "$(git status --porcelain)" ]; then
    commit="$commit (with uncommitted changes)"
fi
section=$results/section.md
{
    echo
    echo "#### Run of $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), kernel $(uname -r)"
    echo "- Commit: $commit"
    echo "- Load average (1/5/15 min) before: $load_before; after: $load_after; took about $minutes min"
    echo "- Commands (from scripts/bench-shm.sh, REPS=$reps), per repetition N:"
    echo
    echo '```'
    echo "CRITERION_HOME=\$RESULTS/repN/criterion ${bench[*]} --bench throughput"
    echo "${bench[*]} --bench latency -- --json \$RESULTS/repN/latency.json"
    echo "${bench[*]} --bench fanout -- --json \$RESULTS/repN/fanout.json"
    echo "${report[*]} -- \$RESULTS"
    echo '```'
    echo
    "${report[@]}" -- "$results"
} >"$section"
marker='<!-- shm-bus results end: scripts/bench-shm.sh inserts runs above this line -->'
grep -qF "$marker" docs/BENCHMARKS.md || { echo "docs/BENCHMARKS.md lacks the marker: $marker" >&2; exit 1; }
awk -v marker="$marker" -v section="$section" '
    $0 == marker { while ((getline line < section) > 0) print line; print ""; }
    { print }
' docs/BENCHMARKS.md >"$results/BENCHMARKS.md"
cp "$results/BENCHMARKS.md" docs/BENCHMARKS.md
echo "inserted the results into docs/BENCHMARKS.md; raw results in $results" >&2
