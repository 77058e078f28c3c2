use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A TCP proxy on 127.0.0.1 that the test controls: it forwards every connection to a target
/// until [`cut`](TcpProxy::cut), which resets all current connections and makes new ones be
/// closed right after they are accepted, until [`restore`](TcpProxy::restore).
///
/// Used to make the broker (or anything else) unreachable for one service without touching the
/// shared server. Dropping the proxy closes everything.
pub struct TcpProxy {
    addr: SocketAddr,
    target: String,
    state: Arc<watch::Sender<State>>,
    active: watch::Receiver<usize>,
    forwarded: Arc<AtomicU64>,
    accept_task: JoinHandle<()>,
}

#[derive(Clone, Copy, Debug)]
struct State {
    cut: bool,
    /// Incremented by every cut: a connection closes when the epoch it started in has ended.
    epoch: u64,
}

impl TcpProxy {
    /// Starts a proxy listening on `127.0.0.1:0` that forwards to `target` (`host:port`).
    /// The target is resolved for each new connection.
    pub async fn start(target: &str) -> Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the proxy on 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let (state, _) = watch::channel(State {
            cut: false,
            epoch: 0,
        });
        let state = Arc::new(state);
        let (active_tx, active) = watch::channel(0usize);
        let active_tx = Arc::new(active_tx);
        let forwarded = Arc::new(AtomicU64::new(0));
        let accept_task = tokio::spawn(accept_loop(
            listener,
            target.to_string(),
            Arc::clone(&state),
            active_tx,
            Arc::clone(&forwarded),
        ));
        Ok(TcpProxy {
            addr,
            target: target.to_string(),
            state,
            active,
            forwarded,
            accept_task,
        })
    }

    /// The address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `host:port` it forwards to.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Resets every forwarded connection (both sides) and refuses new ones (they are accepted
    /// and closed at once) until [`restore`](TcpProxy::restore). Returns once every forwarded
    /// connection is closed.
    pub async fn cut(&self) {
        self.state.send_modify(|s| {
            s.cut = true;
            s.epoch += 1;
        });
        let mut active = self.active.clone();
        // Cannot fail: `active`'s sender lives as long as the accept loop, which we own.
        let _ = active.wait_for(|n| *n == 0).await;
    }

    /// Forwards new connections again.
    pub async fn restore(&self) {
        self.state.send_modify(|s| s.cut = false);
    }

    /// Whether the proxy is currently cut.
    pub fn is_cut(&self) -> bool {
        self.state.borrow().cut
    }

    /// How many connections are being forwarded right now.
    pub fn active_connections(&self) -> usize {
        *self.active.borrow()
    }

    /// How many connections reached the target since the proxy started (a client that
    /// reconnects after a cut or a broker restart adds one; an attempt the target refused
    /// does not).
    pub fn forwarded_total(&self) -> u64 {
        self.forwarded.load(Ordering::SeqCst)
    }

    /// Waits up to `timeout` until at least `n` connections are being forwarded.
    pub async fn wait_for_active(&self, n: usize, timeout: std::time::Duration) -> Result<()> {
        let mut active = self.active.clone();
        tokio::time::timeout(timeout, active.wait_for(|a| *a >= n))
            .await
            .with_context(|| {
                format!(
                    "{} of {n} connections through the proxy after {timeout:?}",
                    self.active_connections()
                )
            })?
            .context("the proxy stopped")?;
        Ok(())
    }
}

impl std::fmt::Debug for TcpProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpProxy")
            .field("addr", &self.addr)
            .field("target", &self.target)
            .field("cut", &self.is_cut())
            .finish()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        // Connection tasks also end when the state sender goes away; make it explicit.
        self.state.send_modify(|s| {
            s.cut = true;
            s.epoch += 1;
        });
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: String,
    state: Arc<watch::Sender<State>>,
    active: Arc<watch::Sender<usize>>,
    forwarded: Arc<AtomicU64>,
) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        // Subscribe before looking at the state, so a cut right after this is never missed.
        let mut rx = state.subscribe();
        let current = *rx.borrow_and_update();
        if current.cut {
            let _ = inbound.set_zero_linger();
            drop(inbound);
            continue;
        }
        active.send_modify(|n| *n += 1);
        let guard = ActiveGuard(Arc::clone(&active));
        let target = target.clone();
        let forwarded = Arc::clone(&forwarded);
        tokio::spawn(async move {
            let _guard = guard;
            forward(inbound, &target, rx, current.epoch, &forwarded).await;
        });
    }
}

struct ActiveGuard(Arc<watch::Sender<usize>>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

async fn forward(
    mut inbound: TcpStream,
    target: &str,
    mut state: watch::Receiver<State>,
    epoch: u64,
    forwarded: &AtomicU64,
) {
    let _ = inbound.set_nodelay(true);
    let connect = TcpStream::connect(target);
    let mut outbound = tokio::select! {
        r = connect => match r {
            Ok(s) => s,
            Err(_) => return,
        },
        _ = state.wait_for(|s| s.epoch != epoch) => {
            let _ = inbound.set_zero_linger();
            return;
        }
    };
    let _ = outbound.set_nodelay(true);
    forwarded.fetch_add(1, Ordering::SeqCst);
    let cut = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
        // An error means the proxy was dropped: treat it as a cut too.
        _ = state.wait_for(|s| s.epoch != epoch) => true,
    };
    if cut {
        // Reset rather than close gracefully, like a failed network would look.
        let _ = inbound.set_zero_linger();
        let _ = outbound.set_zero_linger();
    }
}
