//! A guest's run as the worker sees it: the instance's `handle` call and its response body,
//! polled side by side (a wasi:http guest may set its response before it writes the body, and
//! may write the body while its handler still runs), under the app's wall deadline.
//!
//! The response is given to the worker as soon as its head is set: what the body already holds
//! goes with it, and the rest streams (`GuestBody`). A guest that finishes in its first poll
//! (most do) gives a whole body, sent with a content-length like before. The body's end is held
//! back until the guest's handler has returned: a guest that traps mid-body leaves a body that
//! ends as if finished (wasmtime-wasi-http closes it when the store drops), and that must reach
//! the client as a failure, never as a whole body.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http_body::{Body, Frame};
use wasmtime::{Store, Trap};
use wasmtime_wasi_http::p2::{
    bindings::{Proxy, http::types::ErrorCode},
    body::HyperOutgoingBody,
};

use super::{error::HandleError, host::HostState};
use crate::http::stream::{PREFIX_BYTES, Taken, take_ready};

/// Where an instance goes when its request is over, and the runtime's hold that ends with it.
pub(super) trait InstanceHome {
    /// The handler returned cleanly and the body is whole: the instance may serve again.
    fn keep(&self, store: Store<HostState>, proxy: Proxy);
    /// The request is over (however it ended).
    fn release(&self);
}

/// The handler call, giving back its instance when it returns cleanly.
pub(super) type GuestCall =
    Pin<Box<dyn Future<Output = wasmtime::Result<(Store<HostState>, Proxy)>>>>;

/// The response side's channel: the guest's `response-outparam.set`.
pub(super) type HeadReceiver =
    tokio::sync::oneshot::Receiver<Result<http::Response<HyperOutgoingBody>, ErrorCode>>;

/// The CPU deadline fired: the guest computed for longer than its budget.
#[derive(Debug, thiserror::Error)]
#[error("cpu deadline exceeded")]
pub(super) struct CpuDeadline;

/// The wall deadline fired inside wasm: the guest spun past it without yielding.
#[derive(Debug, thiserror::Error)]
#[error("wall-clock deadline exceeded")]
pub(super) struct WallDeadline;

/// One request's guest: its handler call (until it returns), its instance afterwards, and what
/// it holds of the worker (an in-flight slot, released when this is dropped).
pub(super) struct GuestRun {
    call: Option<GuestCall>,
    returned: Option<(Store<HostState>, Proxy)>,
    app: Arc<str>,
    home: Box<dyn InstanceHome>,
    deadline: Instant,
    /// Armed once the guest first waits: most never do.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Drop for GuestRun {
    fn drop(&mut self) {
        self.home.release();
    }
}

impl GuestRun {
    /// `home` holds the runtime's in-flight slot, released when this is dropped.
    pub(super) fn new(
        call: GuestCall,
        app: Arc<str>,
        home: Box<dyn InstanceHome>,
        deadline: Instant,
    ) -> Self {
        Self {
            call: Some(call),
            returned: None,
            app,
            home,
            deadline,
            timer: None,
        }
    }

    fn app_name(&self) -> String {
        self.app.to_string()
    }

    /// Advances the handler call; an error is the guest's failure, classified.
    fn poll_call(&mut self, cx: &mut Context<'_>) -> Result<(), HandleError> {
        let Some(call) = self.call.as_mut() else {
            return Ok(());
        };
        if let Poll::Ready(result) = call.as_mut().poll(cx) {
            self.call = None;
            self.returned = Some(result.map_err(|e| classify(&self.app_name(), e))?);
        }
        Ok(())
    }

