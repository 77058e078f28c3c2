//! email over real SMTP: the message as received, and an SMTP outage that delays mail only.

use crate::{SETTLE, deposit, event_id, message_id, open_account, settle};
use eventbank_e2e::{SmtpSink, Svc, TestWorld, eventually, get_json, queue_message_count};
use std::collections::BTreeMap;

/// The email service pointed at `sink`, retrying fast (200 ms doubling to 2 s) so that mail
/// catches up within seconds of the sink's return, and never giving up during the test (at
/// 2 s a retry, the default 20 attempts would end in `failed` after some 35 s of outage on a
/// slow machine).
fn smtp_env(sink: &SmtpSink) -> Vec<(&'static str, String)> {
    vec![
        ("EMAIL_TRANSPORT", "smtp".into()),
        ("SMTP_HOST", "127.0.0.1".into()),
        ("SMTP_PORT", sink.port().to_string()),
        ("EMAIL_RETRY_BASE_MS", "200".into()),
        ("EMAIL_RETRY_CAP_SECS", "2".into()),
        ("EMAIL_MAX_ATTEMPTS", "1000".into()),
    ]
}

fn as_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test]
async fn the_confirmation_arrives_over_smtp_with_the_right_headers_and_body() {
    let sink = SmtpSink::start().await.unwrap();
    let world = TestWorld::new().await.unwrap();
    let env = smtp_env(&sink);
    let services = world.start_all(&as_refs(&env)).await.unwrap();
    let alice = open_account(&services, "Alice Example", "USD")
        .await
        .unwrap();

    let made = deposit(&services, &alice, "250.00", "USD").await.unwrap();
    let id = message_id(&event_id(&made));
    let mail = eventually(SETTLE, || async {
        sink.messages()
            .into_iter()
            .find(|m| m.message_id().as_deref() == Some(id.as_str()))
            .ok_or_else(|| anyhow::anyhow!("{id} not received yet"))
    })
    .await
    .unwrap();
    println!(
        "{}\n\n{}",
        mail.headers_text(),
        mail.text_body().unwrap_or_default()
    );

    // The envelope and the headers.
    assert!(
        mail.mail_from.contains("<no-reply@eventbank.example>"),
        "{mail:?}"
    );
    assert_eq!(mail.rcpt_to.len(), 1);
    assert!(
        mail.rcpt_to[0].contains("<alice.example@example.com>"),
        "{mail:?}"
    );
    assert_eq!(
        mail.header("From").as_deref(),
        Some("eventbank <no-reply@eventbank.example>")
    );
    assert_eq!(
        mail.header("To").as_deref(),
        Some("\"Alice Example\" <alice.example@example.com>")
    );
    assert_eq!(
        mail.header("Subject").as_deref(),
        Some("Deposit of 250.00 USD received")
    );
    assert!(mail.header("Date").is_some());
    assert!(
        mail.header("Content-Type")
            .is_some_and(|v| v.starts_with("multipart/alternative")),
        "{}",
        mail.data
    );

    // The plain-text body: the amount for its currency, the account masked, the deposit.
    let masked = format!("****{}", &alice[alice.len() - 4..]);
    let text = mail.text_body().expect("a text/plain part");
    assert!(
        text.starts_with(&format!(
            "Hello Alice Example,\n\nWe received a deposit of 250.00 USD into your account {masked}.\n"
        )),
        "{text}"
    );
    let deposit_id = made["deposit_id"].as_str().unwrap();
    assert!(
        text.contains(&format!("Deposit id: {deposit_id}\n")),
        "{text}"
    );
    assert!(!mail.data.contains(&alice), "the full account number leaks");
    // The HTML alternative says the same.
    assert!(mail.data.contains("Content-Type: text/html"));
    assert!(
        mail.data.contains("<strong>250.00 USD</strong>"),
        "{}",
        mail.data
    );

    // The email service records the delivery.
    let stored = eventually(SETTLE, || async {
        let body = get_json(&services.email.url(&format!("/emails/{}", event_id(&made))))
            .await?
            .require(200)?;
        anyhow::ensure!(body["status"] == "sent", "{body}");
        Ok(body)
    })
    .await
    .unwrap();
    assert_eq!(stored["message_id"], id.as_str());
    assert_eq!(stored["attempts"], 1);
    assert_eq!(sink.messages().len(), 1);
    world.cleanup().await.unwrap();
}

