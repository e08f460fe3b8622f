//! A real `redis-server` for the tests that need one (the Redis link,
//! cluster mode), and cluster nodes on it: in-process `TestServer`s
//! (`TestServer::start_node`) and the real binary as a child process
//! (`NodeProcess`), which a test can kill -9.
//!
//! Without `redis-server` installed a test calls `redis_server_installed`,
//! which prints a loud SKIPPED line and lets the test pass; under `CI=true`
//! a missing server is a failure instead (CI installs it).
//!
//! Every wait here is for an event (a log line, a status code) with a
//! deadline as the safety net; nothing sleeps to synchronise.

use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use chatroom::redis::RedisUrl;
use chatroom::Config;
use tempfile::TempDir;

use super::TestServer;

/// How long any one wait on Redis or a node may take before the test gives
/// up: a safety net against a hang, far above anything a healthy run needs,
/// never a pass/fail threshold.
pub const REDIS_SAFETY: Duration = Duration::from_secs(60);

/// Whether `redis-server` can be run. Without it: a panic under `CI=true`
/// (CI must install it), elsewhere a SKIPPED line on stderr and `false`,
/// and the caller returns (the test passes, loudly).
pub fn redis_server_installed(test: &str) -> bool {
    let installed = Process::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !installed {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "{test}: redis-server is not installed, and CI=true: CI must install it \
                 (apt-get install -y redis-server)"
            );
        }
        // Straight to the stderr handle: the test harness captures
        // eprintln!, and a skip nobody sees is the failure mode to avoid.
        let _ = writeln!(
            std::io::stderr(),
            "\nSKIPPED {test}: redis-server is not installed \
             (apt-get install -y redis-server to run it)"
        );
    }
    installed
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct ports nobody listens on right now (all held at once while
/// they are picked, so none is handed out twice).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("its address").port())
}

// ---------------------------------------------------------------------------
// redis-server
// ---------------------------------------------------------------------------

/// A `redis-server` child on a free loopback port, with the settings
/// cluster mode promises its guarantees under (AOF on, fsync always, no
/// RDB snapshots, no eviction) and a data directory of its own. Killed
/// (SIGKILL) when dropped.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    /// Every line redis-server logged, over all its runs.
    log: Arc<Mutex<Vec<String>>>,
    /// The directory, when the server made it itself (`start_temp`). Dropped
    /// after the child is killed (`Drop` runs before the fields go).
    _temp: Option<TempDir>,
}

