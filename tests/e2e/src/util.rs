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

/// Splits `scheme://authority/rest` into (`scheme://`, `authority`, `/rest`).
fn split_url(url: &str) -> Result<(&str, &str, &str)> {
    let start = url
        .find("://")
        .map(|i| i + 3)
        .ok_or_else(|| anyhow!("not a URL (no `://`): {url}"))?;
    let after = &url[start..];
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    Ok((&url[..start], &after[..end], &after[end..]))
}

/// The same URL with its path replaced by `/<database>` (query string kept).
pub(crate) fn with_database(url: &str, database: &str) -> Result<String> {
    let (scheme, authority, rest) = split_url(url)?;
    let query = rest.find('?').map_or("", |i| &rest[i..]);
    Ok(format!("{scheme}{authority}/{database}{query}"))
}

/// The same URL with its host and port replaced (user info, path and query kept).
pub(crate) fn with_host_port(url: &str, host_port: &str) -> Result<String> {
    let (scheme, authority, rest) = split_url(url)?;
    let userinfo = authority.rfind('@').map_or("", |i| &authority[..=i]);
    Ok(format!("{scheme}{userinfo}{host_port}{rest}"))
}

/// The `host:port` of a URL, for the proxy target (default AMQP port when absent).
pub(crate) fn host_port_of(url: &str, default_port: u16) -> Result<String> {
    let (_, authority, _) = split_url(url)?;
    let host_port = authority
        .rfind('@')
        .map_or(authority, |i| &authority[i + 1..]);
    if host_port.contains(':') {
        Ok(host_port.to_string())
    } else {
        Ok(format!("{host_port}:{default_port}"))
    }
}

/// The URL with any password replaced by `***`, for messages.
pub(crate) fn redact(url: &str) -> String {
    let Ok((scheme, authority, rest)) = split_url(url) else {
        return url.to_string();
    };
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            if userinfo.contains(':') {
                format!("{scheme}{user}:***@{}{rest}", &authority[at + 1..])
            } else {
                url.to_string()
            }
        }
        None => url.to_string(),
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
