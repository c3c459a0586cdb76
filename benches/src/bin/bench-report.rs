//! Turns the results of `scripts/bench-shm.sh` into the Markdown tables of
//! `docs/BENCHMARKS.md`: raw numbers per repetition, medians, ratios
//! shm-bus / iceoryx2 and whether each target of the issue was met.
//!
//! Ratios are paired: each repetition's shm-bus number is divided by the
//! iceoryx2 number of the same repetition (measured right after it), and
//! the verdict uses the median of these ratios. Machine load shifts between
//! repetitions and moves both peers alike, which a ratio of medians taken
//! over different repetitions would mix in.
//!
//! Usage: `bench-report RESULTS_DIR`, where RESULTS_DIR holds one `repN`
//! directory per repetition with `criterion/` (the throughput bench's
//! `CRITERION_HOME`), `latency.json` and `fanout.json`.

use std::collections::BTreeMap;
use std::error::Error;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ringest_benches::results::{LatencySummary, OneWayRun};
use ringest_benches::{THROUGHPUT_SIZES, Transport, size_label};
use serde::Deserialize;

/// The fields we need of criterion's `benchmark.json`.
#[derive(Deserialize)]
struct CriterionBenchmark {
    function_id: Option<String>,
    throughput: Option<CriterionThroughput>,
}

#[derive(Deserialize)]
enum CriterionThroughput {
    Bytes(u64),
    #[serde(other)]
    Other,
}

/// The fields we need of criterion's `estimates.json`.
#[derive(Deserialize)]
struct CriterionEstimates {
    median: CriterionEstimate,
}

#[derive(Deserialize)]
struct CriterionEstimate {
    /// Nanoseconds per iteration (one record).
    point_estimate: f64,
}

/// Throughput runs: (record size, benchmark function) → MB/s per repetition.
type ThroughputRuns = BTreeMap<(usize, String), Vec<f64>>;

fn main() -> Result<(), Box<dyn Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: bench-report RESULTS_DIR")?;
    let reps = repetitions(Path::new(&dir))?;
    let mut throughput = ThroughputRuns::new();
    let (mut latency, mut fanout) = (Vec::new(), Vec::new());
    for rep in &reps {
        read_criterion(&rep.join("criterion"), &mut throughput)?;
        latency.extend(read_runs(&rep.join("latency.json"))?);
        fanout.extend(read_runs(&rep.join("fanout.json"))?);
    }
    let mut out = String::new();
    writeln!(
        out,
        "{} repetitions; each cell lists the runs in order, then their median. Ratios pair the \
         runs of the same repetition; the verdicts use their median.\n",
        reps.len()
    )?;
    throughput_tables(&mut out, &throughput)?;
    latency_table(&mut out, &latency)?;
    fanout_table(&mut out, &fanout)?;
    print!("{out}");
    Ok(())
}

/// The `repN` directories of `dir`, by N.
fn repetitions(dir: &Path) -> Result<Vec<PathBuf>, Box<dyn Error>> {
    let mut reps: Vec<(u32, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let n = path.file_name().and_then(|n| n.to_str()?.strip_prefix("rep")?.parse().ok());
        if let Some(n) = n {
            reps.push((n, path));
        }
    }
    if reps.is_empty() {
        return Err(format!("no repN directories in {}", dir.display()).into());
    }
    reps.sort();
    Ok(reps.into_iter().map(|(_, path)| path).collect())
}

/// Adds the throughput of every benchmark under criterion's output `dir`
/// (`<group>/<function>/new/`) to `runs`.
fn read_criterion(dir: &Path, runs: &mut ThroughputRuns) -> Result<(), Box<dyn Error>> {
    for group in std::fs::read_dir(dir)? {
        let group = group?.path();
        if !group.is_dir() || group.file_name().is_some_and(|n| n == "report") {
            continue;
        }
        for function in std::fs::read_dir(&group)? {
            let new = function?.path().join("new");
            let bench: CriterionBenchmark = read_json(&new.join("benchmark.json"))?;
            let estimates: CriterionEstimates = read_json(&new.join("estimates.json"))?;
            let (Some(name), Some(CriterionThroughput::Bytes(bytes))) = (bench.function_id, bench.throughput)
            else {
                return Err(format!("{}: not a throughput benchmark", new.display()).into());
            };
            // Bytes per nanosecond is GB/s; times 1000 is MB/s.
            let mb_per_s = bytes as f64 / estimates.median.point_estimate * 1000.0;
            runs.entry((bytes as usize, name)).or_default().push(mb_per_s);
        }
    }
    Ok(())
}

