//! A table of named hostile HTTP requests against every write and query endpoint of the five
//! services, all running in one world. Each case says what it sends and the status it expects;
//! every case is checked for: the expected status, never a 500, an RFC 9457 problem
//! (`application/problem+json` with `type`, `title` and `status`) for every 4xx and 5xx, exactly
//! the rows it should store in its service's database (none for every refusal), and the service
//! still running. A line per case is printed; every failure is listed at the end.

use std::time::{Duration, Instant};

use eventbank_e2e::{API_KEY, Services, Svc, TestWorld, eventually};
use serde_json::{Value, json};

use crate::raw::{RawRequest, count_changes, exchange, gzip_stored, row_counts};

/// The key of the one deposit made before the table runs (to `ACC-0001`, `1.00 USD`).
const SEED_KEY: &str = "hostile-http-seed-0001";

/// What a case stores in its service's database: table and rows added. Empty: nothing.
type Stores = &'static [(&'static str, i64)];
const NOTHING: Stores = &[];
const DEPOSIT: Stores = &[("deposits", 1), ("outbox", 1)];
const KEYED_DEPOSIT: Stores = &[("deposits", 1), ("idempotency_keys", 1), ("outbox", 1)];
const ACCOUNT: Stores = &[("accounts", 1)];

/// One named hostile request and what it must get.
struct Case {
    name: String,
    svc: Svc,
    request: RawRequest,
    status: u16,
    stores: Stores,
    /// The problem `type` (after `urn:eventbank:problem:`), when the case pins it.
    kind: Option<&'static str>,
    /// A header the answer must carry, with its value.
    answer_header: Option<(&'static str, &'static str)>,
    /// Refused by the HTTP/1.1 parser (hyper) before any of the service's code runs: its bare
    /// 400 is not a problem, and cannot be one.
    by_parser: bool,
}

impl Case {
    fn new(svc: Svc, name: impl Into<String>, request: RawRequest, status: u16) -> Case {
        Case {
            name: name.into(),
            svc,
            request,
            status,
            stores: NOTHING,
            kind: None,
            answer_header: None,
            by_parser: false,
        }
    }

    fn by_parser(mut self) -> Case {
        self.by_parser = true;
        self
    }

    fn stores(mut self, stores: Stores) -> Case {
        self.stores = stores;
        self
    }

    fn kind(mut self, kind: &'static str) -> Case {
        self.kind = Some(kind);
        self
    }

    fn answer_header(mut self, name: &'static str, value: &'static str) -> Case {
        self.answer_header = Some((name, value));
        self
    }

    fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Case {
        self.request = self.request.header(name, value);
        self
    }

    fn without(mut self, name: &str) -> Case {
        self.request = self.request.without(name);
        self
    }
}

fn good_deposit() -> Value {
    json!({"account_id": "ACC-0001", "amount": "1.00", "currency": "USD"})
}

fn good_account() -> Value {
    json!({"holder_name": "Hostile Input", "email": "hostile@example.com", "currency": "USD"})
}

/// `good` with one member replaced.
fn with(mut good: Value, member: &str, value: Value) -> Value {
    good[member] = value;
    good
}

/// `POST path` on the deposit service with the API key, `content-type: application/json` and
/// `body` as given.
fn post(path: &str, name: impl Into<String>, body: impl Into<Vec<u8>>, status: u16) -> Case {
    let request = RawRequest::new("POST", path)
        .header("content-type", "application/json")
        .header("x-api-key", API_KEY)
        .body(body);
    Case::new(Svc::Deposit, name, request, status)
}

fn deposit(name: impl Into<String>, body: Value, status: u16) -> Case {
    post("/deposits", name, body.to_string(), status)
}

fn open_account(name: impl Into<String>, body: Value, status: u16) -> Case {
    post("/accounts", name, body.to_string(), status)
}

fn get(svc: Svc, name: impl Into<String>, target: impl Into<String>, status: u16) -> Case {
    Case::new(svc, name, RawRequest::new("GET", target), status)
}

/// A method the route does not have: a 405 problem whose `Allow` names the ones it has.
fn method(svc: Svc, name: &str, method: &str, target: &str, allow: &'static str) -> Case {
    let mut request = RawRequest::new(method, target);
    if svc == Svc::Deposit {
        request = request.header("x-api-key", API_KEY);
    }
    Case::new(svc, name, request, 405)
        .kind("method-not-allowed")
        .answer_header("allow", allow)
}

