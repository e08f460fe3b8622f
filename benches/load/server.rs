//! The server under test (spawned, or one already running), what the kernel
//! says about its CPU and memory, and the blocking HTTP used for setup.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct SpawnOptions {
    pub bin: PathBuf,
    pub pin: Option<usize>,
    pub max_connections: usize,
    /// Keep the server's default argon2 cost (the `login` scenario); other
    /// scenarios make hashing cheap so setup registrations are quick.
    pub default_argon2: bool,
    pub extra: Vec<String>,
}

/// Cluster mode (SPEC §9): a redis-server of the run's own and `nodes`
/// chatroom processes on it.
pub struct ClusterOptions {
    pub redis_bin: PathBuf,
    pub nodes: usize,
    /// Core of node i: `node_cpus[i % len]` (none: not pinned).
    pub node_cpus: Vec<usize>,
    pub redis_cpu: Option<usize>,
}

/// What the server logged at warn level or above (and slow-consumer closes).
#[derive(Default)]
pub struct LogStats {
    pub lines: u64,
    pub last: Vec<String>,
}

pub struct Server {
    child: Option<Child>,
    pub pid: Option<u32>,
    pub http: SocketAddr,
    pub ws: SocketAddr,
    pub log: Arc<Mutex<LogStats>>,
    _dir: Option<tempfile::TempDir>,
    /// Cluster mode: nodes 1.. (this value is node 0), dropped (killed)
    /// before Redis.
    peers: Vec<Server>,
    redis: Option<RedisServer>,
}

/// Where setup puts its files: tmpfs when there is one (see `Server::spawn`).
fn temp_dir() -> tempfile::TempDir {
    if std::path::Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm")
    } else {
        tempfile::tempdir()
    }
    .expect("temp dir")
}

/// Pins the child to `cpu`, and has the kernel kill it if this process
/// dies first (a run stopped by a signal leaves no server or Redis behind).
fn pin_child(command: &mut Command, cpu: Option<usize>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: sched_setaffinity and prctl on the child itself are
    // async-signal-safe, and the set lives on the stack.
    unsafe {
        command.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if let Some(cpu) = cpu {
                pin_pid(0, cpu);
            }
            Ok(())
        });
    }
}

