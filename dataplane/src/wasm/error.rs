//! Why a request did not get the app's own response, and what the client is told.

use crate::http::Response;

/// Why a request did not get the app's own response.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    #[error("no app named {0:?} on this host")]
    UnknownApp(String),
    #[error("too many requests in flight on this worker")]
    Overloaded,
    #[error("app {app} could not be loaded: {error:#}")]
    Load { app: String, error: anyhow::Error },
    #[error("app {app} trapped: {detail}")]
    Trap { app: String, detail: String },
    #[error("app {app} exceeded its {which} deadline")]
    Deadline { app: String, which: &'static str },
    #[error("app {app} answered with an error: {detail}")]
    GuestError { app: String, detail: String },
    #[error("app {app} returned without setting a response")]
    NoResponse { app: String },
    #[error("app {app} wrote a response body over its limit of {limit} bytes")]
    ResponseTooLarge { app: String, limit: usize },
}

impl HandleError {
    pub fn status(&self) -> u16 {
        match self {
            HandleError::UnknownApp(_) => 404,
            HandleError::Overloaded => 503,
            HandleError::Load { .. }
            | HandleError::Trap { .. }
            | HandleError::GuestError { .. }
            | HandleError::NoResponse { .. }
            | HandleError::ResponseTooLarge { .. } => 500,
            HandleError::Deadline { .. } => 504,
        }
    }

    /// What the client is told: a short reason, never the detail (a wasm backtrace, a file
    /// path), which goes to the log under the same request id.
    pub fn public_reason(&self) -> &'static str {
        match self {
            HandleError::UnknownApp(_) => "no such app here",
            HandleError::Overloaded => "too many requests in flight; try again",
            HandleError::Load { .. } => "the app could not be loaded",
            HandleError::Trap { .. } => "the app failed (trapped)",
            HandleError::Deadline {
                which: "wall-clock",
                ..
            } => "the app did not answer within its time limit",
            HandleError::Deadline { .. } => "the app used up its CPU time",
            HandleError::GuestError { .. } | HandleError::NoResponse { .. } => "the app failed",
            HandleError::ResponseTooLarge { .. } => "the app's response was over its size limit",
        }
    }

    /// The client's response, carrying `request_id` (the log's key to the detail).
    pub fn response(&self, request_id: &str) -> Response {
        Response::error(self.status(), self.public_reason(), request_id)
    }
}
