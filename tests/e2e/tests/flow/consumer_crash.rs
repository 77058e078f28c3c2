use crate::{deposit, open_account, settle};
use eventbank_e2e::TestWorld;

/// SIGKILL a consumer in the middle of a stream of deposits, restart it: every deposit is
/// reflected exactly once, none lost (the unacked batch is redelivered; the dedup row of a
/// committed batch makes its redelivery a no-op).
#[tokio::test]
async fn a_consumer_killed_mid_stream_catches_up_exactly_once() {
    let world = TestWorld::new().await.unwrap();
    let services = world.start_all(&[]).await.unwrap();
    let mut accounts = Vec::new();
    for i in 0..5 {
        accounts.push(
            open_account(&services, &format!("Kim Kill{i}"), "USD")
                .await
                .unwrap(),
        );
    }
    let total = 150;
    let before = services.account.pid().unwrap();
    for i in 0..total {
        if i == 50 {
            services.account.kill().await.unwrap();
            assert!(!services.account.is_running().await, "account was killed");
            services.compliance.kill().await.unwrap();
        }
        if i == 110 {
            services.account.restart().await.unwrap();
            services.compliance.restart().await.unwrap();
        }
        let account = &accounts[i % accounts.len()];
        deposit(
            &services,
            account,
            &format!("{}.{:02}", 1 + i, i % 100),
            "USD",
        )
        .await
        .unwrap();
    }
    let report = settle(&world, total as i64).await.unwrap();
    assert_eq!(report.accounts, 5, "{report}");
    // Deposits 50..110 reached account only from its queue, after the restart.
    assert_ne!(
        services.account.pid().unwrap(),
        before,
        "account ran again as a new process"
    );
    world.cleanup().await.unwrap();
}
