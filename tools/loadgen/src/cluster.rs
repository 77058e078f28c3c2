//! Killing the broker node that leads most of the world's quorum queues mid-phase
//! (`--kill-leader-at`), through `scripts/cluster`, and starting it again after the phase.

use anyhow::{Context as _, Result, bail};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/cluster")
}

/// Runs `scripts/cluster ARGS`; its standard output, or an error carrying all it printed.
pub async fn run(args: &[&str]) -> Result<String> {
    let output = tokio::process::Command::new(script())
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running scripts/cluster {}", args.join(" ")))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "scripts/cluster {} failed ({}):\n{stdout}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}

/// The node leading most of the quorum queues whose names start with `prefix`
/// (`scripts/cluster leaders` prints `queue<TAB>leader<TAB>members online`).
pub fn busiest_leader(leaders: &str) -> Option<String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for line in leaders.lines() {
        if let Some(leader) = line.split('\t').nth(1).filter(|l| !l.is_empty()) {
            *counts.entry(leader).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(node, _)| node.to_owned())
}

/// The node leading most of the quorum queues whose names start with `prefix`, asked before the
/// phase: listing the queues takes seconds on a loaded machine, and leaders move only when a
/// node goes.
pub async fn leader_of_most(prefix: &str) -> Result<String> {
    let leaders = run(&["leaders", prefix]).await?;
    busiest_leader(&leaders)
        .with_context(|| format!("no quorum queue of {prefix}* has a leader:\n{leaders}"))
}

/// After `after` (counted from `phase_started`), SIGKILLs `node`; returns it and the seconds
/// since `phase_started` at which it was dead.
pub async fn kill_after(
    node: String,
    after: Duration,
    phase_started: Instant,
) -> Result<(String, f64)> {
    tokio::time::sleep_until((phase_started + after).into()).await;
    run(&["kill", &node]).await?;
    let at = phase_started.elapsed().as_secs_f64();
    eprintln!("loadgen: SIGKILLed {node}, the leader of most of the run's queues, at {at:.1} s");
    Ok((node, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busiest_leader_leads_most_queues() {
        let out = "t1.account.deposits.0\teb2@localhost\t[eb1@localhost, eb2@localhost]\n\
                   t1.account.deposits.1\teb1@localhost\t[]\n\
                   t1.email.deposits.0\teb2@localhost\t[]\n";
        assert_eq!(busiest_leader(out).as_deref(), Some("eb2@localhost"));
        assert_eq!(busiest_leader(""), None);
    }
}
