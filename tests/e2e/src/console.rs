//! The live console (`eventbank-console`) as a test process: started against a world's running
//! services, killed when its handle is dropped (and by the kernel if the test process dies).

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use tokio::process::Child;

use crate::service::parent_bound_command;
use crate::util::{binary_in, default_bin_dir};
use crate::world::Services;

/// The origin of a console on `port` (what `CORS_ALLOW_ORIGINS` must name).
pub fn origin_of(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// A running console; the process is killed on drop.
pub struct Console {
    child: Child,
    port: u16,
}

impl Console {
    /// Starts the console binary on `port` (from [`free_port`](crate::free_port): the services' CORS setting
    /// names the console's origin, so the port is chosen before they start), with
    /// `/config.json` naming the URLs of `services` and the harness's API key, and waits until
    /// it answers `/healthz`.
    pub async fn start(services: &Services, port: u16) -> Result<Console> {
        let program = binary_in(&default_bin_dir()?, "eventbank-console")?;
        let mut cmd = parent_bound_command(&program);
        cmd.env("CONSOLE_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("DEPOSIT_URL", services.deposit.base_url())
            .env("ACCOUNT_URL", services.account.base_url())
            .env("EMAIL_URL", services.email.base_url())
            .env("INTEREST_URL", services.interest.base_url())
            .env("COMPLIANCE_URL", services.compliance.base_url())
            .env("CONSOLE_API_KEY", crate::http::API_KEY)
            .env("RUST_LOG", "warn")
            // A developer's shell must not send the test console's spans anywhere.
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let mut console = Console { child, port };
        let url = console.url("/healthz");
        let client = crate::http::http_client();
        let ready = crate::eventually(Duration::from_secs(30), || {
            let request = client.get(&url).send();
            async move {
                let status = request.await?.status();
                anyhow::ensure!(status.is_success(), "/healthz answered {status}");
                Ok(())
            }
        })
        .await;
        if let Err(e) = ready {
            if let Ok(Some(status)) = console.child.try_wait() {
                bail!("the console exited ({status}) before it answered: {e:#}");
            }
            return Err(e.context("the console did not answer /healthz"));
        }
        Ok(console)
    }

    /// `http://127.0.0.1:<port>`: the page, and the origin the services must allow (CORS).
    pub fn origin(&self) -> String {
        origin_of(self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin())
    }

    /// Kills the process and waits for it.
    pub async fn kill(mut self) -> Result<()> {
        let _ = self.child.start_kill();
        self.child
            .wait()
            .await
            .context("waiting for the console to exit")?;
        Ok(())
    }
}
