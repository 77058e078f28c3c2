use crate::{SETTLE, deposit, open_account, settle};
use eventbank_e2e::{Svc, TestWorld, eventually, get_json};

/// The broker becomes unreachable for the deposit service (a proxy we control cuts its
/// connections; the shared broker keeps running): deposits are still accepted, wait in the
/// outbox, and are published once the broker is back.
#[tokio::test]
async fn deposits_are_accepted_while_the_broker_is_away_and_published_after() {
    let world = TestWorld::new().await.unwrap();
    let proxy = world.broker_proxy().await.unwrap();
    for svc in Svc::CONSUMERS {
        world.start(svc, &[]).await.unwrap();
    }
    let via_proxy = world.amqp_url_via(&proxy);
    world
        .start(Svc::Deposit, &[("AMQP_URL", via_proxy.as_str())])
        .await
        .unwrap();
    let services = world.started().unwrap();
    let services_deposit = services.deposit.clone();
    let account = open_account(&services, "Otto Outage", "USD").await.unwrap();
    deposit(&services, &account, "1.00", "USD").await.unwrap();
    settle(&world, 1).await.unwrap();

    proxy.cut().await;
    // The relay notices: its readiness body reports the broker down, yet it stays ready.
    eventually(SETTLE, || async {
        let ready = get_json(&services_deposit.url("/readyz")).await?;
        anyhow::ensure!(
            ready.status == 200,
            "deposit must stay ready: {}",
            ready.text
        );
        anyhow::ensure!(ready.body["broker"] == false, "broker still reported up");
        Ok(())
    })
    .await
    .unwrap();
    for i in 0..20 {
        deposit(&services, &account, &format!("{}.00", i + 2), "USD")
            .await
            .unwrap();
    }
    let pool = world.pool(Svc::Deposit).await.unwrap();
    let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        waiting, 20,
        "the outbox holds every deposit made while the broker was away"
    );
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM transactions")
        .fetch_one(&world.pool(Svc::Account).await.unwrap())
        .await
        .unwrap();
    assert_eq!(applied, 1);

    proxy.restore().await;
    let report = settle(&world, 21).await.unwrap();
    assert!(report.ok(), "{report}");
    world.cleanup().await.unwrap();
}
