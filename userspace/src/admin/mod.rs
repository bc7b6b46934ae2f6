//! The admin endpoint: `/healthz`, `/metrics` (OpenMetrics text), `/apps`, `/observations`,
//! `/cache`, `/placement` and `/process` (JSON); `POST /reload` and `POST /upgrade`.
//! Off the request path, on its own thread.

mod metrics;
mod state;

pub use state::{AdminState, ReloadRequest, UpgradeRequest};

use std::{
    net::{SocketAddr, TcpListener},
    sync::Arc,
};

use anyhow::Context as _;
use edgeplane_dataplane::{client::TokioIo, http::Response};
use tracing::{info, warn};

/// One app as `/apps` shows it: the version (component digest) the workers serve.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct AppVersion {
    pub name: String,
    pub digest: String,
    pub component: String,
}

/// `/apps`: the generation published, what each worker serves, and each app's version.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Versions {
    pub generation: u64,
    pub workers: Vec<u64>,
    pub apps: Vec<AppVersion>,
}

fn versions(live: &edgeplane_dataplane::live::LivePublisher) -> Versions {
    let current = live.current();
    let mut apps: Vec<AppVersion> = current
        .specs
        .iter()
        .map(|s| AppVersion {
            name: s.name.clone(),
            digest: s.digest.clone(),
            component: s.component.display().to_string(),
        })
        .collect();
    apps.sort_by(|a, b| a.name.cmp(&b.name));
    Versions {
        generation: current.number,
        workers: live.applied(),
        apps,
    }
}

/// Asks the daemon's main loop for a reload or an upgrade and answers with its outcome: 200
/// with the report, or `refused` with why (the daemon then goes on as it was).
async fn ask_daemon<T: serde::Serialize>(
    tx: Option<&tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<Result<T, String>>>>,
    refused: u16,
    what: &str,
) -> Response {
    let Some(tx) = tx else {
        return Response::text(404, format!("this edged does not {what}\n"));
    };
    let (reply, outcome) = tokio::sync::oneshot::channel();
    if tx.send(reply).await.is_err() {
        return Response::text(503, "edged is shutting down\n");
    }
    match outcome.await {
        Ok(Ok(report)) => json(&report),
        Ok(Err(why)) => Response::text(refused, format!("{what} refused: {why}\n")),
        Err(_) => Response::text(503, "edged is shutting down\n"),
    }
}

/// Admin connections served at once; past it, a new one is answered 503 and closed.
const MAX_ADMIN_CONNECTIONS: usize = 32;
/// Largest request head the admin endpoint reads (hyper's floor is 8 KiB).
const ADMIN_MAX_HEAD: usize = 16 * 1024;
/// How long a reload's answer may take past `ADMIN_IO_TIMEOUT`.
const RELOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
/// How long one admin connection may take to send its request and read the answer.
const ADMIN_IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub fn serve(addr: SocketAddr, state: Arc<AdminState>) -> anyhow::Result<Admin> {
    let listener = TcpListener::bind(addr).with_context(|| format!("admin endpoint {addr}"))?;
    serve_on(listener, state)
}

/// The admin endpoint while it runs: its address, its listener (for the next process), and
/// how to stop it accepting.
pub struct Admin {
    pub addr: SocketAddr,
    listener: TcpListener,
    stop: Arc<tokio::sync::Notify>,
}

impl Admin {
    /// A duplicate of the listening socket, for the next process.
    pub fn listener(&self) -> anyhow::Result<std::os::fd::OwnedFd> {
        crate::upgrade::dup(std::os::fd::AsFd::as_fd(&self.listener))
    }

    /// Stops accepting (the socket stays open while the next process holds it).
    pub fn stop(&self) {
        self.stop.notify_one();
    }
}

/// Serves the admin endpoint on `listener` (bound here, or received from the edged this one
/// takes over from).
pub fn serve_on(listener: TcpListener, state: Arc<AdminState>) -> anyhow::Result<Admin> {
    let bound = listener.local_addr()?;
    let kept = listener.try_clone()?;
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopped = stop.clone();
    listener.set_nonblocking(true)?;
    info!(%bound, "admin endpoint");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return warn!(error = %e, "admin: cannot listen"),
                };
                tokio::select! {
                    _ = accept_loop(listener, state) => {}
                    _ = stopped.notified() => info!("admin endpoint handed over"),
                }
                // Answers still being written (the upgrade's own) finish; the process's exit
                // ends this thread.
                std::future::pending::<()>().await;
            })
        })?;
    Ok(Admin {
        addr: bound,
        listener: kept,
        stop,
    })
}

