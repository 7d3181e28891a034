//! The reverse proxy: HTTPS (HTTP/1.1 and HTTP/2, ALPN) on :443 and plain HTTP on :80, inside
//! the daemon. A request's Host (and path prefix) picks a route declared by an app manifest
//! (`[needs] routes`) for an instance installed with `--domain`; it is forwarded to that
//! service's container on the instance's Docker network. Bodies are streamed both ways (never
//! buffered), WebSocket and other upgrades are spliced, each request is written to the access
//! log with the real client address. Port 80 redirects to HTTPS and answers ACME HTTP-01.

use crate::config::ProxyConfig;
use crate::error::{Error, Result};
use crate::runtime::observer::Observer;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

pub mod tls;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type UpBody = BoxBody<Bytes, BoxError>;
type DownBody = BoxBody<Bytes, BoxError>;

/// How long a client may take to send its request headers (slowloris bound).
const HEADER_TIMEOUT: Duration = Duration::from_secs(15);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Until the upstream's response headers arrive (bodies then stream without a deadline).
const UPSTREAM_RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);

/// Where one route sends its requests.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub path: String,
    pub instance: String,
    pub container: String,
    pub port: u16,
    pub max_body: u64,
}

pub struct Proxy {
    config: ProxyConfig,
    /// host -> targets, longest path prefix first.
    routes: RwLock<HashMap<String, Vec<Target>>>,
    /// Small documents ilot itself serves: (host, path) -> document (MTA-STS policies, mail
    /// clients' autoconfiguration).
    documents: RwLock<HashMap<(String, String), Document>>,
    pub certs: Arc<tls::CertStore>,
    /// ACME HTTP-01: token -> key authorization.
    pub challenges: RwLock<HashMap<String, String>>,
    observer: OnceLock<Arc<Observer>>,
    client: Client<HttpConnector, UpBody>,
    access_log: std::sync::mpsc::Sender<String>,
    pub http_addr: SocketAddr,
    pub https_addr: SocketAddr,
}

