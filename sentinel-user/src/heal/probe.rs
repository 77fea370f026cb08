//! HTTP(S) probes, off the drain loop: each probe rule runs at most one GET at a time in its own
//! task, bounded by the rule's `timeout_ms`; the engine starts them at an interval and collects
//! what finished on its ticks. A slow or silent endpoint therefore costs the drain loop
//! nothing, and never more than one connection per rule.
//!
//! One GET over hyper's HTTP/1.1 client connection, through rustls (ring) for `https://`, with
//! the system's CA store plus the rule's `ca_file`. Redirects are not followed (a 3xx answer is
//! a success, as a reachable server); the head is bounded by hyper's buffer (`MAX_HEAD`), the
//! body is read to its end or `MAX_BODY` bytes, then the connection is dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

use super::config::{
    PROBE_RANGES, ProbeHost, ProbeTarget, RuleConfig, Trigger, parse_probe_url, probe_ip_allowed,
};
use super::triggers::probe_failure;

/// Body bytes a probe reads at most (plus at most one read buffer, `MAX_HEAD`); the rest of the
/// answer is never read.
pub const MAX_BODY: usize = 64 * 1024;
/// hyper's read buffer: bounds the status line and headers, and each body chunk.
pub const MAX_HEAD: usize = 16 * 1024;

/// The TLS set-up for one `ca_file` (or none), loaded once, off the caller.
type TlsCell = Arc<OnceCell<Result<Arc<rustls::ClientConfig>, String>>>;

/// Probes in flight, by rule index.
#[derive(Default)]
pub struct Prober {
    running: HashMap<usize, JoinHandle<Option<String>>>,
    tls: HashMap<Option<PathBuf>, TlsCell>,
}

impl Prober {
    /// Start a probe for every probe rule that has none running.
    pub fn launch(&mut self, rules: &[RuleConfig]) {
        for (idx, rule) in rules.iter().enumerate() {
            let Trigger::HttpProbe {
                url,
                timeout_ms,
                max_latency_ms,
                ca_file,
                ..
            } = &rule.trigger
            else {
                continue;
            };
            if self.running.contains_key(&idx) {
                continue; // the previous one is still within its time-out
            }
            let Ok(target) = parse_probe_url(url) else {
                continue; // refused at validation; unreachable in practice
            };
            let tls = target.https.then(|| {
                (
                    ca_file.clone(),
                    self.tls.entry(ca_file.clone()).or_default().clone(),
                )
            });
            let timeout = Duration::from_millis(*timeout_ms);
            let max_latency_ms = *max_latency_ms;
            let task = tokio::spawn(async move {
                let tls = match tls {
                    None => None,
                    Some((ca_file, cell)) => {
                        let loaded = cell
                            .get_or_init(|| async move {
                                tokio::task::spawn_blocking(move || tls_config(ca_file.as_deref()))
                                    .await
                                    .unwrap_or_else(|e| Err(format!("TLS set-up failed: {e}")))
                            })
                            .await;
                        match loaded {
                            Ok(c) => Some(c.clone()),
                            Err(e) => return Some(e.clone()),
                        }
                    }
                };
                let answer = http_probe(&target, tls, timeout).await;
                if let Ok(a) = &answer {
                    tracing::debug!(
                        rule = idx,
                        status = a.status,
                        latency_ms = a.latency.as_millis(),
                        body_read = a.body_read,
                        truncated = a.truncated,
                        "probe answered"
                    );
                }
                probe_failure(answer.map(|a| a.latency), max_latency_ms)
            });
            self.running.insert(idx, task);
        }
    }

    /// The probes that finished since the last call: (rule index, failure or `None`).
    pub fn collect(&mut self) -> Vec<(usize, Option<String>)> {
        let done: Vec<usize> = self
            .running
            .iter()
            .filter(|(_, t)| t.is_finished())
            .map(|(i, _)| *i)
            .collect();
        let mut out = Vec::with_capacity(done.len());
        for idx in done {
            if let Some(task) = self.running.remove(&idx)
                && let Some(res) = task.now_or_never()
            {
                out.push((
                    idx,
                    res.unwrap_or_else(|e| Some(format!("probe task failed: {e}"))),
                ));
            }
        }
        out.sort();
        out
    }

