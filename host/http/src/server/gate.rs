//! A future polled only when its own waker has fired since its last poll.
//!
//! `select!` polls every branch each time the task wakes. A connection's timer and drain
//! futures sit beside its request loop, which wakes the task several times per request;
//! polling them each time cost about 700 instructions per request (3 % of the plain
//! proxy path). By the `Future` contract a future needs polling again only after it
//! asked to be woken, so these two are polled only then.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

pub(super) struct Gated<F> {
    inner: F,
    signal: Arc<Signal>,
    /// Handed to `inner`: wakes the task through `signal`.
    waker: Waker,
}

struct Signal {
    /// Set by `inner`'s waker (and at the start): `inner` is due for a poll.
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F> Gated<F> {
    pub(super) fn new(inner: F) -> Self {
        let signal = Arc::new(Signal {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(signal.clone());
        Self {
            inner,
            signal,
            waker,
        }
    }
}

impl<F: Future + Unpin> Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        this.signal.task.register(cx.waker());
        if !this.signal.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_gated_future_still_completes_when_woken() {
        let sleep = Box::pin(tokio::time::sleep(Duration::from_millis(20)));
        let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
        let mut gated_rx = Gated::new(rx);
        let mut gated_sleep = Gated::new(sleep);
        // The sleep ends first, though the channel's branch is polled on every wake.
        tokio::select! {
            _ = &mut gated_sleep => {}
            _ = &mut gated_rx => panic!("nothing was sent"),
        }
        tx.send(7).unwrap();
        assert_eq!(gated_rx.await.unwrap(), 7);
    }

    #[tokio::test]
    async fn it_is_polled_only_after_its_waker_fired() {
        struct Counting(u32);
        impl Future for Counting {
            type Output = ();
            fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
                self.0 += 1;
                Poll::Pending
            }
        }
        let mut gated = Gated::new(Counting(0));
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        for _ in 0..5 {
            assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        }
        assert_eq!(gated.inner.0, 1, "polled once, never woken since");
        gated.waker.wake_by_ref();
        assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        assert_eq!(gated.inner.0, 2);
    }
}
