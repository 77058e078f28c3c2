//! Property tests of the deposit API's two writes, `POST /deposits` and `POST /accounts`, against
//! one running service: JSON-ish bodies (objects with the API's members holding arbitrary
//! values, and arbitrary JSON) and arbitrary bytes. Every answer: never a 500, an RFC 9457
//! problem for every refusal, nothing stored for a refusal and exactly one row set for an
//! acceptance; and the service accepts exactly what the API documents (an oracle written from
//! the documented rules decides, for every body that is JSON, whether it must be a 201).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use eventbank_e2e::{API_KEY, ServiceHandle, Svc, TestWorld};
use eventbank_events::{Currency, Money};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Map, Value, json};
use sqlx::PgPool;

use crate::raw::{RawRequest, count_changes, exchange, row_counts};

/// The demo accounts every deposit service seeds, with their currencies.
const ACCOUNTS: &[(&str, &str)] = &[
    ("ACC-0001", "USD"),
    ("ACC-0002", "EUR"),
    ("ACC-0003", "JPY"),
    ("ACC-0004", "USD"),
];
/// `MAX_DEPOSIT_AMOUNT`'s default, in major units.
const MAX_DEPOSIT: &str = "1000000.00";

#[derive(Clone)]
struct Post {
    path: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
}

/// The body as (lossy) text, so a shrunk failure reads as the request it was.
impl std::fmt::Debug for Post {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Post")
            .field("path", &self.path)
            .field("content_type", &self.content_type)
            .field("body", &String::from_utf8_lossy(&self.body))
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

/// Content types: mostly JSON (with the spellings axum accepts), sometimes not.
fn content_type() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        8 => Just(Some("application/json")),
        1 => Just(Some("application/json; charset=utf-8")),
        1 => Just(Some("application/vnd.eventbank+json")),
        1 => Just(Some("text/plain")),
        1 => Just(None),
    ]
}

fn accepted_content_type(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|c| c.starts_with("application/json") || c.ends_with("+json"))
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "\\PC{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map("[a-z_]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A string member: usually plausible, sometimes hostile, sometimes not a string at all.
fn member(plausible: BoxedStrategy<String>) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        6 => plausible.prop_map(|s| Some(Value::String(s))),
        1 => "\\PC{0,40}".prop_map(|s| Some(Value::String(s))),
        1 => prop::sample::select(vec![
            "", "\u{0}", "\u{202e}", "\u{200b}", "🦀", "null", "1; DROP TABLE deposits",
        ])
        .prop_map(|s| Some(Value::String(s.to_owned()))),
        1 => any_json().prop_map(Some),
        1 => Just(None),
    ]
}

fn amount() -> BoxedStrategy<String> {
    prop_oneof![
        6 => "[0-9]{1,7}(\\.[0-9]{1,3})?",
        1 => "[0-9]{15,22}(\\.[0-9]{0,3})?",
        2 => prop::sample::select(vec![
            "0", "0.00", "-1.00", "-0", "1e3", "+1.00", "1.", ".5", " 1.00", "1.00 ", "1,000.00",
            "１", "0.001", "0.010", "1000000.00", "1000000.01", "92233720368547758.07",
            "92233720368547758.08",
        ])
        .prop_map(str::to_owned),
    ]
    .boxed()
}

fn account_id() -> BoxedStrategy<String> {
    prop_oneof![
        6 => prop::sample::select(ACCOUNTS.iter().map(|(a, _)| *a).collect::<Vec<_>>())
            .prop_map(str::to_owned),
        1 => Just("ACC-9999".to_owned()),
        1 => "[A-Za-z0-9-]{0,34}",
    ]
    .boxed()
}

fn currency() -> BoxedStrategy<String> {
    prop_oneof![
        6 => prop::sample::select(vec!["USD", "EUR", "JPY"]).prop_map(str::to_owned),
        1 => prop::sample::select(vec!["usd", "XXX", "BHD", "GBP", "US"]).prop_map(str::to_owned),
    ]
    .boxed()
}

