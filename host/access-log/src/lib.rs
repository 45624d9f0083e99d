//! The access log: one line per request, formatted on the worker into a shared buffer
//! and written by a thread of its own, so a slow disk never stalls a request. When the
//! buffer is full (the destination cannot keep up), lines are dropped and counted.

mod format;

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use prometheus_client::metrics::counter::Counter;

pub use format::{write_line, Format, Record};

/// How often buffered lines are written even when few.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Buffered bytes that wake the writer early.
const WAKE_AT: usize = 64 * 1024;

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Stdout,
    File(PathBuf),
}

struct Shared {
    buffer: Mutex<Vec<u8>>,
    ready: Condvar,
    max_buffered: usize,
    reopen: AtomicBool,
    stop: AtomicBool,
    dropped: Counter,
}

impl Shared {
    /// Only appends and swaps happen under this lock; a poisoned one is still consistent.
    fn buffer(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.buffer.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Handle to the log; cheap to clone. The writer thread stops (after a last flush)
/// when the last handle is dropped.
#[derive(Clone)]
pub struct AccessLog {
    shared: Arc<Shared>,
    format: Format,
    _writer: Arc<WriterThread>,
}

struct WriterThread {
    shared: Arc<Shared>,
    finished: Mutex<std::sync::mpsc::Receiver<()>>,
}

/// Longest wait for the last lines at shutdown: a destination that blocks (a stuck
/// pipe) must not keep the process from exiting.
const LAST_FLUSH_WAIT: Duration = Duration::from_secs(2);

impl Drop for WriterThread {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.ready.notify_one();
        if let Ok(finished) = self.finished.lock() {
            let _ = finished.recv_timeout(LAST_FLUSH_WAIT);
        }
    }
}

thread_local! {
    /// Per-thread scratch line, so formatting never allocates after warm-up.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl AccessLog {
    /// Opens the destination (a file is created or appended to) and starts the writer.
    /// `max_buffered` bytes may wait for the writer; past that, lines are dropped.
    pub fn open(
        destination: Destination,
        format: Format,
        max_buffered: usize,
        dropped: Counter,
    ) -> anyhow::Result<Self> {
        let mut sink = Sink::open(&destination)?;
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Vec::with_capacity(WAKE_AT * 2)),
            ready: Condvar::new(),
            max_buffered,
            reopen: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            dropped,
        });
        let writer_shared = shared.clone();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("sluice-access-log".into())
            .spawn(move || {
                sink.run(&writer_shared, &destination);
                let _ = done.send(());
            })
            .context("cannot start the access log writer thread")?;
        Ok(Self {
            _writer: Arc::new(WriterThread {
                shared: shared.clone(),
                finished: Mutex::new(finished),
            }),
            shared,
            format,
        })
    }

    /// Queues one line; never blocks on the destination.
    pub fn log(&self, record: &Record<'_>) {
        SCRATCH.with(|scratch| {
            let Ok(mut line) = scratch.try_borrow_mut() else {
                return;
            };
            line.clear();
            write_line(&mut line, self.format, record, SystemTime::now());
            let mut buffer = self.shared.buffer();
            if buffer.len() + line.len() > self.shared.max_buffered {
                drop(buffer);
                self.shared.dropped.inc();
                return;
            }
            buffer.extend_from_slice(&line);
            let wake = buffer.len() >= WAKE_AT;
            drop(buffer);
            if wake {
                self.shared.ready.notify_one();
            }
        });
    }

    /// Asks the writer to reopen its file before the next write (logrotate's SIGUSR1).
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Release);
        self.shared.ready.notify_one();
    }
}

enum Sink {
    Stdout(std::io::Stdout),
    File(File),
}

impl Sink {
    fn open(destination: &Destination) -> anyhow::Result<Self> {
        Ok(match destination {
            Destination::Stdout => Sink::Stdout(std::io::stdout()),
            Destination::File(path) => Sink::File(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| {
                        format!(
                            "cannot open access log {} (server.access_log_path)",
                            path.display()
                        )
                    })?,
            ),
        })
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Stdout(out) => {
                let mut out = out.lock();
                out.write_all(bytes)?;
                out.flush()
            }
            Sink::File(file) => file.write_all(bytes),
        }
    }

    /// The writer loop: waits for lines (or the flush interval), writes them, reopens
    /// on request, and flushes what is left when asked to stop.
    fn run(&mut self, shared: &Shared, destination: &Destination) {
        let mut spare: Vec<u8> = Vec::with_capacity(WAKE_AT * 2);
        loop {
            let stopping = {
                let mut buffer = shared.buffer();
                if buffer.len() < WAKE_AT
                    && !shared.stop.load(Ordering::Acquire)
                    && !shared.reopen.load(Ordering::Acquire)
                {
                    buffer = match shared.ready.wait_timeout(buffer, FLUSH_EVERY) {
                        Ok((b, _)) => b,
                        Err(poisoned) => poisoned.into_inner().0,
                    };
                }
                std::mem::swap(&mut *buffer, &mut spare);
                shared.stop.load(Ordering::Acquire)
            };
            if shared.reopen.swap(false, Ordering::AcqRel) {
                match Sink::open(destination) {
                    Ok(sink) => *self = sink,
                    Err(e) => {
                        tracing::error!(target: "sluice::server", "access log not reopened: {e:#}")
                    }
                }
            }
            if !spare.is_empty() {
                if let Err(e) = self.write_all(&spare) {
                    let lines = spare.iter().filter(|b| **b == b'\n').count() as u64;
                    shared.dropped.inc_by(lines);
                    tracing::error!(target: "sluice::server", "access log write failed, {lines} lines lost: {e}");
                }
                spare.clear();
            }
            if stopping {
                let rest = std::mem::take(&mut *shared.buffer());
                let _ = self.write_all(&rest);
                return;
            }
        }
    }
}