/// The consumers' query endpoints: nothing here writes.
fn query_cases(seed_event: &str) -> Vec<Case> {
    use Svc::{Account, Compliance, Email, Interest};
    let long_query = format!(
        "/compliance/audit?account_id=ACC-0001&pad={}",
        "x".repeat(16 * 1024)
    );
    let many_params: String = (0..500).map(|i| format!("p{i}={i}&")).collect();
    vec![
        // account: GET /accounts/{id}
        get(
            Account,
            "account: min_sequence -1",
            "/accounts/ACC-0001?min_sequence=-1",
            400,
        ),
        get(
            Account,
            "account: min_sequence i64::MAX + 1",
            "/accounts/ACC-0001?min_sequence=9223372036854775808",
            400,
        ),
        get(
            Account,
            "account: min_sequence in exponent form 1e3",
            "/accounts/ACC-0001?min_sequence=1e3",
            400,
        ),
        get(
            Account,
            "account: min_sequence i64::MAX with wait=0 is not yet consistent",
            "/accounts/ACC-0001?min_sequence=9223372036854775807&wait=0",
            503,
        )
        .kind("not-yet-consistent")
        .answer_header("retry-after", "1"),
        get(
            Account,
            "account: duplicate min_sequence, the last one bad",
            "/accounts/ACC-0001?min_sequence=1&min_sequence=x",
            400,
        ),
        get(
            Account,
            "account: wait negative",
            "/accounts/ACC-0001?min_sequence=1&wait=-1s",
            400,
        ),
        get(
            Account,
            "account: wait 2^64 ms",
            "/accounts/ACC-0001?min_sequence=1&wait=18446744073709551616ms",
            400,
        ),
        get(
            Account,
            "account: wait seconds that overflow as milliseconds",
            "/accounts/ACC-0001?min_sequence=1&wait=18446744073709552s",
            400,
        ),
        get(
            Account,
            "account: wait in hours",
            "/accounts/ACC-0001?min_sequence=1&wait=1h",
            400,
        ),
        get(
            Account,
            "account: percent-encoded NUL as the id",
            "/accounts/%00",
            404,
        ),
        get(
            Account,
            "account: invalid UTF-8 percent escape as the id",
            "/accounts/%FF%FE",
            404,
        ),
        get(
            Account,
            "account: 8 KB id",
            format!("/accounts/{}", "A".repeat(8 * 1024)),
            404,
        ),
        get(
            Account,
            "account: bad percent escape in the query is taken literally",
            "/accounts/ACC-0001?min_sequence=%ZZ",
            400,
        ),
        // account: transactions
        get(
            Account,
            "transactions: limit 0",
            "/accounts/ACC-0001/transactions?limit=0",
            400,
        ),
        get(
            Account,
            "transactions: limit 1001",
            "/accounts/ACC-0001/transactions?limit=1001",
            400,
        ),
        get(
            Account,
            "transactions: limit with a raw + (a space once decoded)",
            "/accounts/ACC-0001/transactions?limit=+5",
            400,
        ),
        get(
            Account,
            "transactions: limit %2B5 (a leading plus sign)",
            "/accounts/ACC-0001/transactions?limit=%2B5",
            200,
        ),
        get(
            Account,
            "transactions: after_sequence negative",
            "/accounts/ACC-0001/transactions?after_sequence=-1",
            400,
        ),
        get(
            Account,
            "transactions: after_sequence 20 digits",
            "/accounts/ACC-0001/transactions?after_sequence=99999999999999999999",
            400,
        ),
        get(
            Account,
            "transactions: NUL as the id",
            "/accounts/%00/transactions",
            404,
        ),
        // account: balance as of
        get(
            Account,
            "balance: as_of month 13",
            "/accounts/ACC-0001/balance?as_of=2026-13-01T00:00:00Z",
            400,
        ),
        get(
            Account,
            "balance: as_of February 30",
            "/accounts/ACC-0001/balance?as_of=2026-02-30T00:00:00Z",
            400,
        ),
        get(
            Account,
            "balance: as_of a date without time",
            "/accounts/ACC-0001/balance?as_of=2026-11-27",
            400,
        ),
        get(
            Account,
            "balance: as_of offset with a raw + (a space once decoded)",
            "/accounts/ACC-0001/balance?as_of=2026-11-27T10:00:00+01:00",
            400,
        ),
        get(
            Account,
            "balance: as_of year 275760, past chrono's range",
            "/accounts/ACC-0001/balance?as_of=275760-09-13T00:00:00Z",
            400,
        ),
        get(
            Account,
            "balance: as_of 1970, before any deposit",
            "/accounts/ACC-0001/balance?as_of=1970-01-01T00:00:00Z",
            404,
        ),
        get(
            Account,
            "balance: as_of 9999-12-31",
            "/accounts/ACC-0001/balance?as_of=9999-12-31T23:59:59Z",
            200,
        ),
        get(
            Account,
            "balance: NUL as the id",
            "/accounts/%00/balance",
            404,
        ),
        // account: stream
        Case::new(
            Account,
            "stream: Last-Event-ID negative",
            RawRequest::new("GET", "/accounts/ACC-0001/stream").header("last-event-id", "-1"),
            400,
        ),
        Case::new(
            Account,
            "stream: Last-Event-ID 20 digits",
            RawRequest::new("GET", "/accounts/ACC-0001/stream")
                .header("last-event-id", "99999999999999999999"),
            400,
        ),
        Case::new(
            Account,
            "stream: Last-Event-ID not UTF-8",
            RawRequest::new("GET", "/accounts/ACC-0001/stream")
                .header("last-event-id", b"\xff\xfe1"),
            400,
        ),
        get(
            Account,
            "stream: NUL as the id",
            "/accounts/%00/stream",
            404,
        ),
        // email
        get(
            Email,
            "emails: status in upper case",
            "/emails?status=QUEUED",
            400,
        ),
        get(
            Email,
            "emails: status with a NUL",
            "/emails?status=queued%00",
            400,
        ),
        get(
            Email,
            "emails: account_id in lower case",
            "/emails?account_id=acc-0001",
            400,
        ),
        get(
            Email,
            "emails: account_id given twice",
            "/emails?account_id=ACC-0001&account_id=ACC-0002",
            400,
        ),
        get(
            Email,
            "emails: account_id a truncated UTF-8 escape",
            "/emails?account_id=%E2%80",
            400,
        ),
        get(
            Email,
            "emails: 500 unknown parameters are ignored",
            format!("/emails?{many_params}"),
            200,
        ),
        get(Email, "email: id not a UUID", "/emails/not-a-uuid", 400),
        get(
            Email,
            "email: id an invalid UTF-8 escape",
            "/emails/%FF",
            400,
        ),
        get(
            Email,
            "email: nil UUID",
            "/emails/00000000-0000-0000-0000-000000000000",
            404,
        ),
        get(
            Email,
            "email: the seed's id in braces (a UUID form the parser takes)",
            format!("/emails/%7B{seed_event}%7D"),
            200,
        ),
        // interest
        get(
            Interest,
            "interest: from February 30",
            "/interest/accounts/ACC-0001?from=2024-02-30",
            400,
        ),
        get(
            Interest,
            "interest: from month 13",
            "/interest/accounts/ACC-0001?from=2026-13-01",
            400,
        ),
        get(
            Interest,
            "interest: from after to",
            "/interest/accounts/ACC-0001?from=2026-11-27&to=2026-11-01",
            400,
        ),
        get(
            Interest,
            "interest: to in year 275760",
            "/interest/accounts/ACC-0001?to=275760-01-01",
            400,
        ),
        get(
            Interest,
            "interest: from a bad percent escape",
            "/interest/accounts/ACC-0001?from=%ZZ",
            400,
        ),
        get(
            Interest,
            "interest: from year 1, clipped to the first business day",
            "/interest/accounts/ACC-0001?from=0001-01-01",
            200,
        ),
        get(
            Interest,
            "interest: account id in lower case",
            "/interest/accounts/acc-0001",
            400,
        ),
        get(
            Interest,
            "interest balance: NUL as the id",
            "/interest/accounts/%00/balance",
            400,
        ),
        get(
            Interest,
            "interest balance: invalid UTF-8 escape as the id",
            "/interest/accounts/%C3%28/balance",
            400,
        ),
        get(
            Interest,
            "interest balance: unknown account",
            "/interest/accounts/ACC-9999/balance",
            404,
        ),
        // compliance
        get(
            Compliance,
            "audit: after negative",
            "/compliance/audit?after=-1",
            400,
        ),
        get(
            Compliance,
            "audit: limit 0",
            "/compliance/audit?limit=0",
            400,
        ),
        get(
            Compliance,
            "audit: limit 20 digits",
            "/compliance/audit?limit=99999999999999999999",
            400,
        ),
        get(
            Compliance,
            "audit: account_id with a NUL",
            "/compliance/audit?account_id=ACC-%00",
            400,
        ),
        get(Compliance, "audit: 16 KB query string", long_query, 200),
        get(
            Compliance,
            "alerts: kind in upper case",
            "/compliance/alerts?kind=CTR",
            400,
        ),
        get(
            Compliance,
            "alerts: include_superseded=1",
            "/compliance/alerts?include_superseded=1",
            400,
        ),
        get(
            Compliance,
            "alerts: limit 1001",
            "/compliance/alerts?limit=1001",
            400,
        ),
        get(
            Compliance,
            "alerts: account_id with zero-width space",
            "/compliance/alerts?account_id=ACC-%E2%80%8B1",
            400,
        ),
        get(
            Compliance,
            "verify: unknown parameters are ignored",
            "/compliance/verify?ok=false&x=%ZZ",
            200,
        ),
        // methods no route has
        method(
            Account,
            "account: DELETE an account",
            "DELETE",
            "/accounts/ACC-0001",
            "GET,HEAD",
        ),
        method(Email, "emails: POST", "POST", "/emails", "GET,HEAD"),
        method(
            Interest,
            "interest: PATCH",
            "PATCH",
            "/interest/accounts/ACC-0001",
            "GET,HEAD",
        ),
        method(
            Compliance,
            "verify: POST",
            "POST",
            "/compliance/verify",
            "GET,HEAD",
        ),
    ]
}

