//! The gRPC port's accept loop: a cap on open connections and a deadline on the HTTP/2
//! handshake (issue 11: 20,000 idle TCP connections that never sent the preface took every
//! file descriptor and the health check timed out).
//!
//! - At most `limits.max_connections` accepted connections are open at once (handshaking or
//!   serving). When a new one arrives at the cap, the connection that has been handshaking
//!   longest is closed to make room (a real client sends its preface within a millisecond,
//!   an idle one never does), so a health probe gets in even while idle connections fill
//!   the cap; only when every slot serves an established connection is the new one closed
//!   at once. An idle flood costs at most the cap in file descriptors, never the process's
//!   whole allowance.
//! - A connection has `limits.handshake_timeout_ms` to send the 24-byte HTTP/2 client
//!   preface; until it has, it never reaches the HTTP/2 server, and past the timeout (or on
//!   anything else than the preface: this port speaks only HTTP/2) it is closed and its
//!   slot freed. The preface read here is replayed to the HTTP/2 server.
//! - At start-up the soft open-file limit is raised to the hard one, and the cap is kept
//!   below it, with room for the store pool, the other listeners and the runtime.

use std::{
    collections::VecDeque,
    io,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::{Stream, task::AtomicWaker};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::telemetry::metrics::{CONNECTIONS_OPEN, LIMITED_TOTAL, limits};

/// What an HTTP/2 client sends first (RFC 9113 section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// File descriptors kept free of connections: the store pool, the admin and console
/// listeners and their connections (at most `limits.side_max_connections` each, 64 by
/// default), the revocation listener, the runtime, logs.
const RESERVED_FDS: u64 = 256;

/// Bounds of the accept loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once, at most.
    pub max_connections: usize,
    /// Time a new connection has to send the HTTP/2 preface.
    pub handshake_timeout: Duration,
}

/// Raises the soft open-file limit to the hard one (Linux starts many processes at 1,024
/// while allowing far more) and returns the soft limit in force; `None` where it cannot be
/// read.
pub fn raise_open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(limit.rlim_cur)
}

/// The connection cap in force: the configured one, or less when the open-file limit
/// (`soft_fd_limit`) could not hold it besides [`RESERVED_FDS`].
pub fn effective_max_connections(configured: usize, soft_fd_limit: Option<u64>) -> usize {
    let Some(soft) = soft_fd_limit else {
        return configured;
    };
    let room = usize::try_from(soft.saturating_sub(RESERVED_FDS).max(1)).unwrap_or(usize::MAX);
    if room < configured {
        tracing::warn!(
            configured,
            open_file_limit = soft,
            capped_at = room,
            "limits.max_connections is above what the open-file limit holds; capped"
        );
    }
    configured.min(room)
}

/// The connections of `listener` that sent the HTTP/2 preface, within `limits`, until
/// `stopped` (or until the stream is dropped).
pub fn incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
    stopped: watch::Receiver<bool>,
) -> impl Stream<Item = io::Result<Connection>> {
    let (ready, incoming) = mpsc::channel(64);
    tokio::spawn(accept(listener, limits, ready, stopped));
    ReceiverStream::new(incoming)
}

async fn accept(
    listener: TcpListener,
    limits: ConnectionLimits,
    ready: mpsc::Sender<io::Result<Connection>>,
    mut stopped: watch::Receiver<bool>,
) {
    let max = limits.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(max));
    // Connections still handshaking, oldest first: the ones to close when the cap is full.
    let mut handshaking: VecDeque<oneshot::Sender<()>> = VecDeque::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was taken:
                    // a pause instead of a busy loop; the connections open keep working.
                    tracing::warn!(error = %e, "accepting a gRPC connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = ready.closed() => return,
            // The watch's guard is not Send: dropped inside.
            () = async { drop(stopped.wait_for(|s| *s).await) } => return,
        };
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => match evict_oldest_handshake(&mut handshaking, &slots).await {
                Some(slot) => slot,
                None => {
                    // Every slot serves a connection that completed its handshake.
                    metrics::counter!(LIMITED_TOTAL, "limit" => limits::CONNECTIONS).increment(1);
                    drop(stream);
                    continue;
                }
            },
        };
        let (evict, evicted) = oneshot::channel();
        if handshaking.len() >= 2 * max {
            // Finished handshakes leave closed senders behind: bounded by pruning.
            handshaking.retain(|s| !s.is_closed());
        }
        handshaking.push_back(evict);
        tokio::spawn(handshake(
            stream,
            Open::new(slot),
            limits.handshake_timeout,
            evicted,
            ready.clone(),
        ));
    }
}

