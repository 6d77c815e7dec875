//! CPU time of processes, from `/proc/<pid>/stat` (Linux): user + system time of every thread,
//! living or exited, of a process and of its descendants.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Clock ticks per second of `/proc` times: USER_HZ, 100 on every Linux architecture.
const TICKS_PER_SEC: u64 = 100;

/// The processes to account: the named ones and their descendants, found once.
#[derive(Debug, Clone)]
pub struct Tree {
    pids: Vec<u32>,
}

impl Tree {
    pub fn of(roots: &[u32]) -> Self {
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        for (pid, ppid) in all_processes() {
            children.entry(ppid).or_default().push(pid);
        }
        let mut seen: HashSet<u32> = HashSet::new();
        let mut todo: Vec<u32> = roots.to_vec();
        while let Some(pid) = todo.pop() {
            if seen.insert(pid)
                && let Some(kids) = children.get(&pid)
            {
                todo.extend(kids);
            }
        }
        let mut pids: Vec<u32> = seen.into_iter().collect();
        pids.sort_unstable();
        Self { pids }
    }

    pub fn len(&self) -> usize {
        self.pids.len()
    }

    /// Their CPU time so far; a process gone since is counted as zero.
    pub fn cpu_time(&self) -> Duration {
        let ticks: u64 = self.pids.iter().filter_map(|&pid| ticks_of(pid)).sum();
        Duration::from_millis(ticks * 1000 / TICKS_PER_SEC)
    }
}

/// This process's own CPU time.
pub fn own_cpu_time() -> Duration {
    Duration::from_millis(ticks_of(std::process::id()).unwrap_or(0) * 1000 / TICKS_PER_SEC)
}

/// `(pid, ppid)` of every process.
fn all_processes() -> Vec<(u32, u32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, stat_fields(pid)?.get(1)?.parse().ok()?)))
        .collect()
}

/// utime + stime, in ticks.
fn ticks_of(pid: u32) -> Option<u64> {
    let fields = stat_fields(pid)?;
    // After the command: state(0) ppid(1) ... utime(11) stime(12).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The fields of `/proc/<pid>/stat` after the parenthesised command name, which may itself
/// hold spaces and parentheses.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_found_with_its_cpu_time() {
        let mut spin = 0u64;
        let until = std::time::Instant::now() + Duration::from_millis(50);
        while std::time::Instant::now() < until {
            spin = spin.wrapping_add(1);
        }
        assert!(spin > 0);
        let tree = Tree::of(&[std::process::id()]);
        assert!(tree.len() >= 1);
        assert!(tree.cpu_time() >= own_cpu_time().saturating_sub(Duration::from_millis(10)));
        assert!(own_cpu_time() > Duration::ZERO);
    }
}
