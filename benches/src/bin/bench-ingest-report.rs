//! Turns the results of `scripts/bench.sh` into the Markdown tables of
//! `docs/BENCHMARKS.md`, part "Ingest": every run's numbers, their medians,
//! the ratios of ringest to the limit and to the tokio peer, and whether
//! each target of the issue was met.
//!
//! Ratios are paired: each repetition's ringest number is divided by the
//! peer's number of the same repetition (measured right before or after
//! it), and the verdict uses the median of these ratios. Only valid runs
//! (every byte arrived, hashes matched, nothing lost) enter medians and
//! ratios; invalid ones are listed with what went wrong.
//!
//! Usage: `bench-ingest-report RESULTS_DIR`, where RESULTS_DIR holds one
//! `repN` directory per repetition with the runs' JSON files (`RunFile`),
//! and optionally `criterion/` (the `ingest` criterion bench's
//! `CRITERION_HOME`) and `failures.txt` (runs that produced no file).

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ringest_benches::ingest::results::{IngestRun, Iperf3Run, PingPongRun, RunFile};
use ringest_benches::results::LatencySummary;
use serde::Deserialize;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Every run of the results, by repetition.
#[derive(Default)]
struct Runs {
    ingest: Vec<(u32, IngestRun)>,
    ping_pong: Vec<(u32, PingPongRun)>,
    iperf3: Vec<(u32, Iperf3Run)>,
    reps: usize,
}

impl Runs {
    /// Valid runs of `purpose`/`peer` on scenario `label`, by repetition.
    fn select(&self, purpose: &str, label: &str, peer: &str) -> BTreeMap<u32, &IngestRun> {
        self.ingest
            .iter()
            .filter(|(_, r)| {
                r.purpose == purpose && r.scenario.label() == label && r.peer == peer && r.valid()
            })
            .map(|(rep, r)| (*rep, r))
            .collect()
    }

    /// Scenario labels of `purpose`, in the order the runs were made.
    fn scenarios(&self, purpose: &str) -> Vec<String> {
        let mut seen = Vec::new();
        for (_, r) in &self.ingest {
            let label = r.scenario.label();
            if r.purpose == purpose && !seen.contains(&label) {
                seen.push(label);
            }
        }
        seen
    }
}

fn main() -> Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).ok_or("usage: bench-ingest-report RESULTS_DIR")?);
    let runs = read_runs(&dir)?;
    let mut out = String::new();
    let mut verdicts = Vec::new();
    writeln!(
        out,
        "{} repetition{}; each cell lists the valid runs in repetition order, then their median \
         (**bold**). Ratios pair the runs of the same repetition; the verdicts use their median. \
         GB/s = 10^9 bytes/s received by the consumer, from its first byte to its last; CPU-s/GB = \
         user + system CPU seconds of the receiver's processes per 10^9 bytes received; peak RSS = \
         VmHWM.\n",
        runs.reps,
        if runs.reps == 1 { "" } else { "s" }
    )?;
    throughput(&mut out, &runs, &mut verdicts)?;
    logger(&mut out, &runs, &mut verdicts)?;
    latency(&mut out, &runs, &mut verdicts)?;
    scale(&mut out, &runs, &mut verdicts)?;
    iperf3(&mut out, &runs)?;
    micro(&mut out, &dir.join("criterion"))?;
    invalid(&mut out, &runs)?;
    if let Ok(failures) = std::fs::read_to_string(dir.join("failures.txt")) {
        writeln!(out, "##### Runs that failed (no result; see the script's output)\n")?;
        for line in failures.lines().filter(|l| !l.is_empty()) {
            writeln!(out, "- `{line}`")?;
        }
        writeln!(out)?;
    }
    let mut summary = String::new();
    writeln!(summary, "##### Targets\n")?;
    writeln!(summary, "| Target | Result | Met |")?;
    writeln!(summary, "|---|---|---|")?;
    for (target, result, met) in &verdicts {
        writeln!(summary, "| {target} | {result} | {} |", verdict(*met))?;
    }
    writeln!(summary)?;
    print!("{summary}{out}");
    Ok(())
}

