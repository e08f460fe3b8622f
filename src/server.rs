//! Building and running a server: the library API the binary and the tests
//! use.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use mio::net::TcpListener;
use mio::{Poll, Waker};

use crate::api::ApiConfig;
use crate::auth::{self, HashCost, HashPool};
use crate::config::Config;
use crate::reactor::{HelperEvent, Reactor, ReactorParts, StopHandle, StoreParts, WAKER};
use crate::store::{DataDir, LogConfig, MessageLog, StoreError, Writer};

/// Why a server could not start.
#[derive(Debug)]
pub enum StartError {
    Store(StoreError),
    Bind { addr: SocketAddr, source: io::Error },
    Config(String),
    Io(io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Store(e) => write!(f, "{e}"),
            StartError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            StartError::Config(e) => write!(f, "invalid configuration: {e}"),
            StartError::Io(e) => write!(f, "cannot start: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

impl From<io::Error> for StartError {
    fn from(e: io::Error) -> Self {
        StartError::Io(e)
    }
}

/// A bound server, ready to run.
pub struct Server {
    // The reactor itself holds `Rc`s and may not cross threads, so it is
    // assembled on the thread that runs it.
    parts: ReactorParts,
    http_addr: SocketAddr,
    ws_addr: SocketAddr,
    stop: StopHandle,
}

/// The embedded store's helper threads: the message log and the writer.
fn open_embedded(
    config: &Config,
    data_dir: DataDir,
    replayed: crate::store::Replayed,
    events_tx: mpsc::Sender<HelperEvent>,
    waker: &Arc<Waker>,
) -> Result<StoreParts, StartError> {
    let log_config = LogConfig {
        history_size: config.chat.history_size,
        ..LogConfig::default()
    };
    let (message_log, history) =
        MessageLog::open(&config.data_dir, log_config).map_err(StartError::Store)?;
    let retained: usize = history.values().map(|room| room.messages.len()).sum();
    log::info!(
        "message log: {retained} retained message(s) in {} room(s)",
        history.len()
    );
    let log_waker = Arc::clone(waker);
    let log_events = Mutex::new(events_tx.clone());
    let message_log = message_log.spawn(Box::new(move |event| {
        if let Ok(tx) = log_events.lock() {
            let _ = tx.send(HelperEvent::MessageLog(event));
        }
        let _ = log_waker.wake();
    }))?;

    let store_waker = Arc::clone(waker);
    let writer = Writer::spawn(
        &data_dir,
        Box::new(move |completion| {
            let _ = events_tx.send(HelperEvent::Stored(completion));
            let _ = store_waker.wake();
        }),
    )?;
    Ok(StoreParts::Embedded {
        replayed,
        history,
        writer,
        message_log,
        data_dir,
    })
}

impl Server {
    /// Opens the data directory, replays it, binds the listeners and starts
    /// the helper threads. Port 0 binds a free port; see `http_addr`.
    pub fn bind(config: Config) -> Result<Server, StartError> {
        let cost = HashCost {
            memory_kib: config.argon2_memory_kib,
            iterations: config.argon2_iterations,
        };
        auth::validate_cost(cost).map_err(StartError::Config)?;

        // Cluster mode resolves Redis's address once, here: the reactor
        // never blocks on a name lookup.
        let redis = match &config.redis {
            Some(url) => {
                let addr = std::net::ToSocketAddrs::to_socket_addrs(&url.host_port())
                    .ok()
                    .and_then(|mut addrs| addrs.next())
                    .ok_or_else(|| {
                        StartError::Config(format!("--redis: cannot resolve {}", url.host_port()))
                    })?;
                Some((url.clone(), addr))
            }
            None => None,
        };
        let opened = match redis {
            Some(_) => None,
            None => {
                let (data_dir, replayed) =
                    DataDir::open(&config.data_dir).map_err(StartError::Store)?;
                log::info!(
                    "data directory {}: {} users, {} rooms",
                    config.data_dir.display(),
                    replayed.users.len(),
                    replayed.rooms.len()
                );
                Some((data_dir, replayed))
            }
        };

        let http_listener =
            TcpListener::bind(config.http_addr).map_err(|source| StartError::Bind {
                addr: config.http_addr,
                source,
            })?;
        let http_addr = http_listener.local_addr()?;
        let ws_listener = TcpListener::bind(config.ws_addr).map_err(|source| StartError::Bind {
            addr: config.ws_addr,
            source,
        })?;
        let ws_addr = ws_listener.local_addr()?;

        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (events_tx, helper_events) = mpsc::channel::<HelperEvent>();

        let pool_tx = Mutex::new(events_tx.clone());
        let pool_waker = Arc::clone(&waker);
        let hash_pool = HashPool::spawn(
            config.hash_threads,
            cost,
            Arc::new(move |job, outcome| {
                if let Ok(tx) = pool_tx.lock() {
                    let _ = tx.send(HelperEvent::Password(job, outcome));
                }
                let _ = pool_waker.wake();
            }),
        )?;

        let store = match (redis, opened) {
            (Some((url, addr)), _) => StoreParts::Cluster { url, addr },
            (None, Some((data_dir, replayed))) => {
                open_embedded(&config, data_dir, replayed, events_tx, &waker)?
            }
            (None, None) => return Err(StartError::Config("no store".to_string())),
        };

        let stop_flag = Arc::new(AtomicBool::new(false));
        let api_config = ApiConfig {
            room_capacity: config.room_capacity,
            max_rooms: config.max_rooms,
            max_pending_hashes: config.max_pending_hashes,
            chat: config.chat.clone(),
        };
        let parts = ReactorParts {
            poll,
            http_listener,
            ws_listener,
            config,
            store,
            api_config,
            helper_events,
            hash_pool,
            stop: Arc::clone(&stop_flag),
            signals: None,
        };
        Ok(Server {
            parts,
            http_addr,
            ws_addr,
            stop: StopHandle {
                stop: stop_flag,
                waker,
            },
        })
    }

    /// The address the HTTP API listens on (the real port when bound to 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The address the WebSocket chat listener is bound to.
    pub fn ws_addr(&self) -> SocketAddr {
        self.ws_addr
    }

    /// Makes SIGINT and SIGTERM stop the server gracefully (the binary
    /// wants this; a library user may have its own plans for signals).
    pub fn handle_signals(&mut self) -> io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        self.parts.signals = Some(signal_hook_mio::v1_0::Signals::new([SIGINT, SIGTERM])?);
        Ok(())
    }

    /// A handle that stops the server from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Runs the reactor on this thread until stopped.
    pub fn run(self) -> io::Result<()> {
        log::info!("HTTP API listening on {}", self.http_addr);
        log::info!("WebSocket chat listening on {}", self.ws_addr);
        let trusted = &self.parts.config.trusted_proxies;
        if !trusted.is_empty() {
            let ranges: Vec<String> = trusted.ranges().iter().map(|r| r.to_string()).collect();
            log::info!(
                "trusting X-Forwarded-For and X-Real-IP from peers in {}",
                ranges.join(", ")
            );
        }
        Reactor::new(self.parts)?.run()
    }

    /// Runs the reactor on a new thread; the server stops when the returned
    /// value is stopped or dropped.
    pub fn spawn(self) -> io::Result<RunningServer> {
        let http_addr = self.http_addr;
        let ws_addr = self.ws_addr;
        let stop = self.stop_handle();
        let thread = std::thread::Builder::new()
            .name("reactor".into())
            .spawn(move || self.run())?;
        Ok(RunningServer {
            http_addr,
            ws_addr,
            stop,
            thread: Some(thread),
        })
    }
}

/// A server running on its own thread.
pub struct RunningServer {
    http_addr: SocketAddr,
    ws_addr: SocketAddr,
    stop: StopHandle,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl RunningServer {
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn ws_addr(&self) -> SocketAddr {
        self.ws_addr
    }

    /// Stops the server and waits for it to finish.
    pub fn stop(mut self) -> io::Result<()> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> io::Result<()> {
        self.stop.stop();
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("reactor thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}
