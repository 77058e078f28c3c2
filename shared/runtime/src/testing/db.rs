//! Each test that talks to the real Postgres gets a database of its own, created from
//! `TEST_DATABASE_URL` (a superuser URL, default the local `postgres` user) and dropped when
//! the test calls [`TestDatabase::drop_db`] (or, failing that, when it is dropped).

use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

pub fn admin_url() -> String {
    crate::config::env_or(
        "TEST_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    )
}

/// The same URL with its path replaced by `/<database>` (user info, host, port and query
/// kept), parsed with the `url` crate.
pub fn url_for_database(admin: &str, database: &str) -> anyhow::Result<String> {
    let mut url =
        url::Url::parse(admin).map_err(|e| anyhow::anyhow!("not a database URL ({e}): {admin}"))?;
    url.set_path(&format!("/{database}"));
    Ok(url.into())
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
        let url = url_for_database(&admin, &name)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            url_for_database("postgres://postgres@127.0.0.1:5432/postgres", "x").unwrap(),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            url_for_database("postgres://u:p@h/db?sslmode=disable", "x").unwrap(),
            "postgres://u:p@h/x?sslmode=disable"
        );
    }
}
