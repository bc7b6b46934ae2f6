//! What a guest's Store holds: WASI and wasi:http contexts, memory limits, and the hooks through
//! which every outgoing request is allowed (or denied) and timed.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use http_body::Body as _;
use http_body_util::BodyExt as _;
use wasmtime::{StoreLimits, component::ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView, default_send_request,
};

use super::observe::Observations;
use crate::client::{self, ClientError, ConnPool, PoolKey, Timing};

pub struct HostState {
    /// CPU and wall time of the request being served (the deadlines read it).
    pub meter: CpuMeter,
    pub wasi: WasiCtx,
    pub http: WasiHttpCtx,
    pub table: ResourceTable,
    pub limits: StoreLimits,
    pub hooks: EdgeHooks,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

pub struct EdgeHooks {
    pub app: Arc<str>,
    pub allowed_backends: Arc<[String]>,
    pub observations: Observations,
    /// The split app whose functions this guest may call, and where this datacenter's
    /// workers listen (function calls go through them: see `crate::functions`).
    pub split_app: Option<Arc<str>>,
    pub functions_via: Option<std::net::SocketAddr>,
    /// edged's admin endpoint, which no guest may reach.
    pub admin: Option<std::net::SocketAddr>,
    /// The call depth of the request now served (`crate::functions::call_depth`); its
    /// function calls carry one more.
    pub call_depth: u32,
    /// The worker's keep-alive connections, which plain-HTTP subrequests go over.
    pub pool: Arc<ConnPool>,
}

/// What the request the store now serves has used: wall time since it started, and of that the
/// time the guest computed. Time inside host calls is not the guest's computing: a guest blocked
/// in `wasi:io/poll` (a sleep, a pending subrequest, a body still arriving) is waiting, however
/// long. The store's call hook marks each host call's start and end; the epoch callback, which
/// runs only while wasm runs, reads the total. One per store, restarted for each request a warm
/// instance serves.
///
/// The marks use the coarse monotonic clock: a host call costs two reads of it (a few ns each,
/// against ~25 ns for the precise clock), and its granularity (a few ms) averages out over the
/// many calls a CPU budget of 100 ms spans.
#[derive(Clone, Copy, Debug)]
pub struct CpuMeter {
    started: Duration,
    in_host_since: Option<Duration>,
    in_host: Duration,
    depth: u32,
}

/// CLOCK_MONOTONIC_COARSE as a duration since boot.
fn coarse_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out pointer; this clock id is always available on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

impl Default for CpuMeter {
    fn default() -> Self {
        Self {
            started: coarse_now(),
            in_host_since: None,
            in_host: Duration::ZERO,
            depth: 0,
        }
    }
}

impl CpuMeter {
    /// A new request starts now.
    pub fn restart(&mut self) {
        *self = Self::default();
    }

    /// The store's call hook: host calls are the guest's waiting, not its computing.
    pub fn on_call(&mut self, hook: wasmtime::CallHook) {
        match hook {
            wasmtime::CallHook::CallingHost => {
                if self.depth == 0 {
                    self.in_host_since = Some(coarse_now());
                }
                self.depth = self.depth.saturating_add(1);
            }
            wasmtime::CallHook::ReturningFromHost => {
                self.depth = self.depth.saturating_sub(1);
                if self.depth == 0
                    && let Some(since) = self.in_host_since.take()
                {
                    self.in_host += coarse_now().saturating_sub(since);
                }
            }
            _ => {}
        }
    }

    /// Wall time since the request started.
    pub fn elapsed(&self) -> Duration {
        coarse_now().saturating_sub(self.started)
    }