impl Proxy {
    /// Binds both ports and starts serving. Fails (naming the address) if a port is taken.
    pub async fn start(config: ProxyConfig) -> Result<Arc<Proxy>> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|e| {
                Error::failed(format!("the proxy cannot listen on {addr}: {e}"))
                    .hint("another web server may hold the port: stop it, or set [proxy] http/https in the config")
            })
        };
        let http = bind(config.http).await?;
        let https = bind(config.https).await?;
        let certs = tls::CertStore::new()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(certs.server_config()?));
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(UPSTREAM_CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let proxy = Arc::new(Proxy {
            http_addr: http
                .local_addr()
                .map_err(|e| Error::failed(e.to_string()))?,
            https_addr: https
                .local_addr()
                .map_err(|e| Error::failed(e.to_string()))?,
            access_log: spawn_access_log(&config.access_log)?,
            config,
            routes: RwLock::new(HashMap::new()),
            documents: RwLock::new(HashMap::new()),
            certs,
            challenges: RwLock::new(HashMap::new()),
            observer: OnceLock::new(),
            client,
        });
        tokio::spawn(proxy.clone().accept(http, None));
        tokio::spawn(proxy.clone().accept(https, Some(acceptor)));
        tracing::info!(http = %proxy.http_addr, https = %proxy.https_addr, "proxy listening");
        Ok(proxy)
    }

    /// Containers' addresses come from the observer once the engine is connected.
    pub fn set_observer(&self, observer: Arc<Observer>) {
        let _ = self.observer.set(observer);
    }

    /// Replaces the route table (after any change to instances).
    /// Replaces the routes, and the documents ilot serves itself (their hosts get
    /// certificates like the apps' do).
    pub fn set_routes(
        &self,
        mut routes: HashMap<String, Vec<Target>>,
        documents: HashMap<(String, String), Document>,
    ) -> Result<()> {
        for targets in routes.values_mut() {
            targets.sort_by_key(|t| std::cmp::Reverse(t.path.len()));
        }
        let mut hosts: Vec<String> = routes.keys().cloned().collect();
        hosts.extend(documents.keys().map(|(h, _)| h.clone()));
        hosts.sort();
        hosts.dedup();
        self.certs.sync_hosts(&hosts)?;
        *self.routes.write().expect("routes lock") = routes;
        *self.documents.write().expect("documents lock") = documents;
        Ok(())
    }

    pub fn hosts(&self) -> Vec<String> {
        let mut h: Vec<String> = self
            .routes
            .read()
            .expect("routes lock")
            .keys()
            .cloned()
            .chain(
                self.documents
                    .read()
                    .expect("documents lock")
                    .keys()
                    .map(|(h, _)| h.clone()),
            )
            .collect();
        h.sort();
        h.dedup();
        h
    }

    fn serves(&self, host: &str) -> bool {
        self.routes.read().expect("routes lock").contains_key(host)
            || self
                .documents
                .read()
                .expect("documents lock")
                .keys()
                .any(|(h, _)| h == host)
    }

    async fn accept(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("proxy accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let me = self.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    Some(acceptor) => {
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(tls_stream)) => {
                                me.serve(TokioIo::new(tls_stream), peer, true).await
                            }
                            Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                    None => me.serve(TokioIo::new(stream), peer, false).await,
                }
            });
        }
    }

    async fn serve<I>(self: Arc<Self>, io: I, peer: SocketAddr, tls: bool)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let me = self.clone();
        let service = hyper::service::service_fn(move |req| {
            let me = me.clone();
            async move { Ok::<_, std::convert::Infallible>(me.handle(req, peer, tls).await) }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_buf_size(64 * 1024);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(64 * 1024);
        if let Err(e) = builder.serve_connection_with_upgrades(io, service).await {
            tracing::debug!(%peer, "connection ended: {e}");
        }
    }

    async fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        tls: bool,
    ) -> Response<DownBody> {
        let started = Instant::now();
        let host = request_host(&req);
        let method = req.method().clone();
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let version = req.version();
        let response = match &host {
            None => text(
                StatusCode::BAD_REQUEST,
                "Bad request: missing or malformed Host header.\n",
            ),
            Some(host) if !tls => self.handle_plain(host, &path),
            Some(host) => self.forward(req, host, peer).await,
        };
        let _ = self.access_log.send(format!(
            "{} {} {} \"{} {} {:?}\" {} {}ms\n",
            rfc3339_now(),
            peer.ip(),
            host.as_deref().unwrap_or("-"),
            method,
            path,
            version,
            response.status().as_u16(),
            started.elapsed().as_millis()
        ));
        response
    }

    /// Port 80: ACME HTTP-01 answers, otherwise a permanent redirect to HTTPS.
    fn handle_plain(&self, host: &str, path: &str) -> Response<DownBody> {
        if let Some(token) = path.strip_prefix("/.well-known/acme-challenge/") {
            return match self.challenges.read().expect("challenges lock").get(token) {
                Some(key_auth) => text(StatusCode::OK, key_auth),
                None => text(StatusCode::NOT_FOUND, "Unknown challenge.\n"),
            };
        }
        if !self.serves(host) {
            return not_served();
        }
        let port = match self.https_addr.port() {
            443 => String::new(),
            p => format!(":{p}"),
        };
        let mut r = text(StatusCode::PERMANENT_REDIRECT, "Moved to HTTPS.\n");
        if let Ok(v) = HeaderValue::from_str(&format!("https://{host}{port}{path}")) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        r
    }

    fn target(&self, host: &str, path: &str) -> Option<Target> {
        let routes = self.routes.read().expect("routes lock");
        routes
            .get(host)?
            .iter()
            .find(|t| path_matches(&t.path, path))
            .cloned()
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        host: &str,
        peer: SocketAddr,
    ) -> Response<DownBody> {
        let document = self
            .documents
            .read()
            .expect("documents lock")
            .get(&(host.to_string(), req.uri().path().to_string()))
            .cloned();
        if let Some(doc) = document {
            let mut r = text(StatusCode::OK, &doc.body);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(doc.content_type),
            );
            return r;
        }
        let Some(target) = self.target(host, req.uri().path()) else {
            return not_served();
        };
        let Some(ip) = self.observer.get().and_then(|o| o.ip_of(&target.container)) else {
            return text(StatusCode::BAD_GATEWAY, "The app is not running.\n");
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > target.max_body) {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request body too large for this app.\n",
            );
        }
        let upgrade = req.version() == Version::HTTP_11 && is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        let upstream = format!("{ip}:{}", target.port);
        parts.uri = match format!("http://{upstream}{path}").parse() {
            Ok(u) => u,
            Err(_) => return text(StatusCode::BAD_REQUEST, "Bad request target.\n"),
        };
        parts.version = Version::HTTP_11;
        let upgrade_value = parts.headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(v) = upgrade_value.filter(|_| upgrade) {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, v);
        }
        set_forwarded(&mut parts.headers, host, peer);
        let body: UpBody = Limited::new(body, target.max_body as usize).boxed();
        let up_req = Request::from_parts(parts, body);

        let result = if let Some(client_upgrade) = client_upgrade {
            self.forward_upgrade(up_req, &upstream, client_upgrade)
                .await
        } else {
            match tokio::time::timeout(UPSTREAM_RESPONSE_TIMEOUT, self.client.request(up_req)).await
            {
                Ok(Ok(resp)) => Ok(resp.map(|b| b.map_err(BoxError::from).boxed())),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out waiting for the response".into()),
            }
        };
        match result {
            Ok(mut resp) => {
                if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                    strip_hop_by_hop(resp.headers_mut());
                }
                if self.config.hsts_max_age > 0 {
                    if let Ok(v) =
                        HeaderValue::from_str(&format!("max-age={}", self.config.hsts_max_age))
                    {
                        resp.headers_mut()
                            .insert(header::STRICT_TRANSPORT_SECURITY, v);
                    }
                }
                resp
            }
            Err(e) => {
                tracing::warn!(instance = %target.instance, "upstream {upstream}: {e}");
                text(StatusCode::BAD_GATEWAY, "The app did not answer.\n")
            }
        }
    }

    /// An upgrade (WebSocket): its own HTTP/1.1 connection upstream; on 101 the two upgraded
    /// connections are spliced together.
    async fn forward_upgrade(
        &self,
        req: Request<UpBody>,
        upstream: &str,
        client_upgrade: hyper::upgrade::OnUpgrade,
    ) -> std::result::Result<Response<DownBody>, String> {
        let stream = tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(upstream))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let mut resp = tokio::time::timeout(UPSTREAM_RESPONSE_TIMEOUT, sender.send_request(req))
            .await
            .map_err(|_| "timed out waiting for the response".to_string())?
            .map_err(|e| e.to_string())?;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                if let (Ok(a), Ok(b)) = (client_upgrade.await, upstream_upgrade.await) {
                    let _ =
                        tokio::io::copy_bidirectional(&mut TokioIo::new(a), &mut TokioIo::new(b))
                            .await;
                }
            });
        }
        Ok(resp.map(|b| b.map_err(BoxError::from).boxed()))
    }
}