fn read_runs(dir: &Path) -> Result<Runs> {
    let mut reps = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if let Some(rep) = path.file_name().and_then(|n| n.to_str()?.strip_prefix("rep")?.parse::<u32>().ok())
        {
            reps.insert(rep, path);
        }
    }
    if reps.is_empty() {
        return Err(format!("no repN directories in {}", dir.display()).into());
    }
    let mut runs = Runs { reps: reps.len(), ..Runs::default() };
    for (&rep, path) in &reps {
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(path)?.map(|e| e.map(|e| e.path())).collect::<std::io::Result<_>>()?;
        // Files are named by the order they ran in (NNN-...): keep it.
        files.sort();
        for file in files.into_iter().filter(|f| f.extension().is_some_and(|e| e == "json")) {
            let text = std::fs::read_to_string(&file)?;
            match serde_json::from_str::<RunFile>(&text).map_err(|e| format!("{}: {e}", file.display()))? {
                RunFile::Ingest(r) => runs.ingest.push((rep, *r)),
                RunFile::PingPong(r) => runs.ping_pong.push((rep, r)),
                RunFile::Iperf3(r) => runs.iperf3.push((rep, r)),
            }
        }
    }
    Ok(runs)
}

fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 0 { (v[mid - 1] + v[mid]) / 2.0 } else { v[mid] }
}

/// `runs...; **median**`, each formatted by `fmt`; `-` when there is none.
fn cell(values: &[f64], fmt: impl Fn(f64) -> String) -> String {
    if values.is_empty() {
        return "-".to_owned();
    }
    let runs: Vec<String> = values.iter().map(|&v| fmt(v)).collect();
    format!("{}; **{}**", runs.join(", "), fmt(median(values)))
}

fn gbps(v: f64) -> String {
    format!("{:.3}", v / 1e9)
}

fn two(v: f64) -> String {
    format!("{v:.2}")
}

fn mib(kib: f64) -> String {
    format!("{:.0}", kib / 1024.0)
}

fn times(v: f64) -> String {
    format!("{v:.2}x")
}

fn micros(ns: f64) -> String {
    format!("{:.1}", ns / 1e3)
}

