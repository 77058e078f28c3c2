use crate::{deposit_event, publish, settled};
use eventbank_e2e::{Svc, TestWorld};
use std::time::Duration;

const CLI_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn the_rebuild_command_reports_identical_then_finds_and_repairs_damage() {
    let world = TestWorld::new().await.unwrap();
    let account = world.start(Svc::Account, &[]).await.unwrap();
    for s in 1..=5 {
        publish(&world, 1, &deposit_event("ACC-9001", s, 1_000))
            .await
            .unwrap();
    }
    settled(&account, "ACC-9001", 5).await.unwrap();

    let out = world
        .run_cli(Svc::Account, &["rebuild"], &[], CLI_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        out.stdout.contains("rebuilt 6 events of 1 accounts"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("differences from the live projection: none"),
        "{}",
        out.stdout
    );

    let pool = world.pool(Svc::Account).await.unwrap();
    sqlx::query("UPDATE balances SET balance_minor = 1 WHERE account_id = 'ACC-9001'")
        .execute(&pool)
        .await
        .unwrap();
    let out = world
        .run_cli(Svc::Account, &["rebuild", "--check"], &[], CLI_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.contains("balances ACC-9001"), "{}", out.stdout);
    assert!(out.stdout.contains("--check"), "{}", out.stdout);

    let out = world
        .run_cli(Svc::Account, &["rebuild"], &[], CLI_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let out = world
        .run_cli(Svc::Account, &["rebuild"], &[], CLI_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let balance: i64 =
        sqlx::query_scalar("SELECT balance_minor FROM balances WHERE account_id = 'ACC-9001'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(balance, 5_000);

    let out = world
        .run_cli(Svc::Account, &["rebuild", "--bogus"], &[], CLI_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    world.cleanup().await.unwrap();
}
