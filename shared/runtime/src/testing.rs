//! Helpers for tests that talk to the real Postgres: each test gets a database of its own,
//! created from `TEST_DATABASE_URL` (a superuser URL, default the local `postgres` user) and
//! dropped when the test calls [`TestDatabase::drop_db`].

use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

pub fn admin_url() -> String {
    crate::config::env_or(
        "TEST_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    )
}

/// Replaces the database name in a postgres URL.
pub fn url_for_database(admin: &str, database: &str) -> String {
    let (base, query) = match admin.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (admin, String::new()),
    };
    let base = match base.rfind('/') {
        Some(i) if i > "postgres://".len() => &base[..i],
        _ => base,
    };
    format!("{base}/{database}{query}")
}

pub struct TestDatabase {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
    dropped: bool,
}

impl TestDatabase {
    /// Creates `eb_<prefix>_<random>` and runs `migrator` on it.
    pub async fn create(prefix: &str, migrator: &Migrator) -> anyhow::Result<Self> {
        let name = format!(
            "eb_{prefix}_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let admin = admin_url();
        let mut conn = PgConnection::connect(&admin).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        let url = url_for_database(&admin, &name);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect(&url)
            .await?;
        migrator.run(&pool).await?;
        Ok(Self {
            name,
            url,
            pool,
            dropped: false,
        })
    }

    pub async fn drop_db(mut self) -> anyhow::Result<()> {
        self.dropped = true;
        self.pool.close().await;
        drop_database(&self.name).await
    }
}

async fn drop_database(name: &str) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(&admin_url()).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await?;
    conn.close().await?;
    Ok(())
}

/// A test that panicked before `drop_db` still removes its database: on a thread of its own,
/// because the test's runtime may be the one unwinding.
impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let name = self.name.clone();
        let cleanup = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let _ = rt.block_on(drop_database(&name));
            }
        });
        let _ = cleanup.join();
    }
}

/// Serves `router` on a free loopback port for the rest of the test; returns its base URL.
pub async fn serve_router(router: axum::Router) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            url_for_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            url_for_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
    }
}