    /// Probes running now.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.running.len()
    }

    pub fn abort(&mut self) {
        for (_, t) in self.running.drain() {
            t.abort();
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.abort();
    }
}

/// The certificates of a PEM file (`ca_file`), each usable as a trust anchor; the error is one
/// line naming the file.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM CERTIFICATE block in the file",
            path.display()
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, c) in certs.iter().enumerate() {
        roots
            .add(c.clone())
            .map_err(|e| format!("{}: certificate {}: {e}", path.display(), i + 1))?;
    }
    Ok(certs)
}

/// The client's TLS set-up: the system's CA store (`/etc/ssl/certs`, or `SSL_CERT_FILE` /
/// `SSL_CERT_DIR`) plus `ca_file`, ring as the crypto provider (it builds for the static musl
/// binary with a plain C compiler), HTTP/1.1 by ALPN.
pub fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(system.certs);
    if let Some(p) = ca_file {
        for c in read_ca_file(p)? {
            roots.add(c).map_err(|e| format!("{}: {e}", p.display()))?;
        }
    }
    if roots.is_empty() {
        let why = system
            .errors
            .first()
            .map_or_else(|| "none found".to_string(), ToString::to_string);
        return Err(format!(
            "TLS: no trusted CA certificate (system store: {why}; a rule can add ca_file)"
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// What a probe got back.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// From the start (resolution included) to the end of the body or its bound.
    pub latency: Duration,
    /// Body bytes read; `truncated` when the bound stopped the read.
    pub body_read: usize,
    pub truncated: bool,
}

/// One GET with a hard time-out over everything (resolution, connection, TLS, head, body).
/// Ok for a 2xx/3xx answer; Err is one line saying why.
pub async fn http_probe(
    target: &ProbeTarget,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<Answer, String> {
    let start = tokio::time::Instant::now();
    match tokio::time::timeout(timeout, exchange(target, tls)).await {
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
        Ok(Err(e)) => Err(e),
        Ok(Ok(mut a)) => {
            a.latency = start.elapsed();
            Ok(a)
        }
    }
}

async fn exchange(
    target: &ProbeTarget,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Answer, String> {
    let tcp = connect(target).await?;
    let _ = tcp.set_nodelay(true);
    match (target.https, tls) {
        (false, _) => request(target, TokioIo::new(tcp)).await,
        (true, Some(cfg)) => {
            let name = ServerName::try_from(target.host.to_string())
                .map_err(|e| format!("TLS: server name {}: {e}", target.host))?;
            let stream = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {}: {}", target.host, error_chain(&e)))?;
            request(target, TokioIo::new(stream)).await
        }
        (true, None) => Err("TLS: no client set-up for an https:// url".into()),
    }
}

/// The target's addresses (a name resolved now), those outside the allowed ranges dropped, tried
/// in order.
async fn connect(target: &ProbeTarget) -> Result<tokio::net::TcpStream, String> {
    let addrs: Vec<SocketAddr> = match &target.host {
        ProbeHost::Ip(ip) => vec![SocketAddr::new(*ip, target.port)],
        ProbeHost::Name(name) => {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), target.port))
                .await
                .map_err(|e| format!("resolve {name}: {e}"))?
                .collect();
            let allowed: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| probe_ip_allowed(a.ip()))
                .collect();
            if allowed.is_empty() {
                let seen: Vec<String> = all.iter().map(|a| a.ip().to_string()).collect();
                return Err(format!(
                    "{name} resolves to [{}], none allowed: only {PROBE_RANGES}",
                    seen.join(", ")
                ));
            }
            allowed
        }
    };
    let mut errors = Vec::new();
    for a in addrs {
        match tokio::net::TcpStream::connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => errors.push(format!("connect {a}: {e}")),
        }
    }
    Err(errors.join("; "))
}