/// A redis-server of this run's own: a free loopback port, a temporary
/// directory, the settings cluster mode asks for (AOF, fsync on every
/// write, no RDB snapshots); killed when dropped.
pub struct RedisServer {
    child: Child,
    pub pid: u32,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn spawn(bin: &std::path::Path, pin: Option<usize>) -> Result<RedisServer, String> {
        let dir = temp_dir();
        // The kernel's choice of a free port; the listener is closed just
        // before redis-server binds it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let mut command = Command::new(bin);
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir.path())
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args(["--daemonize", "no", "--logfile", ""])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        pin_child(&mut command, pin);
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut redis = RedisServer {
            pid: child.id(),
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if redis.ping() {
                return Ok(redis);
            }
            if let Ok(Some(status)) = redis.child.try_wait() {
                return Err(format!("redis-server exited at start: {status}"));
            }
            if Instant::now() > deadline {
                return Err("redis-server did not answer PING within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        stream.set_read_timeout(Some(Duration::from_secs(1))).ok();
        let mut answer = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG\r\n"
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub fn spawn(options: &SpawnOptions) -> Server {
        // Setup registers thousands of users and creates rooms, each fsynced;
        // on tmpfs that costs nothing, and no scenario measures the disk.
        let dir = temp_dir();
        let mut command = Command::new(&options.bin);
        command
            .args([
                "--http",
                "127.0.0.1:0",
                "--ws",
                "127.0.0.1:0",
                "--ws-rate",
                "0",
            ])
            .args(["--max-connections", &options.max_connections.to_string()])
            .arg("--data-dir")
            .arg(dir.path());
        if !options.default_argon2 {
            command.args(["--argon2-memory-kib", "64", "--argon2-iterations", "1"]);
        }
        command
            .args(&options.extra)
            .env(
                "RUST_LOG",
                "warn,chatroom::server=info,chatroom::reactor::websocket=info",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        pin_child(&mut command, options.pin);
        let mut child = command.spawn().unwrap_or_else(|e| {
            panic!("cannot start {}: {e}", options.bin.display());
        });
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let (mut http, mut ws) = (None, None);
        while http.is_none() || ws.is_none() {
            let line = match lines.next() {
                Some(Ok(line)) => line,
                _ => panic!("the server exited before logging its addresses"),
            };
            let address = || line.rsplit(' ').next().and_then(|a| a.parse().ok());
            if line.contains("HTTP API listening on") {
                http = address();
            } else if line.contains("WebSocket chat listening on") {
                ws = address();
            }
        }
        let log = Arc::new(Mutex::new(LogStats::default()));
        let sink = Arc::clone(&log);
        // Drains the pipe so the server never blocks on logging, and keeps
        // what it said for the report.
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut stats = sink.lock().unwrap();
                stats.lines += 1;
                if stats.last.len() < 8 {
                    stats.last.push(line);
                }
            }
        });
        Server {
            pid: Some(child.id()),
            child: Some(child),
            http: http.unwrap(),
            ws: ws.unwrap(),
            log,
            _dir: Some(dir),
            peers: Vec::new(),
            redis: None,
        }
    }

    /// Cluster mode: a Redis of the run's own and `cluster.nodes` servers
    /// on it (`--redis URL` added to `options.extra`), each answering
    /// `/healthz` before this returns. The value is node 0; the others and
    /// Redis live (and die) with it.
    pub fn spawn_cluster(
        options: &SpawnOptions,
        cluster: &ClusterOptions,
    ) -> Result<Server, String> {
        let redis = RedisServer::spawn(&cluster.redis_bin, cluster.redis_cpu)?;
        let mut nodes = Vec::new();
        for i in 0..cluster.nodes.max(1) {
            let mut extra = vec!["--redis".to_string(), redis.url()];
            extra.extend(options.extra.iter().cloned());
            let node = Server::spawn(&SpawnOptions {
                bin: options.bin.clone(),
                pin: (!cluster.node_cpus.is_empty())
                    .then(|| cluster.node_cpus[i % cluster.node_cpus.len()]),
                max_connections: options.max_connections,
                default_argon2: options.default_argon2,
                extra,
            });
            node.wait_healthy(Duration::from_secs(10))
                .map_err(|e| format!("node {i}: {e}"))?;
            nodes.push(node);
        }
        let mut first = nodes.remove(0);
        first.peers = nodes;
        first.redis = Some(redis);
        Ok(first)
    }

    /// Polls `/healthz` until it answers 200 (a cluster node answers 503
    /// until its Redis links are up and its scripts loaded).
    fn wait_healthy(&self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        let mut last = String::new();
        loop {
            if let Ok(stream) = TcpStream::connect(self.http) {
                stream.set_nodelay(true).ok();
                let mut http = SetupHttp {
                    stream,
                    buffer: Vec::new(),
                };
                let (status, body) = http.get_all(&["/healthz".to_string()], 1).remove(0);
                if status == 200 {
                    return Ok(());
                }
                last = format!("{status} {body}");
            }
            if Instant::now() > deadline {
                return Err(format!("/healthz not 200 within {within:?}: {last}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Setup requests in flight on one connection.
    pub fn setup_depth(&self) -> usize {
        64
    }

    /// Every node's WebSocket address, node 0 first (one for a single server).
    pub fn ws_addrs(&self) -> Vec<SocketAddr> {
        std::iter::once(self.ws)
            .chain(self.peers.iter().map(|p| p.ws))
            .collect()
    }

    /// Cluster mode: the processes whose CPU is reported one by one,
    /// `node 0`, `node 1`, …, `redis`. Empty for a single embedded server.
    pub fn processes(&self) -> Vec<(String, Option<u32>)> {
        let Some(redis) = &self.redis else {
            return Vec::new();
        };
        std::iter::once(self.pid)
            .chain(self.peers.iter().map(|p| p.pid))
            .enumerate()
            .map(|(i, pid)| (format!("node {i}"), pid))
            .chain(std::iter::once(("redis".to_string(), Some(redis.pid))))
            .collect()
    }

    pub fn attach(http: SocketAddr, ws: SocketAddr, pid: Option<u32>) -> Server {
        Server {
            child: None,
            pid,
            http,
            ws,
            log: Arc::new(Mutex::new(LogStats::default())),
            _dir: None,
            peers: Vec::new(),
            redis: None,
        }
    }

    /// The server's CPU; in cluster mode every node's and Redis's, summed.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let mut total = self.pid.and_then(cpu_seconds_of)?;
        for peer in &self.peers {
            total += peer.pid.and_then(cpu_seconds_of)?;
        }
        if let Some(redis) = &self.redis {
            total += cpu_seconds_of(redis.pid)?;
        }
        Some(total)
    }

    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// The smallest of a few reads a little apart: RSS settles after a burst
    /// as the allocator returns memory.
    pub fn settled_rss_kib(&self, reads: usize) -> Option<u64> {
        let mut best = None;
        for i in 0..reads {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(200));
            }
            let v = self.rss_kib()?;
            best = Some(best.map_or(v, |b: u64| b.min(v)));
        }
        best
    }

    pub fn log_summary(&self) -> Option<String> {
        let own = {
            let stats = self.log.lock().unwrap();
            (stats.lines > 0).then(|| {
                format!(
                    "{} line(s) at warn or slow-consumer level, first: {}",
                    stats.lines,
                    stats.last.join(" | ")
                )
            })
        };
        if self.peers.is_empty() {
            return own;
        }
        let all: Vec<String> = std::iter::once(own)
            .chain(self.peers.iter().map(Server::log_summary))
            .enumerate()
            .filter_map(|(i, s)| Some(format!("node {i}: {}", s?)))
            .collect();
        (!all.is_empty()).then(|| all.join("; "))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn pin_pid(pid: i32, cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET stays in bounds
    // for any cpu below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a process (all its threads), in seconds.
pub fn cpu_seconds_of(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields are counted after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

fn rusage(who: libc::c_int) -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut usage);
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(usage.ru_utime) + tv(usage.ru_stime)
    }
}

/// This process's CPU seconds, every thread.
pub fn own_cpu_seconds() -> f64 {
    rusage(libc::RUSAGE_SELF)
}

/// CPU seconds of children this process has waited for (wrk).
pub fn children_cpu_seconds() -> f64 {
    rusage(libc::RUSAGE_CHILDREN)
}

/// A point in time with both sides' CPU clocks, to difference later.
#[derive(Clone)]
pub struct CpuMark {
    at: Instant,
    server: Option<f64>,
    /// Cluster mode: each node's and Redis's own clock.
    processes: Vec<(String, Option<f64>)>,
    own: f64,
    /// (busy, total) jiffies of CPUs 0 and 1 from /proc/stat.
    cores: [(u64, u64); 2],
}

/// Busy and total time of each of the first two CPUs: when the server's
/// core is busy well beyond the server's own share, something else ran
/// there and the run's figures are not the server's alone.
fn core_times() -> [(u64, u64); 2] {
    let mut cores = [(0, 0); 2];
    if let Ok(stat) = std::fs::read_to_string("/proc/stat") {
        for (i, prefix) in ["cpu0 ", "cpu1 "].iter().enumerate() {
            if let Some(line) = stat.lines().find(|l| l.starts_with(prefix)) {
                let v: Vec<u64> = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|x| x.parse().ok())
                    .collect();
                let total: u64 = v.iter().take(8).sum();
                let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
                cores[i] = (total - idle, total);
            }
        }
    }
    cores
}

impl CpuMark {
    pub fn now(server: &Server) -> CpuMark {
        CpuMark {
            at: Instant::now(),
            server: server.cpu_seconds(),
            processes: server
                .processes()
                .into_iter()
                .map(|(name, pid)| (name, pid.and_then(cpu_seconds_of)))
                .collect(),
            own: own_cpu_seconds(),
            cores: core_times(),
        }
    }

    /// (server % of one core, generator % of one core, server CPU seconds, wall seconds).
    pub fn since(&self, later: &CpuMark) -> CpuUse {
        let wall = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let server = match (self.server, later.server) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        CpuUse {
            wall,
            server_seconds: server,
            processes: self
                .processes
                .iter()
                .zip(&later.processes)
                .filter_map(|((name, a), (_, b))| Some((name.clone(), (*b)? - (*a)?)))
                .collect(),
            server_pct: server.map(|s| 100.0 * s / wall),
            gen_pct: 100.0 * (later.own - self.own) / wall,
            core_busy_pct: [0, 1].map(|i| {
                let busy = later.cores[i].0.saturating_sub(self.cores[i].0) as f64;
                let total = later.cores[i].1.saturating_sub(self.cores[i].1) as f64;
                if total > 0.0 {
                    100.0 * busy / total
                } else {
                    0.0
                }
            }),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct CpuUse {
    pub wall: f64,
    pub server_seconds: Option<f64>,
    /// Cluster mode: CPU seconds of `node 0`, `node 1`, …, `redis`.
    pub processes: Vec<(String, f64)>,
    pub server_pct: Option<f64>,
    pub gen_pct: f64,
    pub core_busy_pct: [f64; 2],
}

impl CpuUse {
    pub fn describe(&self) -> String {
        let server = self
            .server_pct
            .map(|p| format!("{p:.0} %"))
            .unwrap_or_else(|| "n/a (give --server-pid)".into());
        let label = if self.processes.is_empty() {
            "server"
        } else {
            "server (nodes and Redis together)"
        };
        format!(
            "{label} {server}, load generator {:.0} % (of one core, over {:.1} s); CPU0 {:.0} % busy, CPU1 {:.0} % busy in all",
            self.gen_pct, self.wall, self.core_busy_pct[0], self.core_busy_pct[1]
        )
    }
}

/// A tiny blocking HTTP/1.1 client for setup: pipelines requests on one
/// keep-alive connection and returns each response's status and body.
pub struct SetupHttp {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl SetupHttp {
    pub fn connect(addr: SocketAddr) -> SetupHttp {
        let stream = TcpStream::connect(addr).expect("connect to the HTTP API");
        stream.set_nodelay(true).ok();
        SetupHttp {
            stream,
            buffer: Vec::new(),
        }
    }

    /// `GET`s every path, at most `depth` in flight.
    pub fn get_all(&mut self, paths: &[String], depth: usize) -> Vec<(u16, String)> {
        let mut answers = Vec::with_capacity(paths.len());
        for chunk in paths.chunks(depth.max(1)) {
            let mut out = Vec::new();
            for path in chunk {
                write!(out, "GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").unwrap();
            }
            self.stream.write_all(&out).expect("write request");
            for _ in chunk {
                answers.push(self.response());
            }
        }
        answers
    }

    fn response(&mut self) -> (u16, String) {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(head)) = response.parse(&self.buffer) {
                let length = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                    .unwrap_or(0usize);
                let status = response.code.unwrap_or(0);
                if self.buffer.len() >= head + length {
                    let body = String::from_utf8_lossy(&self.buffer[head..head + length]).into();
                    self.buffer.drain(..head + length);
                    return (status, body);
                }
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = self.stream.read(&mut chunk).expect("read response");
            assert!(n > 0, "the server closed a setup connection");
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Registers users `name(i)`/`tel(i)`, retrying the ones refused while the
/// hash queue was full; panics on anything else.
pub fn register_users(server: &Server, names: &[(String, String)]) {
    let mut http = SetupHttp::connect(server.http);
    let mut todo: Vec<&(String, String)> = names.iter().collect();
    for _attempt in 0..50 {
        if todo.is_empty() {
            return;
        }
        let paths: Vec<String> = todo
            .iter()
            .map(|(tel, name)| {
                format!("/auth/register?user_tel={tel}&user_name={name}&user_password=bench-secret")
            })
            .collect();
        let answers = http.get_all(&paths, server.setup_depth());
        let mut retry = Vec::new();
        for (user, (status, body)) in todo.iter().zip(answers) {
            if status == 503 {
                retry.push(*user);
            } else if !body.contains("register successfully") && !body.contains("user exist") {
                panic!("register {} failed: {status} {body}", user.1);
            }
        }
        if !retry.is_empty() {
            std::thread::sleep(Duration::from_millis(50));
        }
        todo = retry;
    }
    panic!("registrations kept being refused");
}

pub fn create_rooms(server: &Server, rooms: &[String], capacity: usize) {
    let mut http = SetupHttp::connect(server.http);
    let paths: Vec<String> = rooms
        .iter()
        .map(|r| {
            format!(
                "/chatroom/create?room_name={r}&capacity={}",
                capacity.clamp(1, 10_000)
            )
        })
        .collect();
    for ((status, body), room) in http
        .get_all(&paths, server.setup_depth())
        .into_iter()
        .zip(rooms)
    {
        assert!(
            body.contains("create successfully") || body.contains("already exist"),
            "create {room} failed: {status} {body}"
        );
    }
}

/// Names unique to this run, so runs against one long-lived server
/// (`--connect`) never collide.
pub fn run_tag() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (now.as_millis() as u64 ^ (std::process::id() as u64) << 20) % 1_000_000
}