/// The request's host, lowercased, without port; None if absent or not a plausible host name.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    let raw = req
        .uri()
        .authority()
        .map(|a| a.host().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)?
                .to_str()
                .ok()
                .map(String::from)
        })?;
    let host = match raw.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') => h,
        _ => raw.as_str(),
    }
    .trim_end_matches('.')
    .to_ascii_lowercase();
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !host.starts_with(['-', '.']);
    ok.then_some(host)
}

fn path_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| prefix.ends_with('/') || rest.starts_with('/'))
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Removes hop-by-hop headers (RFC 9110 7.6.1), including those named by Connection.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| {
            v.split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
}

/// The forwarding headers an app receives, all set here from the connection, whatever the
/// client sent: ilot's proxy is the edge, so a client's own `X-Forwarded-For`, `X-Real-IP` or
/// `Forwarded` would let it choose the address an app's brute-force protection, its logs and
/// the guard see. `X-Forwarded-For` and `X-Real-IP` are the peer's address, `Forwarded` (RFC
/// 7239) says the same, `X-Forwarded-Proto` is https and `X-Forwarded-Host` the route's host;
/// and Host itself for HTTP/2 clients, which send it as the :authority pseudo-header.
fn set_forwarded(headers: &mut HeaderMap, host: &str, peer: SocketAddr) {
    let ip = peer.ip().to_string();
    // RFC 7239 5.2: an IPv6 address is bracketed and the node quoted.
    let node = match peer.ip() {
        std::net::IpAddr::V4(_) => ip.clone(),
        std::net::IpAddr::V6(_) => format!("\"[{ip}]\""),
    };
    let set = |headers: &mut HeaderMap, name: &'static str, value: &str| {
        // insert replaces every value the client sent under that name.
        match HeaderValue::from_str(value) {
            Ok(v) => {
                headers.insert(name, v);
            }
            Err(_) => {
                headers.remove(name);
            }
        }
    };
    set(headers, "x-forwarded-for", &ip);
    set(headers, "x-real-ip", &ip);
    set(headers, "x-forwarded-proto", "https");
    set(headers, "x-forwarded-host", host);
    set(
        headers,
        "forwarded",
        &format!("for={node};host={};proto=https", forwarded_value(host)),
    );
    // Other spellings some apps read (Client-IP, True-Client-IP, X-Client-IP, X-Cluster-Client-IP,
    // CF-Connecting-IP): ilot sets none of them, so a client must not either.
    for name in [
        "client-ip",
        "true-client-ip",
        "x-client-ip",
        "x-cluster-client-ip",
        "cf-connecting-ip",
        "x-forwarded",
        "forwarded-for",
        "x-forwarded-server",
        "x-forwarded-port",
        "x-original-forwarded-for",
    ] {
        headers.remove(name);
    }
    if !headers.contains_key(header::HOST) {
        set(headers, "host", host);
    }
}

