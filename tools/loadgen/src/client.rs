//! One HTTP/1.1 keep-alive connection per worker, straight on hyper's connection API.
//!
//! A worker owns its connection and sends one request at a time on it, so there is no pool, no
//! lock and no per-request connection set-up: the generator's cost per request stays small
//! next to what it measures. A connection that fails is dropped and made again on the next
//! request.

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;

pub struct Conn {
    addr: SocketAddr,
    host: HeaderValue,
    api_key: HeaderValue,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    pub fn new(addr: SocketAddr, api_key: &str) -> Result<Self> {
        Ok(Self {
            addr,
            host: HeaderValue::from_str(&addr.to_string())?,
            api_key: HeaderValue::from_str(api_key)?,
            sender: None,
        })
    }

    async fn sender(&mut self) -> Result<&mut SendRequest<Full<Bytes>>> {
        if self.sender.as_ref().is_some_and(|s| s.is_closed()) {
            self.sender = None;
        }
        if self.sender.is_none() {
            let stream = tokio::net::TcpStream::connect(self.addr)
                .await
                .with_context(|| format!("connecting to {}", self.addr))?;
            stream.set_nodelay(true)?;
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                // Ends when the sender is dropped or the server closes; errors surface on the
                // next request through the sender.
                let _ = connection.await;
            });
            self.sender = Some(sender);
        }
        let sender = self
            .sender
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("no connection"))?;
        sender.ready().await?;
        Ok(sender)
    }

    /// POSTs a JSON body with the API key; answers the status and the body.
    pub async fn post_json(&mut self, path: &str, body: Bytes) -> Result<(u16, Bytes)> {
        let outcome = self.try_post(path, body).await;
        if outcome.is_err() {
            self.sender = None;
        }
        outcome
    }

    async fn try_post(&mut self, path: &str, body: Bytes) -> Result<(u16, Bytes)> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("x-api-key", self.api_key.clone())
            .body(Full::new(body))?;
        let response = self.sender().await?.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// GET, for `/metrics`.
    pub async fn get(&mut self, path: &str) -> Result<(u16, Bytes)> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(HOST, self.host.clone())
            .body(Full::new(Bytes::new()))?;
        let outcome = async {
            let response = self.sender().await?.send_request(request).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        }
        .await;
        if outcome.is_err() {
            self.sender = None;
        }
        outcome
    }
}
