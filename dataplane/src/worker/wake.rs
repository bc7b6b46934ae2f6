//! Replies the worker runs itself. A reply's future lives in its connection's slot and is polled
//! by the event loop: first right after the request is parsed, then each time its waker names the
//! connection again.
//!
//! Why not a tokio task per reply: most replies (a guest that calls no backend) finish in their
//! first poll. Polling them in place answers them in the same pass through the ring that read the
//! request, where a task costs an allocation, a trip through tokio's scheduler and a second pass
//! through the loop before the response can be sent.

use std::{
    future::Future,
    panic::AssertUnwindSafe,
    pin::{Pin, pin},
    sync::{Arc, Mutex},
    task::{Context, Poll, Wake, Waker},
};

use tokio::sync::Notify;
use tracing::error;

use crate::http::Response;

/// Connections whose replies asked to be polled again, as (slot index, generation).
#[derive(Default)]
pub(super) struct WokenConns {
    list: Mutex<Vec<(usize, u32)>>,
    /// Wakes the event loop when it waits in tokio.
    pub(super) notify: Notify,
}

impl WokenConns {
    /// A waker for the replies of connection `idx`; one per connection, cloned into each poll.
    pub(super) fn waker(self: &Arc<Self>, idx: usize, generation: u32) -> Waker {
        Waker::from(Arc::new(ConnWaker {
            conns: self.clone(),
            idx,
            generation,
        }))
    }

    /// Moves the woken connections into `into` (cleared first).
    pub(super) fn take(&self, into: &mut Vec<(usize, u32)>) {
        into.clear();
        std::mem::swap(&mut *self.list(), into);
    }

    fn list(&self) -> std::sync::MutexGuard<'_, Vec<(usize, u32)>> {
        // A panic while holding this lock would be in `Vec::push`; the list is still usable.
        crate::lock(&self.list)
    }
}

/// Wakers must be `Send`: a reply's future may hand its waker to another thread (a DNS lookup on
/// tokio's blocking pool), hence the mutex rather than the thread's own `RefCell`.
struct ConnWaker {
    conns: Arc<WokenConns>,
    idx: usize,
    generation: u32,
}

impl Wake for ConnWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.conns.list().push((self.idx, self.generation));
        self.conns.notify.notify_one();
    }
}

/// Polls a reply once. Outside tokio's cooperative budget: the event loop is one long-lived tokio
/// task that polls many replies per pass, and a spent budget would make every tokio channel in
/// them report not-ready until the loop next yields.
///
/// A reply that panics answers 500 and is never polled again; the worker, which polls it on its
/// own stack, goes on serving (as it did when each reply was a task of its own).
pub(super) fn poll_reply(
    reply: &mut Pin<Box<dyn Future<Output = Response>>>,
    waker: &Waker,
) -> Poll<Response> {
    let poll = std::panic::catch_unwind(AssertUnwindSafe(|| {
        pin!(tokio::task::unconstrained(reply.as_mut())).poll(&mut Context::from_waker(waker))
    }));
    poll.unwrap_or_else(|panic| {
        error!(
            panic = crate::panic_text(&*panic),
            "a reply panicked; answering 500"
        );
        Poll::Ready(Response::text(500, "internal error\n"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_names_its_connection_once_per_wake_and_take_empties_the_list() {
        let conns = Arc::new(WokenConns::default());
        let a = conns.waker(3, 7);
        let b = conns.waker(9, 1);
        a.wake_by_ref();
        b.wake();
        a.wake_by_ref();
        let mut woken = vec![(0, 0)];
        conns.take(&mut woken);
        assert_eq!(woken, [(3, 7), (9, 1), (3, 7)]);
        conns.take(&mut woken);
        assert!(woken.is_empty());
    }

    #[test]
    fn a_reply_that_waits_is_polled_again_after_its_wake() {
        let conns = Arc::new(WokenConns::default());
        let waker = conns.waker(0, 1);
        let (tx, rx) = tokio::sync::oneshot::channel::<u16>();
        let mut reply: Pin<Box<dyn Future<Output = Response>>> =
            Box::pin(async move { Response::text(rx.await.unwrap_or(500), String::new()) });
        assert!(poll_reply(&mut reply, &waker).is_pending());
        let mut woken = Vec::new();
        conns.take(&mut woken);
        assert!(woken.is_empty(), "nothing happened yet");
        tx.send(204).unwrap();
        conns.take(&mut woken);
        assert_eq!(woken, [(0, 1)]);
        match poll_reply(&mut reply, &waker) {
            Poll::Ready(resp) => assert_eq!(resp.status, 204),
            Poll::Pending => panic!("the reply's sender answered"),
        }
    }

    #[test]
    fn a_reply_that_panics_answers_500() {
        let conns = Arc::new(WokenConns::default());
        let mut reply: Pin<Box<dyn Future<Output = Response>>> =
            Box::pin(async { panic!("a bug in a service") });
        match poll_reply(&mut reply, &conns.waker(0, 1)) {
            Poll::Ready(resp) => assert_eq!(resp.status, 500),
            Poll::Pending => panic!("a panicked reply must be answered"),
        }
    }
}
