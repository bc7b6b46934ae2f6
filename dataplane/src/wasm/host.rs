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
    pub io_clock: IoClock,
    /// The split app whose functions this guest may call, and where this datacenter's
    /// workers listen (function calls go through them: see `crate::functions`).
    pub split_app: Option<Arc<str>>,
    pub functions_via: Option<std::net::SocketAddr>,
}

/// How long a request spent waiting on its subrequests (any in flight), so the CPU deadline
/// does not count that time.
#[derive(Clone, Default)]
pub struct IoClock {
    inner: Arc<Mutex<IoClockState>>,
}

#[derive(Default)]
struct IoClockState {
    in_flight: u32,
    since: Option<Instant>,
    waited: Duration,
}

impl IoClock {
    fn begin(&self) {
        let mut s = self.inner.lock().expect("io clock");
        if s.in_flight == 0 {
            s.since = Some(Instant::now());
        }
        s.in_flight += 1;
    }

    fn end(&self) {
        let mut s = self.inner.lock().expect("io clock");
        s.in_flight -= 1;
        if s.in_flight == 0
            && let Some(since) = s.since.take()
        {
            s.waited += since.elapsed();
        }
    }

    pub fn waited(&self) -> Duration {
        let s = self.inner.lock().expect("io clock");
        s.waited + s.since.map(|t| t.elapsed()).unwrap_or_default()
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
        let clock = self.io_clock.clone();
        Box::new(async move {
            let started = Instant::now();
            clock.begin();
            let sent = default_send_request(request, options).await;
            clock.end();
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
