//! Publishes a worker's load into WORKER_LOAD through a shared mapping of the BPF array
//! (BPF_F_MMAPABLE): an atomic store per change instead of a bpf() syscall per request.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    sync::atomic::{AtomicU64, Ordering},
};

use edgeplane_abi::{MAX_WORKERS, WorkerLoad};

pub struct LoadPublisher {
    base: *mut WorkerLoad,
    len: usize,
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
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let len = (MAX_WORKERS as usize * size_of::<WorkerLoad>()).div_ceil(page) * page;
        // SAFETY: mapping a BPF array map fd, shared, at offset 0 as the kernel documents.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map_fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            base: ptr.cast(),
            len,
            worker: worker as usize,
        })
    }

    fn slot(&self) -> &WorkerLoad {
        // SAFETY: worker < MAX_WORKERS, inside the mapping, which lives as long as self.
        unsafe { &*self.base.add(self.worker) }
    }

    /// Stores the values `select_worker` reads; relaxed is enough, the program tolerates staleness.
    pub fn publish(&self, in_flight: u64, served: u64) {
        let slot = self.slot();
        // SAFETY: u64 fields, 8-byte aligned in the page-aligned mapping; the kernel side reads
        // them with plain loads, so atomic stores from here cannot tear.
        unsafe {
            (*(std::ptr::addr_of!(slot.in_flight) as *const AtomicU64))
                .store(in_flight, Ordering::Relaxed);
            (*(std::ptr::addr_of!(slot.served) as *const AtomicU64))
                .store(served, Ordering::Relaxed);
        }
    }
}

impl Drop for LoadPublisher {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}
