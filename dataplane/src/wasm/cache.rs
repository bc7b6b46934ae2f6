//! The code cache: components compiled once per host and kept on disk as precompiled artifacts
//! keyed by content hash (and checked by wasmtime on load), plus an in-memory LRU of
//! pre-instantiated apps under a byte and count budget.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use tracing::{debug, info};
use wasmtime::{Engine, component::Component};

#[derive(Clone, Copy, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheBudget {
    /// Compiled code kept in memory, in bytes.
    pub max_bytes: usize,
    pub max_apps: usize,
}

impl Default for CacheBudget {
    fn default() -> Self {
        Self {
            max_bytes: 512 << 20,
            max_apps: 1024,
        }
    }
}

/// What one worker's cache holds, as other threads (the admin endpoint, the placement engine)
/// see it. Updated on loads and evictions only, never on a hit.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ResidencySnapshot {
    /// Resident apps, sorted.
    pub apps: Vec<String>,
    pub bytes: usize,
    pub compiled: u64,
    pub loaded_from_disk: u64,
    pub evicted: u64,
}

/// A worker's published [`ResidencySnapshot`].
#[derive(Clone, Debug, Default)]
pub struct Residency(Arc<Mutex<ResidencySnapshot>>);

impl Residency {
    pub fn snapshot(&self) -> ResidencySnapshot {
        crate::lock(&self.0).clone()
    }

    pub fn is_resident(&self, app: &str) -> bool {
        crate::lock(&self.0)
            .apps
            .binary_search_by(|a| a.as_str().cmp(app))
            .is_ok()
    }
}

struct Resident<T> {
    value: T,
    bytes: usize,
    /// `uses` when last used: the order is all LRU needs, and a counter costs no clock read.
    last_used: u64,
}

/// Per worker (its Engine's code); `T` is what the runtime keeps per app (its pre-instance).
pub struct CodeCache<T> {
    engine: Engine,
    dir: PathBuf,
    budget: CacheBudget,
    resident: HashMap<String, Resident<T>>,
    bytes: usize,
    /// Hits and loads so far: the clock `last_used` is read against.
    uses: u64,
    pub compiled: u64,
    pub loaded_from_disk: u64,
    pub evicted: u64,
    published: Residency,
}