fn read_runs(path: &Path) -> Result<Vec<OneWayRun>, Box<dyn Error>> {
    read_json(path)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, Box<dyn Error>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?)
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 0 { (v[mid - 1] + v[mid]) / 2.0 } else { v[mid] }
}

/// `runs...; **median**`, each formatted by `fmt`.
fn cell(values: &[f64], fmt: impl Fn(f64) -> String) -> String {
    let runs: Vec<String> = values.iter().map(|&v| fmt(v)).collect();
    format!("{}; **{}**", runs.join(", "), fmt(median(values)))
}

/// `a[i] / b[i]`: runs of the same repetition paired.
fn paired_ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    assert_eq!(a.len(), b.len(), "every repetition must have run both");
    a.iter().zip(b).map(|(x, y)| x / y).collect()
}

fn times(ratio: f64) -> String {
    format!("{ratio:.2}x")
}

fn verdict(met: bool) -> &'static str {
    if met { "yes" } else { "**no**" }
}

fn mbps(v: f64) -> String {
    format!("{v:.0}")
}

/// A rate with a k or M suffix.
fn per_second(v: f64) -> String {
    match v {
        v if v >= 1e6 => format!("{:.2} M", v / 1e6),
        v if v >= 1e3 => format!("{:.1} k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

fn micros(ns: f64) -> String {
    format!("{:.2}", ns / 1000.0)
}

fn throughput_tables(out: &mut String, runs: &ThroughputRuns) -> Result<(), Box<dyn Error>> {
    let get = |size: usize, name: &str| runs.get(&(size, name.to_owned())).map(Vec::as_slice);
    writeln!(out, "##### Throughput (MB/s = 10^6 bytes/s; criterion's median time per record)\n")?;
    writeln!(
        out,
        "| Size | shm-bus MB/s | iceoryx2 MB/s | Median records/s, shm-bus / iceoryx2 \
         | shm-bus / iceoryx2 | Target | Met |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|")?;
    for size in THROUGHPUT_SIZES {
        let (Some(shm), Some(iox)) = (get(size, "shm-bus"), get(size, "iceoryx2")) else { continue };
        let ratios = paired_ratios(shm, iox);
        let target = if size == 64 { 2.0 } else { 1.0 };
        let records = |values: &[f64]| per_second(median(values) * 1e6 / size as f64);
        writeln!(
            out,
            "| {} | {} | {} | {} / {} | {} | ≥ {target}x | {} |",
            size_label(size),
            cell(shm, mbps),
            cell(iox, mbps),
            records(shm),
            records(iox),
            cell(&ratios, times),
            verdict(median(&ratios) >= target)
        )?;
    }
    let variants: Vec<&(usize, String)> =
        runs.keys().filter(|(_, name)| name.starts_with("shm-bus-")).collect();
    if !variants.is_empty() {
        writeln!(
            out,
            "\nshm-bus variants, apart from the comparison: `batchN` publishes once per N records \
             (iceoryx2 has no counterpart), `ringX` uses a ring of X instead of the equal-depth one, \
             `whole-ring` the equal-depth ring without a hot window (`ChannelOptions::hot_window` = 0):\n"
        )?;
        writeln!(out, "| Size | Variant | MB/s | / iceoryx2 |")?;
        writeln!(out, "|---|---|---|---|")?;
        for (size, name) in variants {
            let values = &runs[&(*size, name.clone())];
            let ratio =
                get(*size, "iceoryx2").map_or("-".to_owned(), |iox| cell(&paired_ratios(values, iox), times));
            writeln!(out, "| {} | {name} | {} | {ratio} |", size_label(*size), cell(values, mbps))?;
        }
    }
    writeln!(out)?;
    Ok(())
}

/// One statistic of each run, in run order.
fn column(runs: &[&OneWayRun], stat: impl Fn(&OneWayRun) -> u64) -> Vec<f64> {
    runs.iter().map(|r| stat(r) as f64).collect()
}

/// The runs of `transport` with `size` and `readers`, in run order.
fn select(runs: &[OneWayRun], transport: Transport, size: usize, readers: usize) -> Vec<&OneWayRun> {
    runs.iter()
        .filter(|r| r.setup.transport == transport && r.setup.size == size && r.setup.readers == readers)
        .collect()
}

fn distinct(runs: &[OneWayRun], key: impl Fn(&OneWayRun) -> usize) -> Vec<usize> {
    let mut keys: Vec<usize> = runs.iter().map(key).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

fn single(run: &OneWayRun) -> &LatencySummary {
    &run.per_reader[0]
}

fn latency_table(out: &mut String, runs: &[OneWayRun]) -> Result<(), Box<dyn Error>> {
    let Some(first) = runs.first() else { return Ok(()) };
    writeln!(
        out,
        "##### One-way latency, busy-polling reader (µs; {} records/s, {} samples per run)\n",
        first.setup.rate_hz, first.setup.samples
    )?;
    writeln!(out, "| Size | Transport | p50 | p99 | p99.9 | max |")?;
    writeln!(out, "|---|---|---|---|---|---|")?;
    let mut ratios = Vec::new();
    for size in distinct(runs, |r| r.setup.size) {
        let mut p50s_of = BTreeMap::new();
        for transport in Transport::ALL {
            let sel = select(runs, transport, size, 1);
            if sel.is_empty() {
                continue;
            }
            let p50s = column(&sel, |r| single(r).p50_ns);
            writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                size_label(size),
                transport.name(),
                cell(&p50s, micros),
                cell(&column(&sel, |r| single(r).p99_ns), micros),
                cell(&column(&sel, |r| single(r).p999_ns), micros),
                cell(&column(&sel, |r| single(r).max_ns), micros),
            )?;
            p50s_of.insert(transport, p50s);
        }
        if let (Some(shm), Some(iox)) = (p50s_of.get(&Transport::ShmBus), p50s_of.get(&Transport::Iceoryx2)) {
            ratios.push((size, paired_ratios(shm, iox)));
        }
    }
    writeln!(out, "\n| Size | p50 shm-bus / iceoryx2 | Target | Met |")?;
    writeln!(out, "|---|---|---|---|")?;
    for (size, ratios) in ratios {
        let met = verdict(median(&ratios) <= 1.0);
        writeln!(out, "| {} | {} | ≤ 1x | {met} |", size_label(size), cell(&ratios, times))?;
    }
    writeln!(out)?;
    Ok(())
}

/// Median over a run's readers of their p50.
fn median_reader_p50(run: &OneWayRun) -> u64 {
    median(&run.per_reader.iter().map(|s| s.p50_ns as f64).collect::<Vec<_>>()) as u64
}

fn worst_reader(run: &OneWayRun, stat: impl Fn(&LatencySummary) -> u64) -> u64 {
    run.per_reader.iter().map(stat).max().unwrap_or(0)
}

fn fanout_table(out: &mut String, runs: &[OneWayRun]) -> Result<(), Box<dyn Error>> {
    let Some(first) = runs.first() else { return Ok(()) };
    let size = first.setup.size;
    writeln!(
        out,
        "##### Fan-out, blocking readers (µs; {} B records at {} records/s, {} samples per reader per run)\n",
        size, first.setup.rate_hz, first.setup.samples
    )?;
    writeln!(
        out,
        "| Transport | Readers | p50, median over readers | p50, worst reader | p99, worst reader \
         | worst p50 / 1-reader worst p50 | Target | Met |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|")?;
    let most = distinct(runs, |r| r.setup.readers).into_iter().max().unwrap_or(1);
    for transport in Transport::FANOUT {
        // The worst p50s of the runs with the fewest readers (one), which
        // `distinct` lists first.
        let mut fewest_readers_p50: Option<Vec<f64>> = None;
        for readers in distinct(runs, |r| r.setup.readers) {
            let sel = select(runs, transport, size, readers);
            if sel.is_empty() {
                continue;
            }
            let worst_p50 = column(&sel, |r| worst_reader(r, |s| s.p50_ns));
            let base = fewest_readers_p50.get_or_insert_with(|| worst_p50.clone());
            let ratios = paired_ratios(&worst_p50, base);
            // The target is shm-bus's; iceoryx2's ratio is for context.
            let (target, met) = if transport == Transport::ShmBus && readers == most && readers > 1 {
                ("≤ 1.5x", verdict(median(&ratios) <= 1.5))
            } else {
                ("", "")
            };
            writeln!(
                out,
                "| {} | {readers} | {} | {} | {} | {} | {target} | {met} |",
                transport.name(),
                cell(&column(&sel, median_reader_p50), micros),
                cell(&worst_p50, micros),
                cell(&column(&sel, |r| worst_reader(r, |s| s.p99_ns)), micros),
                cell(&ratios, times),
            )?;
        }
    }
    writeln!(out)?;
    Ok(())
}
