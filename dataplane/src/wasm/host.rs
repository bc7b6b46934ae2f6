//! What a guest's Store holds: WASI and wasi:http contexts, memory limits, and the hooks through
//! which every outgoing request is allowed (or denied) and timed.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http_body_util::BodyExt as _;
use wasmtime::{StoreLimits, component::ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView, default_send_request,
};

use super::observe::Observations;

pub struct HostState {
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
    pub clock: RequestClock,
    /// The split app whose functions this guest may call, and where this datacenter's
    /// workers listen (function calls go through them: see `crate::functions`).
    pub split_app: Option<Arc<str>>,
    pub functions_via: Option<std::net::SocketAddr>,
    /// The call depth of the request now served (`crate::functions::call_depth`); its
    /// function calls carry one more.
    pub call_depth: u32,
}

/// The CPU time of the request the store now serves: wall time since it started, less the time
/// spent waiting on its subrequests (any in flight). One per store, restarted for each request a
/// warm instance serves, so the deadline callback that reads it is installed once per store.
#[derive(Clone)]
pub struct RequestClock {
    inner: Arc<Mutex<ClockState>>,
}

struct ClockState {
    started: Instant,
    waiting: u32,
    waiting_since: Option<Instant>,
    waited: Duration,
}

impl Default for RequestClock {
    fn default() -> Self {
        Self {
            inner: Arc::new(Mutex::new(ClockState {
                started: Instant::now(),
                waiting: 0,
                waiting_since: None,
                waited: Duration::ZERO,
            })),
        }
    }
}

impl RequestClock {
    fn state(&self) -> std::sync::MutexGuard<'_, ClockState> {
        // The state stays consistent across a panic (plain stores of Copy values).
        crate::lock(&self.inner)
    }

    /// A new request starts now.
    pub fn restart(&self) {
        let mut s = self.state();
        s.started = Instant::now();
        s.waiting = 0;
        s.waiting_since = None;
        s.waited = Duration::ZERO;
    }

    fn begin_wait(&self) {
        let mut s = self.state();
        if s.waiting == 0 {
            s.waiting_since = Some(Instant::now());
        }
        s.waiting += 1;
    }

    fn end_wait(&self) {
        let mut s = self.state();
        s.waiting = s.waiting.saturating_sub(1);
        if s.waiting == 0
            && let Some(since) = s.waiting_since.take()
        {
            s.waited += since.elapsed();
        }
    }

    /// Time the request has spent computing rather than waiting on subrequests.
    pub fn computing(&self) -> Duration {
        let s = self.state();
        let waited = s.waited + s.waiting_since.map(|t| t.elapsed()).unwrap_or_default();
        s.started.elapsed().saturating_sub(waited)
    }
}

/// Ends a subrequest's wait even when its future is dropped before the response arrives.
struct Waiting(RequestClock);

impl Waiting {
    fn begin(clock: RequestClock) -> Self {
        clock.begin_wait();
        Self(clock)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.end_wait();
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
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        *request.uri_mut() = http::Uri::builder()
            .scheme("http")
            .authority(via.to_string())
            .path_and_query(path)
            .build()
            .map_err(|_| "bad path")?;
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
        let (app, observations) = (self.app.clone(), self.observations.clone());
        let function = request
            .uri()
            .host()
            .and_then(crate::functions::called)
            .map(str::to_owned);
        // A split app's functions may call each other; anything else must be allowed by name.
        let sibling_call = function.is_some() && self.split_app.is_some();
        if !sibling_call && !self.allowed_backends.contains(&dest) {
            tracing::warn!(app = %app, destination = %dest, "outgoing request to a backend the app may not call");
            observations.record_denied(&app, &dest);
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        let mut request = request;
        if let Some(function) = function
            && let Err(e) = self.function_call(&mut request, &function)
        {
            tracing::warn!(app = %app, function, error = e, "function call refused");
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        let clock = self.clock.clone();
        Box::new(async move {
            let started = Instant::now();
            let waiting = Waiting::begin(clock);
            let sent = default_send_request(request, options).await;
            drop(waiting);
            match sent {
                Ok((resp, io)) => {
                    observations.record(&app, &dest, started.elapsed());
                    let io: Box<dyn Future<Output = Result<(), HttpError>> + Send> = Box::new(io);
                    Ok((resp.map(|b| b.boxed_unsync()), io))
                }
                Err(e) => {
                    observations.record_failure(&app, &dest);
                    Err(e)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_waiting_on_subrequests_is_not_computing_and_restart_starts_over() {
        let clock = RequestClock::default();
        std::thread::sleep(Duration::from_millis(20));
        let computed = clock.computing();
        assert!(computed >= Duration::from_millis(20), "{computed:?}");
        {
            // Two overlapping subrequests: the wait counts once.
            let _a = Waiting::begin(clock.clone());
            let _b = Waiting::begin(clock.clone());
            std::thread::sleep(Duration::from_millis(200));
        }
        let after_wait = clock.computing();
        assert!(
            after_wait < computed + Duration::from_millis(150),
            "200 ms of waiting counted as computing: {computed:?} then {after_wait:?}"
        );
        clock.restart();
        assert!(
            clock.computing() < computed,
            "restart kept the old request's time"
        );
    }
}
