//! A BPF array map created with BPF_F_MMAPABLE, mapped into this process as u64 words: userspace
//! writes what the kernel programs read with plain memory stores, no bpf() syscall per update
//! (WORKER_LOAD from the workers, BLOCK_V4 from the control side).

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
    sync::atomic::AtomicU64,
};

pub struct SharedMapping {
    base: *mut AtomicU64,
    words: usize,
    len: usize,
}

impl SharedMapping {
    /// Maps the first `words` u64s of the array map `fd` (rounded up to whole pages).
    pub fn new(fd: BorrowedFd<'_>, words: usize) -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = (words * size_of::<u64>()).div_ceil(page) * page;
        // SAFETY: mapping a BPF array map fd, shared, at offset 0 as the kernel documents.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            base: ptr.cast(),
            words,
            len,
        })
    }

    /// The map's values as words. Stores through them are atomic: the kernel side reads each
    /// u64 with one plain load, so nothing it reads is torn.
    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: `words` u64s lie inside the mapping, page-aligned (so 8-byte aligned), and
        // live as long as self.
        unsafe { std::slice::from_raw_parts(self.base, self.words) }
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}
