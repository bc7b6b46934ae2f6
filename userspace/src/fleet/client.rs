//! The control plane's buckets, object store and stream as edged and edgectl use them: created
//! when missing (the first edgectl or edged to reach a new NATS lays the fleet out), each read
//! bounded in size.

use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use async_nats::jetstream::{self, kv, object_store, stream};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt as _;

use super::{
    APPS, COMPONENTS, GUARD, HEARTBEATS, MAX_COMPONENT_BYTES, MAX_VALUE_BYTES, MEASUREMENTS_STREAM,
    MEASUREMENTS_SUBJECT, Measurements, PLACEMENT, TOPOLOGY,
};

/// Where the fleet's NATS is, and the TLS to reach it with (None: plain TCP).
#[derive(Clone, Debug)]
pub struct NatsTarget {
    pub url: String,
    pub tls: Option<edgeplane_dataplane::tls::rustls::ClientConfig>,
}

impl NatsTarget {
    pub fn plain(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            tls: None,
        }
    }

    /// `url` over mutual TLS with the certificate, key and CA in `files`.
    pub fn with_tls(url: &str, files: &crate::config::tls::IdentityFiles) -> anyhow::Result<Self> {
        Ok(Self {
            url: url.to_owned(),
            tls: Some(files.nats_client().context("TLS to the fleet's NATS")?),
        })
    }

    /// Where `[control]` says NATS is and how to reach it, the TLS files read now.
    pub fn of(control: &crate::config::ControlConfig) -> anyhow::Result<Self> {
        match &control.tls {
            Some(files) => Self::with_tls(&control.nats, files),
            None => Ok(Self::plain(&control.nats)),
        }
    }
}

/// A connection to the fleet's NATS.
#[derive(Clone)]
pub struct FleetClient {
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
}

/// Buckets with history: a bad deploy can be looked up and put back.
const HISTORY: i64 = 5;

impl FleetClient {
    /// Connects as `[control]` says, its TLS files read now: a renewal takes effect at the
    /// next connection.
    pub async fn connect_as(
        control: &crate::config::ControlConfig,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        Self::connect(&NatsTarget::of(control)?, timeout).await
    }

    /// Connects within `timeout` (a first connection; afterwards the client reconnects on its
    /// own, forever).
    pub async fn connect(target: &NatsTarget, timeout: Duration) -> anyhow::Result<Self> {
        let url = &target.url;
        let mut options = async_nats::ConnectOptions::new()
            .connection_timeout(timeout)
            .max_reconnects(None);
        if let Some(tls) = &target.tls {
            options = options.require_tls(true).tls_client_config(tls.clone());
        }
        let nats = tokio::time::timeout(timeout, options.connect(url))
            .await
            .map_err(|_| anyhow::anyhow!("NATS at {url} did not answer within {timeout:?}"))?
            .with_context(|| format!("connecting to NATS at {url}"))?;
        let js = jetstream::new(nats.clone());
        Ok(Self { nats, js })
    }

