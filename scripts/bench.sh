#!/usr/bin/env bash
# The ingest benchmark: ringest against the limit of the machine (a
# blocking recv-and-discard receiver), a tokio receiver and iperf3, for
# throughput, CPU per GB, memory, one-way latency, the lossless logger and
# 10,000 connections; then the criterion micro-benchmarks of the hot
# pieces. Inserts a dated results section into docs/BENCHMARKS.md (part
# "Ingest"). See that part for what is measured and how.
#
#   scripts/bench.sh                 # the whole matrix, 5 repetitions (about 10 min)
#   QUICK=1 scripts/bench.sh         # every step once, short runs: a smoke test (about 2 min)
#   REPS=7 RUN_SECONDS=5 scripts/bench.sh
#
# Settings (environment):
#   REPS             repetitions of the matrix (5; QUICK: 1)
#   RUN_SECONDS      seconds of load per throughput run (3; QUICK: 1)
#   LATENCY_SECONDS  seconds of load per latency run (3; QUICK: 1)
#   LATENCY_RATES    messages/s of the latency runs ("1000 10000 100000")
#   FIXED_RATE       aggregate messages/s of the 1024 x 256 B scenario (100000)
#   LOG_SCENARIOS    scenarios also run with the lossless logger ("16x65536")
#   SCALE_CONNECTIONS, SCALE_RATE, SCALE_SECONDS
#                    the scale run (10000 connections, 20000 messages/s of
#                    256 B, 4 s; QUICK: 2000 connections, 2 s)
#   ENGINE_CORES     the engine's thread_processor_affinity ("0,1")
#   STAGE_KEYS       extra keys for the engine's [[tcp_server]] table,
#                    separated by ';', e.g. 'group_size = 16'. A receive_path
#                    key here overrides the path of both ringest peers.
#   LOAD_THREADS     load generator threads [default: min(connections, 2)]
#   NO_DOCS=1        leave docs/BENCHMARKS.md alone (print the section)
set -euo pipefail

cd "$(dirname "$0")/.."
quick=${QUICK:-0}
if [ "$quick" = 1 ]; then
    reps=${REPS:-1} run_s=${RUN_SECONDS:-1} lat_s=${LATENCY_SECONDS:-1}
    scale_connections=${SCALE_CONNECTIONS:-2000} scale_s=${SCALE_SECONDS:-2}
    criterion_args=(--warm-up-time 0.2 --measurement-time 0.5)
else
    reps=${REPS:-5} run_s=${RUN_SECONDS:-3} lat_s=${LATENCY_SECONDS:-3}
    scale_connections=${SCALE_CONNECTIONS:-10000} scale_s=${SCALE_SECONDS:-4}
    criterion_args=()
fi
latency_rates=${LATENCY_RATES:-1000 10000 100000}
fixed_rate=${FIXED_RATE:-100000}
log_scenarios=${LOG_SCENARIOS:-16x65536}
scale_rate=${SCALE_RATE:-20000}
engine_cores=${ENGINE_CORES:-0,1}
# connections size [rate]
scenarios=("1 1048576" "16 65536" "256 1024" "1024 256 $fixed_rate")

# A target directory of its own, so other cargo runs do not block this one.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target/bench}
results=$CARGO_TARGET_DIR/bench-results/ingest-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$results"
# 10,000 connections need as many descriptors on each side.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

build=(cargo build -q --profile bench -p ringest -p ringest-benches --features ringest-benches/ingest-peers --bins)
micro=(cargo bench -q -p ringest-benches --bench ingest)
echo "== building" >&2
"${build[@]}"
"${micro[@]}" --no-run
# The bench profile builds into release/.
bin=$CARGO_TARGET_DIR/release
for program in ringest bench-load bench-limit bench-tokio bench-consumer bench-ingest bench-ingest-report; do
    [ -x "$bin/$program" ] || { echo "missing $bin/$program" >&2; exit 1; }
done

