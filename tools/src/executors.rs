//! What a stage's executor threads got from the OS: their cores and
//! scheduling policy, read from `/proc/self/task`, for `ringest run`'s
//! start-up lines. glommio names an executor's thread `<stage>-<index>-<id>`
//! (the engine's executor name, then glommio's executor id); a helper
//! thread it starts later takes the same name, so the executor is the
//! lowest thread id of that name.

use std::path::Path;

/// One executor thread as the OS runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorThread {
    /// `Cpus_allowed_list`, like `0-1` or `3`.
    pub cpus: String,
    /// `SCHED_FIFO` priority; `None` under the normal scheduler.
    pub fifo_priority: Option<u32>,
}

/// The executor threads of `stage` in this process, by index; empty when
/// some cannot be found or told apart (thread names keep 15 bytes).
pub fn of_stage(stage: &str, executors: usize) -> Vec<ExecutorThread> {
    let prefixes: Vec<String> = (0..executors).map(|i| format!("{stage}-{i}-")).collect();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Vec::new() };
    // Per executor: (thread id, what it got), the lowest id winning.
    let mut found: Vec<Option<(u64, ExecutorThread)>> = vec![None; executors];
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<u64>().ok()) else { continue };
        let dir = task.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else { continue };
        let comm = comm.trim_end();
        if comm.len() >= 15 {
            continue; // truncated: cannot tell whose it is
        }
        let Some(index) = prefixes.iter().position(|p| {
            comm.strip_prefix(p.as_str())
                .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        }) else {
            continue;
        };
        if found[index].as_ref().is_none_or(|(known, _)| tid < *known)
            && let Some(thread) = read_thread(&dir)
        {
            found[index] = Some((tid, thread));
        }
    }
    found.into_iter().map(|f| f.map(|(_, thread)| thread)).collect::<Option<Vec<_>>>().unwrap_or_default()
}

fn read_thread(dir: &Path) -> Option<ExecutorThread> {
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let cpus = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?.trim().to_owned();
    // stat: fields after the command's closing parenthesis start at field
    // 3; rt_priority is field 40, policy field 41 (proc(5)).
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let priority: u32 = fields.get(40 - 3)?.parse().ok()?;
    let policy: u32 = fields.get(41 - 3)?.parse().ok()?;
    const SCHED_FIFO: u32 = 1;
    Some(ExecutorThread { cpus, fifo_priority: (policy == SCHED_FIFO).then_some(priority) })
}

/// One line about the executors: how many, on which cores, at which
/// priority; from the OS when `threads` were found, else as configured.
pub fn describe(threads: &[ExecutorThread], configured_cores: &[usize], configured_priority: u8) -> String {
    if threads.is_empty() {
        let cores = match configured_cores {
            [] => "unpinned".to_owned(),
            cores => format!("pinned to cores {}", join(cores.iter())),
        };
        let priority = match configured_priority {
            0 => "normal priority".to_owned(),
            p => format!("SCHED_FIFO priority {p} asked"),
        };
        let count = configured_cores.len().max(1);
        return format!("executors: {count} ({cores}, {priority}; configured)");
    }
    let each: Vec<String> = threads
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let priority =
                t.fifo_priority.map_or("normal priority".to_owned(), |p| format!("SCHED_FIFO {p}"));
            format!("#{i} on cpus {} at {priority}", t.cpus)
        })
        .collect();
    format!("executors: {}", each.join("; "))
}

fn join(items: impl Iterator<Item = impl ToString>) -> String {
    items.map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_thread_is_read_from_proc() {
        std::thread::Builder::new()
            .name("probe-0-17".into())
            .spawn(|| {
                let threads = of_stage("probe", 1);
                assert_eq!(threads.len(), 1, "{threads:?}");
                assert!(!threads[0].cpus.is_empty());
                assert_eq!(threads[0].fifo_priority, None);
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(of_stage("a-stage-name-too-long", 1).is_empty());
    }

    #[test]
    fn descriptions_say_cores_and_priorities() {
        let threads = [
            ExecutorThread { cpus: "0".into(), fifo_priority: Some(10) },
            ExecutorThread { cpus: "1".into(), fifo_priority: None },
        ];
        assert_eq!(
            describe(&threads, &[0, 1], 10),
            "executors: #0 on cpus 0 at SCHED_FIFO 10; #1 on cpus 1 at normal priority"
        );
        assert_eq!(describe(&[], &[], 0), "executors: 1 (unpinned, normal priority; configured)");
    }
}