    /// A key-value bucket, created when missing.
    pub async fn kv(&self, bucket: &str) -> anyhow::Result<kv::Store> {
        if let Ok(store) = self.js.get_key_value(bucket).await {
            return Ok(store);
        }
        let max_age = if bucket == HEARTBEATS {
            Duration::from_secs(3600)
        } else {
            Duration::ZERO
        };
        self.js
            .create_key_value(kv::Config {
                bucket: bucket.to_owned(),
                history: HISTORY,
                max_value_size: MAX_VALUE_BYTES as i32,
                max_age,
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating the KV bucket {bucket}"))
    }

    /// A bucket's revision now: its stream's last sequence (deletes count).
    pub async fn revision(&self, bucket: &str) -> anyhow::Result<u64> {
        let mut stream = self
            .js
            .get_stream(format!("KV_{bucket}"))
            .await
            .with_context(|| format!("bucket {bucket}"))?;
        Ok(stream.info().await?.state.last_sequence)
    }

    pub async fn apps(&self) -> anyhow::Result<kv::Store> {
        self.kv(APPS).await
    }

    pub async fn placement(&self) -> anyhow::Result<kv::Store> {
        self.kv(PLACEMENT).await
    }

    pub async fn guard(&self) -> anyhow::Result<kv::Store> {
        self.kv(GUARD).await
    }

    pub async fn topology(&self) -> anyhow::Result<kv::Store> {
        self.kv(TOPOLOGY).await
    }

    pub async fn heartbeats(&self) -> anyhow::Result<kv::Store> {
        self.kv(HEARTBEATS).await
    }

    pub async fn components(&self) -> anyhow::Result<object_store::ObjectStore> {
        if let Ok(store) = self.js.get_object_store(COMPONENTS).await {
            return Ok(store);
        }
        self.js
            .create_object_store(object_store::Config {
                bucket: COMPONENTS.to_owned(),
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating the object store {COMPONENTS}"))
    }

    /// The measurements stream: each datacenter's last few, kept a minute.
    pub async fn measurements(&self) -> anyhow::Result<stream::Stream> {
        self.js
            .get_or_create_stream(stream::Config {
                name: MEASUREMENTS_STREAM.to_owned(),
                subjects: vec![format!("{MEASUREMENTS_SUBJECT}.*")],
                max_age: Duration::from_secs(60),
                max_messages_per_subject: 5,
                max_message_size: MAX_VALUE_BYTES as i32,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .context("the measurements stream")
    }

    /// Uploads `wasm` under its sha256 unless it is there already; the digest.
    pub async fn upload_component(&self, wasm: &[u8]) -> anyhow::Result<String> {
        ensure!(
            wasm.len() <= MAX_COMPONENT_BYTES,
            "a component of {} bytes; at most {MAX_COMPONENT_BYTES}",
            wasm.len()
        );
        let digest = hex::encode(Sha256::digest(wasm));
        let store = self.components().await?;
        if store.info(&digest).await.is_ok() {
            return Ok(digest);
        }
        let mut reader = wasm;
        store
            .put(digest.as_str(), &mut reader)
            .await
            .with_context(|| format!("uploading component {digest}"))?;
        Ok(digest)
    }

    /// The component stored as `digest`, checked against it.
    pub async fn fetch_component(&self, digest: &str) -> anyhow::Result<Vec<u8>> {
        let store = self.components().await?;
        let mut object = store
            .get(digest)
            .await
            .with_context(|| format!("fetching component {digest}"))?;
        ensure!(
            object.info.size <= MAX_COMPONENT_BYTES,
            "component {digest}: {} bytes; at most {MAX_COMPONENT_BYTES}",
            object.info.size
        );
        let mut wasm = Vec::with_capacity(object.info.size);
        (&mut object)
            .take(MAX_COMPONENT_BYTES as u64 + 1)
            .read_to_end(&mut wasm)
            .await
            .with_context(|| format!("reading component {digest}"))?;
        let got = hex::encode(Sha256::digest(&wasm));
        if got != digest {
            bail!("component {digest}: the object store's bytes hash to {got}");
        }
        Ok(wasm)
    }

    /// Publishes this datacenter's measurements.
    pub async fn publish_measurements(&self, m: &Measurements) -> anyhow::Result<()> {
        self.measurements().await?;
        self.js
            .publish(
                format!("{MEASUREMENTS_SUBJECT}.{}", m.datacenter),
                serde_json::to_vec(m)?.into(),
            )
            .await?
            .await
            .context("publishing measurements")?;
        Ok(())
    }

    /// `datacenter`'s latest measurements, if it published within the stream's minute.
    pub async fn latest_measurements(
        &self,
        datacenter: &str,
    ) -> anyhow::Result<Option<Measurements>> {
        let stream = self.measurements().await?;
        match stream
            .direct_get_last_for_subject(format!("{MEASUREMENTS_SUBJECT}.{datacenter}"))
            .await
        {
            Ok(msg) => {
                ensure!(
                    msg.payload.len() <= MAX_VALUE_BYTES,
                    "oversized measurements"
                );
                Ok(Some(serde_json::from_slice(&msg.payload)?))
            }
            Err(e) if e.kind() == async_nats::jetstream::stream::DirectGetErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(e).context("reading measurements"),
        }
    }
}
