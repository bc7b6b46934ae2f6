//! A ring-mapped provided-buffer pool (IORING_REGISTER_PBUF_RING): multishot recv picks a buffer
//! per completion, so idle connections hold no receive memory.

use std::{
    alloc::{Layout, alloc_zeroed, dealloc},
    io,
    sync::atomic::{AtomicU16, Ordering},
};

use io_uring::{IoUring, types::BufRingEntry};

pub struct BufRing {
    group: u16,
    entries: u16,
    buf_size: usize,
    ring: *mut BufRingEntry,
    ring_layout: Layout,
    bufs: *mut u8,
    bufs_layout: Layout,
    tail: u16,
}

impl BufRing {
    /// Registers `entries` (a power of two) buffers of `buf_size` bytes as group `group`.
    pub fn register(
        uring: &IoUring,
        group: u16,
        entries: u16,
        buf_size: usize,
    ) -> io::Result<Self> {
        assert!(
            entries.is_power_of_two(),
            "buf_ring size must be a power of two"
        );
        let ring_layout =
            Layout::from_size_align(entries as usize * size_of::<BufRingEntry>(), 4096)
                .map_err(io::Error::other)?;
        let bufs_layout =
            Layout::from_size_align(entries as usize * buf_size, 64).map_err(io::Error::other)?;
        // SAFETY: non-zero sizes; freed in Drop with the same layouts.
        let (ring, bufs) = unsafe {
            (
                alloc_zeroed(ring_layout) as *mut BufRingEntry,
                alloc_zeroed(bufs_layout),
            )
        };
        if ring.is_null() || bufs.is_null() {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "buf_ring allocation",
            ));
        }
        let mut me = Self {
            group,
            entries,
            buf_size,
            ring,
            ring_layout,
            bufs,
            bufs_layout,
            tail: 0,
        };
        // SAFETY: the ring memory is page aligned and lives until Drop, which unregisters first.
        unsafe {
            uring
                .submitter()
                .register_buf_ring_with_flags(ring as u64, entries, group, 0)?
        };
        for bid in 0..entries {
            me.push(bid);
        }
        me.publish();
        Ok(me)
    }

    pub fn group(&self) -> u16 {
        self.group
    }

    /// The bytes the kernel wrote into buffer `bid`.
    pub fn data(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < self.entries && len <= self.buf_size);
        // SAFETY: in bounds of the buffer area; the kernel is done with this buffer until we
        // give it back with `recycle`.
        unsafe { std::slice::from_raw_parts(self.bufs.add(bid as usize * self.buf_size), len) }
    }

    /// Gives buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        self.push(bid);
        self.publish();
    }

    fn push(&mut self, bid: u16) {
        let idx = (self.tail & (self.entries - 1)) as usize;
        // SAFETY: idx < entries.
        let entry = unsafe { &mut *self.ring.add(idx) };
        // SAFETY: bid < entries, so the address is inside the buffer area.
        entry.set_addr(unsafe { self.bufs.add(bid as usize * self.buf_size) } as u64);
        entry.set_len(self.buf_size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail lives in the first entry's reserved field; the kernel reads it with
        // acquire semantics, so entries written above are visible before the new tail.
        unsafe {
            let tail = BufRingEntry::tail(self.ring) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// Must be called before the ring is dropped.
    pub fn unregister(&self, uring: &IoUring) {
        let _ = uring.submitter().unregister_buf_ring(self.group);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `register` with these layouts.
        unsafe {
            dealloc(self.ring as *mut u8, self.ring_layout);
            dealloc(self.bufs, self.bufs_layout);
        }
    }
}
