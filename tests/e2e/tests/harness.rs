//! Tests of the harness itself: no service binaries needed (process handling is exercised with
//! the `e2e-fake-service` stand-in from this crate).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, ensure};
use eventbank_e2e::lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use eventbank_e2e::lapin::types::FieldTable;
use eventbank_e2e::lapin::{Connection, ConnectionProperties, ExchangeKind};
use eventbank_e2e::{
    Svc, TcpProxy, TestWorld, WorldOptions, eventually, get_message, get_text, publish_event,
    publish_raw, publish_to_queue, queue_exists, queue_message_count,
};
use sqlx::Connection as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

const T: Duration = Duration::from_secs(10);

fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/eventbank".into())
}

/// How many databases of world `id` exist.
async fn db_count(id: &str) -> Result<i64> {
    let mut admin = sqlx::PgConnection::connect(&admin_url()).await?;
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE starts_with(datname, $1)")
            .bind(format!("eb_{id}_"))
            .fetch_one(&mut admin)
            .await?;
    admin.close().await?;
    Ok(n)
}

/// Whether a queue exists, checked on a connection of our own.
async fn queue_present(name: &str) -> Result<bool> {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    let result = channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    let _ = conn.close(200, "bye".into()).await;
    Ok(result.is_ok())
}

/// Whether an exchange exists, checked on a connection of our own.
async fn exchange_present(name: &str) -> Result<bool> {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    let result = channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    let _ = conn.close(200, "bye".into()).await;
    Ok(result.is_ok())
}

/// Alive and not a zombie.
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or_default()
            .trim_start()
            .starts_with('Z'),
    }
}

/// A directory where every service name is a link to the fake service binary.
fn fake_bin_dir() -> Result<PathBuf> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fake-service-bin");
    std::fs::create_dir_all(&dir)?;
    let fake = Path::new(env!("CARGO_BIN_EXE_e2e-fake-service"));
    for svc in Svc::ALL {
        let link = dir.join(svc.name());
        if std::fs::read_link(&link).ok().as_deref() != Some(fake) {
            // Atomically (rename), since tests running in parallel use the links.
            let tmp = dir.join(format!(".{}-{}", svc.name(), uuid::Uuid::new_v4().simple()));
            std::os::unix::fs::symlink(fake, &tmp)?;
            std::fs::rename(&tmp, &link)?;
        }
    }
    Ok(dir)
}

async fn fake_world() -> Result<TestWorld> {
    TestWorld::with_options(WorldOptions {
        bin_dir: Some(fake_bin_dir()?),
        ready_timeout: Some(T),
    })
    .await
}

#[tokio::test]
async fn world_creates_and_drops_databases() -> Result<()> {
    let world = TestWorld::new().await?;
    let id = world.id().to_string();
    let dir = world.dir().to_path_buf();
    assert!(id.starts_with('t') && id.len() == 13, "{id}");
    assert_eq!(world.ns(), id);
    assert_eq!(db_count(&id).await?, 5);
    assert!(world.email_dir().is_dir());
    assert_eq!(world.bank_events_exchange(), format!("{id}.bank.events"));
    assert_eq!(
        world.partition_queue(Svc::Account, 3),
        format!("{id}.account.deposits.3")
    );
    assert_eq!(world.dlq(Svc::Email), format!("{id}.email.deposits.dlq"));

    for svc in Svc::ALL {
        let pool = world.pool(svc).await?;
        let db: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&pool)
            .await?;
        assert_eq!(db, world.db_name(svc));
        assert!(world.db_url(svc).ends_with(&format!("/eb_{id}_{svc}")));
    }
    // A pool held open elsewhere does not stop the drop (WITH (FORCE)).
    let held = world.pool(Svc::Account).await?;
    sqlx::query("CREATE TABLE t (x int)").execute(&held).await?;
    let mut conn = sqlx::PgConnection::connect(&world.db_url(Svc::Deposit)).await?;
    sqlx::query("SELECT 1").execute(&mut conn).await?;

    world.cleanup().await?;
    assert_eq!(db_count(&id).await?, 0);
    assert!(!dir.exists());
    Ok(())
}

