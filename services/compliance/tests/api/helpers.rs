//! Test fixtures: a fresh database per test, event builders, and the runtime's dedup transaction.

use chrono::{DateTime, TimeDelta, Utc};
use compliance::chain::CanonicalEntry;
use compliance::{AppState, ComplianceHandler, MIGRATOR};
use eventbank_events::{AccountId, AccountSnapshot, Currency, DepositCompleted};
use eventbank_runtime::consumer::Handler;
use eventbank_runtime::testing::{TestDatabase, admin_url};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use std::collections::BTreeSet;
use std::str::FromStr;
use uuid::Uuid;

pub struct TestApp {
    pub db: TestDatabase,
    pub handler: ComplianceHandler,
}

/// Default rules: threshold 1,000,000 minor, 24 h window.
pub async fn setup() -> TestApp {
    setup_with(ComplianceHandler::default()).await
}

pub async fn setup_with(handler: ComplianceHandler) -> TestApp {
    TestApp {
        db: TestDatabase::create("compliance", &MIGRATOR)
            .await
            .expect("test database"),
        handler,
    }
}

pub fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

pub fn hours(h: i64) -> TimeDelta {
    TimeDelta::hours(h)
}

/// A USD deposit event as the deposit service would emit it.
pub fn usd(account: &str, amount_minor: i64, occurred_at: DateTime<Utc>) -> DepositCompleted {
    DepositCompleted {
        event_id: Uuid::now_v7(),
        sequence: 1,
        time: Utc::now(),
        traceparent: None,
        schema_version: 1,
        deposit_id: Uuid::now_v7(),
        account_id: AccountId::parse(account).unwrap(),
        amount_minor,
        currency: Currency::parse("USD").unwrap(),
        account: AccountSnapshot {
            holder_name: "Test Holder".into(),
            email: "holder@example.com".into(),
        },
        occurred_at,
        channel: None,
        reference: None,
    }
}

impl TestApp {
    /// Applies `events` in one transaction, directly through the handler.
    pub async fn apply(&self, events: &[DepositCompleted]) {
        let mut tx = self.db.pool.begin().await.unwrap();
        self.handler
            .handle(&mut tx, events)
            .await
            .expect("handler applies the events");
        tx.commit().await.unwrap();
    }

    /// Delivers `events` through the consumer runtime's own dedup transaction. Returns how
    /// many were new.
    pub async fn deliver(&self, events: &[DepositCompleted]) -> usize {
        eventbank_runtime::consumer::deliver(&self.db.pool, &self.handler, events)
            .await
            .unwrap()
            .len()
    }

    /// Alerts as (kind, account_id, amount_minor, event_id).
    pub async fn alerts(&self) -> Vec<(String, String, i64, Uuid)> {
        sqlx::query_as("SELECT kind, account_id, amount_minor, event_id FROM alerts ORDER BY id")
            .fetch_all(&self.db.pool)
            .await
            .unwrap()
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }

