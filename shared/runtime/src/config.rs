//! Typed configuration, loaded once in `main` from environment variables and passed down.
//!
//! Every variable has a default that reaches the local Postgres and RabbitMQ, so `scripts/up`
//! needs no settings. Tests build configs directly instead of touching the process environment.

use anyhow::{Context, bail};
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// A value that must never appear in logs or `Debug` output (URLs carrying passwords, API keys).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Settings every service shares. Service-specific settings live in each service's own config.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    /// The service name: in every log line, the broker names and the connection name.
    pub service: &'static str,
    pub http_addr: SocketAddr,
    pub database_url: Secret,
    /// One amqp URL, or several separated by commas (the nodes of a cluster; see
    /// [`crate::amqp::connect`]).
    pub amqp_url: Secret,
    /// Prefix of every broker name (`<ns>.bank.events`); empty in production, unique per test.
    pub namespace: String,
    /// Partition queues per consumer service.
    pub partitions: u16,
    /// Deliveries the broker may push before we ack: at least a batch, so a batch can fill
    /// without waiting for a round trip per message.
    pub prefetch: u16,
    /// Deliveries handled in one Postgres transaction at most.
    pub batch_size: usize,
    /// Quorum-queue `x-delivery-limit`: redeliveries before the broker dead-letters a message.
    pub delivery_limit: u32,
    pub db_max_connections: u32,
    pub drain_timeout: Duration,
    pub log_format: LogFormat,
    /// Browser origins allowed to call this service (`CORS_ALLOW_ORIGINS`, comma-separated);
    /// empty: no CORS headers at all, so only same-origin pages and non-browser clients use it.
    pub cors_allow_origins: Vec<String>,
}

/// Reads `name` from the environment, or `default` when unset or empty.
pub fn env_or(name: &str, default: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => default.to_owned(),
    }
}

/// Reads and parses `name`, naming the variable in the error.
pub fn env_parse<T: FromStr>(name: &str, default: T) -> anyhow::Result<T>
where
    T::Err: fmt::Display,
{
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("environment variable {name}={v:?} is invalid: {e}")),
        _ => Ok(default),
    }
}

impl CommonConfig {
    /// Loads the shared settings for `service`, whose HTTP port defaults to `default_port`.
    pub fn from_env(service: &'static str, default_port: u16) -> anyhow::Result<Self> {
        let http_addr = env_or("HTTP_ADDR", &format!("127.0.0.1:{default_port}"))
            .parse()
            .context("HTTP_ADDR must be host:port, such as 127.0.0.1:8081")?;
        let role = format!("eventbank_{service}");
        let database_url = Secret::new(env_or(
            "DATABASE_URL",
            &format!("postgres://{role}:{role}@127.0.0.1:5432/{role}"),
        ));
        let amqp_url = Secret::new(env_or(
            "AMQP_URL",
            &format!("amqp://{role}:{role}@127.0.0.1:5672/eventbank"),
        ));
        if crate::amqp::broker_urls(amqp_url.expose()).is_empty() {
            bail!(
                "AMQP_URL holds no broker URL: give one amqp URL, or several separated by commas"
            );
        }
        let namespace = env_or("AMQP_NAMESPACE", "");
        validate_namespace(&namespace)?;
        let log_format = match env_or("LOG_FORMAT", "pretty").as_str() {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => bail!("LOG_FORMAT={other:?} is invalid: use pretty or json"),
        };
        let config = Self {
            service,
            http_addr,
            database_url,
            amqp_url,
            namespace,
            partitions: env_parse("PARTITIONS", 4)?,
            prefetch: env_parse("PREFETCH", 100)?,
            batch_size: env_parse("BATCH_SIZE", 50)?,
            delivery_limit: env_parse("DELIVERY_LIMIT", 5)?,
            db_max_connections: env_parse("DB_MAX_CONNECTIONS", 10)?,
            drain_timeout: Duration::from_secs(env_parse("DRAIN_TIMEOUT_SECS", 10)?),
            log_format,
            cors_allow_origins: cors_origins(&env_or("CORS_ALLOW_ORIGINS", ""))?,
        };
        if config.partitions == 0 || config.batch_size == 0 || config.prefetch == 0 {
            bail!("PARTITIONS, BATCH_SIZE and PREFETCH must be at least 1");
        }
        Ok(config)
    }
}

/// The origins of `CORS_ALLOW_ORIGINS`: comma-separated, blanks ignored; each must be a bare
/// origin (`scheme://host[:port]`, what a browser sends in `Origin`), or it could never match.
pub fn cors_origins(raw: &str) -> anyhow::Result<Vec<String>> {
    let mut origins = Vec::new();
    for origin in raw.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let url = url::Url::parse(origin)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .filter(|u| u.path() == "/" && u.query().is_none() && u.fragment().is_none())
            .filter(|u| u.username().is_empty() && u.password().is_none());
        match url {
            Some(_) if !origin.ends_with('/') => origins.push(origin.to_owned()),
            _ => bail!(
                "CORS_ALLOW_ORIGINS holds {origin:?}, which is not an origin: give \
                 scheme://host[:port] with no path, such as http://127.0.0.1:8090"
            ),
        }
    }
    Ok(origins)
}

/// A namespace becomes part of queue names and of the broker users' permission regexes, so it
/// is restricted to the characters those regexes allow.
pub fn validate_namespace(ns: &str) -> anyhow::Result<()> {
    let ok = ns.len() <= 64
        && ns
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !ok {
        bail!("AMQP_NAMESPACE={ns:?} is invalid: use at most 64 of a-z, 0-9, '_' and '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("amqp://user:hunter2@host");
        assert_eq!(format!("{s:?}"), "Secret(***)");
    }

    #[test]
    fn cors_origins_are_bare_origins() {
        assert_eq!(cors_origins("").unwrap(), Vec::<String>::new());
        assert_eq!(
            cors_origins(" http://127.0.0.1:8090, http://localhost:8090 ,").unwrap(),
            vec!["http://127.0.0.1:8090", "http://localhost:8090"]
        );
        for bad in ["localhost:8090", "http://a/x", "http://a/", "ftp://a", "*"] {
            assert!(cors_origins(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn namespaces_are_restricted() {
        assert!(validate_namespace("").is_ok());
        assert!(validate_namespace("t1a2-b_c").is_ok());
        assert!(validate_namespace("a.b").is_err());
        assert!(validate_namespace("A").is_err());
    }
}
