//! Child processes (started, tracked and stopped by PID) and what `/proc` says about them: CPU
//! time and resident memory of a whole process tree (nginx's master and workers, for example).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The processes this bench started. Stopped by PID at the end, on error, or by the watchdog:
/// first SIGTERM to the process (nginx's master then stops its workers), then SIGKILL to it and
/// to whatever is left of its tree.
#[derive(Clone, Default)]
pub struct Procs(Arc<Mutex<Vec<Child>>>);

impl Procs {
    pub fn add(&self, child: Child) -> u32 {
        let pid = child.id();
        if let Ok(mut list) = self.0.lock() {
            list.push(child);
        }
        pid
    }

    /// Whether the child with this PID has exited (and how), if it is ours.
    pub fn exited(&self, pid: u32) -> Option<String> {
        let mut list = self.0.lock().ok()?;
        let child = list.iter_mut().find(|c| c.id() == pid)?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    /// Stops the child with this PID (and its tree), if it is ours. (The attack bench restarts
    /// a proxy that an attack killed or left unresponsive; the comparison never does.)
    #[allow(dead_code)]
    pub fn stop_one(&self, pid: u32) {
        let Ok(mut list) = self.0.lock() else { return };
        if let Some(i) = list.iter().position(|c| c.id() == pid) {
            let mut child = list.remove(i);
            stop(&mut child);
        }
    }

    pub fn stop_all(&self) {
        let Ok(mut list) = self.0.lock() else { return };
        // Newest first: proxies go before the backend they are connected to.
        for child in list.iter_mut().rev() {
            stop(child);
        }
        list.clear();
    }
}

fn signal(sig: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .args(pids.iter().map(u32::to_string))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

fn stop(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = child.id();
    let tree = tree_pids(pid);
    signal("TERM", &[pid]);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Whatever is still alive of the tree as it was (workers whose master died, say).
    let left: Vec<u32> = tree
        .into_iter()
        .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
        .collect();
    signal("KILL", &left);
    let _ = child.kill();
    let _ = child.wait();
}

/// Spawns a thread that reads `reader` line by line into `sink` (bounded) and sends each line
/// on the returned channel.
pub fn lines(
    reader: impl std::io::Read + Send + 'static,
    sink: Arc<Mutex<Vec<String>>>,
) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut kept) = sink.lock()
                && kept.len() < 200
            {
                kept.push(line.clone());
            }
            let _ = tx.send(line);
        }
    });
    rx
}

/// Clock ticks per second for `/proc/<pid>/stat`.
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// Fields of `/proc/<pid>/stat` after the parenthesised command name (field 3 is index 0).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// Parent → children, from one scan of `/proc`.
pub struct ProcMap(HashMap<u32, Vec<u32>>);

impl ProcMap {
    pub fn scan() -> Self {
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                if let Some(ppid) = stat_fields(pid)
                    .and_then(|f| f.get(1).cloned())
                    .and_then(|p| p.parse::<u32>().ok())
                {
                    children.entry(ppid).or_default().push(pid);
                }
            }
        }
        Self(children)
    }

    /// `root` and all its descendants.
    pub fn tree(&self, root: u32) -> Vec<u32> {
        let mut out = vec![root];
        let mut i = 0;
        while i < out.len() && out.len() < 10_000 {
            if let Some(kids) = self.0.get(&out[i]) {
                out.extend(kids);
            }
            i += 1;
        }
        out
    }
}

/// `pid` and all its descendants.
pub fn tree_pids(root: u32) -> Vec<u32> {
    ProcMap::scan().tree(root)
}

/// utime + stime of one process (all its threads), in seconds.
pub fn cpu_seconds(pid: u32, ticks: f64) -> Option<f64> {
    let f = stat_fields(pid)?;
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

/// CPU seconds of a set of processes (a tree scanned beforehand).
pub fn tree_cpu(pids: &[u32], ticks: f64) -> f64 {
    pids.iter().filter_map(|p| cpu_seconds(*p, ticks)).sum()
}

/// Resident memory of a process tree in bytes: VmRSS summed over its processes. For nginx
/// this counts pages its workers share with the master once per process (a few MiB).
pub fn tree_rss(root: u32) -> Option<f64> {
    let mut total = 0.0;
    let mut any = false;
    for pid in tree_pids(root) {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        if let Some(kb) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
        {
            total += kb * 1024.0;
            any = true;
        }
    }
    any.then_some(total)
}

/// (busy, steal) seconds of the whole machine from the first line of `/proc/stat`.
pub fn machine_seconds(ticks: f64) -> Option<(f64, f64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let at = |i: usize| v.get(i).copied().unwrap_or(0.0);
    Some((
        (at(0) + at(1) + at(2) + at(5) + at(6)) / ticks,
        at(7) / ticks,
    ))
}