fn channel() -> BoxedStrategy<String> {
    prop::sample::select(vec!["branch", "atm", "online", "Online", "pigeon"])
        .prop_map(str::to_owned)
        .boxed()
}

fn reference() -> BoxedStrategy<String> {
    prop_oneof![
        "\\PC{0,40}",
        "\\PC{138,142}",
        Just("🦀".repeat(140)),
        Just("r".repeat(141)),
    ]
    .boxed()
}

fn holder_name() -> BoxedStrategy<String> {
    prop_oneof![
        4 => "[A-Za-z][A-Za-z .'-]{0,30}",
        1 => "\\PC{0,40}",
        1 => "\\PC{195,205}",
        1 => prop::sample::select(vec!["  ", "Zoë 👩‍👩‍👧", "Eve\nBcc: x", "\u{200b}"]).prop_map(str::to_owned),
    ]
    .boxed()
}

fn email() -> BoxedStrategy<String> {
    prop_oneof![
        4 => "[a-z0-9.]{1,12}@[a-z]{1,10}\\.[a-z]{2,4}",
        1 => "\\PC{0,20}@\\PC{0,20}",
        1 => prop::sample::select(vec![
            "a@b", "@example.com", "eve@", "a b@example.com", "a@@b.com", "a@.com", "a@b.",
        ])
        .prop_map(str::to_owned),
    ]
    .boxed()
}