impl<T: Clone> CodeCache<T> {
    pub fn new(
        engine: Engine,
        dir: impl Into<PathBuf>,
        budget: CacheBudget,
    ) -> anyhow::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating code cache {}", dir.display()))?;
        Ok(Self {
            engine,
            dir,
            budget,
            resident: HashMap::new(),
            bytes: 0,
            uses: 0,
            compiled: 0,
            loaded_from_disk: 0,
            evicted: 0,
            published: Residency::default(),
        })
    }

    /// A handle other threads can read residency through.
    pub fn residency(&self) -> Residency {
        self.published.clone()
    }

    /// Publishes residency through `to` from now on (a handle made before this cache).
    pub fn publish_to(&mut self, to: Residency) {
        self.published = to;
        self.publish();
    }

    fn publish(&self) {
        *crate::lock(&self.published.0) = ResidencySnapshot {
            apps: self.resident_apps(),
            bytes: self.bytes,
            compiled: self.compiled,
            loaded_from_disk: self.loaded_from_disk,
            evicted: self.evicted,
        };
    }

    pub fn is_resident(&self, app: &str) -> bool {
        self.resident.contains_key(app)
    }

    pub fn resident_apps(&self) -> Vec<String> {
        let mut v: Vec<String> = self.resident.keys().cloned().collect();
        v.sort();
        v
    }

    pub fn resident_bytes(&self) -> usize {
        self.bytes
    }

    /// The app's cached value, or `prepare(component)` on a miss (compiling or loading the
    /// component first), evicting least recently used apps to stay within budget.
    pub fn get_or_load(
        &mut self,
        app: &str,
        component_path: &Path,
        prepare: impl FnOnce(&Component) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        if let Some(r) = self.resident.get_mut(app) {
            self.uses += 1;
            r.last_used = self.uses;
            return Ok(r.value.clone());
        }
        let (component, bytes) = self.load_component(component_path)?;
        let value = prepare(&component)?;
        self.evict_for(bytes);
        self.bytes += bytes;
        self.uses += 1;
        self.resident.insert(
            app.to_owned(),
            Resident {
                value: value.clone(),
                bytes,
                last_used: self.uses,
            },
        );
        self.publish();
        Ok(value)
    }

    pub fn evict(&mut self, app: &str) -> bool {
        match self.resident.remove(app) {
            Some(r) => {
                self.bytes -= r.bytes;
                self.evicted += 1;
                self.publish();
                true
            }
            None => false,
        }
    }

    fn evict_for(&mut self, incoming: usize) {
        while !self.resident.is_empty()
            && (self.resident.len() >= self.budget.max_apps
                || self.bytes + incoming > self.budget.max_bytes)
        {
            let oldest = self
                .resident
                .iter()
                .min_by_key(|(_, r)| r.last_used)
                .map(|(name, _)| name.clone())
                .expect("non-empty");
            debug!(app = %oldest, "code cache eviction");
            self.evict(&oldest);
        }
    }

    /// The precompiled artifact for these bytes, compiled now if this host never did.
    fn load_component(&mut self, path: &Path) -> anyhow::Result<(Component, usize)> {
        let wasm =
            std::fs::read(path).with_context(|| format!("reading component {}", path.display()))?;
        let mut hasher = Sha256::new();
        hasher.update(&wasm);
        // Artifacts are only valid for the engine settings they were compiled with.
        std::hash::Hash::hash(
            &self.engine.precompile_compatibility_hash(),
            &mut HashWriter(&mut hasher),
        );
        // Whether an artifact maps its memory image or copies it is decided when it is compiled,
        // and the compatibility hash leaves this setting out.
        hasher.update(
            self.engine
                .get_memory_guaranteed_dense_image_size()
                .to_le_bytes(),
        );
        let key = hex::encode(hasher.finalize());
        let artifact = self.dir.join(format!("{key}.cwasm"));
        // Read, not mmap: a mapped artifact truncated by anyone else would SIGBUS the worker.
        if let Ok(bytes) = std::fs::read(&artifact) {
            // SAFETY: wasmtime checks the artifact's header, version and engine compatibility;
            // artifacts here are written only by `precompile_component` below.
            match unsafe { Component::deserialize(&self.engine, &bytes) } {
                Ok(c) => {
                    self.loaded_from_disk += 1;
                    return Ok((c, bytes.len()));
                }
                Err(e) => {
                    info!(artifact = %artifact.display(), error = %e, "unusable artifact, recompiling")
                }
            }
        }
        // Said at info: a first start with a cold cache can spend minutes here, and whoever
        // waits for it should see on what.
        info!(component = %path.display(), bytes = wasm.len(), "compiling a component the code cache does not hold");
        let started = std::time::Instant::now();
        let compiled = self
            .engine
            .precompile_component(&wasm)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("compiling {}", path.display()))?;
        info!(component = %path.display(), took_ms = started.elapsed().as_millis() as u64, "compiled");
        self.compiled += 1;
        // Workers of one process compile the same app at the same time: each writes a file of
        // its own, and the last rename wins with an artifact as whole as the first. Failing to
        // keep the artifact costs the next start a compile, not this request.
        let tmp = artifact.with_extension(format!(
            "tmp{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        if let Err(e) =
            std::fs::write(&tmp, &compiled).and_then(|()| std::fs::rename(&tmp, &artifact))
        {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!(artifact = %artifact.display(), error = %e, "could not keep the compiled artifact");
        }
        // SAFETY: produced just above by this engine.
        let component = unsafe { Component::deserialize(&self.engine, &compiled) }
            .map_err(anyhow::Error::from)?;
        Ok((component, compiled.len()))
    }
}

struct HashWriter<'a>(&'a mut Sha256);

impl std::hash::Hasher for HashWriter<'_> {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}