/// A rate with a k or M suffix.
fn per_second(v: f64) -> String {
    match v {
        v if v >= 1e6 => format!("{:.2} M", v / 1e6),
        v if v >= 1e3 => format!("{:.1} k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "yes" } else { "**no**" }
}

/// `f` of every run, in repetition order.
fn column(runs: &BTreeMap<u32, &IngestRun>, f: impl Fn(&IngestRun) -> f64) -> Vec<f64> {
    runs.values().map(|r| f(r)).collect()
}

/// `f(a) / f(b)` for the repetitions that have both.
fn paired(
    a: &BTreeMap<u32, &IngestRun>,
    b: &BTreeMap<u32, &IngestRun>,
    f: impl Fn(&IngestRun) -> f64,
) -> Vec<f64> {
    a.iter().filter_map(|(rep, x)| b.get(rep).map(|y| f(x) / f(y))).collect()
}

/// The processes of a peer's receiver, for CPU and RSS: every process.
const ALL: &[&str] = &[];
const ENGINE: &[&str] = &["engine"];

/// One receiver against another in a scenario, paired by repetition:
/// throughput and CPU per GB, and the verdicts "at least as fast" and "at
/// most as much CPU per GB" (pushed onto the target list).
struct Ratios {
    speed: Vec<f64>,
    /// All of the subject's processes against all of the base's.
    cpu_all: Vec<f64>,
    /// The subject's engine alone against the base's `base_engine`
    /// processes.
    cpu_engine: Vec<f64>,
    /// A fixed-rate scenario: the sender sets the throughput, so a receiver
    /// that keeps the rate meets the other's within a percent.
    fixed: bool,
    met: [bool; 2],
}

impl Ratios {
    fn of(
        label: &str,
        (name, subject): (&str, &BTreeMap<u32, &IngestRun>),
        (base_name, base): (&str, &BTreeMap<u32, &IngestRun>),
        base_engine: &[&str],
        verdicts: &mut Vec<(String, String, bool)>,
    ) -> Self {
        let speed = paired(subject, base, |r| r.bytes_per_s);
        let cpu_all = paired(subject, base, |r| r.cpu_s_per_gb(ALL));
        let cpu_engine: Vec<f64> = subject
            .iter()
            .filter_map(|(rep, r)| {
                base.get(rep).map(|b| r.cpu_s_per_gb(ENGINE) / b.cpu_s_per_gb(base_engine))
            })
            .collect();
        let fixed = subject.values().chain(base.values()).next().is_some_and(|r| r.scenario.rate.is_some());
        let floor = if fixed { 0.99 } else { 1.0 };
        let met = [median(&speed) >= floor, median(&cpu_all) <= 1.0];
        verdicts.push((
            format!("{label}: {name} ≥ 1.0x {base_name}'s throughput"),
            format!(
                "{} ({} against {} GB/s)",
                times(median(&speed)),
                gbps(median(&column(subject, |r| r.bytes_per_s))),
                gbps(median(&column(base, |r| r.bytes_per_s)))
            ),
            met[0],
        ));
        verdicts.push((
            format!("{label}: {name} ≤ 1.0x {base_name}'s CPU per GB"),
            format!(
                "{} engine + consumer, {} engine alone",
                times(median(&cpu_all)),
                times(median(&cpu_engine))
            ),
            met[1],
        ));
        Self { speed, cpu_all, cpu_engine, fixed, met }
    }
}

fn throughput(out: &mut String, runs: &Runs, verdicts: &mut Vec<(String, String, bool)>) -> Result<()> {
    let scenarios = runs.scenarios("throughput");
    if scenarios.is_empty() {
        return Ok(());
    }
    writeln!(out, "##### Throughput, CPU and memory per scenario\n")?;
    writeln!(
        out,
        "| Scenario | Peer | GB/s | packets/s (median) | CPU-s/GB, all receiver processes | CPU-s/GB, engine alone \
         | peak RSS MiB, all | peak RSS MiB, engine alone | valid runs |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|---|")?;
    for label in &scenarios {
        for peer in ["limit", "tokio", "ringest", "ringest-read"] {
            let sel = runs.select("throughput", label, peer);
            let total = runs
                .ingest
                .iter()
                .filter(|(_, r)| r.purpose == "throughput" && r.scenario.label() == *label && r.peer == peer)
                .count();
            if total == 0 {
                continue;
            }
            let engine = |f: fn(&IngestRun) -> f64| {
                if peer.starts_with("ringest") { cell(&column(&sel, f), two) } else { "-".into() }
            };
            let engine_rss = if peer.starts_with("ringest") {
                cell(&column(&sel, |r| r.peak_rss_kib(ENGINE) as f64), mib)
            } else {
                "-".into()
            };
            writeln!(
                out,
                "| {label} | {peer} | {} | {} | {} | {} | {} | {engine_rss} | {}/{total} |",
                cell(&column(&sel, |r| r.bytes_per_s), gbps),
                per_second(median(&column(&sel, |r| r.packets_per_s))),
                cell(&column(&sel, |r| r.cpu_s_per_gb(ALL)), two),
                engine(|r| r.cpu_s_per_gb(ENGINE)),
                cell(&column(&sel, |r| r.peak_rss_kib(ALL) as f64), mib),
                sel.len(),
            )?;
        }
    }
    writeln!(
        out,
        "\nringest's processes are the engine (`ringest run`) and the consumer (`bench-consumer`); \
         their RSS includes the shm-bus ring pages they touched (RssShmem in the JSON files). \
         `ringest` runs the io_uring receive path, `ringest-read` the glommio read path.\n"
    )?;

    writeln!(out, "##### Ratios (paired by repetition)\n")?;
    writeln!(
        out,
        "| Scenario | ringest / limit GB/s | ringest / limit CPU-s/GB (engine + consumer) | (engine alone) \
         | ringest / tokio GB/s | Targets | Met |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|")?;
    for label in &scenarios {
        let ringest = runs.select("throughput", label, "ringest");
        let limit = runs.select("throughput", label, "limit");
        let tokio = runs.select("throughput", label, "tokio");
        let vs_limit = Ratios::of(label, ("ringest", &ringest), ("the limit", &limit), ALL, verdicts);
        let vs_tokio = paired(&ringest, &tokio, |r| r.bytes_per_s);
        let connections = ringest.values().chain(limit.values()).next().map_or(0, |r| r.scenario.connections);
        let fixed = vs_limit.fixed;
        let mut targets =
            vec![if fixed { "≥ 1x limit GB/s (fixed rate: ≥ 0.99x)" } else { "≥ 1x limit GB/s" }];
        targets.push("≤ 1x limit CPU/GB");
        let met = vs_limit.met;
        let mut met_text: Vec<&str> = met.iter().map(|m| verdict(*m)).collect();
        if connections >= 16 && fixed {
            // Every receiver that keeps a fixed rate has the same throughput.
            targets.push("≥ 2x tokio GB/s: n/a at a fixed rate");
            met_text.push("n/a");
        } else if connections >= 16 {
            targets.push("≥ 2x tokio GB/s");
            let ok = median(&vs_tokio) >= 2.0;
            met_text.push(verdict(ok));
            verdicts.push((
                format!("{label}: ringest ≥ 2x tokio's throughput"),
                times(median(&vs_tokio)),
                ok,
            ));
        }
        writeln!(
            out,
            "| {label} | {} | {} | {} | {} | {} | {} |",
            cell(&vs_limit.speed, times),
            cell(&vs_limit.cpu_all, times),
            cell(&vs_limit.cpu_engine, times),
            cell(&vs_tokio, times),
            targets.join("; "),
            met_text.join("; "),
        )?;
    }
    writeln!(out)?;
    receive_paths(out, runs, &scenarios, verdicts)
}

/// The io_uring receive path against the glommio read path, paired by
/// repetition.
fn receive_paths(
    out: &mut String,
    runs: &Runs,
    scenarios: &[String],
    verdicts: &mut Vec<(String, String, bool)>,
) -> Result<()> {
    if !scenarios.iter().any(|label| !runs.select("throughput", label, "ringest-read").is_empty()) {
        return Ok(());
    }
    writeln!(out, "##### Receive paths: io_uring (`ringest`) / glommio read (`ringest-read`)\n")?;
    writeln!(
        out,
        "| Scenario | GB/s | CPU-s/GB (engine + consumer) | CPU-s/GB (engine alone) | Targets | Met |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|")?;
    for label in scenarios {
        let uring = runs.select("throughput", label, "ringest");
        let read = runs.select("throughput", label, "ringest-read");
        if read.is_empty() {
            continue;
        }
        let r =
            Ratios::of(label, ("io_uring path", &uring), ("the glommio read path", &read), ENGINE, verdicts);
        writeln!(
            out,
            "| {label} | {} | {} | {} | {}; ≤ 1x CPU/GB | {}; {} |",
            cell(&r.speed, times),
            cell(&r.cpu_all, times),
            cell(&r.cpu_engine, times),
            if r.fixed { "≥ 0.99x GB/s (fixed rate)" } else { "≥ 1x GB/s" },
            verdict(r.met[0]),
            verdict(r.met[1]),
        )?;
    }
    writeln!(out)?;
    Ok(())
}

fn logger(out: &mut String, runs: &Runs, verdicts: &mut Vec<(String, String, bool)>) -> Result<()> {
    let labels = runs.scenarios("logger");
    if labels.is_empty() {
        return Ok(());
    }
    writeln!(out, "##### Lossless logger attached (`ringest log --lossless`, MCAP on tmpfs)\n")?;
    writeln!(
        out,
        "| Scenario | Compression | ingest GB/s with the logger | / without (paired) | CPU-s/GB, engine + consumer + logger \
         | MCAP file MB/s | records lost | connections verified in the file | valid runs | Target | Met |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|")?;
    for label in &labels {
        let without = runs.select("throughput", label, "ringest");
        for (peer, compression) in [("ringest-log", "none"), ("ringest-log-lz4", "lz4")] {
            let total = runs
                .ingest
                .iter()
                .filter(|(_, r)| r.purpose == "logger" && r.scenario.label() == *label && r.peer == peer)
                .collect::<Vec<_>>();
            if total.is_empty() {
                continue;
            }
            let with = runs.select("logger", label, peer);
            let ratios = paired(&with, &without, |r| r.bytes_per_s);
            let file_rate = column(&with, |r| {
                r.logger.as_ref().map_or(f64::NAN, |l| l.file_bytes as f64) * r.bytes_per_s
                    / r.received.bytes as f64
            });
            let lost: Vec<String> = total
                .iter()
                .map(|(_, r)| {
                    r.logger.as_ref().and_then(|l| l.lost_records).map_or("?".into(), |n| n.to_string())
                })
                .collect();
            let verified: Vec<String> = total
                .iter()
                .map(|(_, r)| {
                    r.logger
                        .as_ref()
                        .map_or("-".into(), |l| format!("{}/{}", l.streams_verified, r.scenario.connections))
                })
                .collect();
            let all_valid = with.len() == total.len();
            let met = median(&ratios) >= 0.7 && all_valid;
            verdicts.push((
                format!("{label}: lossless logger ({compression}) ≥ 0.7x ingest, zero bytes lost"),
                format!("{}; {}/{} runs lost nothing", times(median(&ratios)), with.len(), total.len()),
                met,
            ));
            writeln!(
                out,
                "| {label} | {compression} | {} | {} | {} | {} | {} | {} | {}/{} | ≥ 0.7x, no loss | {} |",
                cell(&column(&with, |r| r.bytes_per_s), gbps),
                cell(&ratios, times),
                cell(&column(&with, |r| r.cpu_s_per_gb(ALL)), two),
                cell(&file_rate, |v| format!("{:.0}", v / 1e6)),
                lost.join(", "),
                verified.join(", "),
                with.len(),
                total.len(),
                verdict(met),
            )?;
        }
        writeln!(
            out,
            "| {label} | (no logger) | {} | 1.00x | {} | | | | {} | | |",
            cell(&column(&without, |r| r.bytes_per_s), gbps),
            cell(&column(&without, |r| r.cpu_s_per_gb(ALL)), two),
            without.len(),
        )?;
    }
    writeln!(
        out,
        "\nWith the logger, a run ends when the logger has written everything and exited (after the \
         engine stopped), so the ingest rate includes draining the logger's backlog. Every byte is \
         checked by reading the MCAP file back, connection by connection.\n"
    )?;
    Ok(())
}

fn latency(out: &mut String, runs: &Runs, verdicts: &mut Vec<(String, String, bool)>) -> Result<()> {
    let labels = runs.scenarios("latency");
    if labels.is_empty() {
        return Ok(());
    }
    writeln!(out, "##### One-way latency, sender's write to the consumer (µs)\n")?;
    writeln!(out, "| Load | Receiver | p50 | p99 | p99.9 | max | valid runs |")?;
    writeln!(out, "|---|---|---|---|---|---|---|")?;
    let stat = |l: &LatencySummary, i: usize| [l.p50_ns, l.p99_ns, l.p999_ns, l.max_ns][i] as f64;
    let mut targets = Vec::new();
    for label in &labels {
        let mut rate = 0.0;
        let mut p50s = BTreeMap::new();
        let mut p99s = BTreeMap::new();
        for peer in ["ringest", "tokio"] {
            let sel = runs.select("latency", label, peer);
            let total = runs
                .ingest
                .iter()
                .filter(|(_, r)| r.purpose == "latency" && r.scenario.label() == *label && r.peer == peer)
                .count();
            if total == 0 {
                continue;
            }
            rate = sel.values().next().and_then(|r| r.scenario.rate).unwrap_or(rate);
            let with: BTreeMap<u32, LatencySummary> =
                sel.iter().filter_map(|(rep, r)| r.latency.map(|l| (*rep, l))).collect();
            let cols: Vec<String> = (0..4)
                .map(|i| cell(&with.values().map(|l| stat(l, i)).collect::<Vec<_>>(), micros))
                .collect();
            writeln!(out, "| {label} | {peer} | {} | {}/{total} |", cols.join(" | "), with.len())?;
            // ringest's part until the engine handled the receive.
            let to_engine: Vec<LatencySummary> = sel.values().filter_map(|r| r.latency_to_engine).collect();
            if !to_engine.is_empty() {
                let cols: Vec<String> = (0..4)
                    .map(|i| cell(&to_engine.iter().map(|l| stat(l, i)).collect::<Vec<_>>(), micros))
                    .collect();
                writeln!(
                    out,
                    "| {label} | {peer}: until the engine's receive stamp | {} | {}/{total} |",
                    cols.join(" | "),
                    to_engine.len()
                )?;
            }
            p50s.insert(
                peer,
                with.iter().map(|(rep, l)| (*rep, l.p50_ns as f64)).collect::<BTreeMap<_, _>>(),
            );
            p99s.insert(
                peer,
                with.iter().map(|(rep, l)| (*rep, l.p99_ns as f64)).collect::<BTreeMap<_, _>>(),
            );
        }
        let pp: BTreeMap<u32, LatencySummary> =
            runs.ping_pong.iter().filter(|(_, p)| p.rate == rate).map(|(rep, p)| (*rep, p.one_way)).collect();
        if !pp.is_empty() {
            let cols: Vec<String> =
                (0..4).map(|i| cell(&pp.values().map(|l| stat(l, i)).collect::<Vec<_>>(), micros)).collect();
            writeln!(out, "| {label} | loopback TCP ping-pong / 2 | {} | {} |", cols.join(" | "), pp.len())?;
        }
        let pair = |a: Option<&BTreeMap<u32, f64>>, b: &BTreeMap<u32, f64>| -> Vec<f64> {
            a.map_or(Vec::new(), |a| a.iter().filter_map(|(rep, x)| b.get(rep).map(|y| x / y)).collect())
        };
        let loopback: BTreeMap<u32, f64> = pp.iter().map(|(rep, l)| (*rep, l.p50_ns as f64)).collect();
        let vs_loopback = pair(p50s.get("ringest"), &loopback);
        let vs_tokio = pair(p99s.get("ringest"), p99s.get("tokio").unwrap_or(&BTreeMap::new()));
        targets.push((label.clone(), vs_loopback, vs_tokio));
    }
    writeln!(
        out,
        "\n| Load | ringest p50 / loopback one-way p50 | Target | Met | ringest p99 / tokio p99 | Target | Met |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|")?;
    for (label, vs_loopback, vs_tokio) in targets {
        let (m1, m2) = (median(&vs_loopback) <= 2.0, median(&vs_tokio) < 1.0);
        writeln!(
            out,
            "| {label} | {} | ≤ 2x | {} | {} | < 1x | {} |",
            cell(&vs_loopback, times),
            verdict(m1),
            cell(&vs_tokio, times),
            verdict(m2)
        )?;
        verdicts.push((
            format!("{label}: latency p50 ≤ 2x loopback one-way"),
            times(median(&vs_loopback)),
            m1,
        ));
        verdicts.push((format!("{label}: latency p99 below tokio's"), times(median(&vs_tokio)), m2));
    }
    writeln!(out)?;
    Ok(())
}

fn scale(out: &mut String, runs: &Runs, verdicts: &mut Vec<(String, String, bool)>) -> Result<()> {
    let labels = runs.scenarios("scale");
    if labels.is_empty() {
        return Ok(());
    }
    writeln!(out, "##### Scale: many connections on one stage\n")?;
    writeln!(
        out,
        "| Load | most connections open at once | bytes received / sent | connections verified (sha256) \
         | engine peak RSS MiB | consumer peak RSS MiB | CPU-s engine + consumer | socket_stats records seen \
         | valid runs | Target | Met |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|")?;
    for label in &labels {
        let all: Vec<&IngestRun> = runs
            .ingest
            .iter()
            .filter(|(_, r)| r.purpose == "scale" && r.scenario.label() == *label)
            .map(|(_, r)| r)
            .collect();
        let valid = all.iter().filter(|r| r.valid()).count();
        let list = |f: &dyn Fn(&IngestRun) -> String| all.iter().map(|r| f(r)).collect::<Vec<_>>().join(", ");
        let rss = |name: &'static str| {
            move |r: &IngestRun| {
                r.processes.iter().find(|p| p.name == name).map_or("-".into(), |p| mib(p.peak_rss_kib as f64))
            }
        };
        let worst_rss = all.iter().map(|r| r.peak_rss_kib(ENGINE)).max().unwrap_or(u64::MAX);
        let connections = all.first().map_or(0, |r| r.scenario.connections);
        let met = valid == all.len() && worst_rss < 256 * 1024;
        verdicts.push((
            format!("{label}: connections held with engine RSS < 256 MiB, every byte delivered"),
            format!(
                "worst engine peak RSS {} MiB; {valid}/{} runs delivered every byte",
                mib(worst_rss as f64),
                all.len()
            ),
            met,
        ));
        writeln!(
            out,
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {valid}/{} | {connections} held, RSS < 256 MiB, every byte | {} |",
            list(&|r| r.engine.as_ref().map_or("-".into(), |e| e.max_open_connections.to_string())),
            list(&|r| format!("{}/{}", r.received.bytes, r.sent_bytes)),
            list(&|r| {
                let bad = r.problems.iter().any(|p| p.contains("connections"));
                if bad { "**no**".into() } else { format!("{}", r.scenario.connections) }
            }),
            list(&rss("engine")),
            list(&rss("consumer")),
            list(&|r| two(r.processes.iter().map(|p| p.cpu.total_s()).sum())),
            list(&|r| r.engine.as_ref().map_or("-".into(), |e| e.stats_records.to_string())),
            all.len(),
            verdict(met),
        )?;
    }
    writeln!(out)?;
    Ok(())
}

fn iperf3(out: &mut String, runs: &Runs) -> Result<()> {
    if runs.iperf3.is_empty() {
        return Ok(());
    }
    writeln!(out, "##### iperf3 on loopback (reference only)\n")?;
    writeln!(out, "| Streams | GB/s | receiver CPU % (iperf3's figure) |")?;
    writeln!(out, "|---|---|---|")?;
    let streams: BTreeSet<usize> = runs.iperf3.iter().map(|(_, r)| r.streams).collect();
    for n in streams {
        let sel: Vec<&Iperf3Run> =
            runs.iperf3.iter().filter(|(_, r)| r.streams == n).map(|(_, r)| r).collect();
        writeln!(
            out,
            "| {n} | {} | {} |",
            cell(&sel.iter().map(|r| r.bytes_per_s).collect::<Vec<_>>(), gbps),
            cell(&sel.iter().map(|r| r.receiver_cpu_percent).collect::<Vec<_>>(), |v| format!("{v:.0}")),
        )?;
    }
    if let Some((_, r)) = runs.iperf3.first() {
        writeln!(out, "\nCommand: `{}`.\n", r.command)?;
    }
    Ok(())
}

/// The fields we need of criterion's `benchmark.json`.
#[derive(Deserialize)]
struct CriterionBenchmark {
    group_id: String,
    function_id: Option<String>,
    value_str: Option<String>,
    throughput: Option<CriterionThroughput>,
}

#[derive(Deserialize)]
enum CriterionThroughput {
    Bytes(u64),
    Elements(u64),
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct CriterionEstimates {
    median: CriterionEstimate,
}

#[derive(Deserialize)]
struct CriterionEstimate {
    point_estimate: f64,
}

/// Criterion's results under `dir`, if any: `<group>/<function>[/<value>]/new/`.
fn micro(out: &mut String, dir: &Path) -> Result<()> {
    let mut found = Vec::new();
    collect_criterion(dir, &mut found)?;
    if found.is_empty() {
        return Ok(());
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    writeln!(
        out,
        "##### Micro-benchmarks (criterion, `benches/benches/ingest.rs`; median time per iteration)\n"
    )?;
    writeln!(out, "| Benchmark | time per iteration | throughput |")?;
    writeln!(out, "|---|---|---|")?;
    for (name, ns, throughput) in found {
        let rate = match throughput {
            Some(CriterionThroughput::Bytes(b)) => format!("{:.0} MB/s", b as f64 / ns * 1e3),
            Some(CriterionThroughput::Elements(e)) => format!("{}/s", per_second(e as f64 / ns * 1e9)),
            _ => "-".into(),
        };
        let time = if ns >= 1e6 { format!("{:.2} ms", ns / 1e6) } else { format!("{:.2} µs", ns / 1e3) };
        writeln!(out, "| {name} | {time} | {rate} |")?;
    }
    writeln!(out)?;
    Ok(())
}

fn collect_criterion(dir: &Path, found: &mut Vec<(String, f64, Option<CriterionThroughput>)>) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for entry in entries {
        let path = entry?.path();
        if !path.is_dir() || path.file_name().is_some_and(|n| n == "report") {
            continue;
        }
        let new = path.join("new");
        if new.join("benchmark.json").is_file() {
            let bench: CriterionBenchmark = read_json(&new.join("benchmark.json"))?;
            let estimates: CriterionEstimates = read_json(&new.join("estimates.json"))?;
            let name = [Some(bench.group_id), bench.function_id, bench.value_str]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("/");
            found.push((name, estimates.median.point_estimate, bench.throughput));
        } else {
            collect_criterion(&path, found)?;
        }
    }
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?)
}

fn invalid(out: &mut String, runs: &Runs) -> Result<()> {
    let bad: Vec<&(u32, IngestRun)> = runs.ingest.iter().filter(|(_, r)| !r.valid()).collect();
    let owed: Vec<&(u32, IngestRun)> =
        runs.ingest.iter().filter(|(_, r)| r.messages_owed * 100 > r.sent_messages.max(1)).collect();
    if bad.is_empty() && owed.is_empty() {
        writeln!(
            out,
            "Every run was valid: every byte sent arrived (and its sha256 matched where hashed), nothing was lost.\n"
        )?;
        return Ok(());
    }
    if !bad.is_empty() {
        writeln!(out, "##### Invalid runs (left out of medians and ratios)\n")?;
        for (rep, r) in bad {
            writeln!(
                out,
                "- rep{rep} {} {} {}: {}",
                r.purpose,
                r.scenario.label(),
                r.peer,
                r.problems.join("; ")
            )?;
        }
        writeln!(out)?;
    }
    if !owed.is_empty() {
        writeln!(out, "Runs that could not hold their fixed rate (the receiver pushed back):\n")?;
        for (rep, r) in owed {
            writeln!(
                out,
                "- rep{rep} {} {} {}: {} of {} messages still owed at the deadline",
                r.purpose,
                r.scenario.label(),
                r.peer,
                r.messages_owed,
                r.sent_messages + r.messages_owed
            )?;
        }
        writeln!(out)?;
    }
    Ok(())
}