/// The deposit service: its two writes and two reads.
fn deposit_cases(seed_deposit: &str) -> Vec<Case> {
    let json = "application/json";
    let ten_kb_key = "k".repeat(10 * 1024);
    let key_200 = "K".repeat(200);
    let key_201 = "K".repeat(201);
    let reused = |name: &str, body: Value, status: u16| {
        deposit(format!("Idempotency-Key reused: {name}"), body, status)
            .header("idempotency-key", SEED_KEY)
    };
    vec![
        // API key
        deposit("no x-api-key", good_deposit(), 401).without("x-api-key").kind("unauthorized").answer_header("www-authenticate", "ApiKey header=\"x-api-key\""),
        deposit("x-api-key of the right length, wrong", good_deposit(), 401).without("x-api-key").header("x-api-key", "x".repeat(API_KEY.len())).kind("unauthorized"),
        deposit("x-api-key with non-ASCII bytes", good_deposit(), 401).without("x-api-key").header("x-api-key", "e2e-test-api-ké".as_bytes()).kind("unauthorized"),
        deposit("x-api-key twice, a wrong one first", good_deposit(), 401).without("x-api-key").header("x-api-key", "wrong").header("x-api-key", API_KEY).kind("unauthorized"),
        open_account("accounts: no x-api-key", good_account(), 401).without("x-api-key").kind("unauthorized"),
        // content type
        deposit("no content-type", good_deposit(), 415).without("content-type").kind("unsupported-media-type"),
        deposit("content-type text/plain", good_deposit(), 415).without("content-type").header("content-type", "text/plain"),
        deposit("content-type application/jsonx", good_deposit(), 415).without("content-type").header("content-type", "application/jsonx"),
        deposit("content-type that does not parse", good_deposit(), 415).without("content-type").header("content-type", "application/json;;;=="),
        deposit("content-type with a non-ASCII byte", good_deposit(), 415).without("content-type").header("content-type", b"application/json\xff"),
        deposit("two content-types, text/plain first", good_deposit(), 415).without("content-type").header("content-type", "text/plain").header("content-type", json),
        deposit("content-type with charset=utf-8", good_deposit(), 201).without("content-type").header("content-type", "application/json; charset=utf-8").stores(DEPOSIT),
        deposit("content-type in upper case with an odd parameter", good_deposit(), 201).without("content-type").header("content-type", "APPLICATION/JSON; foo=\"bar;baz\"").stores(DEPOSIT),
        open_account("accounts: content-type form-urlencoded", good_account(), 415).without("content-type").header("content-type", "application/x-www-form-urlencoded"),
        // Idempotency-Key
        deposit("Idempotency-Key empty", good_deposit(), 422).header("idempotency-key", "").kind("validation"),
        deposit("Idempotency-Key of 10 KB", good_deposit(), 422).header("idempotency-key", &ten_kb_key).kind("validation"),
        deposit("Idempotency-Key of 201 characters", good_deposit(), 422).header("idempotency-key", &key_201).kind("validation"),
        deposit("Idempotency-Key of 200 characters (the limit)", good_deposit(), 201).header("idempotency-key", &key_200).stores(KEYED_DEPOSIT),
        deposit("Idempotency-Key non-ASCII (UTF-8)", good_deposit(), 422).header("idempotency-key", "clé-1".as_bytes()).kind("validation"),
        deposit("Idempotency-Key with a tab inside", good_deposit(), 422).header("idempotency-key", "key\twith-tab").kind("validation"),
        deposit("Idempotency-Key with a space inside", good_deposit(), 422).header("idempotency-key", "key with-space").kind("validation"),
        deposit("Idempotency-Key with a raw NUL (HTTP parser)", good_deposit(), 400).header("idempotency-key", b"key\x00nul").by_parser(),
        deposit("Idempotency-Key with a raw control character (HTTP parser)", good_deposit(), 400).header("idempotency-key", b"key\x01soh").by_parser(),
        deposit("Idempotency-Key with a raw DEL (HTTP parser)", good_deposit(), 400).header("idempotency-key", b"key\x7fdel").by_parser(),
        reused("same body again is the stored answer", good_deposit(), 201).answer_header("idempotent-replayed", "true"),
        reused("same deposit written 1.0 is the stored answer", with(good_deposit(), "amount", json!("1.0")), 201).answer_header("idempotent-replayed", "true"),
        reused("another account (ACC-0004, also USD)", with(good_deposit(), "account_id", json!("ACC-0004")), 422).kind("idempotency-key-reused"),
        reused("another amount", with(good_deposit(), "amount", json!("2.00")), 422).kind("idempotency-key-reused"),
        reused("another account and currency", json!({"account_id": "ACC-0002", "amount": "1.00", "currency": "EUR"}), 422).kind("idempotency-key-reused"),
        // encodings
        post("/deposits", "UTF-8 byte-order mark before the JSON", [b"\xef\xbb\xbf".as_slice(), good_deposit().to_string().as_bytes()].concat(), 400).kind("malformed-json"),
        post("/deposits", "invalid UTF-8 inside a string", b"{\"account_id\":\"ACC-0001\",\"amount\":\"1.00\",\"currency\":\"USD\",\"reference\":\"\xff\xfe\"}".to_vec(), 400).kind("malformed-json"),
        post("/deposits", "overlong UTF-8 encoding of a slash", b"{\"account_id\":\"ACC\xc0\xaf0001\",\"amount\":\"1.00\",\"currency\":\"USD\"}".to_vec(), 400),
        post("/deposits", "lone surrogate escape", r#"{"account_id":"ACC-0001","amount":"1.00","currency":"USD","reference":"\ud800"}"#, 400),
        post("/deposits", "UTF-16LE body", good_deposit().to_string().encode_utf16().flat_map(u16::to_le_bytes).collect::<Vec<u8>>(), 400),
        post("/deposits", "gzip body with Content-Encoding: gzip (no encoding is decoded)", gzip_stored(good_deposit().to_string().as_bytes()), 415).header("content-encoding", "gzip"),
        post("/deposits", "Content-Encoding: gzip claimed, body plain JSON (refused, not guessed)", good_deposit().to_string(), 415).header("content-encoding", "gzip"),
        post("/deposits", "Content-Encoding: identity (the one accepted)", good_deposit().to_string(), 201).header("content-encoding", "identity").stores(DEPOSIT),
        // shapes
        post("/deposits", "empty body", "", 400).kind("malformed-json"),
        post("/deposits", "JSON null", "null", 422).kind("invalid-body"),
        post("/deposits", "JSON array of the body", format!("[{}]", good_deposit()), 422).kind("invalid-body"),
        post("/deposits", "trailing garbage after the object", format!("{} x", good_deposit()), 400),
        post("/deposits", "account_id member twice", r#"{"account_id":"ACC-0001","account_id":"ACC-0002","amount":"1.00","currency":"USD"}"#, 422).kind("invalid-body"),
        post("/deposits", "amount nested 1,000 arrays deep (refused by its type before its depth)", format!(r#"{{"account_id":"ACC-0001","amount":{}"1.00"{},"currency":"USD"}}"#, "[".repeat(1000), "]".repeat(1000)), 422).kind("invalid-body"),
        post("/deposits", "an unknown member nested 8,100 arrays deep (ignored without recursion)", format!(r#"{{"account_id":"ACC-0001","amount":"1.00","currency":"USD","x":{}1{}}}"#, "[".repeat(8100), "]".repeat(8100)), 201).stores(DEPOSIT),
        post("/deposits", "body of 16 KiB + 1 byte", format!("{}{}", " ".repeat(16 * 1024 + 1 - good_deposit().to_string().len()), good_deposit()), 413).kind("body-too-large"),
        // numbers
        deposit("amount \"0\"", with(good_deposit(), "amount", json!("0")), 422).kind("validation"),
        deposit("amount \"-0.01\"", with(good_deposit(), "amount", json!("-0.01")), 422).kind("validation"),
        deposit("amount \"-0\"", with(good_deposit(), "amount", json!("-0")), 422).kind("validation"),
        deposit("amount \"0.001\" (a tenth of a cent)", with(good_deposit(), "amount", json!("0.001")), 422).kind("validation"),
        deposit("amount \"0.010\" (trailing zero, one cent)", with(good_deposit(), "amount", json!("0.010")), 201).stores(DEPOSIT),
        deposit("amount i64::MAX minor units", with(good_deposit(), "amount", json!("92233720368547758.07")), 422).kind("validation"),
        deposit("amount i64::MAX + 1 minor units", with(good_deposit(), "amount", json!("92233720368547758.08")), 422).kind("validation"),
        deposit("amount of 400 digits", with(good_deposit(), "amount", json!("9".repeat(400))), 422).kind("validation"),
        deposit("amount exactly the maximum single deposit", with(good_deposit(), "amount", json!("1000000.00")), 201).stores(DEPOSIT),
        deposit("amount one cent over the maximum", with(good_deposit(), "amount", json!("1000000.01")), 422).kind("validation"),
        deposit("amount \"1e3\"", with(good_deposit(), "amount", json!("1e3")), 422).kind("validation"),
        deposit("amount \"+1.00\"", with(good_deposit(), "amount", json!("+1.00")), 422).kind("validation"),
        deposit("amount with a leading space", with(good_deposit(), "amount", json!(" 1.00")), 422).kind("validation"),
        deposit("amount with a trailing newline", with(good_deposit(), "amount", json!("1.00\n")), 422).kind("validation"),
        deposit("amount in full-width digits", with(good_deposit(), "amount", json!("１.００")), 422).kind("validation"),
        deposit("amount a JSON number", with(good_deposit(), "amount", json!(1.0)), 422).kind("invalid-body"),
        post("/deposits", "amount a JSON number 1e400", r#"{"account_id":"ACC-0001","amount":1e400,"currency":"USD"}"#, 400),
        deposit("JPY amount with a fraction", json!({"account_id": "ACC-0003", "amount": "1.5", "currency": "JPY"}), 422).kind("validation"),
        // currency and account
        deposit("currency in lower case", with(good_deposit(), "currency", json!("usd")), 422).kind("validation"),
        deposit("currency not the account's", with(good_deposit(), "currency", json!("EUR")), 422).kind("currency-mismatch"),
        deposit("unknown account", with(good_deposit(), "account_id", json!("ACC-9999")), 422).kind("unknown-account"),
        deposit("account id with a zero-width space", with(good_deposit(), "account_id", json!("ACC-\u{200b}0001")), 422).kind("validation"),
        deposit("account id of 10 KB", with(good_deposit(), "account_id", json!("A".repeat(10 * 1024))), 422).kind("validation"),
        deposit("account id a JSON number", with(good_deposit(), "account_id", json!(1)), 422).kind("invalid-body"),
        deposit("channel carrier-pigeon", with(good_deposit(), "channel", json!("carrier-pigeon")), 422).kind("validation"),
        deposit("reference of 141 characters", with(good_deposit(), "reference", json!("r".repeat(141))), 422).kind("validation"),
        deposit("reference of 140 emoji (the limit in characters)", with(good_deposit(), "reference", json!("🦀".repeat(140))), 201).stores(DEPOSIT),
        deposit("reference with a NUL", with(good_deposit(), "reference", json!("inv\u{0}oice")), 422).kind("validation"),
        // POST /accounts
        open_account("holder name with an emoji and a ZWJ sequence", with(good_account(), "holder_name", json!("Zoë 👩‍👩‍👧")), 201).stores(ACCOUNT),
        open_account("holder name of 200 emoji (the limit in characters)", with(good_account(), "holder_name", json!("🦀".repeat(200))), 201).stores(ACCOUNT),
        open_account("holder name of 201 characters", with(good_account(), "holder_name", json!("a".repeat(201))), 422).kind("validation"),
        open_account("holder name with a right-to-left override is accepted (a format character, not a control character)", with(good_account(), "holder_name", json!("Eve \u{202e}kcattA")), 201).stores(ACCOUNT),
        open_account("holder name with a NUL", with(good_account(), "holder_name", json!("Eve\u{0}")), 422).kind("validation"),
        open_account("holder name with a newline", with(good_account(), "holder_name", json!("Eve\nBcc: x")), 422).kind("validation"),
        open_account("holder name only whitespace", with(good_account(), "holder_name", json!(" \t ")), 422).kind("validation"),
        open_account("holder name a JSON number", with(good_account(), "holder_name", json!(42)), 422).kind("invalid-body"),
        open_account("email with a NUL", with(good_account(), "email", json!("eve\u{0}@example.com")), 422).kind("validation"),
        open_account("email of 255 characters", with(good_account(), "email", json!(format!("{}@example.com", "e".repeat(243)))), 422).kind("validation"),
        open_account("email without a dot in the domain", with(good_account(), "email", json!("eve@localhost")), 422).kind("validation"),
        open_account("email with a space", with(good_account(), "email", json!("eve @example.com")), 422).kind("validation"),
        open_account("email with a zero-width space is accepted (not whitespace, not a control character)", with(good_account(), "email", json!("eve\u{200b}@example.com")), 201).stores(ACCOUNT),
        open_account("email with an emoji local part", with(good_account(), "email", json!("🦀@example.com")), 201).stores(ACCOUNT),
        open_account("currency XXX", with(good_account(), "currency", json!("XXX")), 422).kind("validation"),
        open_account("currency member missing", json!({"holder_name": "Eve", "email": "eve@example.com"}), 422).kind("invalid-body"),
        post("/accounts", "accounts: invalid UTF-8 in the holder name", b"{\"holder_name\":\"\xff\",\"email\":\"eve@example.com\",\"currency\":\"USD\"}".to_vec(), 400).kind("malformed-json"),
        // reads
        get(Svc::Deposit, "deposit: id not a UUID", "/deposits/not-a-uuid", 422).kind("validation"),
        get(Svc::Deposit, "deposit: id an invalid UTF-8 escape", "/deposits/%FF", 422).kind("validation"),
        get(Svc::Deposit, "deposit: nil UUID", "/deposits/00000000-0000-0000-0000-000000000000", 404).kind("not-found"),
        get(Svc::Deposit, "deposit: the seed's id in upper case", format!("/deposits/{}", seed_deposit.to_uppercase()), 200),
        get(Svc::Deposit, "directory: NUL as the account id", "/accounts/%00", 404).kind("not-found"),
        get(Svc::Deposit, "directory: invalid UTF-8 escape as the account id", "/accounts/%FF", 404).kind("not-found"),
        get(Svc::Deposit, "directory: account id in lower case", "/accounts/acc-0001", 404).kind("not-found"),
        get(Svc::Deposit, "directory: trailing slash", "/accounts/ACC-0001/", 404).kind("not-found"),
        // methods no route has
        method(Svc::Deposit, "deposits: GET the collection", "GET", "/deposits", "POST"),
        method(Svc::Deposit, "deposits: DELETE one", "DELETE", &format!("/deposits/{seed_deposit}"), "GET,HEAD"),
        method(Svc::Deposit, "accounts: PUT the collection", "PUT", "/accounts", "POST"),
    ]
}

/// Sends one case, checks everything it promises, prints one line; returns what failed.
async fn run_case(world: &TestWorld, services: &Services, case: &Case) -> Vec<String> {
    let handle = services.get(case.svc);
    let pool = match world.pool(case.svc).await {
        Ok(pool) => pool,
        Err(e) => return vec![format!("{e:#}")],
    };
    let before = match row_counts(&pool).await {
        Ok(counts) => counts,
        Err(e) => return vec![format!("{e:#}")],
    };
    let started = Instant::now();
    let answer = exchange(&handle.base_url(), &case.request).await;
    let took = started.elapsed();
    let mut defects = Vec::new();
    let status = match &answer {
        Ok(answer) => {
            if answer.status != case.status {
                defects.push(format!(
                    "status {} (expected {}): {}",
                    answer.status,
                    case.status,
                    answer.text()
                ));
            }
            if answer.status >= 500 && answer.status != 503 {
                defects.push(format!("a {} answer", answer.status));
            }
            if answer.status >= 400
                && !case.by_parser
                && let Some(defect) = answer.problem_defect()
            {
                defects.push(format!("not a problem: {defect}"));
            }
            if case.by_parser && answer.problem_defect().is_none() {
                defects.push("a problem from the service, not the HTTP parser's 400".into());
            }
            if let Some(kind) = case.kind
                && answer.problem_kind() != kind
            {
                defects.push(format!(
                    "problem type {:?} (expected {kind:?})",
                    answer.problem_kind()
                ));
            }
            if let Some((name, value)) = case.answer_header
                && answer.header(name) != Some(value)
            {
                defects.push(format!(
                    "header {name}: {:?} (expected {value:?})",
                    answer.header(name)
                ));
            }
            answer.status.to_string()
        }
        Err(e) => {
            defects.push(format!("no answer: {e:#}"));
            "---".into()
        }
    };
    match row_counts(&pool).await {
        Ok(after) => {
            let changed = count_changes(&before, &after);
            let expected: std::collections::BTreeMap<String, i64> = case
                .stores
                .iter()
                .map(|(t, n)| ((*t).to_owned(), *n))
                .collect();
            if changed != expected {
                defects.push(format!("stored {changed:?} (expected {expected:?})"));
            }
        }
        Err(e) => defects.push(format!("{e:#}")),
    }
    if !handle.is_running().await {
        defects.push(format!("{} is no longer running", case.svc));
    }
    println!(
        "{} {status} (want {}) {:>4} ms  {:<10} {} | {}",
        match (defects.is_empty(), case.by_parser) {
            (false, _) => "FAIL",
            (true, false) => "ok  ",
            (true, true) => "ok* ",
        },
        case.status,
        took.as_millis(),
        case.svc.name(),
        case.name,
        case.request.describe()
    );
    defects
        .into_iter()
        .map(|d| format!("[{}] {}: {d}", case.svc, case.name))
        .collect()
}

#[tokio::test]
async fn a_table_of_hostile_requests_to_every_endpoint_gets_problems_and_stores_nothing() {
    const WAIT: Duration = Duration::from_secs(60);
    let started = Instant::now();
    let world = TestWorld::new().await.unwrap();
    let services = world.start_all(&[]).await.unwrap();
    println!("five services ready in {:?}", started.elapsed());

    // One deposit first, so the queries have an account with data and a key to reuse.
    let seed = eventbank_e2e::post_json(
        &services.deposit.url("/deposits"),
        &good_deposit(),
        &[("idempotency-key", SEED_KEY)],
    )
    .await
    .unwrap()
    .require(201)
    .unwrap();
    let seed_deposit = seed["deposit_id"].as_str().unwrap().to_owned();
    let seed_event = seed["event_id"].as_str().unwrap().to_owned();
    // Every consumer has applied it (and nothing else is under way) before the table starts.
    for svc in Svc::CONSUMERS {
        let pool = world.pool(svc).await.unwrap();
        eventually(WAIT, || {
            let pool = pool.clone();
            async move {
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events")
                    .fetch_one(&pool)
                    .await?;
                anyhow::ensure!(n == 1, "{svc}: {n} of 1 events applied");
                Ok(())
            }
        })
        .await
        .unwrap();
    }
    // The email is sent (its row changes state, not count) before the email cases run.
    eventually(WAIT, || async {
        let r =
            eventbank_e2e::get_json(&services.email.url(&format!("/emails/{seed_event}"))).await?;
        anyhow::ensure!(r.body["status"] == "sent", "email: {}", r.text);
        Ok(())
    })
    .await
    .unwrap();

    // The consumers' cases first: the deposit cases that store publish events, which would
    // change the consumers' row counts under their cases.
    let cases: Vec<Case> = query_cases(&seed_event)
        .into_iter()
        .chain(deposit_cases(&seed_deposit))
        .collect();
    let table_started = Instant::now();
    let mut failures = Vec::new();
    for case in &cases {
        failures.extend(run_case(&world, &services, case).await);
    }
    let per_service: Vec<String> = Svc::ALL
        .iter()
        .map(|svc| format!("{svc} {}", cases.iter().filter(|c| c.svc == *svc).count()))
        .collect();
    println!(
        "{} named cases ({}; {} of them refused by the HTTP parser, marked ok*) in {:?}",
        cases.len(),
        per_service.join(", "),
        cases.iter().filter(|c| c.by_parser).count(),
        table_started.elapsed()
    );
    // Still healthy, and no panic anywhere.
    for handle in Svc::ALL.map(|svc| services.get(svc)) {
        let ready = eventbank_e2e::get_json(&handle.url("/readyz"))
            .await
            .unwrap();
        if ready.status != 200 {
            failures.push(format!(
                "{} not ready afterwards: {}",
                handle.label(),
                ready.text
            ));
        }
        if handle.logs_contain("panicked") {
            failures.push(format!("{} panicked:\n{}", handle.label(), handle.logs()));
        }
    }
    let answered_by_the_services = cases.iter().filter(|c| !c.by_parser).count();
    assert!(
        answered_by_the_services >= 50,
        "only {answered_by_the_services} cases"
    );
    let mut names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "case names must be unique");
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    world.cleanup().await.unwrap();
}
