//! One small HTTP(S) client for what ilot fetches and posts: blocklists, webhooks, ntfy, the
//! heartbeat. hyper with rustls and the platform's roots (the same build instant-acme uses).

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use std::time::Duration;

pub struct Response {
    pub status: u16,
    pub body: Bytes,
    /// Seconds from a Retry-After header, when the server sent one.
    pub retry_after: Option<u64>,
}

/// Sends a request with a 30 s limit and reads at most `limit` bytes of the answer. The error
/// text never contains the URL's query or userinfo (a token can hide there): only its host.
pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    body: Option<Vec<u8>>,
    limit: usize,
) -> Result<Response, String> {
    let uri: hyper::Uri = url.parse().map_err(|_| "not a valid URL".to_string())?;
    let host = uri.host().unwrap_or("?").to_string();
    let client = client()?;
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(uri)
        .header("user-agent", concat!("ilot/", env!("CARGO_PKG_VERSION")));
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| format!("{host}: {e}"))?;
    let res = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| format!("{host}: no answer in 30 s"))?
        .map_err(|e| format!("{host}: {}", error_chain(&e)))?;
    let status = res.status().as_u16();
    let retry_after = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let body = Limited::new(res.into_body(), limit)
        .collect()
        .await
        .map_err(|e| format!("{host}: {e}"))?
        .to_bytes();
    Ok(Response {
        status,
        body,
        retry_after,
    })
}

type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// The client, built once: loading the platform's root certificates takes a while, and must
/// not happen on every probe.
fn client() -> Result<&'static Client, String> {
    static CLIENT: std::sync::OnceLock<Result<Client, String>> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .try_with_platform_verifier()
                .map_err(|e| e.to_string())?
                .https_or_http()
                .enable_http1()
                .build();
            Ok(
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(30))
                    .build(connector),
            )
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// An error with its causes ("connection refused" is two levels down in hyper's errors).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