/// A host as an RFC 7239 value: a token as is, else quoted (a host with a port has a colon).
fn forwarded_value(host: &str) -> String {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !host.is_empty() && host.chars().all(token) {
        host.to_string()
    } else {
        format!("\"{}\"", host.replace(['\\', '"'], ""))
    }
}

/// A document the proxy serves itself, whatever the method (Outlook POSTs its question).
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub content_type: &'static str,
    pub body: String,
}

impl Document {
    pub fn new(content_type: &'static str, body: String) -> Document {
        Document { content_type, body }
    }
}

fn text(status: StatusCode, body: &str) -> Response<DownBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Unknown host: a 404 that does not list the domains this host serves.
fn not_served() -> Response<DownBody> {
    text(StatusCode::NOT_FOUND, "No app is served at this address.\n")
}

/// The access log: request handlers queue lines; one plain thread writes them in batches.
/// (Not a tokio task: tokio's file writes go through its blocking pool, a thread hand-off per
/// write, which cost more CPU than the proxying itself.)
fn spawn_access_log(path: &std::path::Path) -> Result<std::sync::mpsc::Sender<String>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::failed(format!("cannot create {}: {e}", dir.display())))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| {
            Error::failed(format!(
                "cannot open the access log {}: {e}",
                path.display()
            ))
        })?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || {
            let mut out = std::io::BufWriter::new(file);
            while let Ok(line) = rx.recv() {
                let _ = out.write_all(line.as_bytes());
                // Write what is queued, then flush: a reader (the guard) sees lines at once.
                while let Ok(more) = rx.try_recv() {
                    let _ = out.write_all(more.as_bytes());
                }
                let _ = out.flush();
            }
        })
        .map_err(|e| Error::failed(format!("cannot start the access log writer: {e}")))?;
    Ok(tx)
}

/// UTC now as 2026-11-21T20:00:00Z.
fn rfc3339_now() -> String {
    crate::state::format_utc(crate::state::now()).replace(' ', "T") + "Z"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_validated_and_normalised() {
        let req = |h: &str| {
            Request::builder()
                .uri("/")
                .header("host", h)
                .body(())
                .unwrap()
        };
        assert_eq!(
            request_host(&req("Blog.Example.org:443")).as_deref(),
            Some("blog.example.org")
        );
        assert_eq!(
            request_host(&req("blog.example.org.")).as_deref(),
            Some("blog.example.org")
        );
        for bad in ["", "a b", "évil.org", "x/y", "-a.org", "a\"b"] {
            assert_eq!(request_host(&req(bad)), None, "{bad}");
        }
    }

    #[test]
    fn path_prefixes() {
        assert!(path_matches("/", "/anything"));
        assert!(path_matches("/api", "/api") && path_matches("/api", "/api/x"));
        assert!(!path_matches("/api", "/apix"));
        assert!(path_matches("/api/", "/api/x"));
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }
}
