//! The console in a real browser: headless Chromium driven through chromedriver (fantoccini).
//! Fails, never skips, where Chromium or chromedriver is missing: `scripts/setup` installs them.

use anyhow::{Context as _, Result, bail, ensure};
use eventbank_e2e::{Console, Services, Svc, TestWorld, console_origin, eventually, free_port};
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "chromedriver";
/// How long the page may take to show what the services did.
const SHOWN: Duration = Duration::from_secs(60);

/// chromedriver on a free port; killed on drop (it ends the Chromium it started when its session
/// is closed, which the test does first). Both write their temporary files (profile, crash
/// handler) under `tmp`, removed at the end, instead of leaving them in /tmp.
struct Chromedriver {
    child: Child,
    url: String,
    tmp: PathBuf,
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

impl Chromedriver {
    async fn start() -> Result<Chromedriver> {
        ensure!(
            Path::new(CHROMIUM).is_file(),
            "{CHROMIUM} is missing: run scripts/setup, or apt-get install chromium chromium-driver"
        );
        let port = free_port()?;
        let tmp = std::env::temp_dir().join(format!("eventbank-chromedriver-{port}"));
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .env("TMPDIR", &tmp)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context(
                "starting chromedriver: run scripts/setup, or apt-get install chromium-driver",
            )?;
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        eventually(Duration::from_secs(30), || {
            let request = eventbank_e2e::get_json(&status);
            async move {
                let body = request.await?.require(200)?;
                ensure!(body["value"]["ready"] == true, "not ready: {body}");
                Ok(())
            }
        })
        .await
        .context("chromedriver did not become ready")?;
        Ok(Chromedriver { child, url, tmp })
    }