/// Closes the connection that has been handshaking longest, and takes its slot: a new
/// client (a health probe, a gateway reconnecting) gets in even while idle connections fill
/// the cap. `None` when no connection is handshaking.
async fn evict_oldest_handshake(
    handshaking: &mut VecDeque<oneshot::Sender<()>>,
    slots: &Arc<Semaphore>,
) -> Option<OwnedSemaphorePermit> {
    while let Some(oldest) = handshaking.pop_front() {
        if oldest.send(()).is_err() {
            // Already handed to the HTTP/2 server, or closed.
            continue;
        }
        metrics::counter!(LIMITED_TOTAL, "limit" => limits::HANDSHAKE_EVICTED).increment(1);
        // The evicted task drops its slot as soon as it runs; bounded, in case it cannot.
        if let Ok(Ok(slot)) =
            tokio::time::timeout(Duration::from_secs(1), slots.clone().acquire_owned()).await
        {
            return Some(slot);
        }
    }
    None
}

/// Waits for the HTTP/2 preface on `stream` (within `timeout`, unless evicted first) and
/// hands the connection to the HTTP/2 server; otherwise closes it.
async fn handshake(
    mut stream: TcpStream,
    open: Open,
    timeout: Duration,
    evicted: oneshot::Receiver<()>,
    ready: mpsc::Sender<io::Result<Connection>>,
) {
    // Without it, larger answers (Check's) wait ~40 ms on Nagle and delayed ACKs.
    let _ = stream.set_nodelay(true);
    let mut preface = [0u8; PREFACE.len()];
    let outcome = tokio::select! {
        read = tokio::time::timeout(timeout, stream.read_exact(&mut preface)) => read,
        // Closed for a newer connection (counted by the accept loop).
        Ok(()) = evicted => return,
    };
    match outcome {
        Ok(Ok(_)) if &preface == PREFACE => {
            let _ = ready
                .send(Ok(Connection {
                    stream,
                    replayed: 0,
                    _open: open,
                    readable: Arc::default(),
                    round: None,
                }))
                .await;
        }
        // Not HTTP/2, or gone before it said anything: closed.
        Ok(_) => {}
        Err(_) => {
            metrics::counter!(LIMITED_TOTAL, "limit" => limits::HANDSHAKE_TIMEOUT).increment(1);
        }
    }
}