/// An object with the named members (each maybe absent, maybe of the wrong type) and maybe an
/// extra one.
fn object(members: Vec<(&'static str, BoxedStrategy<Option<Value>>)>) -> BoxedStrategy<Value> {
    let (names, strategies): (Vec<_>, Vec<_>) = members.into_iter().unzip();
    (strategies, prop::option::of(("[a-z_]{1,10}", any_json())))
        .prop_map(move |(values, extra)| {
            let mut object = Map::new();
            if let Some((name, value)) = extra {
                object.insert(name, value);
            }
            for (name, value) in names.iter().zip(values) {
                if let Some(value) = value {
                    object.insert((*name).to_owned(), value);
                }
            }
            Value::Object(object)
        })
        .boxed()
}

fn deposit_body() -> BoxedStrategy<Value> {
    object(vec![
        ("account_id", member(account_id()).boxed()),
        ("amount", member(amount()).boxed()),
        ("currency", member(currency()).boxed()),
        (
            "channel",
            prop_oneof![3 => Just(None), 1 => member(channel())].boxed(),
        ),
        (
            "reference",
            prop_oneof![3 => Just(None), 1 => member(reference())].boxed(),
        ),
    ])
}

fn account_body() -> BoxedStrategy<Value> {
    object(vec![
        ("holder_name", member(holder_name()).boxed()),
        ("email", member(email()).boxed()),
        ("currency", member(currency()).boxed()),
    ])
}

/// A deposit with every member a string of the right kind and the account's own currency: most
/// are accepted, so the oracle's "must be a 201" side is tried as often as its refusals.
fn plausible_deposit() -> BoxedStrategy<Value> {
    (
        prop::sample::select(ACCOUNTS.to_vec()),
        "[0-9]{1,6}(\\.[0-9]{1,3})?",
        prop::option::of(channel()),
        prop::option::of(reference()),
    )
        .prop_map(|((account, currency), amount, channel, reference)| {
            let mut body = json!({"account_id": account, "amount": amount, "currency": currency});
            if let Some(channel) = channel {
                body["channel"] = Value::String(channel);
            }
            if let Some(reference) = reference {
                body["reference"] = Value::String(reference);
            }
            body
        })
        .boxed()
}

/// An account with every member a string of the right kind.
fn plausible_account() -> BoxedStrategy<Value> {
    (holder_name(), email(), currency())
        .prop_map(|(holder_name, email, currency)| {
            json!({"holder_name": holder_name, "email": email, "currency": currency})
        })
        .boxed()
}

/// JSON-ish requests: objects of the endpoint's shape (plausible ones, and ones whose members
/// may be anything or missing), sometimes any JSON at all.
fn json_ish_post() -> impl Strategy<Value = Post> {
    let deposits =
        prop_oneof![4 => plausible_deposit(), 4 => deposit_body(), 1 => any_json().boxed()]
            .prop_map(|body| ("/deposits", body));
    let accounts =
        prop_oneof![4 => plausible_account(), 4 => account_body(), 1 => any_json().boxed()]
            .prop_map(|body| ("/accounts", body));
    (prop_oneof![deposits, accounts], content_type()).prop_map(|((path, body), content_type)| {
        Post {
            path,
            content_type,
            body: body.to_string().into_bytes(),
        }
    })
}

/// Arbitrary bytes, or a valid body with one byte replaced or the end cut off, as JSON.
fn byte_post() -> impl Strategy<Value = Post> {
    let valid = prop_oneof![
        Just((
            "/deposits",
            json!({"account_id": "ACC-0001", "amount": "1.00", "currency": "USD"})
        )),
        Just((
            "/accounts",
            json!({"holder_name": "Byte Case", "email": "bytes@example.com", "currency": "EUR"})
        )),
    ];
    let damaged = (
        valid,
        any::<prop::sample::Index>(),
        any::<u8>(),
        any::<bool>(),
    )
        .prop_map(|((path, body), at, byte, cut)| {
            let mut body = body.to_string().into_bytes();
            let i = at.index(body.len());
            if cut {
                body.truncate(i);
            } else {
                body[i] = byte;
            }
            (path, body)
        });
    let random = (
        prop::sample::select(vec!["/deposits", "/accounts"]),
        prop_oneof![
            vec(any::<u8>(), 0..1024),
            "\\PC{0,256}".prop_map(String::into_bytes),
        ],
    );
    prop_oneof![damaged, random].prop_map(|(path, body)| Post {
        path,
        content_type: Some("application/json"),
        body,
    })
}

/// Whether the API documents this JSON body as one it accepts (201). `None` from the helpers
/// means "refused".
fn documented_as_accepted(path: &str, body: &Value) -> bool {
    let Some(object) = body.as_object() else {
        return false;
    };
    let text = |name: &str| object.get(name).and_then(Value::as_str);
    // Optional string members: absent or null is fine, another type is a refusal.
    let optional = |name: &str| match object.get(name) {
        None | Some(Value::Null) => Some(None),
        Some(Value::String(s)) => Some(Some(s.as_str())),
        Some(_) => None,
    };
    if path == "/accounts" {
        let (Some(holder), Some(email), Some(currency)) =
            (text("holder_name"), text("email"), text("currency"))
        else {
            return false;
        };
        let holder = holder.trim();
        let holder_ok = !holder.is_empty()
            && holder.chars().count() <= 200
            && !holder.chars().any(char::is_control);
        let email_ok = email.split_once('@').is_some_and(|(local, domain)| {
            (3..=254).contains(&email.len())
                && !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
                && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        });
        return holder_ok && email_ok && Currency::parse(currency).is_ok();
    }
    let (Some(account), Some(amount), Some(currency)) =
        (text("account_id"), text("amount"), text("currency"))
    else {
        return false;
    };
    let (Some(channel), Some(reference)) = (optional("channel"), optional("reference")) else {
        return false;
    };
    let Some((_, account_currency)) = ACCOUNTS.iter().find(|(a, _)| *a == account) else {
        return false;
    };
    let Ok(currency) = Currency::parse(currency) else {
        return false;
    };
    let within_max = Money::parse_positive(amount, currency).is_ok_and(|money| {
        Money::parse_positive(MAX_DEPOSIT, currency).is_ok_and(|max| money.minor <= max.minor)
    });
    within_max
        && currency.code() == *account_currency
        && channel.is_none_or(|c| ["branch", "atm", "online"].contains(&c))
        && reference.is_none_or(|r| r.chars().count() <= 140 && !r.chars().any(char::is_control))
}

/// What an accepted request stores.
fn stored_by(path: &str) -> BTreeMap<String, i64> {
    let rows: &[(&str, i64)] = if path == "/deposits" {
        &[("deposits", 1), ("outbox", 1)]
    } else {
        &[("accounts", 1)]
    };
    rows.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect()
}

async fn check(
    deposit: &ServiceHandle,
    pool: &PgPool,
    post: &Post,
    statuses: &Mutex<BTreeMap<u16, usize>>,
) -> Result<(), TestCaseError> {
    let fail = |what: String| TestCaseError::fail(format!("{what}\nrequest: {post:?}"));
    let mut request = RawRequest::new("POST", post.path)
        .header("x-api-key", API_KEY)
        .body(post.body.clone());
    if let Some(content_type) = post.content_type {
        request = request.header("content-type", content_type);
    }
    let before = row_counts(pool).await.map_err(|e| fail(format!("{e:#}")))?;
    let answer = exchange(&deposit.base_url(), &request)
        .await
        .map_err(|e| fail(format!("no answer: {e:#}")))?;
    let after = row_counts(pool).await.map_err(|e| fail(format!("{e:#}")))?;
    let changed = count_changes(&before, &after);
    *statuses
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(answer.status)
        .or_default() += 1;
    if !deposit.is_running().await {
        return Err(fail("the deposit service exited".into()));
    }
    let documented: &[u16] = &[201, 400, 413, 415, 422];
    if !documented.contains(&answer.status) {
        return Err(fail(format!("status {}: {}", answer.status, answer.text())));
    }
    if answer.status >= 400 {
        if let Some(defect) = answer.problem_defect() {
            return Err(fail(format!("{} not a problem: {defect}", answer.status)));
        }
        if !changed.is_empty() {
            return Err(fail(format!("{} but stored {changed:?}", answer.status)));
        }
    } else if changed != stored_by(post.path) {
        return Err(fail(format!("201 but stored {changed:?}")));
    }
    // The oracle, for every body that is JSON: a 201 exactly when the API documents one.
    if let Ok(body) = serde_json::from_slice::<Value>(&post.body) {
        let expected =
            accepted_content_type(post.content_type) && documented_as_accepted(post.path, &body);
        if expected != (answer.status == 201) {
            return Err(fail(format!(
                "documented as {}, answered {}: {}",
                if expected { "accepted" } else { "refused" },
                answer.status,
                answer.text()
            )));
        }
    } else if answer.status == 201 {
        return Err(fail("a body that is not JSON was accepted".into()));
    }
    Ok(())
}

/// Runs `strategy` for `cases` cases against the running service, shrinking a failure.
fn run_property(
    name: &str,
    cases: u32,
    strategy: impl Strategy<Value = Post>,
    deposit: &ServiceHandle,
    pool: &PgPool,
) -> Result<usize, String> {
    let config = Config {
        cases,
        // The service and its database are this run's: nothing to replay from a file.
        failure_persistence: None,
        max_shrink_iters: 256,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let statuses = Mutex::new(BTreeMap::new());
    let handle = tokio::runtime::Handle::current();
    let started = Instant::now();
    let outcome = tokio::task::block_in_place(|| {
        runner.run(&strategy, |post| {
            handle.block_on(check(deposit, pool, &post, &statuses))
        })
    });
    let statuses = statuses.into_inner().unwrap_or_else(|e| e.into_inner());
    let sent: usize = statuses.values().sum();
    println!(
        "{name}: {cases} cases, {sent} requests (by status {statuses:?}), {:?}",
        started.elapsed()
    );
    outcome.map(|()| sent).map_err(|e| format!("{name}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_bodies_to_the_deposit_writes_are_answered_as_documented() {
    let world = TestWorld::new().await.unwrap();
    let deposit = world.start(Svc::Deposit, &[]).await.unwrap();
    let pool = world.pool(Svc::Deposit).await.unwrap();
    let json_ish = run_property("JSON-ish bodies", 64, json_ish_post(), &deposit, &pool);
    let bytes = run_property("arbitrary bytes", 64, byte_post(), &deposit, &pool);
    let failures: Vec<String> = [json_ish, bytes]
        .into_iter()
        .filter_map(Result::err)
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        !deposit.logs_contain("panicked"),
        "the service panicked:\n{}",
        deposit.logs()
    );
    world.cleanup().await.unwrap();
}