    async fn session(&self) -> Result<Client> {
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,1250"],
            },
            // The browser's console, read back with `browser_log`.
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let Value::Object(capabilities) = capabilities else {
            bail!("capabilities are not an object");
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .context("opening a Chromium session")
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        // Drop removes the directory.
    }
}

/// chromedriver's `POST /session/{id}/se/log` for the `browser` log: every console message
/// and failed script or request since the last call (each call drains it).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (reqwest::Method, Option<String>) {
        (reqwest::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

/// The browser log's SEVERE entries (errors), as `source: message` lines.
async fn browser_errors(client: &Client) -> Result<Vec<String>> {
    let entries = client.issue_cmd(BrowserLog).await?;
    let entries = entries.as_array().cloned().unwrap_or_default();
    Ok(entries
        .iter()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| format!("{}: {}", e["source"], e["message"]))
        .collect())
}

/// What the page's own collector caught (script errors, unhandled rejections, console.error).
async fn page_errors(client: &Client) -> Result<Vec<String>> {
    let value = client
        .execute(
            "return window.__consoleErrors || ['the collector is missing'];",
            vec![],
        )
        .await?;
    Ok(serde_json::from_value(value)?)
}

async fn js(client: &Client, script: &str) -> Result<Value> {
    Ok(client.execute(script, vec![]).await?)
}

async fn text(client: &Client, css: &str) -> Result<String> {
    Ok(client.find(Locator::Css(css)).await?.text().await?)
}

/// Waits until `check` (given the page's text of `css`) holds.
async fn until_text(
    client: &Client,
    css: &str,
    what: &str,
    check: impl Fn(&str) -> bool,
) -> Result<String> {
    eventually(SHOWN, || async {
        let shown = text(client, css).await?;
        ensure!(check(&shown), "{what}: {css} shows {shown:?}");
        Ok(shown)
    })
    .await
}

async fn lane_has(client: &Client, svc: &str, deposit_id: &str) -> Result<String> {
    let css = format!("#lane-{svc} li[data-deposit-id=\"{deposit_id}\"]");
    eventually(SHOWN, || async {
        Ok(client.find(Locator::Css(&css)).await?.text().await?)
    })
    .await
    .with_context(|| format!("the {svc} lane never showed deposit {deposit_id}"))
}

async fn attribute(client: &Client, css: &str, name: &str) -> Result<Option<String>> {
    Ok(client.find(Locator::Css(css)).await?.attr(name).await?)
}

async fn type_into(client: &Client, css: &str, value: &str) -> Result<()> {
    let input = client.find(Locator::Css(css)).await?;
    input.clear().await?;
    input.send_keys(value).await?;
    Ok(())
}

/// Submits the deposit form and answers the new deposit's id once the POST was answered.
async fn deposit(client: &Client, amount: &str, previous: Option<&str>) -> Result<String> {
    type_into(client, "#deposit-amount", amount).await?;
    client
        .find(Locator::Css("#deposit-submit"))
        .await?
        .click()
        .await?;
    eventually(SHOWN, || async {
        let id = attribute(client, "#deposit-result", "data-deposit-id").await?;
        match id {
            Some(id) if Some(id.as_str()) != previous => Ok(id),
            _ => bail!(
                "no new deposit accepted; the page says {:?}",
                text(client, "#deposit-result").await?
            ),
        }
    })
    .await
}

fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// Checks that neither collector caught an error and the page shows none. `expected` are
/// failed requests the page makes on purpose (a browser logs every 4xx answer to `fetch` as an
/// error, whatever the script does with it): a `network` entry containing one is allowed.
async fn no_errors_yet(client: &Client, when: &str, expected: &[String]) -> Result<()> {
    let page = page_errors(client).await?;
    let browser: Vec<String> = browser_errors(client)
        .await?
        .into_iter()
        .filter(|e| !(e.starts_with("\"network\"") && expected.iter().any(|x| e.contains(x))))
        .collect();
    ensure!(
        page.is_empty() && browser.is_empty(),
        "{when}: the page caught {page:?}; the browser logged {browser:?}"
    );
    ensure!(
        js(
            client,
            "return document.getElementById('errors-panel').hidden;"
        )
        .await?
            == true,
        "{when}: the page shows errors: {:?}",
        text(client, "#errors").await.unwrap_or_default()
    );
    Ok(())
}

/// The whole visit; returns an error rather than panicking so the browser is always closed.
async fn visit(
    client: &Client,
    world: &TestWorld,
    services: &Services,
    console: &Console,
) -> Result<()> {
    client.goto(&console.url("/")).await?;
    eventually(SHOWN, || async {
        let ready = js(client, "return document.body.dataset.ready || null;").await?;
        ensure!(ready == "1", "the page is not ready: {ready}");
        for svc in ["account", "email", "interest", "compliance"] {
            let connected = attribute(client, &format!("#lane-{svc}"), "data-connected").await?;
            ensure!(
                connected.as_deref() == Some("true"),
                "the {svc} lane is not connected"
            );
        }
        Ok(())
    })
    .await
    .context("the page did not load and connect its four lanes")?;
    no_errors_yet(client, "after loading", &[]).await?;

    // Open an account with the form; the deposit form takes its id.
    type_into(client, "#open-holder", "Grace Hopper").await?;
    type_into(client, "#open-email", "grace@example.com").await?;
    client
        .find(Locator::Css("#open-submit"))
        .await?
        .click()
        .await?;
    until_text(client, "#open-result", "account opened", |t| {
        t.starts_with("opened ACC-")
    })
    .await?;
    let account = client
        .find(Locator::Css("#deposit-account"))
        .await?
        .prop("value")
        .await?
        .unwrap_or_default();
    ensure!(
        account.starts_with("ACC-") && account != "ACC-0001",
        "deposit form has {account:?}"
    );

    // A deposit large enough for a CTR alert: every panel has something to show.
    let first = deposit(client, "12500.00", None).await?;
    for svc in ["account", "email", "interest", "compliance"] {
        let shown = lane_has(client, svc, &first).await?;
        ensure!(shown.contains("ms after the POST"), "{svc} lane: {shown:?}");
        ensure!(shown.contains("12500.00 USD"), "{svc} lane: {shown:?}");
    }
    until_text(client, "#read-plain .out", "plain read", |t| t != "–").await?;
    until_text(client, "#read-ryw .out", "read-your-writes", |t| {
        t.contains("balance 12500.00 USD at #1")
    })
    .await?;
    until_text(client, "#read-optimistic .out", "optimistic entry", |t| {
        t.starts_with("confirmed")
    })
    .await?;
    until_text(client, "#read-pushed .out", "pushed completion", |t| {
        t.starts_with("pushed: #1")
    })
    .await?;
    until_text(client, "#email-meta", "the email", |t| {
        t.contains("grace@example.com")
    })
    .await?;
    until_text(client, "#alerts tbody", "the CTR alert", |t| {
        t.contains("ctr")
    })
    .await?;
    until_text(client, "#chain", "the chain", |t| t.contains("intact")).await?;
    for svc in ["account", "email", "interest", "compliance"] {
        until_text(client, &format!("#lag-{svc}"), "no lag", |t| {
            t.starts_with("lag: 0")
        })
        .await?;
    }
    // The plain read of a just-opened account is a 404 until account applied its first
    // deposit: the stale read the panel is there to show.
    let stale_read = format!(
        "{}/accounts/{account} - Failed to load resource: the server responded with a status of 404",
        services.account.base_url()
    );
    no_errors_yet(client, "after the first deposit", &[stale_read]).await?;

    let png = client.screenshot().await?;
    let var = repo_root().join("var");
    std::fs::create_dir_all(&var).with_context(|| format!("creating {}", var.display()))?;
    let shot = var.join("console.png");
    std::fs::write(&shot, &png).with_context(|| format!("writing {}", shot.display()))?;
    eprintln!("screenshot: {}", shot.display());

    // Email stopped: its lane shows the next deposit as lag, the other three apply it.
    services.email.kill().await?;
    eventually(SHOWN, || async {
        let connected = attribute(client, "#lane-email", "data-connected").await?;
        ensure!(
            connected.as_deref() == Some("false"),
            "the email lane still looks connected"
        );
        Ok(())
    })
    .await?;
    let second = deposit(client, "7.00", Some(&first)).await?;
    for svc in ["account", "interest", "compliance"] {
        lane_has(client, svc, &second).await?;
    }
    until_text(client, "#lag-email", "email lagging", |t| {
        t.starts_with("lag: 1 deposit, oldest")
    })
    .await?;
    // Lagging for a while, and saying for how long.
    until_text(client, "#lag-email", "email lagging over a second", |t| {
        t.split("oldest ")
            .nth(1)
            .and_then(|s| s.trim_end_matches(" s").parse::<f64>().ok())
            .is_some_and(|s| s >= 1.0)
    })
    .await?;
    ensure!(
        attribute(client, "#lane-email", "data-pending")
            .await?
            .as_deref()
            == Some("1"),
        "the email lane does not count one pending deposit"
    );
    ensure!(
        client
            .find_all(Locator::Css(&format!(
                "#lane-email li[data-deposit-id=\"{second}\"]"
            )))
            .await?
            .is_empty(),
        "the email lane shows a deposit email never applied"
    );

    // Back: it catches up, and the lane says so.
    world.restart(Svc::Email).await?;
    lane_has(client, "email", &second).await?;
    until_text(client, "#lag-email", "email caught up", |t| {
        t.starts_with("lag: 0")
    })
    .await?;
    eventually(SHOWN, || async {
        let connected = attribute(client, "#lane-email", "data-connected").await?;
        ensure!(
            connected.as_deref() == Some("true"),
            "the email lane did not reconnect"
        );
        Ok(())
    })
    .await?;

    // No script error at any point; the browser's only errors are the refused connections to
    // the stopped email service.
    let page = page_errors(client).await?;
    ensure!(page.is_empty(), "the page caught {page:?}");
    let email = services.email.base_url();
    let unexpected: Vec<String> = browser_errors(client)
        .await?
        .into_iter()
        .filter(|e| !(e.starts_with("\"network\"") && e.contains(&email)))
        .collect();
    ensure!(unexpected.is_empty(), "the browser logged {unexpected:?}");

    // A failed request is shown on the page, not swallowed: compliance gone, its refresh fails.
    services.compliance.kill().await?;
    client
        .find(Locator::Css("#compliance-refresh"))
        .await?
        .click()
        .await?;
    until_text(client, "#errors", "the failed refresh listed", |t| {
        t.contains("compliance") && t.contains("got no answer")
    })
    .await?;
    ensure!(
        js(
            client,
            "return document.getElementById('errors-panel').hidden;"
        )
        .await?
            == false,
        "the Errors panel stays hidden"
    );
    let page = page_errors(client).await?;
    ensure!(page.is_empty(), "the page caught {page:?}");
    Ok(())
}

#[tokio::test]
async fn the_console_shows_each_deposit_reach_the_four_consumers_live() {
    let chromedriver = Chromedriver::start().await.unwrap();
    let world = TestWorld::new().await.unwrap();
    let port = free_port().unwrap();
    let origin = console_origin(port);
    let services = world
        .start_all(&[("CORS_ALLOW_ORIGINS", origin.as_str())])
        .await
        .unwrap();
    let console = Console::start(&services, port).await.unwrap();
    let client = chromedriver.session().await.unwrap();

    let outcome = visit(&client, &world, &services, &console).await;
    if outcome.is_err()
        && let Ok(png) = client.screenshot().await
    {
        let shot = repo_root().join("var").join("console-failed.png");
        if std::fs::create_dir_all(repo_root().join("var")).is_ok()
            && std::fs::write(&shot, png).is_ok()
        {
            eprintln!("the page when it failed: {}", shot.display());
        }
    }
    let closed = client.close().await;
    chromedriver.stop().await;
    console.kill().await.unwrap();
    outcome.unwrap();
    closed.unwrap();
    world.cleanup().await.unwrap();
}
