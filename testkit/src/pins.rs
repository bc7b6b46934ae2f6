//! A private pin directory per test.

use std::path::{Path, PathBuf};

use edgeplane::{Dataplane, LoadOptions};

/// A private pin directory per test, removed on drop, so tests run in parallel without sharing maps.
pub struct TestPins {
    dir: PathBuf,
}

impl TestPins {
    pub fn new(test: &str) -> Self {
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/edgeplane-test-{test}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Self { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn load(&self) -> anyhow::Result<Dataplane> {
        Dataplane::load(&LoadOptions {
            pin_dir: self.dir.clone(),
        })
    }
}

impl Drop for TestPins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