/// Each connection is a task of its own, bounded in number and in time: a slow or silent
/// client holds only its own task (until its timeout), never the endpoint a health check
/// relies on.
async fn accept_loop(listener: tokio::net::TcpListener, state: Arc<AdminState>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, "admin: accept");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = slots.clone().try_acquire_owned().ok();
        let state = state.clone();
        tokio::spawn(async move {
            let busy = slot.is_none();
            // A reload compiles components and waits for workers: its answer may take longer
            // than a client gets to send a request.
            let reloading = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let reloading_seen = reloading.clone();
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (state, reloading) = (state.clone(), reloading.clone());
                    async move {
                        let resp = if busy {
                            Response::text(503, "admin endpoint busy\n")
                        } else if req.method() == http::Method::POST
                            && req.uri().path() == "/reload"
                        {
                            reloading.store(true, std::sync::atomic::Ordering::Relaxed);
                            // POST /reload: 409 when the configuration is refused.
                            ask_daemon(state.reload.as_ref(), 409, "reload").await
                        } else if req.method() == http::Method::POST
                            && req.uri().path() == "/upgrade"
                        {
                            reloading.store(true, std::sync::atomic::Ordering::Relaxed);
                            // POST /upgrade: 500 when the new edged did not take over.
                            ask_daemon(state.upgrade.as_ref(), 500, "upgrade").await
                        } else if !matches!(*req.method(), http::Method::GET | http::Method::HEAD) {
                            Response::text(
                                405,
                                "the admin endpoint answers GET (and POST /reload)\n",
                            )
                        } else {
                            route(&state, req.uri().path())
                        };
                        Ok::<_, std::convert::Infallible>(to_hyper(resp))
                    }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                // The workers' header limit: a larger head is refused (431), not buffered.
                .max_buf_size(ADMIN_MAX_HEAD)
                .serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            let mut outcome = tokio::time::timeout(ADMIN_IO_TIMEOUT, &mut conn).await;
            if outcome.is_err() && reloading_seen.load(std::sync::atomic::Ordering::Relaxed) {
                outcome = tokio::time::timeout(RELOAD_TIMEOUT, &mut conn).await;
            }
            match outcome {
                Ok(Err(e)) => warn!(error = %e, "admin connection"),
                Err(_) => warn!("admin connection: no request within the timeout; closed"),
                Ok(Ok(())) => {}
            }
            drop(slot);
        });
    }
}

fn to_hyper(resp: Response) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let mut out = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(resp.body)));
    *out.status_mut() =
        http::StatusCode::from_u16(resp.status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in resp.headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            out.headers_mut().append(name, value);
        }
    }
    out
}

/// The answer to a GET of `path`.
fn route(state: &AdminState, path: &str) -> Response {
    match path {
        "/healthz" => state.health(),
        "/metrics" => match metrics::render(state) {
            Ok(text) => Response::new(200, text).header("content-type", metrics::CONTENT_TYPE),
            Err(e) => Response::text(500, format!("{e:#}\n")),
        },
        "/observations" => {
            let all: Vec<_> = state
                .observations
                .iter()
                .flat_map(|o| o.snapshot())
                .collect();
            json(&all)
        }
        "/placement" => {
            let table = state
                .placement
                .as_ref()
                .map(|p| edgeplane_dataplane::lock(p).clone())
                .unwrap_or_default();
            json(&table)
        }
        "/process" => json(&serde_json::json!({ "pid": std::process::id() })),
        "/measurements" => match &state.fleet_view {
            Some(view) => json(&*edgeplane_dataplane::lock(view)),
            None => Response::text(404, "this edged is not on a fleet\n"),
        },
        "/certificates" => json(&state.certificates()),
        "/apps" => match &state.live {
            Some(live) => json(&versions(live)),
            None => Response::text(404, "this edged serves no components\n"),
        },
        "/cache" => {
            let all: Vec<_> = state.residency.iter().map(|r| r.snapshot()).collect();
            json(&all)
        }
        _ => Response::text(
            404,
            "try /healthz, /metrics, /apps, /observations, /cache, /placement or /measurements\n",
        ),
    }
}

fn json(value: &impl serde::Serialize) -> Response {
    Response::new(200, serde_json::to_vec_pretty(value).unwrap_or_default())
        .header("content-type", "application/json")
}

#[cfg(test)]
mod tests {
    use super::state::health;

    #[test]
    fn health_is_degraded_while_a_worker_is_down_and_while_stopping() {
        assert_eq!(health(false, 0).status, 200);
        let down = health(false, 1);
        assert_eq!(down.status, 503);
        assert!(String::from_utf8_lossy(&down.body).contains("1 worker(s) down"));
        assert_eq!(health(true, 0).status, 503);
    }
}
