//! What interest and compliance make of real deposits, through their APIs.

use crate::{deposit, event_id, open_account, settle};
use eventbank_e2e::{TestWorld, get_json};

#[tokio::test]
async fn interest_and_compliance_answer_for_the_deposits_of_the_day() {
    let world = TestWorld::new().await.unwrap();
    let services = world.start_all(&[]).await.unwrap();
    let carol = open_account(&services, "Carol Example", "USD")
        .await
        .unwrap();

    // 10,000.00 (exactly the reporting threshold: a CTR), then three 4,000.00 deposits that
    // together reach it within 24 hours (one structuring alert, at the third).
    let large = deposit(&services, &carol, "10000.00", "USD").await.unwrap();
    let mut small = Vec::new();
    for _ in 0..3 {
        small.push(deposit(&services, &carol, "4000.00", "USD").await.unwrap());
    }
    settle(&world, 4).await.unwrap();
    let today = large["created_at"].as_str().unwrap()[..10].to_owned();

    // interest: today's closing balance 22,000.00 = 2,200,000 minor at 2.50 %:
    // 2,200,000 x 25,000 / 365 = 150,684,931.51 -> 150,684,932 micro; posts as 151 minor.
    let accrual = get_json(&services.interest.url(&format!(
        "/interest/accounts/{carol}?from={today}&to={today}"
    )))
    .await
    .unwrap()
    .require(200)
    .unwrap();
    assert_eq!(accrual["days"].as_array().unwrap().len(), 1, "{accrual}");
    let day = &accrual["days"][0];
    assert_eq!(day["day"], today.as_str());
    assert_eq!(day["closing_balance_minor"], 2_200_000);
    assert_eq!(day["rate"], "2.50");
    assert_eq!(day["accrued_micro"], 150_684_932);
    assert_eq!(accrual["total_accrued_minor"], 151);
    assert_eq!(accrual["total_accrued"], "1.51");
    assert_eq!(accrual["day_count"], "Actual/365");

    // compliance: four chained entries that verify, a CTR and one structuring alert.
    let audit = get_json(
        &services
            .compliance
            .url(&format!("/compliance/audit?account_id={carol}")),
    )
    .await
    .unwrap()
    .require(200)
    .unwrap();
    let items = audit["items"].as_array().unwrap();
    assert_eq!(items.len(), 4);
    assert_eq!(items[0]["event_id"], event_id(&large).as_str());
    assert_eq!(items[1]["prev_hash"], items[0]["hash"]);
    let verify = get_json(&services.compliance.url("/compliance/verify"))
        .await
        .unwrap()
        .require(200)
        .unwrap();
    assert_eq!(verify["ok"], true, "{verify}");
    let alerts = get_json(
        &services
            .compliance
            .url(&format!("/compliance/alerts?account_id={carol}")),
    )
    .await
    .unwrap()
    .require(200)
    .unwrap();
    let alerts = alerts["items"].as_array().unwrap().clone();
    let kinds: Vec<&str> = alerts.iter().map(|a| a["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, vec!["ctr", "structuring"], "{alerts:?}");
    assert_eq!(alerts[0]["event_id"], event_id(&large).as_str());
    assert_eq!(alerts[0]["amount_minor"], 1_000_000);
    assert_eq!(alerts[1]["event_id"], event_id(&small[2]).as_str());
    assert_eq!(alerts[1]["amount_minor"], 1_200_000);
    assert_eq!(alerts[1]["details"]["deposit_count"], 3);
    world.cleanup().await.unwrap();
}