#[tokio::test]
async fn world_is_cleaned_up_when_a_test_panics() -> Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let world = TestWorld::new().await.expect("world");
        // Broker objects in the namespace, as a service would declare them.
        let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("connect");
        let channel = conn.create_channel().await.expect("channel");
        channel
            .exchange_declare(
                world.bank_events_exchange().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare exchange");
        channel
            .queue_declare(
                world.partition_queue(Svc::Interest, 2).into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare queue");
        let _pool = world.pool(Svc::Deposit).await.expect("pool");
        tx.send((
            world.id().to_string(),
            world.dir().to_path_buf(),
            world.bank_events_exchange(),
            world.partition_queue(Svc::Interest, 2),
        ))
        .expect("send");
        panic!("deliberate panic inside a test world");
    });
    let joined = task.await;
    assert!(joined.is_err_and(|e| e.is_panic()));
    let (id, dir, exchange, queue) = rx.await?;
    assert_eq!(db_count(&id).await?, 0, "databases of {id} left behind");
    assert!(!dir.exists());
    assert!(!queue_present(&queue).await?, "queue {queue} left behind");
    assert!(
        !exchange_present(&exchange).await?,
        "exchange {exchange} left behind"
    );
    Ok(())
}

#[tokio::test]
async fn amqp_helpers_and_broker_cleanup() -> Result<()> {
    let world = TestWorld::new().await?;
    let exchange = world.bank_events_exchange();
    let queue = world.partition_queue(Svc::Account, 0);
    let dlq = world.dlq(Svc::Email);

    let conn = Connection::connect(world.amqp_url(), ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    for q in [&queue, &dlq] {
        channel
            .queue_declare(
                q.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
    }
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "deposit.completed".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let body = serde_json::json!({"id": "0190-test-event", "type": "bank.deposit.completed"});
    publish_event(
        &world,
        "ACC-0042",
        body.to_string().as_bytes(),
        &[("traceparent", "00-x")],
    )
    .await?;
    eventually(T, || async {
        let n = queue_message_count(&world, &queue).await?;
        ensure!(n == 1, "{n} messages");
        Ok(())
    })
    .await?;
    let msg = get_message(&world, &queue).await?.context("no message")?;
    assert_eq!(msg.header("account_id").as_deref(), Some("ACC-0042"));
    assert_eq!(msg.header("traceparent").as_deref(), Some("00-x"));
    assert_eq!(msg.json()?, body);
    assert_eq!(msg.routing_key, "deposit.completed");
    assert_eq!(
        msg.properties.message_id().as_ref().map(|s| s.as_str()),
        Some("0190-test-event")
    );
    assert!(get_message(&world, &queue).await?.is_none());
    assert_eq!(queue_message_count(&world, &queue).await?, 0);

    publish_to_queue(&world, &dlq, b"not json", &[("x-reason", "poison")]).await?;
    publish_raw(
        &world,
        &exchange,
        "deposit.completed",
        b"raw",
        &[("account_id", "ACC-1")],
    )
    .await?;
    assert_eq!(queue_message_count(&world, &dlq).await?, 1);
    assert_eq!(queue_message_count(&world, &queue).await?, 1);
    let poison = get_message(&world, &dlq).await?.context("no message")?;
    assert_eq!(poison.body, b"not json");
    assert_eq!(poison.header("x-reason").as_deref(), Some("poison"));

    // Failures are errors, and the helpers keep working after them (fresh channels).
    let unroutable = publish_raw(&world, &exchange, "other.key", b"x", &[]).await;
    assert!(format!("{:#}", unroutable.unwrap_err()).contains("unroutable"));
    assert!(
        publish_raw(&world, &format!("{}.nope", world.ns()), "k", b"x", &[])
            .await
            .is_err()
    );
    assert!(
        queue_message_count(&world, "no-such-queue-at-all")
            .await
            .is_err()
    );
    assert!(!queue_exists(&world, "no-such-queue-at-all").await?);
    assert!(queue_exists(&world, &queue).await?);
    publish_to_queue(&world, &queue, b"still works", &[]).await?;
    let _ = conn.close(200, "bye".into()).await;

    world.cleanup().await?;
    assert!(!queue_present(&queue).await?);
    assert!(!queue_present(&dlq).await?);
    assert!(!exchange_present(&exchange).await?);
    Ok(())
}

async fn echo_server() -> Result<std::net::SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(addr)
}

async fn echo_roundtrip(stream: &mut TcpStream, text: &[u8]) -> Result<()> {
    stream.write_all(text).await?;
    let mut buf = vec![0u8; text.len()];
    tokio::time::timeout(T, stream.read_exact(&mut buf)).await??;
    ensure!(buf == text, "echoed {:?}", String::from_utf8_lossy(&buf));
    Ok(())
}

/// The connection is closed or reset: a read gives EOF or an error (never data, never hangs).
async fn assert_broken(stream: &mut TcpStream) -> Result<()> {
    let _ = stream.write_all(b"anyone there?").await;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(T, stream.read(&mut buf)).await? {
        Ok(0) | Err(_) => Ok(()),
        Ok(n) => Err(anyhow!("read {n} bytes from a cut connection")),
    }
}

#[tokio::test]
async fn proxy_forwards_cuts_and_restores() -> Result<()> {
    let echo = echo_server().await?;
    let proxy = TcpProxy::start(&echo.to_string()).await?;
    assert_eq!(proxy.target(), echo.to_string());

    let mut a = TcpStream::connect(proxy.addr()).await?;
    let mut b = TcpStream::connect(proxy.addr()).await?;
    echo_roundtrip(&mut a, b"hello").await?;
    echo_roundtrip(&mut b, b"world").await?;
    eventually(T, || async {
        ensure!(
            proxy.active_connections() == 2,
            "{} active",
            proxy.active_connections()
        );
        Ok(())
    })
    .await?;

    proxy.cut().await;
    assert!(proxy.is_cut());
    assert_eq!(proxy.active_connections(), 0);
    assert_broken(&mut a).await?;
    assert_broken(&mut b).await?;
    // New connections are accepted and closed at once while cut.
    for _ in 0..3 {
        let mut c = TcpStream::connect(proxy.addr()).await?;
        assert_broken(&mut c).await?;
    }

    proxy.restore().await;
    assert!(!proxy.is_cut());
    let mut d = TcpStream::connect(proxy.addr()).await?;
    echo_roundtrip(&mut d, b"again").await?;
    echo_roundtrip(&mut d, b"and again").await?;

    // Cut and restore in quick succession still breaks the connection made before.
    proxy.cut().await;
    proxy.restore().await;
    assert_broken(&mut d).await?;
    let mut e = TcpStream::connect(proxy.addr()).await?;
    echo_roundtrip(&mut e, b"fine").await?;

    drop(proxy);
    assert_broken(&mut e).await?;
    Ok(())
}

#[tokio::test]
async fn proxy_cuts_an_amqp_connection() -> Result<()> {
    let world = TestWorld::new().await?;
    let proxy = world.broker_proxy().await?;
    let url = world.amqp_url_via(&proxy);
    assert!(url.contains(&proxy.addr().to_string()), "{url}");

    let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
    conn.create_channel().await?;
    proxy.cut().await;
    eventually(T, || async {
        ensure!(!conn.status().connected(), "still connected");
        Ok(())
    })
    .await?;
    assert!(
        tokio::time::timeout(
            T,
            Connection::connect(&url, ConnectionProperties::default())
        )
        .await
        .map_or(true, |r| r.is_err()),
        "connected through a cut proxy"
    );
    proxy.restore().await;
    let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
    conn.create_channel().await?;
    let _ = conn.close(200, "bye".into()).await;
    world.cleanup().await
}

#[tokio::test]
async fn eventually_returns_first_ok_or_last_error() -> Result<()> {
    // Succeeds on the third attempt.
    let mut n = 0;
    let value = eventually(T, || {
        n += 1;
        let attempt = n;
        async move {
            ensure!(attempt >= 3, "attempt {attempt}");
            Ok(attempt * 10)
        }
    })
    .await?;
    assert_eq!(value, 30);

    // Times out with the last error.
    let start = Instant::now();
    let mut n = 0;
    let err = eventually(Duration::from_millis(300), || {
        n += 1;
        let attempt = n;
        async move { Err::<(), _>(anyhow!("not yet (attempt {attempt})")) }
    })
    .await
    .unwrap_err();
    let elapsed = start.elapsed();
    let text = format!("{err:#}");
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    assert!(n >= 3, "only {n} attempts");
    assert!(text.contains(&format!("not yet (attempt {n})")), "{text}");
    assert!(text.contains("condition not met within 300ms"), "{text}");

    // An attempt that never finishes is abandoned at the deadline.
    let start = Instant::now();
    let err = eventually(Duration::from_millis(200), || async {
        std::future::pending::<Result<()>>().await
    })
    .await
    .unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(
        format!("{err:#}").contains("still running at the deadline"),
        "{err:#}"
    );
    Ok(())
}

#[tokio::test]
async fn service_handles_start_restart_terminate_kill() -> Result<()> {
    let world = fake_world().await?;
    let email = world.start(Svc::Email, &[("PARTITIONS", "2")]).await?;
    assert_eq!(email.label(), "email");
    assert_eq!(
        email.base_url(),
        format!("http://127.0.0.1:{}", email.port())
    );
    let expected = [
        format!("fake env AMQP_NAMESPACE={}", world.ns()),
        format!("fake env DATABASE_URL={}", world.db_url(Svc::Email)),
        format!("fake env AMQP_URL={}", world.amqp_url()),
        format!("fake env HTTP_ADDR=127.0.0.1:{}", email.port()),
        format!("fake env EMAIL_DIR={}", world.email_dir().display()),
        "fake env EMAIL_TRANSPORT=file".to_string(),
        "fake env LOG_FORMAT=pretty".to_string(),
        "fake env PARTITIONS=2".to_string(),
    ];
    eventually(T, || async {
        for line in &expected {
            ensure!(
                email.logs_contain(line),
                "no `{line}` in:\n{}",
                email.logs()
            );
        }
        Ok(())
    })
    .await?;
    assert_eq!(
        get_text(&email.url("/healthz")).await?,
        (200, "ok".to_string())
    );
    assert!(email.is_ready().await);

    // Restart: same port, new process.
    let pid1 = email.pid().context("pid")?;
    let again = world.restart(Svc::Email).await?;
    let pid2 = again.pid().context("pid")?;
    assert_ne!(pid1, pid2);
    assert_eq!(again.port(), email.port());
    assert!(email.is_ready().await);
    assert!(!process_alive(pid1));

    // Graceful stop.
    let status = email.terminate().await?;
    assert!(status.success(), "{status}");
    assert!(!email.is_running().await);
    assert!(email.logs_contain("SIGTERM received"));
    email.restart().await?;
    assert!(email.is_running().await);

    // A second instance gets its own port and label.
    let email2 = world.start(Svc::Email, &[]).await?;
    assert_eq!(email2.label(), "email#2");
    assert_ne!(email2.port(), email.port());

    // SIGKILL.
    email.kill().await?;
    assert!(!email.is_running().await);
    assert!(!email.is_ready().await);
    email.kill().await?; // idempotent

    // A process that ignores SIGTERM is killed after the deadline.
    let stubborn = world
        .start(Svc::Compliance, &[("FAKE_MODE", "ignore_term")])
        .await?;
    let err = stubborn
        .terminate_within(Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("did not exit"), "{err:#}");
    assert!(!stubborn.is_running().await);

    // CLI runs.
    let out = world
        .run_cli(Svc::Account, &["rebuild", "--all"], &[], T)
        .await?;
    assert!(out.success());
    assert!(
        out.stdout.contains("fake cli args: rebuild --all"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&world.db_url(Svc::Account)),
        "{}",
        out.stdout
    );

    let pids: Vec<u32> = world.services().iter().filter_map(|h| h.pid()).collect();
    world.cleanup().await?;
    assert!(!email2.is_running().await);
    for pid in pids {
        assert!(!process_alive(pid), "pid {pid} survived cleanup");
    }
    Ok(())
}

#[tokio::test]
async fn service_failures_carry_the_log_tail() -> Result<()> {
    let world = fake_world().await?;

    // Exits at startup: fails fast with its output.
    let start = Instant::now();
    let err = world
        .start(Svc::Account, &[("FAKE_MODE", "exit")])
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(start.elapsed() < T, "did not fail fast");
    assert!(text.contains("exited"), "{text}");
    assert!(text.contains("failing at startup on purpose"), "{text}");

    // Never ready: the deadline error names the last answer and shows the output.
    let h = world
        .spawn(Svc::Interest, &[("FAKE_MODE", "never_ready")])
        .await?;
    let err = h.wait_ready(Duration::from_millis(700)).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("did not become ready"), "{text}");
    assert!(text.contains("503"), "{text}");
    assert!(text.contains("fake: listening on"), "{text}");

    // A missing binary says how to build it.
    let empty = Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-binaries-here");
    std::fs::create_dir_all(&empty)?;
    let bare = TestWorld::with_options(WorldOptions {
        bin_dir: Some(empty),
        ..Default::default()
    })
    .await?;
    let err = bare.start(Svc::Deposit, &[]).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("cargo build --workspace --bins"),
        "{err:#}"
    );
    bare.cleanup().await?;

    world.cleanup().await
}

#[tokio::test]
async fn dropping_a_world_kills_its_processes() -> Result<()> {
    let world = fake_world().await?;
    let h = world.start(Svc::Deposit, &[]).await?;
    let pid = h.pid().context("pid")?;
    let id = world.id().to_string();
    assert!(process_alive(pid));
    drop(world);
    eventually(T, || async {
        ensure!(!process_alive(pid), "pid {pid} still alive");
        Ok(())
    })
    .await?;
    assert_eq!(db_count(&id).await?, 0);
    Ok(())
}

#[test]
fn handles_can_be_shared_across_tasks() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<TestWorld>();
    send_sync::<eventbank_e2e::ServiceHandle>();
    send_sync::<eventbank_e2e::Services>();
    send_sync::<TcpProxy>();
}
