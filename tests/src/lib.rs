//! Shared pieces of edgeplane's end-to-end tests.

pub mod reference;

use std::path::{Path, PathBuf};

use edgeplane::{Dataplane, LoadOptions};

/// True when the test may run; otherwise prints why it is skipped, loudly.
pub fn require_root(test: &str) -> bool {
    if edgeplane_bench::netns::is_root() {
        return true;
    }
    eprintln!(
        "\n!!!!! SKIPPED {test}: needs root (network namespaces, XDP, BPF maps). CI runs as root. !!!!!\n"
    );
    false
}

/// A private pin directory per test, removed on drop, so tests run in parallel without sharing maps.
pub struct TestPins {
    dir: PathBuf,
}

impl TestPins {
    pub fn new(test: &str) -> Self {
        let dir = PathBuf::from(format!("/sys/fs/bpf/edgeplane-test-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn load(&self) -> anyhow::Result<Dataplane> {
        Dataplane::load(&LoadOptions { pin_dir: self.dir.clone() })
    }
}

impl Drop for TestPins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