    /// Time the request has spent computing rather than waiting in host calls.
    pub fn computing(&self) -> Duration {
        let now = coarse_now();
        let in_host = self.in_host
            + self
                .in_host_since
                .map_or(Duration::ZERO, |s| now.saturating_sub(s));
        now.saturating_sub(self.started).saturating_sub(in_host)
    }
}

/// `host:port` of a request, with the scheme's default port.
fn destination(req: &http::Request<WasiBody>) -> Option<String> {
    let uri = req.uri();
    let authority = uri.authority()?;
    let port = authority
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    Some(format!("{}:{port}", authority.host()))
}

/// Points a plain-HTTP request at `addr`, keeping its path and query (its Host header is left
/// as it is).
fn send_to(
    request: &mut http::Request<WasiBody>,
    addr: std::net::SocketAddr,
) -> Result<(), http::Error> {
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    *request.uri_mut() = http::Uri::builder()
        .scheme("http")
        .authority(addr.to_string())
        .path_and_query(path)
        .build()?;
    Ok(())
}

/// Resolves `dest` and refuses it when any address it resolves to is one guests may not reach
/// (`outbound::refusal`). For plain HTTP the request is then pinned to the address checked, so
/// a second lookup cannot land elsewhere (DNS rebinding); HTTPS keeps the name, which its
/// certificate check needs (the connection resolves it again).
async fn pin_destination(
    request: &mut http::Request<WasiBody>,
    dest: &str,
    allowed: &[String],
    admin: Option<std::net::SocketAddr>,
) -> Result<std::net::SocketAddr, HttpError> {
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host(dest)
        .await
        .map_err(|_| HttpError::DnsError {
            rcode: None,
            info_code: None,
        })?
        .collect();
    let Some(first) = addrs.first().copied() else {
        return Err(HttpError::DestinationNotFound);
    };
    if let Some((addr, why)) = addrs
        .iter()
        .find_map(|a| super::outbound::refusal(*a, allowed, admin).map(|why| (a, why)))
    {
        tracing::warn!(destination = %dest, address = %addr, reason = why, "outgoing request to an address guests may not reach");
        return Err(HttpError::DestinationIpProhibited);
    }
    if request.uri().scheme_str() != Some("https") {
        if !request.headers().contains_key(http::header::HOST)
            && let Some(authority) = request.uri().authority()
            && let Ok(host) = http::HeaderValue::from_str(authority.as_str())
        {
            request.headers_mut().insert(http::header::HOST, host);
        }
        send_to(request, first).map_err(|_| HttpError::HttpRequestUriInvalid)?;
    }
    Ok(first)
}

/// Sends a plain-HTTP subrequest to `addr` over the worker's pool, keyed by app: a connection
/// one app opened never carries another's requests.
async fn send_pooled(
    pool: &Arc<ConnPool>,
    app: Arc<str>,
    addr: std::net::SocketAddr,
    request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
) -> Result<(http::Response<WasiBody>, Timing), HttpError> {
    let connect_timeout = options
        .and_then(|o| o.connect_timeout)
        .unwrap_or(SUBREQUEST_CONNECT_TIMEOUT);
    let first_byte = options
        .and_then(|o| o.first_byte_timeout)
        .unwrap_or(SUBREQUEST_FIRST_BYTE_TIMEOUT);
    let (parts, body) = request.into_parts();
    let head = client::Head {
        method: parts.method,
        target: parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        headers: parts.headers,
    };
    // An empty body can go again; a guest's stream cannot.
    let body = if body.is_end_stream() {
        client::Outgoing::Whole(bytes::Bytes::new())
    } else {
        client::Outgoing::Stream(body.map_err(client::BoxError::from).boxed_unsync())
    };
    let send = client::send(
        pool,
        PoolKey::new(app, addr),
        head,
        body,
        connect_timeout,
        None,
    );
    let sent = match tokio::time::timeout(connect_timeout + first_byte, send).await {
        Ok(Ok(sent)) => sent,
        Ok(Err(ClientError::ConnectTimeout { .. })) => return Err(HttpError::ConnectionTimeout),
        Ok(Err(ClientError::Connect { error, .. })) => return Err(HttpError::Connect(error)),
        Ok(Err(ClientError::Exchange { error, .. })) => return Err(HttpError::from(error)),
        // Not reached while guests' subrequests go without TLS (None above).
        Ok(Err(ClientError::Tls { .. })) => return Err(HttpError::TlsProtocolError),
        Err(_) => return Err(HttpError::ConnectionReadTimeout),
    };
    let timing = sent.timing;
    Ok((
        sent.response
            .map(|b| b.map_err(HttpError::from).boxed_unsync()),
        timing,
    ))
}

/// Subrequest timeouts when the guest sets none (its wall deadline bounds them too).
const SUBREQUEST_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const SUBREQUEST_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(60);

type SendResult = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ),
    HttpError,
>;

impl EdgeHooks {
    /// Points a call to a sibling function at this datacenter's workers, under the sibling's
    /// internal host name.
    fn function_call(
        &self,
        request: &mut http::Request<WasiBody>,
        function: &str,
    ) -> Result<(), &'static str> {
        let split_app = self.split_app.as_deref().ok_or("not a split app")?;
        let via = self
            .functions_via
            .ok_or("this runtime serves no function calls")?;
        send_to(request, via).map_err(|_| "bad path")?;
        let host = crate::functions::internal_host(split_app, function);
        request.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_str(&host).map_err(|_| "bad function name")?,
        );
        // Set here, over whatever the guest wrote: only the host counts the depth.
        request.headers_mut().insert(
            crate::functions::CALL_DEPTH_HEADER,
            http::HeaderValue::from(self.call_depth.saturating_add(1)),
        );
        Ok(())
    }
}