    /// Runs `statement` on audit_log with the append-only trigger disabled, as a superuser (or
    /// the owner) could: the tampering that verification must detect.
    pub async fn tamper(&self, statement: &str) {
        let mut tx = self.db.pool.begin().await.unwrap();
        for sql in [
            "ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update_or_delete",
            statement,
            "ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_update_or_delete",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }

    /// Serves the API on an ephemeral port; returns its base URL.
    pub async fn serve(&self) -> String {
        eventbank_runtime::testing::serve_router(compliance::app(AppState {
            pool: self.db.pool.clone(),
        }))
        .await
        .unwrap()
    }

    pub async fn get(&self, base: &str, path: &str) -> (u16, String, serde_json::Value) {
        let response = reqwest::get(format!("{base}{path}")).await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = response.json().await.unwrap_or(serde_json::Value::Null);
        (status, content_type, body)
    }

    pub async fn finish(self) {
        self.db.drop_db().await.expect("drop test database");
    }
}

pub use eventbank_runtime::testing::shuffled;

/// What "the same state" means for compliance, whatever the delivery order: the same audit
/// entries (their content: positions and recording times follow delivery order), a chain that
/// verifies, the same deposits and the same active alerts.
#[derive(Debug, PartialEq, Eq)]
pub struct State {
    pub audit: BTreeSet<(Uuid, String, Uuid, i64, i64, String, String)>,
    pub chain_verifies: bool,
    pub deposits: BTreeSet<(Uuid, String, i64, String, DateTime<Utc>)>,
    #[allow(clippy::type_complexity)]
    pub alerts: BTreeSet<(
        String,
        String,
        Uuid,
        i64,
        String,
        DateTime<Utc>,
        DateTime<Utc>,
        String,
    )>,
}

impl TestApp {
    pub async fn state(&self) -> State {
        let entries: Vec<String> = sqlx::query_scalar("SELECT entry FROM audit_log")
            .fetch_all(&self.db.pool)
            .await
            .unwrap();
        let audit = entries
            .iter()
            .map(|text| {
                let e: CanonicalEntry = serde_json::from_str(text).unwrap();
                (
                    e.event_id,
                    e.account_id.into(),
                    e.deposit_id,
                    e.sequence,
                    e.amount_minor,
                    e.currency,
                    e.occurred_at,
                )
            })
            .collect();
        let chain_verifies = matches!(
            compliance::store::verify_snapshot(&self.db.pool)
                .await
                .unwrap(),
            compliance::store::Verification::Intact { .. }
        );
        let deposits: Vec<(Uuid, String, i64, String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT event_id, account_id, amount_minor, currency, occurred_at FROM deposits",
        )
        .fetch_all(&self.db.pool)
        .await
        .unwrap();
        #[allow(clippy::type_complexity)]
        let alerts: Vec<(
            String,
            String,
            Uuid,
            i64,
            String,
            DateTime<Utc>,
            DateTime<Utc>,
            String,
        )> = sqlx::query_as(
            "SELECT kind, account_id, event_id, amount_minor, currency, window_start, \
                        window_end, details::text \
                   FROM alerts WHERE superseded_at IS NULL",
        )
        .fetch_all(&self.db.pool)
        .await
        .unwrap();
        State {
            audit,
            chain_verifies,
            deposits: deposits.into_iter().collect(),
            alerts: alerts.into_iter().collect(),
        }
    }

    /// Active alerts as (kind, account_id, amount_minor, event_id), in the order raised.
    pub async fn active_alerts(&self) -> Vec<(String, String, i64, Uuid)> {
        sqlx::query_as(
            "SELECT kind, account_id, amount_minor, event_id FROM alerts \
              WHERE superseded_at IS NULL ORDER BY id",
        )
        .fetch_all(&self.db.pool)
        .await
        .unwrap()
    }
}

/// A database owned by a login role of its own that is not a superuser, migrated by that role:
/// the way `scripts/setup` and compose run the service (`eventbank_compliance` owns
/// `eventbank_compliance`). Dropped with its role by [`RoleDatabase::drop_all`], or on drop.
pub struct RoleDatabase {
    pub role: String,
    pub database: String,
    /// Connected as the role.
    pub pool: PgPool,
    dropped: bool,
}

impl RoleDatabase {
    pub async fn create() -> RoleDatabase {
        let suffix = &Uuid::new_v4().simple().to_string()[..12];
        let role = format!("eb_compliance_role_{suffix}");
        let database = format!("eb_compliance_owned_{suffix}");
        let mut admin = PgConnection::connect(&admin_url()).await.unwrap();
        for sql in [
            format!(
                "CREATE ROLE \"{role}\" LOGIN PASSWORD '{role}' \
                 NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS"
            ),
            format!("CREATE DATABASE \"{database}\" OWNER \"{role}\""),
            format!("REVOKE CONNECT, TEMPORARY ON DATABASE \"{database}\" FROM PUBLIC"),
            format!("GRANT CONNECT, TEMPORARY ON DATABASE \"{database}\" TO \"{role}\""),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut admin)
                .await
                .unwrap();
        }
        admin.close().await.unwrap();
        let options = PgConnectOptions::from_str(&admin_url())
            .unwrap()
            .username(&role)
            .password(&role)
            .database(&database);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .unwrap();
        MIGRATOR.run(&pool).await.unwrap();
        RoleDatabase {
            role,
            database,
            pool,
            dropped: false,
        }
    }

    pub async fn drop_all(mut self) {
        self.dropped = true;
        self.pool.close().await;
        drop_role_database(&self.role, &self.database)
            .await
            .unwrap();
    }
}

async fn drop_role_database(role: &str, database: &str) -> sqlx::Result<()> {
    let mut admin = PgConnection::connect(&admin_url()).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP ROLE IF EXISTS \"{role}\""
    )))
    .execute(&mut admin)
    .await?;
    admin.close().await
}

/// A test that panicked still removes its database and role (on a thread of its own: the
/// test's runtime may be the one unwinding).
impl Drop for RoleDatabase {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let (role, database) = (self.role.clone(), self.database.clone());
        let cleanup = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let _ = rt.block_on(drop_role_database(&role, &database));
            }
        });
        let _ = cleanup.join();
    }
}
