//! The openraft [`AsyncRuntime`] on the `tokio` facade: the real tokio in production and
//! madsim under `--cfg madsim`, so the consensus code is the same in both.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use openraft::async_runtime::{
    Mpsc, MpscReceiver, MpscSender, MpscWeakSender, Oneshot, OneshotSender, SendError,
    TryRecvError, Watch, WatchReceiver, WatchSender, mutex, watch,
};
use openraft::{AsyncRuntime, OptionalSend, OptionalSync};
use tokio::sync::{mpsc, oneshot, watch as tokio_watch};

use crate::clock::Instant;

#[derive(Debug, Default)]
pub struct HalyardRuntime;

/// Randomness for election timeouts and the like: the thread's generator in production; in
/// the simulation the simulator's, since a thread-local generator would carry its state from
/// one simulated run into the next and break replay.
#[derive(Default)]
pub struct Entropy {
    #[cfg(not(madsim))]
    inner: Option<rand010::rngs::ThreadRng>,
}

impl Entropy {
    #[cfg(not(madsim))]
    fn next(&mut self) -> u64 {
        use rand010::Rng;
        self.inner.get_or_insert_with(rand010::rng).next_u64()
    }

    #[cfg(madsim)]
    fn next(&mut self) -> u64 {
        random_u64()
    }
}

impl rand010::TryRng for Entropy {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.next() as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(self.next())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(())
    }
}

/// A random `u64` from the process's generator, or the simulator's under madsim.
pub fn random_u64() -> u64 {
    #[cfg(madsim)]
    {
        tokio::madsim::rand::random::<u64>()
    }
    #[cfg(not(madsim))]
    {
        rand::random::<u64>()
    }
}

/// A deadline on a future; named so that it can be an associated type.
pub struct Timeout<F> {
    future: Pin<Box<F>>,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

#[derive(Debug)]
pub struct Elapsed;

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(value) = self.future.as_mut().poll(cx) {
            return Poll::Ready(Ok(value));
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

pub(crate) fn sleep_until(deadline: Instant) -> tokio::time::Sleep {
    #[cfg(madsim)]
    {
        tokio::time::sleep_until(deadline.to_simulator())
    }
    #[cfg(not(madsim))]
    {
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline))
    }
}

impl AsyncRuntime for HalyardRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = Instant;
    type TimeoutError = Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = Timeout<T>;
    type ThreadLocalRng = Entropy;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        tokio::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        Self::timeout_at(Instant::now() + duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        Timeout {
            future: Box::pin(future),
            sleep: Box::pin(sleep_until(deadline)),
        }
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        Entropy::default()
    }

    type Mpsc = RtMpsc;
    type Watch = RtWatch;
    type Oneshot = RtOneshot;
    type Mutex<T: OptionalSend + 'static> = RtMutex<T>;

    fn new(_threads: usize) -> Self {
        HalyardRuntime
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        // Only openraft's own test helpers enter here; Halyard always runs inside a runtime.
        futures_executor::block_on(future)
    }

    fn spawn_blocking<F, T>(f: F) -> impl Future<Output = Result<T, io::Error>> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        #[cfg(not(madsim))]
        {
            let handle = tokio::task::spawn_blocking(f);
            async move { handle.await.map_err(|e| io::Error::other(e.to_string())) }
        }
        // The simulation has no threads to block; the work runs in place, deterministically.
        #[cfg(madsim)]
        {
            let result = f();
            async move { Ok(result) }
        }
    }
}

pub struct RtMpsc;
pub struct RtSender<T>(mpsc::Sender<T>);
pub struct RtReceiver<T>(mpsc::Receiver<T>);
pub struct RtWeakSender<T>(mpsc::WeakSender<T>);

impl<T> Clone for RtSender<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Clone for RtWeakSender<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl Mpsc for RtMpsc {
    type Sender<T: OptionalSend> = RtSender<T>;
    type Receiver<T: OptionalSend> = RtReceiver<T>;
    type WeakSender<T: OptionalSend> = RtWeakSender<T>;

    fn channel<T: OptionalSend>(buffer: usize) -> (Self::Sender<T>, Self::Receiver<T>) {
        let (tx, rx) = mpsc::channel(buffer);
        (RtSender(tx), RtReceiver(rx))
    }
}