/// One open connection's slot, counted in the gauge until it closes.
struct Open(#[expect(dead_code, reason = "held for its drop")] OwnedSemaphorePermit);

impl Open {
    fn new(slot: OwnedSemaphorePermit) -> Self {
        metrics::gauge!(CONNECTIONS_OPEN).increment(1.0);
        Self(slot)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        metrics::gauge!(CONNECTIONS_OPEN).decrement(1.0);
    }
}

/// A connection that sent the HTTP/2 preface; reads replay the preface first. Holds its
/// slot under the cap until the HTTP/2 server drops it.
pub struct Connection {
    stream: TcpStream,
    replayed: usize,
    _open: Open,
    /// When the socket last turned readable while the connection's task waited for it.
    readable: Arc<Readable>,
    /// Since when the bytes of the current round of reads have waited: set by a round's
    /// first read, kept while the socket may hold more of what was there (a read that
    /// filled the buffer, or one the runtime's budget cut short), ended by a read that
    /// finds the socket drained.
    round: Option<Instant>,
}

/// The waker a connection's reads register: it notes when the socket turned readable
/// before it wakes the connection's task, so the task's wait in the runtime's queue, with
/// the request's bytes already here, is measured rather than estimated.
#[derive(Default)]
struct Readable {
    task: AtomicWaker,
    /// When woken: microseconds since [`epoch`], plus one; zero while not woken.
    at: AtomicU64,
}

impl std::task::Wake for Readable {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // The first wake since the last read is when the bytes arrived.
        let _ = self.at.compare_exchange(
            0,
            micros_since_epoch() + 1,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        self.task.wake();
    }
}

/// The process's reference instant for [`Readable::at`].
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn micros_since_epoch() -> u64 {
    u64::try_from(epoch().elapsed().as_micros()).unwrap_or(u64::MAX - 1)
}

thread_local! {
    /// The task that last read bytes on a connection on this thread, and since when those
    /// bytes had been waiting for it.
    static LAST_READ: std::cell::Cell<Option<(tokio::task::Id, Instant)>> =
        const { std::cell::Cell::new(None) };
}

/// Since when the bytes the current task read last on a gRPC connection had been waiting:
/// the moment its socket turned readable, when the task had to be woken for them; for
/// bytes a previous read left in the socket (it filled its buffer), the moment of the
/// burst they came with (h2 reads until the socket is drained before it hands out any
/// request, so a burst's requests are all decoded after its last read). Called on the
/// connection's task as it decodes a request (see `admission::Admitted`'s `Clone`), it is
/// when the request arrived, to within the reactor's own delay. `None` off such a task, or
/// when another task has read on this thread since.
pub fn read_since() -> Option<Instant> {
    let (task, at) = LAST_READ.with(std::cell::Cell::get)?;
    (tokio::task::try_id() == Some(task)).then_some(at)
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.replayed < PREFACE.len() {
            let rest = &PREFACE[self.replayed..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.replayed += n;
            return Poll::Ready(Ok(()));
        }
        self.readable.task.register(cx.waker());
        let waker = std::task::Waker::from(self.readable.clone());
        // A wake before this read (for these bytes, or for nothing) is this read's.
        let woken = self.readable.at.swap(0, Ordering::Relaxed);
        let (before, room) = (buf.filled().len(), buf.remaining());
        let read = Pin::new(&mut self.stream).poll_read(&mut Context::from_waker(&waker), buf);
        let got = buf.filled().len() - before;
        match read {
            Poll::Ready(Ok(())) if got > 0 => {
                let now = Instant::now();
                let since = *self.round.get_or_insert_with(|| {
                    woken
                        .checked_sub(1)
                        .map_or(now, |us| (epoch() + Duration::from_micros(us)).min(now))
                });
                if got < room {
                    // The socket is drained: bytes read next arrive after this read.
                    self.round = None;
                }
                if let Some(task) = tokio::task::try_id() {
                    LAST_READ.with(|last| last.set(Some((task, since))));
                }
            }
            // The runtime's budget for this poll ran out before the socket was read: what
            // is in it still waits from the round's start.
            Poll::Pending if !tokio::task::coop::has_budget_remaining() => {}
            _ => self.round = None,
        }
        read
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    /// Answered as unvectored on purpose. h2 keeps a DATA payload of 256 bytes or more
    /// (1,024 without vectored writes) out of its write buffer and must flush it before it
    /// can buffer the next frame, so every such answer costs the connection its own
    /// `writev`. A Check allow (identity headers, removals, metadata) is about 500 bytes: at
    /// 256 each one was its own syscall, while the smaller Authorize answers shared one.
    /// At 1,024 both are copied into the 16 KiB buffer and flushed together; a payload
    /// past 1 KiB (a page of ListTokens) pays one more `write`.
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The peer address reaches handlers as with tonic's own listener (`Request::remote_addr`).
impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

/// The listener of the admin and console ports (plain HTTP, served by axum): at most
/// `max` connections open at once, each closed after `idle` without a byte either way.
///
/// At the cap, a new connection is accepted and the open connection that has been quiet
/// longest (no byte either way) is closed to make room for it: a flood of idle connections
/// cannot keep a metrics scrape or the console out for the idle timeout. Until the room is
/// made the new connection waits, accepted (one file descriptor beyond the cap) while the
/// next ones wait in the kernel's backlog. So a flood of idle connections on either port
/// costs at most the cap in file descriptors (both caps fit in [`RESERVED_FDS`]) and never
/// takes the gRPC port's room. (axum's server sets no timeout of its own: an idle
/// connection stayed open for ever.)
pub struct SideListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    idle: Duration,
    /// The connections open, to choose the one to close at the cap.
    open: Arc<Mutex<Vec<Weak<Quiet>>>>,
    epoch: Instant,
}

/// One connection of a [`SideListener`] as its listener sees it.
struct Quiet {
    /// When it last moved a byte, in milliseconds since the listener's epoch.
    since: AtomicU64,
    /// Told to close, to make room for a new connection.
    evicted: AtomicBool,
    /// Its task, woken to close.
    waker: AtomicWaker,
}

impl SideListener {
    /// `inner` within these bounds.
    pub fn new(inner: TcpListener, max: usize, idle: Duration) -> Self {
        Self {
            inner,
            slots: Arc::new(Semaphore::new(max.max(1))),
            idle,
            open: Arc::default(),
            epoch: Instant::now(),
        }
    }

    /// Closes the open connection that has been quiet longest (if it is not already
    /// closing).
    fn make_room(&self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.retain(|c| c.strong_count() > 0);
        let quietest = open
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|c| !c.evicted.load(Ordering::Relaxed))
            .min_by_key(|c| c.since.load(Ordering::Relaxed));
        if let Some(c) = quietest {
            c.evicted.store(true, Ordering::Relaxed);
            c.waker.wake();
            metrics::counter!(LIMITED_TOTAL, "limit" => limits::SIDE_EVICTED).increment(1);
        }
    }

    /// A slot for a connection just accepted: at the cap, made by closing the quietest.
    async fn slot(&self) -> OwnedSemaphorePermit {
        loop {
            if let Ok(slot) = self.slots.clone().try_acquire_owned() {
                return slot;
            }
            self.make_room();
            // The closed connection frees its slot when its server drops it; should that
            // take longer, another is chosen.
            if let Ok(Ok(slot)) =
                tokio::time::timeout(MAKE_ROOM_WAIT, self.slots.clone().acquire_owned()).await
            {
                return slot;
            }
        }
    }
}

/// How long a new connection waits for the slot of the one closed for it before another
/// is closed (it takes well under a millisecond, unless that connection was in the middle
/// of an answer: it closes once the answer is written).
const MAKE_ROOM_WAIT: Duration = Duration::from_secs(1);

impl axum::serve::Listener for SideListener {
    type Io = SideConnection;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let slot = self.slot().await;
                    let quiet = Arc::new(Quiet {
                        since: AtomicU64::new(0),
                        evicted: AtomicBool::new(false),
                        waker: AtomicWaker::new(),
                    });
                    self.open
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(Arc::downgrade(&quiet));
                    let mut connection = SideConnection {
                        stream,
                        _slot: slot,
                        timeout: self.idle,
                        idle: Box::pin(tokio::time::sleep(self.idle)),
                        quiet,
                        epoch: self.epoch,
                    };
                    connection.active();
                    return (connection, addr);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an admin or console connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection of [`SideListener`]: holds its slot, and fails its reads and writes once it
/// has been idle for the listener's timeout, or was chosen to make room (the server then
/// closes it).
pub struct SideConnection {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    timeout: Duration,
    idle: Pin<Box<tokio::time::Sleep>>,
    quiet: Arc<Quiet>,
    epoch: Instant,
}

impl SideConnection {
    fn active(&mut self) {
        let now = tokio::time::Instant::now();
        self.idle.as_mut().reset(now + self.timeout);
        let since = now.into_std().saturating_duration_since(self.epoch);
        self.quiet.since.store(
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// An error once the connection has been idle too long or was chosen to make room,
    /// else `Pending`.
    fn check_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        self.quiet.waker.register(cx.waker());
        if self.quiet.evicted.load(Ordering::Relaxed) {
            return Poll::Ready(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed to make room for a new connection",
            ));
        }
        self.idle.as_mut().poll(cx).map(|()| {
            metrics::counter!(LIMITED_TOTAL, "limit" => limits::SIDE_IDLE).increment(1);
            io::Error::new(io::ErrorKind::TimedOut, "idle connection closed")
        })
    }
}

impl AsyncRead for SideConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.active();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.check_idle(cx).map(Err),
        }
    }
}