/// The GET over an established connection; the connection's driver task ends with this call.
async fn request<T>(target: &ProbeTarget, io: T) -> Result<Answer, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD)
        .handshake::<_, Empty<Bytes>>(io)
        .await
        .map_err(|e| format!("HTTP: {}", error_chain(&e)))?;
    let driver = AbortOnDrop(tokio::spawn(conn));
    let req = hyper::Request::get(target.path.as_str())
        .header(hyper::header::HOST, target.authority.as_str())
        .header(hyper::header::USER_AGENT, "sentinel-probe")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| format!("request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP: {}", error_chain(&e)))?;
    let status = resp.status().as_u16();
    if !(200..400).contains(&status) {
        return Err(format!("status {status}"));
    }
    let mut body = resp.into_body();
    let (mut body_read, mut truncated) = (0, false);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body: {}", error_chain(&e)))?;
        body_read += frame.data_ref().map_or(0, Bytes::len);
        if body_read >= MAX_BODY {
            truncated = true;
            break;
        }
    }
    drop(driver);
    Ok(Answer {
        status,
        latency: Duration::ZERO,
        body_read,
        truncated,
    })
}

/// Aborts a spawned task when dropped: the connection closes with the probe, time-out included.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An error and its sources on one line (hyper's and rustls's own text is terse).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    use http_body_util::{Full, combinators::BoxBody};
    use hyper::body::{Body, Frame, Incoming};
    use hyper::{Request, Response};
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::heal::config::{ActionConfig, Selector};

    /// Paths the test server was asked for, in order.
    type Seen = Arc<Mutex<Vec<String>>>;

    static CHUNK: [u8; 8192] = [b'x'; 8192];

    /// A body that never ends, counting what it hands to hyper.
    struct Endless(Arc<AtomicUsize>);

    impl Body for Endless {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.0.fetch_add(CHUNK.len(), Ordering::Relaxed);
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK)))))
        }
    }

    fn text(status: u16, body: &'static str) -> Response<BoxBody<Bytes, Infallible>> {
        Response::builder()
            .status(status)
            .body(Full::new(Bytes::from_static(body.as_bytes())).boxed())
            .unwrap()
    }

    /// The answers of the test server, by path.
    async fn answer(
        req: Request<Incoming>,
        port: u16,
        endless: Arc<AtomicUsize>,
    ) -> Response<BoxBody<Bytes, Infallible>> {
        match req.uri().path() {
            "/ok" => text(200, "fine"),
            "/down" => text(503, "down for maintenance"),
            "/moved" => {
                let mut r = text(302, "");
                r.headers_mut().insert(
                    hyper::header::LOCATION,
                    format!("http://127.0.0.1:{port}/target").parse().unwrap(),
                );
                r
            }
            "/slow" => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                text(200, "late")
            }
            "/endless" => Response::new(Endless(endless).boxed()),
            _ => text(404, ""),
        }
    }

    /// A hyper server on 127.0.0.1 (TLS with `tls`): its port, the paths it was asked for, and
    /// the bytes the endless body handed out.
    async fn hyper_server(tls: Option<Arc<rustls::ServerConfig>>) -> (u16, Seen, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Seen::default();
        let endless = Arc::new(AtomicUsize::new(0));
        let (seen2, endless2) = (seen.clone(), endless.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (seen, endless, tls) = (seen2.clone(), endless2.clone(), tls.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        seen.lock().unwrap().push(req.uri().path().to_string());
                        let endless = endless.clone();
                        async move { Ok::<_, Infallible>(answer(req, port, endless).await) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(s), service).await;
                        }
                        Some(cfg) => {
                            // The handshake fails when the client does not trust the cert.
                            if let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(s).await {
                                let _ = http.serve_connection(TokioIo::new(s), service).await;
                            }
                        }
                    }
                });
            }
        });
        (port, seen, endless)
    }

    /// A server that accepts connections and never says anything.
    async fn silent_server() -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 512];
                    while matches!(s.read(&mut b).await, Ok(n) if n > 0) {}
                });
            }
        });
        port
    }

    /// A self-signed certificate for `localhost`: the server's set-up and the cert's PEM.
    fn self_signed() -> (Arc<rustls::ServerConfig>, String) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
        (Arc::new(cfg), ck.cert.pem())
    }

    async fn get(
        url: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
        timeout: Duration,
    ) -> Result<Answer, String> {
        http_probe(&parse_probe_url(url).unwrap(), tls, timeout).await
    }

    fn rule(url: String, timeout_ms: u64, max_latency_ms: Option<u64>) -> RuleConfig {
        RuleConfig {
            name: "p".into(),
            selector: Selector::default(),
            trigger: Trigger::HttpProbe {
                url,
                timeout_ms,
                max_latency_ms,
                intervals: 2,
                ca_file: None,
            },
            action: ActionConfig::Start,
            cooldown_secs: 0.0,
            max_actions: 0,
            limit_window_secs: 600.0,
        }
    }

    const T: Duration = Duration::from_secs(2);
    const SHORT: Duration = Duration::from_millis(300);

    /// 200 is a success, 503 a failure that says its status, by IP and by name (`localhost`
    /// is resolved; a refused address of it, ::1 here, falls through to the next).
    #[tokio::test]
    async fn ok_and_bad_status_by_ip_and_by_name() {
        let (port, seen, _) = hyper_server(None).await;
        let a = get(&format!("http://127.0.0.1:{port}/ok"), None, T)
            .await
            .unwrap();
        assert_eq!((a.status, a.body_read, a.truncated), (200, 4, false));
        let a = get(&format!("http://localhost:{port}/ok"), None, T)
            .await
            .unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(
            get(&format!("http://localhost:{port}/down"), None, T)
                .await
                .unwrap_err(),
            "status 503"
        );
        assert_eq!(*seen.lock().unwrap(), ["/ok", "/ok", "/down"]);
    }

    /// A 302 counts as an answer (today's semantics: 2xx/3xx) and is not followed.
    #[tokio::test]
    async fn a_redirect_is_not_followed() {
        let (port, seen, _) = hyper_server(None).await;
        let a = get(&format!("http://127.0.0.1:{port}/moved"), None, T)
            .await
            .unwrap();
        assert_eq!(a.status, 302);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(*seen.lock().unwrap(), ["/moved"], "Location not requested");
    }

    /// Refused connections, silent servers and slow answers fail with one line saying which.
    #[tokio::test]
    async fn refused_silent_and_slow_fail_within_the_time_out() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = get(&format!("http://127.0.0.1:{closed}/"), None, T)
            .await
            .unwrap_err();
        assert!(
            e.starts_with(&format!("connect 127.0.0.1:{closed}: ")) && e.contains("refused"),
            "{e}"
        );
        let (port, _, _) = hyper_server(None).await;
        let start = std::time::Instant::now();
        let e = get(&format!("http://127.0.0.1:{port}/slow"), None, SHORT)
            .await
            .unwrap_err();
        assert_eq!(e, "no answer within 300 ms");
        assert!(start.elapsed() < Duration::from_secs(1));
        // TLS towards a server that never speaks: the same bound covers the handshake.
        let silent = silent_server().await;
        let tls = Some(tls_config(None).unwrap());
        let e = get(&format!("https://localhost:{silent}/"), tls, SHORT)
            .await
            .unwrap_err();
        assert_eq!(e, "no answer within 300 ms");
    }

    /// An endless body is read up to the bound, then dropped: the probe ends long before its
    /// time-out and the server is not read further.
    #[tokio::test]
    async fn an_endless_body_is_read_up_to_the_bound() {
        let (port, _, handed_out) = hyper_server(None).await;
        let start = std::time::Instant::now();
        let a = get(&format!("http://127.0.0.1:{port}/endless"), None, 5 * T)
            .await
            .unwrap();
        assert_eq!(a.status, 200);
        assert!(a.truncated);
        assert!(
            (MAX_BODY..=MAX_BODY + MAX_HEAD).contains(&a.body_read),
            "{}",
            a.body_read
        );
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        // The connection is closed: the server stops producing (what it produced beyond the
        // read fills socket buffers, a few MiB at most).
        tokio::time::sleep(Duration::from_millis(200)).await;
        let then = handed_out.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(handed_out.load(Ordering::Relaxed), then, "still sending");
        assert!(then < 64 << 20, "{then}");
    }

    /// https with a self-signed certificate: refused with a clear reason against the system's
    /// store alone, trusted once the certificate is the rule's `ca_file`.
    #[tokio::test]
    async fn https_trusts_the_system_store_plus_ca_file() {
        let (server_cfg, pem) = self_signed();
        let (port, seen, _) = hyper_server(Some(server_cfg)).await;
        let url = format!("https://localhost:{port}/ok");
        let e = get(&url, Some(tls_config(None).unwrap()), T)
            .await
            .unwrap_err();
        assert_eq!(
            e, "TLS with localhost: invalid peer certificate: UnknownIssuer",
            "{e}"
        );
        assert!(seen.lock().unwrap().is_empty(), "no request before trust");
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, pem).unwrap();
        let a = get(&url, Some(tls_config(Some(&ca)).unwrap()), T)
            .await
            .unwrap();
        assert_eq!((a.status, a.body_read), (200, 4));
        // Through the prober, as the engine runs it: the rule's ca_file, then the untrusted
        // default.
        let mut with_ca = rule(url.clone(), 2000, None);
        if let Trigger::HttpProbe { ca_file, .. } = &mut with_ca.trigger {
            *ca_file = Some(ca);
        }
        let mut p = Prober::default();
        p.launch(&[with_ca, rule(url, 2000, None)]);
        let mut done = Vec::new();
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            done.extend(p.collect());
            if done.len() == 2 {
                break;
            }
        }
        done.sort();
        assert_eq!(
            done,
            [
                (0, None),
                (
                    1,
                    Some("TLS with localhost: invalid peer certificate: UnknownIssuer".into())
                )
            ]
        );
    }

    /// A silent endpoint never holds the caller: `launch` and `collect` return at once, at
    /// most one probe per rule runs, and the failure arrives after the rule's own time-out.
    #[tokio::test]
    async fn probes_run_off_the_caller_with_their_own_bound() {
        let port = silent_server().await;
        let rules = [rule(format!("http://127.0.0.1:{port}/health"), 300, None)];
        let mut p = Prober::default();
        let start = std::time::Instant::now();
        p.launch(&rules);
        p.launch(&rules);
        assert_eq!(p.in_flight(), 1, "one probe per rule");
        assert!(p.collect().is_empty(), "nothing finished yet");
        assert!(
            start.elapsed() < Duration::from_millis(100),
            "never awaited"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let done = p.collect();
        assert_eq!(done.len(), 1);
        assert!(
            done[0]
                .1
                .as_deref()
                .unwrap()
                .contains("no answer within 300 ms")
        );
        assert_eq!(p.in_flight(), 0);
    }

    /// Slower than `max_latency_ms` is a failure even with a 200.
    #[tokio::test]
    async fn a_slow_success_is_a_failure_past_max_latency() {
        assert_eq!(
            probe_failure(Ok(Duration::from_millis(10)), Some(500)),
            None
        );
        assert_eq!(
            probe_failure(Ok(Duration::from_millis(600)), Some(500)).as_deref(),
            Some("latency 600 ms > 500 ms")
        );
        assert_eq!(probe_failure(Ok(Duration::from_secs(9)), None), None);
        let (port, _, _) = hyper_server(None).await;
        let mut p = Prober::default();
        p.launch(&[rule(
            format!("http://127.0.0.1:{port}/ok"),
            1000,
            Some(1000),
        )]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(p.collect(), vec![(0, None)]);
    }
}
