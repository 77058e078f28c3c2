//! The HTTP contract: balance, problems for unknown accounts and bad parameters.

use crate::helpers::{setup, usd};

#[tokio::test]
async fn the_balance_is_the_latest_closing_balance() {
    let app = setup().await;
    let base = app.serve().await;
    app.apply(&[
        usd("ACC-BAL", 12_345, "2024-04-01T10:00:00Z"),
        usd("ACC-BAL", 5, "2024-04-03T10:00:00Z"),
    ])
    .await;
    let (status, _, body) = app.get(&base, "/interest/accounts/ACC-BAL/balance").await;
    assert_eq!(status, 200);
    assert_eq!(body["account_id"], "ACC-BAL");
    assert_eq!(body["currency"], "USD");
    assert_eq!(body["balance_minor"], 12_350);
    assert_eq!(body["balance"], "123.50");
    assert_eq!(body["as_of_day"], "2024-04-03");
    app.finish().await;
}

#[tokio::test]
async fn unknown_accounts_and_bad_parameters_are_problems() {
    let app = setup().await;
    let base = app.serve().await;
    app.apply(&[usd("ACC-P", 100, "2024-04-01T10:00:00Z")])
        .await;
    for path in [
        "/interest/accounts/ACC-NOPE",
        "/interest/accounts/ACC-NOPE/balance",
    ] {
        let (status, content_type, body) = app.get(&base, path).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(content_type, "application/problem+json");
        assert_eq!(body["type"], "urn:eventbank:problem:not-found");
        assert_eq!(body["status"], 404);
    }
    for (query, needle) in [
        ("from=2024-04-05&to=2024-04-01", "after"),
        ("from=2024-02-30", "from must be a date"),
        ("to=04/01/2024", "to must be a date"),
        ("from=2024-13-01&to=2024-14-01", "from must be a date"),
    ] {
        let (status, content_type, body) = app
            .get(&base, &format!("/interest/accounts/ACC-P?{query}"))
            .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(content_type, "application/problem+json");
        assert!(
            body["detail"].as_str().unwrap().contains(needle),
            "{query}: {body}"
        );
    }
    // A range starting long before the account is clipped to its first day, not refused.
    let (status, _, body) = app
        .get(
            &base,
            "/interest/accounts/ACC-P?from=1900-01-01&to=2024-04-03",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["from"], "2024-04-01", "{body}");
    assert_eq!(body["to"], "2024-04-03", "{body}");
    let days = body["days"].as_array().unwrap();
    assert_eq!(days.len(), 3, "{body}");
    assert_eq!(days[0]["day"], "2024-04-01", "{body}");
    let (status, content_type, _) = app.get(&base, "/interest/accounts/acc%20lower").await;
    assert_eq!(status, 400);
    assert_eq!(content_type, "application/problem+json");
    app.finish().await;
}

#[tokio::test]
async fn days_after_the_last_deposit_are_reported_until_today() {
    let app = setup().await;
    let base = app.serve().await;
    app.apply(&[usd("ACC-OPEN", 365_000, "2024-01-30T10:00:00Z")])
        .await;
    // Jan 30 to Feb 29 inclusive is 31 days, 25 minor each.
    let (_, _, body) = app
        .get(
            &base,
            "/interest/accounts/ACC-OPEN?from=2024-01-01&to=2024-02-29",
        )
        .await;
    assert_eq!(body["from"], "2024-01-30");
    assert_eq!(body["to"], "2024-02-29");
    assert_eq!(body["days"].as_array().unwrap().len(), 31);
    assert_eq!(body["total_accrued_minor"], 31 * 25);
    // A range in the future is cut at today (UTC): never a day that has not started. So is a
    // request without `to`. "Today" is read before and after each request, so a run across
    // midnight accepts either day instead of failing.
    let today = || chrono::Utc::now().date_naive().to_string();
    for path in [
        "/interest/accounts/ACC-OPEN?to=9999-12-31&from=2025-01-01",
        "/interest/accounts/ACC-OPEN?from=2025-01-01",
    ] {
        let before = today();
        let (_, _, body) = app.get(&base, path).await;
        let days = [before, today()];
        let to = body["to"].as_str().unwrap();
        assert!(
            days.iter().any(|d| d == to),
            "{path}: to {to}, today {days:?}"
        );
        let last = body["days"].as_array().unwrap().last().unwrap()["day"].clone();
        assert_eq!(last, to, "{path}: the last day reported is `to`");
    }
    app.finish().await;
}
