//! What the benchmark watches while load runs: CPU time and resident memory of processes (from
//! `/proc`), and the pipeline's progress from the services' own `/metrics` counters (accepted,
//! published, consumed), which cost the services next to nothing to serve.

use crate::client::Conn;
use anyhow::{Context as _, Result};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ): 100 on every Linux ABI in use.
const TICKS_PER_SECOND: f64 = 100.0;

/// user + system CPU seconds of one process so far, `None` if it is gone.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_from_stat(&stat)
}

fn cpu_from_stat(stat: &str) -> Option<f64> {
    // The command name (field 2) may contain spaces; fields after its closing ')' are fixed.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After ')': state is index 0, so utime (field 14) is 11 and stime (15) is 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// Resident set size in bytes of one process now, `None` if it is gone.
pub fn process_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU seconds used by all processes whose command is `postgres` and `beam.smp` (RabbitMQ),
/// summed over the processes alive now. Includes other users of the same servers.
pub fn server_cpu_seconds() -> BTreeMap<&'static str, f64> {
    let mut out = BTreeMap::from([("postgres", 0.0), ("rabbitmq", 0.0)]);
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let comm = stat
            .find('(')
            .zip(stat.rfind(')'))
            .map(|(a, b)| &stat[a + 1..b])
            .unwrap_or_default();
        let key = match comm {
            "postgres" => "postgres",
            "beam.smp" => "rabbitmq",
            _ => continue,
        };
        if let Some(cpu) = cpu_from_stat(&stat)
            && let Some(total) = out.get_mut(key)
        {
            *total += cpu;
        }
    }
    out
}

/// (busy, total) CPU seconds of the whole machine so far, from `/proc/stat`.
pub fn machine_cpu_seconds() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: f64 = values.iter().sum();
    // idle and iowait are not busy.
    let idle = values.get(3).copied().unwrap_or(0.0) + values.get(4).copied().unwrap_or(0.0);
    Some(((total - idle) / TICKS_PER_SECOND, total / TICKS_PER_SECOND))
}

/// The machine as the report describes it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
    pub load_average_before: String,
}

pub fn describe_machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| (kb / 1024.0 / 1024.0 * 10.0).round() / 10.0);
    Machine {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model,
        memory_gib,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        load_average_before: std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
    }
}

/// Reads counters from a service's `/metrics`.
pub struct MetricsReader {
    conn: Conn,
}

impl MetricsReader {
    pub fn new(addr: SocketAddr) -> Result<Self> {
        Ok(Self {
            conn: Conn::new(addr, "unused")?,
        })
    }

    /// The value of every sample whose name ends with one of `suffixes` (labels ignored).
    pub async fn read(&mut self, suffixes: &[&str]) -> Result<Vec<f64>> {
        let (status, body) = self.conn.get("/metrics").await?;
        anyhow::ensure!(status == 200, "/metrics answered {status}");
        let text = std::str::from_utf8(&body).context("/metrics is not UTF-8")?;
        Ok(suffixes
            .iter()
            .map(|suffix| metric_value(text, suffix).unwrap_or(0.0))
            .collect())
    }
}

fn metric_value(text: &str, suffix: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            let bare = name.split('{').next()?;
            bare.ends_with(suffix).then(|| value.parse().ok())?
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        let stat = "123 (tokio (rt) x) S 1 123 123 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 5 0";
        assert_eq!(cpu_from_stat(stat), Some(3.0));
        assert!(process_cpu_seconds(std::process::id()).is_some());
        assert!(process_rss_bytes(std::process::id()).unwrap_or(0) > 0);
    }

    #[test]
    fn metrics_are_found_by_suffix() {
        let text = "# HELP x\neventbank_account_messages_consumed_total 42\n\
                    eventbank_deposit_outbox_backlog 3\n";
        assert_eq!(metric_value(text, "_messages_consumed_total"), Some(42.0));
        assert_eq!(metric_value(text, "_outbox_backlog"), Some(3.0));
        assert_eq!(metric_value(text, "_missing"), None);
    }
}
