use crate::{deposit, open_account, settle};
use eventbank_e2e::{Svc, TestWorld, eventually, get_json};
use serde_json::Value;
use std::time::Duration;

fn schema() -> jsonschema::Validator {
    let text = include_str!("../../../../shared/schemas/deposit-completed.v2.schema.json");
    let value: Value = serde_json::from_str(text).expect("schema is JSON");
    jsonschema::validator_for(&value).expect("schema compiles")
}

#[tokio::test]
async fn one_deposit_reaches_every_consumer_and_its_api() {
    let world = TestWorld::new().await.unwrap();
    let services = world.start_all(&[]).await.unwrap();
    let alice = open_account(&services, "Alice Example", "USD")
        .await
        .unwrap();
    let bob = open_account(&services, "Bob Example", "JPY").await.unwrap();

    let first = deposit(&services, &alice, "100.00", "USD").await.unwrap();
    deposit(&services, &alice, "0.50", "USD").await.unwrap();
    deposit(&services, &bob, "1500", "JPY").await.unwrap();
    let report = settle(&world, 3).await.unwrap();
    assert_eq!(report.accounts, 2);

    // account: read-your-writes answers with both of Alice's deposits.
    let balance = get_json(
        &services
            .account
            .url(&format!("/accounts/{alice}?min_sequence=2&wait=5s")),
    )
    .await
    .unwrap()
    .require(200)
    .unwrap();
    assert_eq!(balance["balance_minor"], 10_050);
    assert_eq!(balance["balance"], "100.50");
    assert_eq!(balance["last_sequence"], 2);

    // email: one stored confirmation per deposit and one .eml file each, addressed to Alice.
    let email_pool = world.pool(Svc::Email).await.unwrap();
    let to: Vec<String> = sqlx::query_scalar("SELECT to_address FROM emails WHERE account_id = $1")
        .bind(&alice)
        .fetch_all(&email_pool)
        .await
        .unwrap();
    assert_eq!(to, vec!["alice.example@example.com"; 2]);
    let eml = eventually(Duration::from_secs(30), || async {
        let files: Vec<_> = std::fs::read_dir(world.email_dir())?
            .filter_map(|e| e.ok())
            .collect();
        anyhow::ensure!(files.len() == 3, "{} .eml files", files.len());
        Ok(files)
    })
    .await
    .unwrap();
    let event_id = first["event_id"].as_str().unwrap();
    let mail = std::fs::read_to_string(world.email_dir().join(format!("{event_id}.eml"))).unwrap();
    assert!(
        mail.contains(&format!("Message-ID: <{event_id}@eventbank.example>")),
        "{mail}"
    );
    assert!(mail.contains("100.00 USD"), "{mail}");
    assert_eq!(eml.len(), 3);

    // interest: the daily balance copy through its API.
    let interest = get_json(
        &services
            .interest
            .url(&format!("/interest/accounts/{alice}/balance")),
    )
    .await
    .unwrap()
    .require(200)
    .unwrap();
    assert_eq!(interest["balance_minor"], 10_050);

    // compliance: one chained audit entry per deposit, and the chain verifies.
    let audit = get_json(
        &services
            .compliance
            .url(&format!("/compliance/audit?account_id={alice}")),
    )
    .await
    .unwrap()
    .require(200)
    .unwrap();
    let entries = audit
        .get("entries")
        .or(audit.get("items"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    assert_eq!(entries.len(), 2, "{audit}");
    let verify = get_json(&services.compliance.url("/compliance/verify"))
        .await
        .unwrap()
        .require(200)
        .unwrap();
    assert_eq!(verify["ok"], true, "{verify}");

    // Every event the producer emitted validates against the published JSON Schema.
    let deposit_pool = world.pool(Svc::Deposit).await.unwrap();
    let payloads: Vec<Vec<u8>> = sqlx::query_scalar("SELECT payload FROM outbox")
        .fetch_all(&deposit_pool)
        .await
        .unwrap();
    let validator = schema();
    for payload in payloads {
        let value: Value = serde_json::from_slice(&payload).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?} in {value}");
    }

    // Every service stops cleanly on SIGTERM.
    for svc in Svc::ALL {
        let status = services.get(svc).terminate().await.unwrap();
        assert!(status.success(), "{svc} exited with {status}");
    }
    world.cleanup().await.unwrap();
}

#[tokio::test]
async fn health_readiness_and_metrics_answer_on_every_service() {
    let world = TestWorld::new().await.unwrap();
    let services = world.start_all(&[]).await.unwrap();
    for svc in Svc::ALL {
        let handle = services.get(svc);
        let health = get_json(&handle.url("/healthz")).await.unwrap();
        assert_eq!(health.status, 200, "{svc}");
        let ready = get_json(&handle.url("/readyz"))
            .await
            .unwrap()
            .require(200)
            .unwrap();
        assert_eq!(ready["database"], true, "{svc}");
        assert_eq!(ready["broker"], true, "{svc}");
        let (status, metrics) = eventbank_e2e::get_text(&handle.url("/metrics"))
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert!(
            metrics.contains(&format!("eventbank_{svc}_broker_connected 1")),
            "{svc}: {metrics}"
        );
        let own: &[&str] = match svc {
            Svc::Deposit => &[
                "outbox_backlog",
                "outbox_oldest_unpublished_age_seconds",
                "relay_leader",
            ],
            Svc::Account => &[
                "projection_lag_milliseconds",
                "sequence_gaps_open",
                "messages_consumed_total",
            ],
            _ => &[
                "messages_consumed_total",
                "duplicates_skipped_total",
                "dead_lettered_total",
                "handler_batch_seconds_bucket",
            ],
        };
        for name in own {
            assert!(
                metrics.contains(&format!("eventbank_{svc}_{name}")),
                "{svc} lacks {name}"
            );
        }
        let missing = get_json(&handle.url("/no-such-route")).await.unwrap();
        assert_eq!(missing.status, 404);
        assert_eq!(missing.content_type, "application/problem+json");
    }
    world.cleanup().await.unwrap();
}