    /// Err once the wall deadline passed with the guest still waiting.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Result<(), HandleError> {
        let deadline = self.deadline;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Err(HandleError::Deadline {
                app: self.app_name(),
                which: "wall-clock",
            }),
            Poll::Pending => Ok(()),
        }
    }

    /// The response head the guest sets, polling its handler meanwhile.
    pub(super) async fn head(
        &mut self,
        mut head: HeadReceiver,
    ) -> Result<http::Response<HyperOutgoingBody>, HandleError> {
        std::future::poll_fn(|cx| {
            // The guest goes first: one that waits on nothing has set its response and written
            // its body by the time the response side is polled, so both finish in one poll.
            if let Err(e) = self.poll_call(cx) {
                return Poll::Ready(Err(e));
            }
            let answered_error = |detail: String| HandleError::GuestError {
                app: self.app_name(),
                detail,
            };
            match Pin::new(&mut head).poll(cx) {
                Poll::Ready(Ok(Ok(resp))) => Poll::Ready(Ok(resp)),
                Poll::Ready(Ok(Err(code))) => Poll::Ready(Err(answered_error(format!("{code:?}")))),
                Poll::Ready(Err(_)) => Poll::Ready(Err(HandleError::NoResponse {
                    app: self.app_name(),
                })),
                // Returned without setting one. (Asked without tokio's budget: a receiver whose
                // task spent its budget says Pending even with a value in it.)
                Poll::Pending if self.call.is_none() => Poll::Ready(match head.try_recv() {
                    Ok(Ok(resp)) => Ok(resp),
                    Ok(Err(code)) => Err(answered_error(format!("{code:?}"))),
                    Err(_) => Err(HandleError::NoResponse {
                        app: self.app_name(),
                    }),
                }),
                Poll::Pending => match self.poll_deadline(cx) {
                    Ok(()) => Poll::Pending,
                    Err(e) => Poll::Ready(Err(e)),
                },
            }
        })
        .await
    }

    /// The body is whole and the handler returned: the instance may serve again.
    fn finish(&mut self) {
        if let Some((store, proxy)) = self.returned.take() {
            self.home.keep(store, proxy);
        }
    }
}

/// Why a handler call failed, as the client and the counters see it.
pub(super) fn classify(app: &str, e: wasmtime::Error) -> HandleError {
    if e.downcast_ref::<WallDeadline>().is_some() {
        HandleError::Deadline {
            app: app.to_owned(),
            which: "wall-clock",
        }
    } else if e.downcast_ref::<CpuDeadline>().is_some()
        || e.downcast_ref::<Trap>() == Some(&Trap::Interrupt)
    {
        HandleError::Deadline {
            app: app.to_owned(),
            which: "cpu",
        }
    } else {
        HandleError::Trap {
            app: app.to_owned(),
            detail: format!("{e:#}"),
        }
    }
}

/// A guest's response body as the worker streams it: the body's frames, counted against the
/// app's `max_response_bytes`, with its end held back until the handler returned cleanly.
pub(super) struct GuestBody {
    run: GuestRun,
    body: HyperOutgoingBody,
    limit: usize,
    sent: usize,
    ended: bool,
    /// Trailers taken while collecting the start of the body, given out next.
    held: Option<Frame<Bytes>>,
}

impl GuestBody {
    pub(super) fn new(run: GuestRun, body: HyperOutgoingBody, limit: usize) -> Self {
        Self {
            run,
            body,
            limit,
            sent: 0,
            ended: false,
            held: None,
        }
    }

    /// Moves what the body holds now into `into` (`stream::take_ready`): true when that was all
    /// of it. A guest that writes a large body at once streams it rather than having it
    /// gathered here.
    pub(super) fn take_ready(
        &mut self,
        into: &mut Vec<u8>,
        cx: &mut Context<'_>,
    ) -> Result<bool, HandleError> {
        match take_ready(|cx| self.next_frame(cx), into, PREFIX_BYTES, cx)? {
            Taken::Whole => Ok(true),
            Taken::Partial(held) => {
                self.held = held;
                Ok(false)
            }
        }
    }

    fn next_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HandleError>>> {
        if let Some(frame) = self.held.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Err(e) = self.run.poll_call(cx) {
            return Poll::Ready(Some(Err(e)));
        }
        if !self.ended {
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        self.sent = self.sent.saturating_add(data.len());
                        if self.sent > self.limit {
                            return Poll::Ready(Some(Err(HandleError::ResponseTooLarge {
                                app: self.run.app_name(),
                                limit: self.limit,
                            })));
                        }
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Some(Err(HandleError::GuestError {
                        app: self.run.app_name(),
                        detail: format!("response body: {e}"),
                    })));
                }
                Poll::Ready(None) => self.ended = true,
                Poll::Pending => {}
            }
        }
        if self.ended && self.run.call.is_none() {
            self.run.finish();
            return Poll::Ready(None);
        }
        match self.run.poll_deadline(cx) {
            Ok(()) => Poll::Pending,
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    /// The declared length of the body, from the guest's `content-length`.
    pub(super) fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
        headers
            .get(http::header::CONTENT_LENGTH)?
            .to_str()
            .ok()?
            .parse()
            .ok()
    }
}

impl Body for GuestBody {
    type Data = Bytes;
    type Error = crate::http::stream::StreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        this.next_frame(cx).map(|frame| {
            frame.map(|r| {
                r.map_err(|e| {
                    tracing::warn!(error = %e, "app failed mid-response; the client's connection is cut");
                    e.into()
                })
            })
        })
    }
}