impl WasiHttpHooks for EdgeHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let Some(dest) = destination(&request) else {
            return Box::new(async { Err(HttpError::HttpRequestUriInvalid) });
        };
        let mut request = request;
        let sibling_call = match self.admit_outgoing(&mut request, &dest) {
            Ok(sibling_call) => sibling_call,
            Err(e) => return Box::new(async move { Err(e) }),
        };
        let outgoing = Outgoing {
            app: self.app.clone(),
            observations: self.observations.clone(),
            dest,
            allowed: self.allowed_backends.clone(),
            admin: self.admin,
            pool: self.pool.clone(),
            sibling_call,
        };
        Box::new(outgoing.send(request, options))
    }
}

impl EdgeHooks {
    /// Whether the guest may send `request` to `dest`: a split app's functions may call each
    /// other (the call is addressed to the workers then), anything else must be allowed by
    /// name. Returns whether it is a call to a sibling function.
    fn admit_outgoing(
        &self,
        request: &mut http::Request<WasiBody>,
        dest: &str,
    ) -> Result<bool, HttpError> {
        let function = request
            .uri()
            .host()
            .and_then(crate::functions::called)
            .map(str::to_owned);
        let sibling_call = function.is_some() && self.split_app.is_some();
        if !sibling_call && !self.allowed_backends.iter().any(|b| b == dest) {
            tracing::warn!(app = %self.app, destination = %dest, "outgoing request to a backend the app may not call");
            self.observations.record_denied(&self.app, dest);
            return Err(HttpError::HttpRequestDenied);
        }
        if let Some(function) = function
            && let Err(e) = self.function_call(request, &function)
        {
            tracing::warn!(app = %self.app, function, error = e, "function call refused");
            return Err(HttpError::HttpRequestDenied);
        }
        Ok(sibling_call)
    }
}

/// One admitted subrequest, sent and recorded in the app's observations.
struct Outgoing {
    app: Arc<str>,
    observations: Observations,
    dest: String,
    allowed: Arc<[String]>,
    admin: Option<std::net::SocketAddr>,
    pool: Arc<ConnPool>,
    sibling_call: bool,
}

impl Outgoing {
    async fn send(
        self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> SendResult {
        let (app, dest, observations) = (&self.app, &self.dest, &self.observations);
        let started = Instant::now();
        let https = request.uri().scheme_str() == Some("https");
        let pinned = if self.sibling_call {
            request
                .uri()
                .authority()
                .and_then(|a| a.as_str().parse().ok())
        } else {
            // Checked on the addresses the name resolves to, not only the name.
            match pin_destination(&mut request, dest, &self.allowed, self.admin).await {
                Ok(addr) => Some(addr),
                Err(e) => {
                    if matches!(e, HttpError::DestinationIpProhibited) {
                        observations.record_denied(app, dest);
                    } else {
                        observations.record_failure(app, dest);
                    }
                    return Err(e);
                }
            }
        };
        let sent = match pinned {
            Some(addr) if !https => send_pooled(&self.pool, app.clone(), addr, request, options)
                .await
                .map(|(resp, timing)| {
                    observations.record(app, dest, timing.exchange, timing.connect);
                    let no_io: Box<dyn Future<Output = Result<(), HttpError>> + Send> =
                        Box::new(async { Ok(()) });
                    (resp, no_io)
                }),
            // HTTPS goes on a connection of its own (TLS is not pooled yet), timed whole.
            _ => default_send_request(request, options)
                .await
                .map(|(resp, io)| {
                    observations.record(app, dest, started.elapsed(), None);
                    let io: Box<dyn Future<Output = Result<(), HttpError>> + Send> = Box::new(io);
                    (resp.map(|b| b.boxed_unsync()), io)
                }),
        };
        if sent.is_err() {
            observations.record_failure(app, dest);
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::CallHook;

    #[test]
    fn time_in_host_calls_is_not_computing_and_restart_starts_over() {
        let mut meter = CpuMeter::default();
        std::thread::sleep(Duration::from_millis(60));
        let computed = meter.computing();
        assert!(computed >= Duration::from_millis(40), "{computed:?}");
        // A host call (a sleep, a subrequest) that blocks for 400 ms: not computing.
        meter.on_call(CallHook::CallingHost);
        std::thread::sleep(Duration::from_millis(400));
        let during = meter.computing();
        meter.on_call(CallHook::ReturningFromHost);
        let after = meter.computing();
        for t in [during, after] {
            assert!(
                t < computed + Duration::from_millis(200),
                "400 ms in a host call counted as computing: {computed:?} then {t:?}"
            );
        }
        assert!(meter.elapsed() >= Duration::from_millis(440));
        meter.restart();
        assert!(
            meter.computing() < computed,
            "restart kept the old request's time"
        );
    }
}