impl RedisServer {
    /// Starts redis-server on a free port with `dir` as its data
    /// directory, and returns once it accepts connections.
    pub fn start(dir: &Path) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir: dir.to_path_buf(),
            log: Arc::new(Mutex::new(Vec::new())),
            _temp: None,
        };
        server.launch();
        server
    }

    /// `start` on a temporary directory the server owns.
    pub fn start_temp() -> RedisServer {
        let temp = TempDir::new().expect("temp dir for redis-server");
        let mut server = RedisServer::start(temp.path());
        server._temp = Some(temp);
        server
    }

    fn launch(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let mut child = Process::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--appendonly", "yes"])
            .args(["--appendfsync", "always"])
            .args(["--save", ""])
            .args(["--maxmemory-policy", "noeviction"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn redis-server");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (ready_tx, ready_rx) = mpsc::channel();
        // Both pipes are read to their end, so a full pipe never stalls the
        // server; the stdout reader reports the line that says it is ready.
        // When the server exits the sender goes and the wait below ends.
        let sink = Arc::clone(&self.log);
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let ready = line.contains("Ready to accept connections");
                sink.lock().unwrap().push(line);
                if ready {
                    let _ = ready_tx.send(());
                }
            }
        });
        let sink = Arc::clone(&self.log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        self.child = Some(child);
        if ready_rx.recv_timeout(REDIS_SAFETY).is_err() {
            self.kill9();
            panic!(
                "redis-server on port {} never said it was ready; its log:\n{}",
                self.port,
                self.log_text()
            );
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:<port>`, as `--redis` takes it.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// kill -9, and reap it. Nothing is flushed: what survives is what
    /// `appendfsync always` already wrote.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory, so it replays its
    /// AOF; returns once it accepts connections (after the replay).
    pub fn restart(&mut self) {
        self.kill9();
        self.launch();
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Runs one command on a connection of its own and returns the reply,
    /// or why there is none (refused, cut, not RESP).
    pub fn try_command(&self, args: &[&str]) -> Result<Resp, String> {
        let stream = TcpStream::connect_timeout(&self.addr(), REDIS_SAFETY)
            .map_err(|e| format!("connect to redis at {}: {e}", self.addr()))?;
        stream
            .set_read_timeout(Some(REDIS_SAFETY))
            .map_err(|e| e.to_string())?;
        stream
            .set_write_timeout(Some(REDIS_SAFETY))
            .map_err(|e| e.to_string())?;
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        (&stream)
            .write_all(&request)
            .map_err(|e| format!("send {args:?}: {e}"))?;
        let mut reader = BufReader::new(stream);
        read_resp(&mut reader).map_err(|e| format!("reply to {args:?}: {e}"))
    }

    /// Runs one command and returns its reply as a string, rendered the way
    /// redis-cli shows it (`OK`, `(integer) 3`, `"text"`, `(nil)`, numbered
    /// array lines, `(error) ERR …`). Panics when there is no reply.
    pub fn command(&self, args: &[&str]) -> String {
        self.try_command(args)
            .unwrap_or_else(|e| panic!("redis command: {e}"))
            .to_string()
    }

    /// Runs a command whose reply must be an integer.
    pub fn integer(&self, args: &[&str]) -> i64 {
        match self.try_command(args) {
            Ok(Resp::Integer(n)) => n,
            other => panic!("{args:?}: expected an integer, got {other:?}"),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Integer(i64),
    /// `None` is the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// `None` is the null array.
    Array(Option<Vec<Resp>>),
}

impl Resp {
    fn render(&self, f: &mut fmt::Formatter<'_>, indent: usize) -> fmt::Result {
        match self {
            Resp::Simple(s) => write!(f, "{s}"),
            Resp::Error(e) => write!(f, "(error) {e}"),
            Resp::Integer(n) => write!(f, "(integer) {n}"),
            Resp::Bulk(None) | Resp::Array(None) => write!(f, "(nil)"),
            Resp::Bulk(Some(bytes)) => write!(f, "{:?}", String::from_utf8_lossy(bytes)),
            Resp::Array(Some(items)) if items.is_empty() => write!(f, "(empty array)"),
            Resp::Array(Some(items)) => {
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        write!(f, "\n{:indent$}", "")?;
                    }
                    let label = format!("{}) ", i + 1);
                    write!(f, "{label}")?;
                    item.render(f, indent + label.len())?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Resp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.render(f, 0)
    }
}

fn read_line(reader: &mut impl BufRead) -> Result<String, String> {
    let mut line = Vec::new();
    reader
        .read_until(b'\n', &mut line)
        .map_err(|e| e.to_string())?;
    if !line.ends_with(b"\r\n") {
        return Err(format!(
            "connection ended inside a line: {:?}",
            String::from_utf8_lossy(&line)
        ));
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|e| e.to_string())
}

fn read_resp(reader: &mut impl BufRead) -> Result<Resp, String> {
    let line = read_line(reader)?;
    let (kind, rest) = line.split_at_checked(1).ok_or("empty reply line")?;
    let number = || {
        rest.parse::<i64>()
            .map_err(|_| format!("bad number in {line:?}"))
    };
    match kind {
        "+" => Ok(Resp::Simple(rest.to_string())),
        "-" => Ok(Resp::Error(rest.to_string())),
        ":" => Ok(Resp::Integer(number()?)),
        "$" => {
            let len = number()?;
            if len < 0 {
                return Ok(Resp::Bulk(None));
            }
            let mut bytes = vec![0; len as usize + 2];
            reader.read_exact(&mut bytes).map_err(|e| e.to_string())?;
            if !bytes.ends_with(b"\r\n") {
                return Err("bulk string without its CRLF".to_string());
            }
            bytes.truncate(len as usize);
            Ok(Resp::Bulk(Some(bytes)))
        }
        "*" => {
            let count = number()?;
            if count < 0 {
                return Ok(Resp::Array(None));
            }
            let items = (0..count)
                .map(|_| read_resp(reader))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Resp::Array(Some(items)))
        }
        _ => Err(format!("not a RESP2 reply: {line:?}")),
    }
}

// ---------------------------------------------------------------------------
// Nodes
// ---------------------------------------------------------------------------

/// The status `GET /healthz` answers on a fresh connection, or `None` when
/// there is no answer (nothing listening, connection cut).
pub fn healthz_status(addr: SocketAddr) -> Option<u16> {
    let response = super::agent()
        .get(format!("http://{addr}/healthz"))
        .call()
        .ok()?;
    Some(response.status().as_u16())
}

/// Waits until `/healthz` at `addr` answers `status`; panics with `what`
/// past the safety deadline. Returns how long it took.
pub fn wait_healthz(addr: SocketAddr, status: u16, what: &str) -> Duration {
    let start = Instant::now();
    let mut last = None;
    loop {
        last = healthz_status(addr).or(last);
        if last == Some(status) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < REDIS_SAFETY,
            "{what}: /healthz at {addr} did not answer {status} within {REDIS_SAFETY:?} \
             (last answer {last:?})"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Phone numbers for nodes: each node's `register` hands out numbers from a
/// range of its own, so users made on different nodes of one cluster never
/// collide by accident.
static NEXT_NODE_TELS: AtomicU64 = AtomicU64::new(14_000_000_000);
const TELS_PER_NODE: u64 = 1_000_000;

impl TestServer {
    /// An in-process cluster node on `url` (test configuration: free
    /// ports, cheap argon2, its own unused data directory), returned once
    /// its `/healthz` answers 200.
    pub fn start_node(url: &str) -> TestServer {
        TestServer::start_node_with(url, |_| {})
    }

    /// `start_node` with `tweak` applied to the configuration after the
    /// Redis URL is set.
    pub fn start_node_with(url: &str, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let redis = RedisUrl::parse(url).unwrap_or_else(|e| panic!("redis url {url:?}: {e}"));
        let dir = TempDir::new().expect("temp dir");
        let tels = NEXT_NODE_TELS.fetch_add(TELS_PER_NODE, Ordering::Relaxed);
        let node = TestServer::launch(
            dir,
            |config| {
                config.redis = Some(redis);
                tweak(config);
            },
            tels,
        )
        .unwrap_or_else(|e| panic!("cluster node on {url} starts: {e}"));
        wait_healthz(node.http_addr(), 200, "a new node");
        node
    }
}

/// The real `chatroom` binary as a cluster node, on ports picked here (a
/// node on port 0 would not say which it got before it is ready). Dropping
/// it kills it (SIGKILL) and reaps it.
pub struct NodeProcess {
    child: Child,
    pub http: SocketAddr,
    pub ws: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    // After `child`: the directory goes once the process is dead.
    _dir: TempDir,
}

impl NodeProcess {
    /// Starts `chatroom --redis url` with cheap argon2 and `extra` flags,
    /// and returns once `/healthz` answers 200.
    pub fn start(url: &str, extra: &[&str]) -> NodeProcess {
        let dir = TempDir::new().expect("temp dir");
        let [http, ws] = free_ports::<2>().map(|port| SocketAddr::from(([127, 0, 0, 1], port)));
        let mut child = Process::new(env!("CARGO_BIN_EXE_chatroom"))
            .args(["--http", &http.to_string()])
            .args(["--ws", &ws.to_string()])
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--redis", url])
            .args(["--argon2-memory-kib", "8", "--argon2-iterations", "1"])
            .args(["--hash-threads", "2"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the chatroom binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        // Drained all the time: a full pipe would block the node's logging.
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let mut node = NodeProcess {
            child,
            http,
            ws,
            log,
            _dir: dir,
        };
        let start = Instant::now();
        loop {
            if healthz_status(http) == Some(200) {
                return node;
            }
            if let Some(status) = node.child.try_wait().expect("try_wait") {
                panic!(
                    "the node process exited with {status} before /healthz answered 200; \
                     log:\n{}",
                    node.log_text()
                );
            }
            if start.elapsed() > REDIS_SAFETY {
                node.kill9();
                panic!(
                    "the node process did not answer /healthz 200 within {REDIS_SAFETY:?}; \
                     log:\n{}",
                    node.log_text()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGTERM, then wait for the process to exit (it has then done what
    /// its graceful shutdown does).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid, which `wait` has not
        // reaped yet, so it cannot name another process.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        self.child.wait().expect("wait for the node")
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