impl AsyncWrite for SideConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                self.active();
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.check_idle(cx).map(Err),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// A served connection on loopback (its preface already replayed) and its peer.
    async fn served() -> (Connection, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let slot = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let connection = Connection {
            stream,
            replayed: PREFACE.len(),
            _open: Open::new(slot),
            readable: Arc::default(),
            round: None,
        };
        (connection, peer)
    }

    /// Reads `connection` while its socket is empty (the read waits), has the peer send
    /// `bytes`, and returns once the reactor has woken the reading task for them, the task
    /// not having read them yet.
    async fn woken_for(connection: &mut Connection, peer: &mut TcpStream, bytes: &[u8]) -> Instant {
        let waited = std::future::poll_fn(|cx| {
            let mut buf = [0u8; 16];
            let mut read = ReadBuf::new(&mut buf);
            Poll::Ready(
                Pin::new(&mut *connection)
                    .poll_read(cx, &mut read)
                    .is_pending(),
            )
        })
        .await;
        assert!(waited, "the socket was not empty");
        peer.write_all(bytes).await.unwrap();
        let started = Instant::now();
        while connection.readable.at.load(Ordering::Relaxed) == 0 {
            assert!(started.elapsed() < Duration::from_secs(10), "never woken");
            tokio::task::yield_now().await;
        }
        Instant::now()
    }

    #[tokio::test]
    async fn a_read_notes_since_when_its_bytes_waited_for_the_task() {
        let (mut connection, mut peer) = served().await;
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            // The reactor wakes the task for the bytes...
            let woken = woken_for(&mut connection, &mut peer, b"a request").await;
            // ... and the task is busy elsewhere for 50 ms (a long queue) before it reads.
            std::thread::sleep(Duration::from_millis(50));
            assert!(connection.read(&mut buf).await.unwrap() > 0);
            let since = read_since().expect("noted for the task that read");
            assert!(since <= woken, "since the wake, not the read");
            assert!(since.elapsed() >= Duration::from_millis(50));
            // Read again at once: no wait since.
            peer.write_all(b"another").await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(connection.read(&mut buf).await.unwrap() > 0);
            assert!(read_since().unwrap().elapsed() < Duration::from_millis(50));
        });
        reader.await.unwrap();
        // Another task (or none) on the same thread does not see it.
        assert!(
            tokio::spawn(async { read_since() })
                .await
                .unwrap()
                .is_none()
        );
        assert!(read_since().is_none());
    }

    /// A burst of 100 bytes, a long queue (50 ms) before the woken task reads, and a first
    /// read that fills its 10-byte buffer: when the task was woken, and the read's
    /// [`read_since`].
    async fn a_burst_read_in_part(
        connection: &mut Connection,
        peer: &mut TcpStream,
    ) -> (Instant, Instant) {
        let woken = woken_for(connection, peer, &[7u8; 100]).await;
        std::thread::sleep(Duration::from_millis(50));
        let mut small = [0u8; 10];
        assert_eq!(connection.read(&mut small).await.unwrap(), 10);
        let first = read_since().expect("noted for the task that read");
        assert!(first <= woken, "since the wake, not the read");
        (woken, first)
    }

    #[tokio::test]
    async fn bytes_a_full_read_left_in_the_socket_keep_their_wait() {
        let (mut connection, mut peer) = served().await;
        let reader = tokio::spawn(async move {
            let (woken, first) = a_burst_read_in_part(&mut connection, &mut peer).await;
            // The rest was in the socket all along: no wake came for it, and it waited as
            // long as the first ten bytes.
            std::thread::sleep(Duration::from_millis(5));
            let mut rest = [0u8; 256];
            assert_eq!(connection.read(&mut rest).await.unwrap(), 90);
            assert_eq!(read_since(), Some(first));
            // That read drained the socket: what comes next is new.
            peer.write_all(b"later").await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(connection.read(&mut rest).await.unwrap() > 0);
            assert!(read_since().unwrap() > woken);
        });
        reader.await.unwrap();
    }

    #[tokio::test]
    async fn a_burst_cut_short_by_the_runtimes_budget_keeps_its_wait() {
        let (mut connection, mut peer) = served().await;
        let reader = tokio::spawn(async move {
            let (_, first) = a_burst_read_in_part(&mut connection, &mut peer).await;
            // The task's budget runs out before its next read: tokio refuses the read
            // (and wakes the task again) though the rest of the burst is in the socket.
            let refused = std::future::poll_fn(|cx| {
                let mut spent = 0;
                while let Poll::Ready(progress) = tokio::task::coop::poll_proceed(cx) {
                    progress.made_progress();
                    spent += 1;
                    assert!(spent < 10_000, "the task has no budget to spend");
                }
                let mut buf = [0u8; 256];
                let mut read = ReadBuf::new(&mut buf);
                Poll::Ready(
                    Pin::new(&mut connection)
                        .poll_read(cx, &mut read)
                        .is_pending(),
                )
            })
            .await;
            assert!(refused);
            let mut rest = [0u8; 256];
            assert_eq!(connection.read(&mut rest).await.unwrap(), 90);
            assert_eq!(
                read_since(),
                Some(first),
                "the rest waited from the burst's wake"
            );
        });
        reader.await.unwrap();
    }

    #[test]
    fn the_cap_stays_below_the_open_file_limit() {
        assert_eq!(effective_max_connections(10_000, None), 10_000);
        assert_eq!(effective_max_connections(10_000, Some(1_048_576)), 10_000);
        assert_eq!(
            effective_max_connections(10_000, Some(4_096)),
            4_096 - RESERVED_FDS as usize
        );
        assert_eq!(effective_max_connections(10_000, Some(10)), 1);
    }
}
