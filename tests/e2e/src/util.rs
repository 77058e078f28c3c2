use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};

/// A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read it, release it).
///
/// The port is free when chosen but nothing holds it until the service binds it, so the kernel
/// may hand the same port out again in between (seen: two services of one world given one
/// port). Every port handed out by this process is remembered and never handed out twice.
pub fn free_port() -> Result<u16> {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    for _ in 0..1000 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let mut handed_out = HANDED_OUT
            .lock()
            .map_err(|_| anyhow!("port registry poisoned"))?;
        if handed_out.insert(port) {
            return Ok(port);
        }
    }
    Err(anyhow!("no unused free port found"))
}

/// The directory holding the service binaries: `EVENTBANK_BIN_DIR` if set, else the profile
/// directory of the running test binary (`target/<profile>/deps/<test>` -> `target/<profile>`).
pub(crate) fn default_bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("EVENTBANK_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("locating the running test binary")?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| anyhow!("test binary {} has no parent directory", exe.display()))?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir
            .parent()
            .ok_or_else(|| anyhow!("{} has no parent directory", dir.display()))?;
    }
    Ok(dir.to_path_buf())
}

/// The path of a service binary in `dir`, or an error telling how to build it.
pub(crate) fn binary_in(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if path.is_file() {
        Ok(path)
    } else {
        bail!(
            "service binary `{name}` not found at {}: run `cargo build --workspace --bins` \
             (with the same profile as the tests) first, or set EVENTBANK_BIN_DIR to the \
             directory holding the binaries",
            path.display()
        )
    }
}

/// The path of a service binary, from `EVENTBANK_BIN_DIR` or next to the test binary.
pub fn service_binary(name: &str) -> Result<PathBuf> {
    binary_in(&default_bin_dir()?, name)
}

fn parse(url: &str) -> Result<url::Url> {
    url::Url::parse(url).map_err(|e| anyhow!("not a URL ({e}): {}", redact(url)))
}

/// The same URL with its path replaced by `/<database>` (query string kept).
pub(crate) fn with_database(url: &str, database: &str) -> Result<String> {
    eventbank_runtime::testing::url_for_database(url, database)
}

/// The same URL with its host and port replaced (user info, path and query kept).
pub(crate) fn with_host_port(url: &str, host_port: &str) -> Result<String> {
    let mut url = parse(url)?;
    let (host, port) = host_port
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("not host:port: {host_port}"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("not host:port: {host_port}"))?;
    url.set_host(Some(host))
        .with_context(|| format!("not a host: {host}"))?;
    url.set_port(Some(port))
        .map_err(|()| anyhow!("{} cannot have a port", redact(url.as_str())))?;
    Ok(url.into())
}

/// The `host:port` of a URL, for the proxy target (default AMQP port when absent).
pub(crate) fn host_port_of(url: &str, default_port: u16) -> Result<String> {
    let url = parse(url)?;
    let host = url
        .host_str()
        .ok_or_else(|| anyhow!("no host in {}", redact(url.as_str())))?;
    Ok(format!("{host}:{}", url.port().unwrap_or(default_port)))
}

/// The URL with any password replaced by `***`, for messages.
pub(crate) fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            if parsed.set_password(Some("***")).is_ok() {
                parsed.into()
            } else {
                url.to_string()
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            with_database(
                "postgres://postgres@127.0.0.1:5432/postgres",
                "eb_x_account"
            )
            .unwrap(),
            "postgres://postgres@127.0.0.1:5432/eb_x_account"
        );
        assert_eq!(
            with_database("postgres://u:p@h:1?sslmode=disable", "d").unwrap(),
            "postgres://u:p@h:1/d?sslmode=disable"
        );
        assert_eq!(
            with_host_port("amqp://guest:guest@127.0.0.1:5672/eventbank", "127.0.0.1:9").unwrap(),
            "amqp://guest:guest@127.0.0.1:9/eventbank"
        );
        assert_eq!(
            with_host_port("amqp://localhost", "127.0.0.1:9").unwrap(),
            "amqp://127.0.0.1:9"
        );
        assert_eq!(
            host_port_of("amqp://guest:guest@127.0.0.1:5672/eventbank", 5672).unwrap(),
            "127.0.0.1:5672"
        );
        assert_eq!(
            host_port_of("amqp://rabbit/x", 5672).unwrap(),
            "rabbit:5672"
        );
        assert_eq!(
            redact("amqp://guest:guest@127.0.0.1:5672/eventbank"),
            "amqp://guest:***@127.0.0.1:5672/eventbank"
        );
        let err = binary_in(Path::new("/nonexistent"), "deposit").unwrap_err();
        assert!(
            err.to_string().contains("cargo build --workspace --bins"),
            "{err}"
        );
    }
}