#[tokio::test]
async fn an_smtp_outage_delays_only_mail_and_every_mail_arrives_once_after_it_returns() {
    let mut sink = SmtpSink::start().await.unwrap();
    let world = TestWorld::new().await.unwrap();
    let env = smtp_env(&sink);
    let services = world.start_all(&as_refs(&env)).await.unwrap();
    let alice = open_account(&services, "Alice Outage", "USD")
        .await
        .unwrap();
    let bob = open_account(&services, "Bob Outage", "EUR").await.unwrap();

    // Arrange: one mail goes through while the server is up.
    let before = deposit(&services, &alice, "1.00", "USD").await.unwrap();
    let first = message_id(&event_id(&before));
    eventually(SETTLE, || async {
        let body = get_json(
            &services
                .email
                .url(&format!("/emails/{}", event_id(&before))),
        )
        .await?
        .require(200)?;
        anyhow::ensure!(body["status"] == "sent", "{body}");
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(sink.message_ids(), vec![first.clone()]);

    // Act: the SMTP server goes away; deposits keep coming.
    sink.stop().await;
    let mut made = vec![before];
    for i in 0..6 {
        let (account, currency, amount) = if i % 2 == 0 {
            (&alice, "USD", format!("{}.00", 10 + i))
        } else {
            (&bob, "EUR", format!("{}.50", 20 + i))
        };
        made.push(
            deposit(&services, account, &amount, currency)
                .await
                .unwrap(),
        );
    }

    // Every other consumer keeps processing: balances, interest copy, audit entries and one
    // queued email per deposit all reach 7, and every queue of every consumer is drained
    // (consumed and acked), email's included.
    let report = settle(&world, 7).await.unwrap();
    assert!(report.ok(), "{report}");
    eventually(SETTLE, || async {
        for svc in Svc::CONSUMERS {
            for partition in 0..4 {
                let queue = world.partition_queue(svc, partition);
                let waiting = queue_message_count(&world, &queue).await?;
                anyhow::ensure!(waiting == 0, "{queue}: {waiting} messages waiting");
            }
        }
        Ok(())
    })
    .await
    .unwrap();
    let balance = get_json(
        &services
            .account
            .url(&format!("/accounts/{alice}?min_sequence=4&wait=5s")),
    )
    .await
    .unwrap()
    .require(200)
    .unwrap();
    assert_eq!(balance["balance"], "37.00"); // 1 + 10 + 12 + 14
    let verify = get_json(&services.compliance.url("/compliance/verify"))
        .await
        .unwrap()
        .require(200)
        .unwrap();
    assert_eq!(verify["ok"], true, "{verify}");
    assert_eq!(verify["entries"], 7);

    // The mail waits in the queue with the failure recorded, nothing is lost or failed.
    eventually(SETTLE, || async {
        for account in [&alice, &bob] {
            let queued = get_json(
                &services
                    .email
                    .url(&format!("/emails?account_id={account}&status=queued")),
            )
            .await?
            .require(200)?;
            let queued = queued.as_array().cloned().unwrap_or_default();
            anyhow::ensure!(queued.len() == 3, "{account}: {} queued", queued.len());
            for email in &queued {
                anyhow::ensure!(email["attempts"].as_i64() >= Some(1), "{email}");
                anyhow::ensure!(
                    email["last_error"]
                        .as_str()
                        .is_some_and(|e| e.starts_with("SMTP")),
                    "{email}"
                );
            }
        }
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(
        sink.messages().len(),
        1,
        "nothing delivered during the outage"
    );

    // The server returns on the same port: every mail arrives, each exactly once.
    sink.restart_on_same_port().await.unwrap();
    eventually(SETTLE, || async {
        let sent = get_json(&services.email.url("/emails?status=sent"))
            .await?
            .require(200)?;
        let sent = sent.as_array().map_or(0, Vec::len);
        anyhow::ensure!(sent == 7, "{sent} of 7 emails sent");
        Ok(())
    })
    .await
    .unwrap();
    let mut copies: BTreeMap<String, usize> = BTreeMap::new();
    for id in sink.message_ids() {
        *copies.entry(id).or_default() += 1;
    }
    let expected: BTreeMap<String, usize> =
        made.iter().map(|d| (message_id(&event_id(d)), 1)).collect();
    assert_eq!(copies, expected, "every confirmation exactly once");
    let failed = get_json(&services.email.url("/emails?status=failed"))
        .await
        .unwrap()
        .require(200)
        .unwrap();
    assert_eq!(failed.as_array().map(Vec::len), Some(0));
    world.cleanup().await.unwrap();
}