impl<T: OptionalSend> MpscSender<RtMpsc, T> for RtSender<T> {
    async fn send(&self, msg: T) -> Result<(), SendError<T>> {
        self.0.send(msg).await.map_err(|e| SendError(e.0))
    }

    fn downgrade(&self) -> RtWeakSender<T> {
        RtWeakSender(self.0.downgrade())
    }
}

impl<T: OptionalSend> MpscReceiver<T> for RtReceiver<T> {
    fn recv(&mut self) -> impl Future<Output = Option<T>> + OptionalSend {
        self.0.recv()
    }

    fn try_recv(&mut self) -> Result<T, TryRecvError> {
        self.0.try_recv().map_err(|e| match e {
            mpsc::error::TryRecvError::Empty => TryRecvError::Empty,
            mpsc::error::TryRecvError::Disconnected => TryRecvError::Disconnected,
        })
    }
}

impl<T: OptionalSend> MpscWeakSender<RtMpsc, T> for RtWeakSender<T> {
    fn upgrade(&self) -> Option<RtSender<T>> {
        self.0.upgrade().map(RtSender)
    }
}

pub struct RtOneshot;
pub struct RtOneshotSender<T>(oneshot::Sender<T>);

impl Oneshot for RtOneshot {
    type Sender<T: OptionalSend> = RtOneshotSender<T>;
    type Receiver<T: OptionalSend> = oneshot::Receiver<T>;
    type ReceiverError = oneshot::error::RecvError;

    fn channel<T: OptionalSend>() -> (Self::Sender<T>, Self::Receiver<T>) {
        let (tx, rx) = oneshot::channel();
        (RtOneshotSender(tx), rx)
    }
}

impl<T: OptionalSend> OneshotSender<T> for RtOneshotSender<T> {
    fn send(self, t: T) -> Result<(), T> {
        self.0.send(t)
    }
}

pub struct RtWatch;
pub struct RtWatchSender<T>(tokio_watch::Sender<T>);
pub struct RtWatchReceiver<T>(tokio_watch::Receiver<T>);

impl<T> Clone for RtWatchSender<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Clone for RtWatchReceiver<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl Watch for RtWatch {
    type Sender<T: OptionalSend + OptionalSync> = RtWatchSender<T>;
    type Receiver<T: OptionalSend + OptionalSync> = RtWatchReceiver<T>;
    type Ref<'a, T: OptionalSend + 'a> = tokio_watch::Ref<'a, T>;

    fn channel<T: OptionalSend + OptionalSync>(init: T) -> (Self::Sender<T>, Self::Receiver<T>) {
        let (tx, rx) = tokio_watch::channel(init);
        (RtWatchSender(tx), RtWatchReceiver(rx))
    }
}

impl<T: OptionalSend + OptionalSync> WatchSender<RtWatch, T> for RtWatchSender<T> {
    fn send(&self, value: T) -> Result<(), watch::SendError<T>> {
        self.0.send(value).map_err(|e| watch::SendError(e.0))
    }

    fn send_if_modified<F>(&self, modify: F) -> bool
    where
        F: FnOnce(&mut T) -> bool,
    {
        self.0.send_if_modified(modify)
    }

    fn borrow_watched(&self) -> tokio_watch::Ref<'_, T> {
        self.0.borrow()
    }

    fn subscribe(&self) -> RtWatchReceiver<T> {
        RtWatchReceiver(self.0.subscribe())
    }
}

impl<T: OptionalSend + OptionalSync> WatchReceiver<RtWatch, T> for RtWatchReceiver<T> {
    async fn changed(&mut self) -> Result<(), watch::RecvError> {
        self.0.changed().await.map_err(|_| watch::RecvError(()))
    }

    fn borrow_watched(&self) -> tokio_watch::Ref<'_, T> {
        self.0.borrow()
    }

    fn borrow_and_update(&mut self) -> tokio_watch::Ref<'_, T> {
        self.0.borrow_and_update()
    }
}

pub struct RtMutex<T>(tokio::sync::Mutex<T>);

impl<T: OptionalSend + 'static> mutex::Mutex<T> for RtMutex<T> {
    type Guard<'a> = tokio::sync::MutexGuard<'a, T>;

    fn new(value: T) -> Self {
        Self(tokio::sync::Mutex::new(value))
    }

    fn lock(&self) -> impl Future<Output = Self::Guard<'_>> + OptionalSend {
        self.0.lock()
    }
}
