//! The start-up line about a stage's executors: the cores and scheduling
//! priority each got from the OS (which may differ from the config: a
//! refused `SCHED_FIFO` runs at normal priority).

use engine::ExecutorPlacement;

/// One line about the executors: each one's cores and priority.
pub fn describe(executors: &[ExecutorPlacement]) -> String {
    let each: Vec<String> = executors
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let priority =
                e.fifo_priority.map_or("normal priority".to_owned(), |p| format!("SCHED_FIFO {p}"));
            format!("#{i} on cpus {} at {priority}", cpu_list(&e.cpus))
        })
        .collect();
    format!("executors: {}", each.join("; "))
}

/// CPUs as `Cpus_allowed_list` shows them: `0-3,6`.
fn cpu_list(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut runs: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        while i + 1 < sorted.len() && sorted[i + 1] == sorted[i] + 1 {
            i += 1;
        }
        runs.push(if sorted[i] == start { start.to_string() } else { format!("{start}-{}", sorted[i]) });
        i += 1;
    }
    if runs.is_empty() { "unknown".to_owned() } else { runs.join(",") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_say_cores_and_priorities() {
        let executors = [
            ExecutorPlacement { cpus: vec![0], fifo_priority: Some(10) },
            ExecutorPlacement { cpus: vec![3, 1, 2, 6], fifo_priority: None },
        ];
        assert_eq!(
            describe(&executors),
            "executors: #0 on cpus 0 at SCHED_FIFO 10; #1 on cpus 1-3,6 at normal priority"
        );
        assert_eq!(cpu_list(&[]), "unknown");
    }
}