stage_args=()
if [ -n "${STAGE_KEYS:-}" ]; then
    IFS=';' read -ra keys <<<"$STAGE_KEYS"
    for key in "${keys[@]}"; do
        stage_args+=(--stage-key "$key")
    done
fi
load_args=()
if [ -n "${LOAD_THREADS:-}" ]; then
    load_args+=(--threads "$LOAD_THREADS")
fi
iperf3_note=
if ! command -v iperf3 >/dev/null 2>&1; then
    iperf3_note="iperf3 is not installed (apt-get install iperf3): its reference figure is left out."
    echo "$iperf3_note" >&2
fi

# Every run writes one JSON file, numbered in the order the runs were made.
# (`out NAME` sets $path; not a command substitution, whose subshell
# would forget the count.)
step=0
out() {
    step=$((step + 1))
    path=$(printf '%s/rep%d/%03d-%s.json' "$results" "$rep" "$step" "$1")
}
# A run that fails (a receiver that crashed, a timeout) is noted in
# failures.txt, which the report lists, and the matrix goes on.
attempt() {
    if ! "$@"; then
        echo "rep$rep: $*" >>"$results/failures.txt"
        echo "FAILED: $*" >&2
    fi
}
ingest() {
    attempt "$bin/bench-ingest" run --engine-cores "$engine_cores" "${stage_args[@]}" "${load_args[@]}" "$@"
}
# The peers in an order that turns by one each repetition, so no peer
# always runs first (right after a build, a cooler machine).
rotate() {
    local turn=$(($1 % ($# - 1)))
    shift
    local list=("$@")
    echo "${list[@]:$turn}" "${list[@]:0:$turn}"
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date +%s)
for rep in $(seq 1 "$reps"); do
    mkdir -p "$results/rep$rep"
    echo "== repetition $rep of $reps" >&2
    for scenario in "${scenarios[@]}"; do
        read -r connections size rate <<<"$scenario"
        rate_args=()
        if [ -n "${rate:-}" ]; then
            rate_args=(--rate "$rate")
        fi
        name=${connections}x$size
        for peer in $(rotate "$rep" limit tokio ringest ringest-read); do
            out "throughput-$name-$peer"
            ingest --peer "$peer" --purpose throughput --connections "$connections" --size "$size" \
                "${rate_args[@]}" --seconds "$run_s" --out "$path"
        done
        if [[ " $log_scenarios " == *" $name "* ]]; then
            for peer in $(rotate "$rep" ringest-log ringest-log-lz4); do
                out "logger-$name-$peer"
                ingest --peer "$peer" --purpose logger --connections "$connections" --size "$size" \
                    "${rate_args[@]}" --seconds "$run_s" --out "$path"
            done
        fi
    done
    for rate in $latency_rates; do
        for peer in $(rotate "$rep" ringest tokio); do
            out "latency-$rate-$peer"
            ingest --peer "$peer" --purpose latency --latency --connections 1 --size 1024 --rate "$rate" \
                --seconds "$lat_s" --out "$path"
        done
        out "latency-$rate-pingpong"
        attempt "$bin/bench-ingest" ping-pong --rate "$rate" --size 1024 --seconds "$lat_s" \
            --out "$path"
    done
    out "scale-$scale_connections-ringest"
    ingest --peer ringest --purpose scale --hash --connections "$scale_connections" --size 256 \
        --rate "$scale_rate" --seconds "$scale_s" --out "$path"
    if [ -z "$iperf3_note" ]; then
        out iperf3
        attempt "$bin/bench-ingest" iperf3 --seconds "$run_s" --out "$path"
    fi
done
echo "== micro-benchmarks" >&2
CRITERION_HOME=$results/criterion "${micro[@]}" -- "${criterion_args[@]}" >"$results/criterion.txt"
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
minutes=$((($(date +%s) - started + 59) / 60))

commit=$(git rev-parse --short HEAD)
if [ -n "$(git status --porcelain)" ]; then
    commit="$commit (with uncommitted changes)"
fi
section=$results/section.md
{
    echo
    echo "#### Run of $(date -u '+%Y-%m-%d %H:%M UTC')$([ "$quick" = 1 ] && echo ' (QUICK smoke run: too short to compare)')"
    echo
    echo "- Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), kernel $(uname -r)"
    echo "- Commit: $commit"
    echo "- Load average (1/5/15 min) before: $load_before; after: $load_after; took about $minutes min"
    echo "- Settings: REPS=$reps RUN_SECONDS=$run_s LATENCY_SECONDS=$lat_s LATENCY_RATES=\"$latency_rates\" FIXED_RATE=$fixed_rate LOG_SCENARIOS=\"$log_scenarios\" SCALE_CONNECTIONS=$scale_connections SCALE_RATE=$scale_rate SCALE_SECONDS=$scale_s ENGINE_CORES=$engine_cores STAGE_KEYS=\"${STAGE_KEYS:-}\" LOAD_THREADS=${LOAD_THREADS:-default}; open files limit $(ulimit -n)"
    [ -n "$iperf3_note" ] && echo "- $iperf3_note"
    echo "- Commands (from scripts/bench.sh; B=\$CARGO_TARGET_DIR/release, R=\$RESULTS/repN), per repetition N, peers in an order turned by one each repetition:"
    echo
    echo '```'
    echo "${build[*]}"
    echo "# each scenario (C connections x S bytes [at F messages/s]) and peer P in limit tokio ringest ringest-read:"
    common=" --engine-cores $engine_cores"
    for arg in "${stage_args[@]}" "${load_args[@]}"; do
        case $arg in --*) common+=" $arg" ;; *) common+=" '$arg'" ;; esac
    done
    echo "\$B/bench-ingest run$common --peer P --purpose throughput --connections C --size S [--rate F] --seconds $run_s --out \$R/NNN-throughput-CxS-P.json"
    echo "# the scenarios of LOG_SCENARIOS again, P in ringest-log ringest-log-lz4:"
    echo "\$B/bench-ingest run ... --peer P --purpose logger --connections C --size S --seconds $run_s --out \$R/NNN-logger-CxS-P.json"
    echo "# each rate L in $latency_rates, P in ringest tokio, then the ping-pong:"
    echo "\$B/bench-ingest run ... --peer P --purpose latency --latency --connections 1 --size 1024 --rate L --seconds $lat_s --out \$R/NNN-latency-L-P.json"
    echo "\$B/bench-ingest ping-pong --rate L --size 1024 --seconds $lat_s --out \$R/NNN-latency-L-pingpong.json"
    echo "\$B/bench-ingest run ... --peer ringest --purpose scale --hash --connections $scale_connections --size 256 --rate $scale_rate --seconds $scale_s --out \$R/NNN-scale-$scale_connections-ringest.json"
    echo "\$B/bench-ingest iperf3 --seconds $run_s --out \$R/NNN-iperf3.json"
    echo "# once, after the repetitions:"
    echo "CRITERION_HOME=\$RESULTS/criterion ${micro[*]} -- ${criterion_args[*]}"
    echo "\$B/bench-ingest-report \$RESULTS"
    echo '```'
    echo
    "$bin/bench-ingest-report" "$results"
} >"$section"

if [ "${NO_DOCS:-0}" = 1 ]; then
    cat "$section"
    echo "raw results and this section in $results" >&2
    exit 0
fi
# Insert the section above the marker that ends the ingest results.
marker='<!-- ingest results end: scripts/bench.sh inserts runs above this line -->'
grep -qF "$marker" docs/BENCHMARKS.md || { echo "docs/BENCHMARKS.md lacks the marker: $marker" >&2; exit 1; }
awk -v marker="$marker" -v section="$section" '
    $0 == marker { while ((getline line < section) > 0) print line; print ""; }
    { print }
' docs/BENCHMARKS.md >"$results/BENCHMARKS.md"
cp "$results/BENCHMARKS.md" docs/BENCHMARKS.md
echo "inserted the results into docs/BENCHMARKS.md; raw results in $results" >&2
