//! bankctl's operator commands against a running world: open, deposit, show --wait-for, tail,
//! rebuild, check; exit codes scripts can rely on.

use crate::dlq::{bankctl, bankctl_command};
use eventbank_e2e::TestWorld;
use serde_json::Value;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn the_operator_cli_opens_deposits_shows_tails_rebuilds_and_checks() {
    let world = TestWorld::new().await.unwrap();
    world.start_all(&[]).await.unwrap();

    let (code, out) = bankctl(
        &world,
        &[
            "--json",
            "open",
            "--holder",
            "Cleo Cli",
            "--email",
            "cleo@example.com",
            "--currency",
            "EUR",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let account: Value = serde_json::from_str(&out).unwrap();
    let id = account["account_id"].as_str().unwrap().to_owned();

    // Tail first, so it sees the deposit made next.
    let mut tail = bankctl_command(&world)
        .args(["tail", "--count", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut ready = BufReader::new(tail.stderr.take().unwrap()).lines();
    let started = tokio::time::timeout(Duration::from_secs(30), ready.next_line())
        .await
        .unwrap()
        .unwrap();
    assert!(
        started.is_some_and(|l| l.contains("tailing")),
        "tail did not start"
    );

    let (code, out) = bankctl(
        &world,
        &[
            "--json",
            "deposit",
            &id,
            "12.50",
            "EUR",
            "--idempotency-key",
            "cli-1",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let deposit: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(deposit["sequence"], 1);

    let (code, out) = bankctl(&world, &["--json", "show", &id, "--wait-for", "1"]).await;
    assert_eq!(code, 0, "{out}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["balance"], "12.50");

    let tailed = tokio::time::timeout(Duration::from_secs(30), tail.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(tailed.status.success());
    let line: Value = serde_json::from_str(String::from_utf8_lossy(&tailed.stdout).trim()).unwrap();
    assert_eq!(line["account_id"], id.as_str());
    assert_eq!(line["event_id"], deposit["event_id"]);

    // Not yet consistent: exit 1 with the problem on stdout.
    let (code, out) = bankctl(
        &world,
        &["--json", "show", &id, "--wait-for", "9", "--wait", "200ms"],
    )
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not-yet-consistent"), "{out}");

    let (code, out) = bankctl(&world, &["rebuild", "--check"]).await;
    assert_eq!(code, 0, "{out}");
    // The check itself waits for nothing: once every consumer has the deposit, it passes.
    eventbank_e2e::flows::settle(&world, 1).await.unwrap();
    let (code, out) = bankctl(&world, &["check"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("1 deposits over 1 accounts: all invariants hold"),
        "{out}"
    );
    let (code, _) = bankctl(&world, &["no-such-command"]).await;
    assert_eq!(code, 2);
    world.cleanup().await.unwrap();
}
