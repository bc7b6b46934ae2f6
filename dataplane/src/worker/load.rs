//! Publishes a worker's load into WORKER_LOAD through a shared mapping of the BPF array
//! (BPF_F_MMAPABLE): an atomic store per change instead of a bpf() syscall per request.

use std::{
    io,
    os::fd::BorrowedFd,
    sync::atomic::{AtomicU64, Ordering},
};

use edgeplane_abi::{MAX_WORKERS, WorkerLoad};

use crate::shared_map::SharedMapping;

/// u64 words of one WORKER_LOAD slot.
const WORDS_PER_SLOT: usize = size_of::<WorkerLoad>() / size_of::<u64>();

pub struct LoadPublisher {
    map: SharedMapping,
    worker: usize,
}

impl LoadPublisher {
    /// Maps WORKER_LOAD (given by its map fd) and publishes into slot `worker`.
    pub fn new(map_fd: BorrowedFd<'_>, worker: u32) -> io::Result<Self> {
        if worker >= MAX_WORKERS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "worker index out of range",
            ));
        }
        Ok(Self {
            map: SharedMapping::new(map_fd, MAX_WORKERS as usize * WORDS_PER_SLOT)?,
            worker: worker as usize,
        })
    }

    fn slot(&self) -> (&AtomicU64, &AtomicU64) {
        let words = self.map.words();
        let at = self.worker * WORDS_PER_SLOT;
        // WorkerLoad is { in_flight, served }, two u64s (repr(C)).
        (&words[at], &words[at + 1])
    }

    /// Stores the values `select_worker` reads; relaxed is enough, the program tolerates staleness.
    pub fn publish(&self, in_flight: u64, served: u64) {
        let (in_flight_word, served_word) = self.slot();
        in_flight_word.store(in_flight, Ordering::Relaxed);
        served_word.store(served, Ordering::Relaxed);
    }
}
