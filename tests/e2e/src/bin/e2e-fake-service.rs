//! A stand-in for a service binary, used only by the harness's own tests (`tests/harness.rs`)
//! to exercise process handling without the real services.
//!
//! Serves `/healthz` and `/readyz` on `HTTP_ADDR`, prints its configuration, exits 0 on SIGTERM.
//! `FAKE_MODE`: `exit` (fail at startup with status 3), `never_ready` (`/readyz` answers 503),
//! `ignore_term` (ignore SIGTERM). With arguments it prints them and exits (a CLI run).

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.is_empty() {
        println!("fake cli args: {}", args.join(" "));
        println!(
            "fake cli DATABASE_URL={}",
            std::env::var("DATABASE_URL").unwrap_or_default()
        );
        return Ok(());
    }
    let mode = std::env::var("FAKE_MODE").unwrap_or_default();
    for key in [
        "HTTP_ADDR",
        "DATABASE_URL",
        "AMQP_URL",
        "AMQP_NAMESPACE",
        "LOG_FORMAT",
        "RUST_LOG",
        "EMAIL_TRANSPORT",
        "EMAIL_DIR",
        "PARTITIONS",
    ] {
        println!("fake env {key}={}", std::env::var(key).unwrap_or_default());
    }
    if mode == "exit" {
        eprintln!("fake: failing at startup on purpose");
        std::process::exit(3);
    }
    let addr = std::env::var("HTTP_ADDR")?;
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("fake: listening on {addr}");
    let ready = mode != "never_ready";
    let mut term = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (mut stream, _) = accepted?;
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut len = 0;
                    while len < buf.len() {
                        match stream.read(&mut buf[len..]).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => len += n,
                        }
                        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    let request = String::from_utf8_lossy(&buf[..len]);
                    let path = request.split_whitespace().nth(1).unwrap_or("/");
                    let (status, body) = match path {
                        "/healthz" => ("200 OK", "ok"),
                        "/readyz" if ready => ("200 OK", "ready"),
                        "/readyz" => ("503 Service Unavailable", "not ready"),
                        _ => ("404 Not Found", "not found"),
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
                         connection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
            _ = term.recv() => {
                if mode == "ignore_term" {
                    eprintln!("fake: ignoring SIGTERM");
                    continue;
                }
                eprintln!("fake: SIGTERM received, exiting");
                return Ok(());
            }
        }
    }
}
