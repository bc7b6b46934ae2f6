//! The worker's io_uring ring: how it is set up, entries queued past a full submission queue,
//! completions collected in batches, and the user_data that ties a completion to its connection.

use std::{collections::VecDeque, os::fd::RawFd, time::Duration};

use anyhow::Context as _;
use io_uring::{
    IoUring, cqueue, squeue,
    types::{SubmitArgs, Timespec},
};

/// What a completion finishes, in user_data's top byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Op {
    Accept = 1,
    Recv = 2,
    Send = 3,
    /// Cancels a connection's multishot recv (its own completion carries nothing).
    CancelRecv = 4,
}

/// user_data: the operation, 24 bits of the connection slot's generation (so a completion for a
/// closed connection cannot reach the slot's next tenant), and the slot index.
pub(super) fn user_data(op: Op, idx: usize, generation: u32) -> u64 {
    (op as u64) << 56 | (generation as u64 & 0xff_ffff) << 32 | idx as u64
}

/// (operation, slot index, generation); None for a user_data this worker never queued.
pub(super) fn split_user_data(ud: u64) -> Option<(Op, usize, u32)> {
    let op = [Op::Accept, Op::Recv, Op::Send, Op::CancelRecv]
        .into_iter()
        .find(|op| *op as u64 == ud >> 56)?;
    Some((
        op,
        (ud & 0xffff_ffff) as usize,
        ((ud >> 32) & 0xff_ffff) as u32,
    ))
}

pub(super) struct Ring {
    uring: IoUring,
    /// Entries that did not fit the submission queue yet.
    backlog: VecDeque<squeue::Entry>,
    /// The last batch of completions (kept to reuse its allocation).
    batch: Vec<cqueue::Entry>,
}

impl Ring {
    pub(super) fn new(entries: u32) -> anyhow::Result<Self> {
        let uring = IoUring::builder()
            // One thread submits: the kernel skips the locking that sharing would need.
            .setup_single_issuer()
            // Completion work runs when this thread enters the ring, in one batch, instead of
            // interrupting it per packet; TASKRUN_FLAG tells `submit` when such work waits.
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .setup_clamp()
            .build(entries)
            .context("creating io_uring")?;
        Ok(Self {
            uring,
            backlog: VecDeque::new(),
            batch: Vec::new(),
        })
    }

    pub(super) fn uring(&self) -> &IoUring {
        &self.uring
    }

    /// Wakes tokio's reactor on this fd when a completion arrives.
    pub(super) fn register_eventfd(&self, fd: RawFd) -> anyhow::Result<()> {
        self.uring
            .submitter()
            .register_eventfd(fd)
            .context("registering the eventfd")
    }

    /// Queues `entry`; submitted by the next `wait` or `submit_pending`.
    ///
    /// The caller keeps every buffer the entry points at alive and unmoved until its
    /// completion arrives (the worker's buffers live in `Conn::sending` or the buffer ring).
    pub(super) fn push(&mut self, entry: squeue::Entry) {
        // SAFETY: the caller's contract above.
        if !self.backlog.is_empty() || unsafe { self.uring.submission().push(&entry) }.is_err() {
            self.backlog.push_back(entry);
        }
    }

    fn move_backlog(&mut self) {
        while let Some(e) = self.backlog.front() {
            // SAFETY: see `push`.
            if unsafe { self.uring.submission().push(e) }.is_err() {
                break;
            }
            self.backlog.pop_front();
        }
    }

    /// The completions ready now, entering the kernel only when it holds completions back
    /// (DEFER_TASKRUN keeps them there until an enter with GETEVENTS, which `submit` adds when
    /// the TASKRUN flag says some wait) or the backlog waits for room. Hand the batch back with
    /// `recycle`.
    pub(super) fn completions(&mut self) -> anyhow::Result<Vec<cqueue::Entry>> {
        self.move_backlog();
        if self.uring.submission().taskrun() || !self.backlog.is_empty() {
            self.submit_pending()?;
            self.move_backlog();
        }
        let mut batch = std::mem::take(&mut self.batch);
        batch.extend(self.uring.completion());
        Ok(batch)
    }

    pub(super) fn recycle(&mut self, mut batch: Vec<cqueue::Entry>) {
        batch.clear();
        self.batch = batch;
    }

    /// Whether entries wait in the submission queue.
    pub(super) fn has_queued(&mut self) -> bool {
        !self.uring.submission().is_empty()
    }

    /// Hands the queued entries to the kernel without waiting.
    pub(super) fn submit_pending(&mut self) -> anyhow::Result<()> {
        match self.uring.submit() {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
            Err(e) => Err(e).context("io_uring submit"),
        }
    }

    /// Submits what is queued and sleeps until a completion arrives or `timeout` passes.
    pub(super) fn wait(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let ts = Timespec::from(timeout);
        let args = SubmitArgs::new().timespec(&ts);
        match self.uring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e).context("io_uring wait"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips_and_rejects_foreign_values() {
        for (op, idx, generation) in [
            (Op::Accept, 0, 0),
            (Op::Recv, 7, 1),
            (Op::Send, u32::MAX as usize, 0xff_ffff),
            (Op::CancelRecv, 12, 9),
        ] {
            assert_eq!(
                split_user_data(user_data(op, idx, generation)),
                Some((op, idx, generation))
            );
        }
        // The generation wraps at 24 bits rather than spilling into the operation.
        assert_eq!(
            split_user_data(user_data(Op::Recv, 3, 0x0100_0005)),
            Some((Op::Recv, 3, 5))
        );
        assert_eq!(split_user_data(0), None);
        assert_eq!(split_user_data(9 << 56), None);
    }
}
