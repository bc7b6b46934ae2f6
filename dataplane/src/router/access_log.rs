//! The access log: one JSON line per request (sampled), written by a thread of its own so a
//! worker never waits on the disk. A worker that finds the writer behind drops the line and
//! counts it (`dropped`) rather than block or buffer without bound.

use std::{
    io::Write as _,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{SyncSender, TrySendError},
    },
    time::{SystemTime, UNIX_EPOCH},
};

/// `[access_log]` in edged's config.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConfig {
    pub enabled: bool,
    /// Where lines go (appended); none: standard output.
    pub path: Option<PathBuf>,
    /// Share of requests logged, 0..=1.
    pub sample: f64,
    /// Log every 5xx, sampled or not.
    pub errors: bool,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            path: None,
            sample: 1.0,
            errors: true,
        }
    }
}

/// Lines waiting for the writer, over all workers.
const QUEUE: usize = 8192;

/// A worker's handle on the access log.
#[derive(Clone)]
pub struct AccessLog {
    tx: SyncSender<String>,
    sample: f64,
    errors: bool,
    pub dropped: Arc<AtomicU64>,
}

/// One request as the access log tells it.
#[derive(serde::Serialize)]
pub struct AccessRecord<'a> {
    pub app: &'a str,
    /// Where it ran: `local`, `remote-dc2`, `local-holdout`, ...
    pub target: &'a str,
    /// Why the region served it, when it did.
    pub reason: Option<&'static str>,
    pub status: u16,
    /// Body bytes, when known at the head (a stream without a declared length: null).
    pub bytes: Option<u64>,
    /// Time to the response head.
    pub duration_us: u64,
    pub worker: u32,
}

impl AccessLog {
    /// Starts the writer; None when the log is off.
    pub fn start(cfg: &AccessLogConfig) -> std::io::Result<Option<Self>> {
        if !cfg.enabled {
            return Ok(None);
        }
        let mut out: Box<dyn std::io::Write + Send> = match &cfg.path {
            Some(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
            None => Box::new(std::io::stdout()),
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut buf = Vec::with_capacity(64 << 10);
                while let Ok(line) = rx.recv() {
                    buf.extend_from_slice(line.as_bytes());
                    // Whatever else is waiting goes in the same write.
                    while let Ok(more) = rx.try_recv() {
                        buf.extend_from_slice(more.as_bytes());
                        if buf.len() > 60 << 10 {
                            break;
                        }
                    }
                    if let Err(e) = out.write_all(&buf).and_then(|()| out.flush()) {
                        tracing::warn!(error = %e, "access log write failed");
                    }
                    buf.clear();
                }
            })?;
        Ok(Some(Self {
            tx,
            sample: cfg.sample.clamp(0.0, 1.0),
            errors: cfg.errors,
            dropped: Arc::default(),
        }))
    }

    /// Whether a request with this status is logged: every error (with `errors`), else a
    /// `sample` share.
    fn keeps(&self, status: u16) -> bool {
        (self.errors && status >= 500)
            || self.sample >= 1.0
            || (self.sample > 0.0 && rand::random::<f64>() < self.sample)
    }

    pub fn record(&self, record: AccessRecord<'_>) {
        if !self.keeps(record.status) {
            return;
        }
        let ts_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let line = match serde_json::to_value(&record) {
            Ok(mut v) => {
                v["ts_ms"] = ts_ms.into();
                format!("{v}\n")
            }
            Err(_) => return,
        };
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logged_request_is_one_json_line_with_what_an_operator_asks() {
        let path =
            std::env::temp_dir().join(format!("edgeplane-access-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let log = AccessLog::start(&AccessLogConfig {
            enabled: true,
            path: Some(path.clone()),
            sample: 0.0,
            errors: true,
        })
        .unwrap()
        .unwrap();
        let record = |status| AccessRecord {
            app: "shop",
            target: "remote-dc2",
            reason: None,
            status,
            bytes: Some(12),
            duration_us: 1500,
            worker: 1,
        };
        log.record(record(200)); // sample 0: not logged
        log.record(record(503)); // an error: logged
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let text = loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if !text.is_empty() || std::time::Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let _ = std::fs::remove_file(&path);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["app"], "shop");
        assert_eq!(v["target"], "remote-dc2");
        assert_eq!(v["status"], 503);
        assert_eq!(v["bytes"], 12);
        assert_eq!(v["duration_us"], 1500);
        assert!(v["ts_ms"].as_u64().unwrap() > 0);
    }
}
