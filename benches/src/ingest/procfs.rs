//! CPU time and memory of a process, from `/proc`.

use std::io;

use super::results::CpuTimes;

/// The fields of `/proc/<pid>/stat` we use.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcStat {
    /// `R`, `S`, `Z` (exited, not yet reaped), ...
    pub state: char,
    /// User and system time of every thread, the exited ones included.
    pub cpu: CpuTimes,
}

/// Reads `/proc/<pid>/stat` (`pid` "self" for this process).
pub fn stat(pid: &str) -> io::Result<ProcStat> {
    parse_stat(
        &std::fs::read_to_string(format!("/proc/{pid}/stat"))?,
        rustix::param::clock_ticks_per_second(),
    )
}

fn parse_stat(text: &str, ticks_per_s: u64) -> io::Result<ProcStat> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("unexpected /proc stat line: {text}"));
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let rest = &text[text.rfind(')').ok_or_else(bad)? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> io::Result<f64> {
        Ok(fields.get(i).and_then(|f| f.parse::<u64>().ok()).ok_or_else(bad)? as f64 / ticks_per_s as f64)
    };
    let state = fields.first().and_then(|f| f.chars().next()).ok_or_else(bad)?;
    Ok(ProcStat { state, cpu: CpuTimes { user_s: ticks(11)?, sys_s: ticks(12)? } })
}

/// A `kB` field of `/proc/<pid>/status`, such as `VmHWM` (peak resident
/// set) or `RssShmem`; 0 when absent.
pub fn status_kib(pid: &str, key: &str) -> io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(parse_status(&text, key))
}

fn parse_status(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_the_command_name() {
        let line = "4242 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 120 0 0 20 0 3 0 100 0 0";
        let s = parse_stat(line, 100).unwrap();
        assert_eq!((s.state, s.cpu.user_s, s.cpu.sys_s), ('S', 2.5, 1.2));
        assert!(parse_stat("garbage", 100).is_err());
        let me = stat("self").unwrap();
        assert!(me.state.is_ascii_uppercase() && me.cpu.total_s() >= 0.0, "{me:?}");
    }

    #[test]
    fn status_fields() {
        let text = "Name:\tx\nVmHWM:\t  123456 kB\nRssShmem:\t   64 kB\n";
        assert_eq!(parse_status(text, "VmHWM"), 123456);
        assert_eq!(parse_status(text, "RssShmem"), 64);
        assert_eq!(parse_status(text, "VmSwap"), 0);
        assert!(status_kib("self", "VmHWM").unwrap() > 0);
    }
}
