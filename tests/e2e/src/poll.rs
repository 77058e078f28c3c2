use std::future::Future;
use std::ops::ControlFlow;
use std::time::Duration;

use anyhow::{Result, anyhow};
use tokio::time::Instant;

/// How often [`eventually`] retries.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Runs `condition` until it returns `Ok`, at least once and every [`POLL_INTERVAL`] until
/// `timeout` has passed. Returns the first `Ok` value, or the last error (with the timeout and
/// the number of attempts added as context). An attempt still running at the deadline is
/// abandoned.
///
/// ```text
/// let balance = eventually(Duration::from_secs(10), || async {
///     let r = get_json(&account.url("/accounts/ACC-1")).await?;
///     anyhow::ensure!(r.body["balance"] == "100.00", "balance is {}", r.body["balance"]);
///     Ok(r.body)
/// }).await?;
/// ```
pub async fn eventually<T, F, Fut>(timeout: Duration, mut condition: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    poll_until(timeout, || {
        let attempt = condition();
        async move {
            match attempt.await {
                Ok(value) => ControlFlow::Break(Ok(value)),
                Err(err) => ControlFlow::Continue(err),
            }
        }
    })
    .await
}

/// Like [`eventually`], but the step may also stop early with `Break(result)`
/// (e.g. the process being waited for has exited). `Continue(err)` retries.
pub(crate) async fn poll_until<T, F, Fut>(timeout: Duration, mut step: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ControlFlow<Result<T>, anyhow::Error>>,
{
    let deadline = Instant::now() + timeout;
    let mut attempts: u32 = 0;
    let mut last_err: Option<anyhow::Error> = None;
    loop {
        attempts += 1;
        // Every attempt gets the time left, and at least a little, so the first always runs.
        let budget = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(10));
        let err = match tokio::time::timeout(budget, step()).await {
            Ok(ControlFlow::Break(result)) => return result,
            Ok(ControlFlow::Continue(err)) => err,
            Err(_elapsed) => match last_err.take() {
                Some(prev) => prev.context("the next attempt was still running at the deadline"),
                None => anyhow!("the attempt was still running at the deadline"),
            },
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(err.context(format!(
                "condition not met within {timeout:?} ({attempts} attempts)"
            )));
        }
        last_err = Some(err);
        tokio::time::sleep_until((now + POLL_INTERVAL).min(deadline)).await;
    }
}
