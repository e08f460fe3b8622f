//! Load generator for the chatroom server: `cargo bench --bench load --
//! SCENARIO [options]`. One thread drives every connection through a mio
//! loop; the server (spawned from this build's release binary, or another
//! given with --server-bin, or one already running with --connect) and this
//! process are pinned to different cores, and each report gives both sides'
//! CPU so it shows which side was the bound. See BENCHMARKS.md.

mod churn;
mod fanout;
mod hist;
mod login;
mod net;
mod report;
mod scenarios;
mod server;
mod swarm;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

const USAGE: &str = "\
usage: cargo bench --bench load -- SCENARIO [options]

scenarios:
  fanout   R rooms x M members, S senders per room, window W or fixed --rate
  idle     --conns N WebSocket connections joined to rooms of 100 (N=max: as many as fds allow)
  churn    --clients K virtual clients cycling connect/join/msg/leave/close
  login    fixed-rate fan-out (default 100 msg/s into 1x1000) alone, then beside
           --clients K register+login loops at the default argon2 cost
  http     wrk on /chatroom/list and POST /chatroom/create (existing room), 1 and 64 connections
  fresh    RSS of a fresh server with empty data, and after 1 s idle

options:
  --rooms R --members M --senders S   fan-out shape (default 1 x 1000 x 1)
  --window W                          messages per sender not yet delivered to every member (default 16)
  --rate N                            fixed total messages/s instead of a window
  --max-inflight N                    rate mode: cap on a sender's outstanding messages (default 1024)
  --msg-bytes N                       text of each chat message (default 64)
  --users-per-room U                  distinct users per room (default: one per member)
  --seconds T --warmup T              measured time and warm-up before it (default 5 and 1)
  --conns N|max                       idle: connections (default 1000)
  --clients K                         churn: virtual clients (default 32); login: HTTP connections (default 4)
  --sweep KEY=V1,V2,...               repeat the scenario for each value of members, rooms, senders,
                                      window, rate, conns, clients or nodes
  --server-bin PATH                   server binary (default: this build's release chatroom)
  --server-arg ARG                    extra server flag (repeatable)
  --connect HTTP_ADDR,WS_ADDR         use a running server instead (with --server-pid PID for its CPU/RSS)
  --no-pin                            do not pin the server to CPU 0 and this process to CPU 1
  --server-cpu C --client-cpu C       the cores to pin to (default 0 and 1)
  --csv FILE                          append one row per run to FILE

cluster mode (SPEC §9):
  --redis                             start a redis-server of the run's own (free loopback port, temp dir,
                                      --appendonly yes --appendfsync always --save \"\") and run the
                                      server as cluster node(s) on it (--redis URL); killed at the end
  --nodes N                           cluster nodes (default 1); fanout spreads each room's members over
                                      them round-robin (the senders on node 0), other scenarios use node 0
  --node-cpus C0,C1,...               core of node i: the (i mod len)-th (default: --server-cpu for all)
  --redis-cpu C                       core of redis-server (default: --server-cpu)
  --redis-bin PATH                    redis-server binary (default: redis-server on PATH)

with no scenario this text is printed and nothing runs.";

#[derive(Clone, Debug)]
pub struct Args {
    pub scenario: String,
    pub rooms: usize,
    pub members: usize,
    pub senders: usize,
    pub window: u32,
    pub rate: Option<f64>,
    pub max_inflight: u32,
    pub msg_bytes: usize,
    pub users_per_room: Option<usize>,
    pub seconds: f64,
    pub warmup: f64,
    pub conns: Option<usize>,
    pub clients: Option<usize>,
    pub sweep: Option<(String, Vec<String>)>,
    pub server_bin: PathBuf,
    pub server_args: Vec<String>,
    pub connect: Option<(SocketAddr, SocketAddr)>,
    pub server_pid: Option<u32>,
    pub pin: bool,
    pub server_cpu: usize,
    pub client_cpu: usize,
    pub csv: Option<PathBuf>,
    pub redis: bool,
    pub redis_bin: PathBuf,
    pub nodes: usize,
    pub node_cpus: Option<Vec<usize>>,
    pub redis_cpu: Option<usize>,
}

impl Args {
    pub fn seconds(&self) -> Duration {
        Duration::from_secs_f64(self.seconds)
    }

    pub fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup)
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let bad = |e: &dyn std::fmt::Display| format!("--{key} {value}: {e}");
        match key {
            "rooms" => self.rooms = value.parse().map_err(|e| bad(&e))?,
            "members" => self.members = value.parse().map_err(|e| bad(&e))?,
            "senders" => self.senders = value.parse().map_err(|e| bad(&e))?,
            "window" => self.window = value.parse().map_err(|e| bad(&e))?,
            "rate" => self.rate = Some(value.parse().map_err(|e| bad(&e))?),
            "max-inflight" => self.max_inflight = value.parse().map_err(|e| bad(&e))?,
            "msg-bytes" => self.msg_bytes = value.parse().map_err(|e| bad(&e))?,
            "users-per-room" => self.users_per_room = Some(value.parse().map_err(|e| bad(&e))?),
            "seconds" => self.seconds = value.parse().map_err(|e| bad(&e))?,
            "warmup" => self.warmup = value.parse().map_err(|e| bad(&e))?,
            "conns" => {
                self.conns = Some(if value == "max" {
                    usize::MAX
                } else {
                    value.parse().map_err(|e| bad(&e))?
                })
            }
            "clients" => self.clients = Some(value.parse().map_err(|e| bad(&e))?),
            "sweep" => {
                let (k, vs) = value
                    .split_once('=')
                    .ok_or_else(|| bad(&"expected KEY=V1,V2"))?;
                self.sweep = Some((k.to_string(), vs.split(',').map(str::to_string).collect()));
            }
            "server-bin" => self.server_bin = value.into(),
            "server-arg" => self.server_args.push(value.to_string()),
            "connect" => {
                let (h, w) = value
                    .split_once(',')
                    .ok_or_else(|| bad(&"expected HTTP_ADDR,WS_ADDR"))?;
                self.connect = Some((
                    h.parse().map_err(|e| bad(&e))?,
                    w.parse().map_err(|e| bad(&e))?,
                ));
            }
            "server-pid" => self.server_pid = Some(value.parse().map_err(|e| bad(&e))?),
            "server-cpu" => self.server_cpu = value.parse().map_err(|e| bad(&e))?,
            "client-cpu" => self.client_cpu = value.parse().map_err(|e| bad(&e))?,
            "csv" => self.csv = Some(value.into()),
            "nodes" => {
                self.nodes = value.parse().map_err(|e| bad(&e))?;
                if !(1..=64).contains(&self.nodes) {
                    return Err(bad(&"between 1 and 64"));
                }
            }
            "node-cpus" => {
                self.node_cpus = Some(
                    value
                        .split(',')
                        .map(|c| c.parse().map_err(|e| bad(&e)))
                        .collect::<Result<_, _>>()?,
                )
            }
            "redis-cpu" => self.redis_cpu = Some(value.parse().map_err(|e| bad(&e))?),
            "redis-bin" => self.redis_bin = value.into(),
            _ => return Err(format!("unknown option --{key}")),
        }
        Ok(())
    }

    fn parse(argv: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
        let mut args = Args {
            scenario: String::new(),
            rooms: 1,
            members: 1000,
            senders: 1,
            window: 16,
            rate: None,
            max_inflight: 1024,
            msg_bytes: 64,
            users_per_room: None,
            seconds: 5.0,
            warmup: 1.0,
            conns: None,
            clients: None,
            sweep: None,
            server_bin: PathBuf::from(env!("CARGO_BIN_EXE_chatroom")),
            server_args: Vec::new(),
            connect: None,
            server_pid: None,
            pin: true,
            server_cpu: 0,
            client_cpu: 1,
            csv: None,
            redis: false,
            redis_bin: PathBuf::from("redis-server"),
            nodes: 1,
            node_cpus: None,
            redis_cpu: None,
        };
        let mut argv = argv.peekable();
        while let Some(arg) = argv.next() {
            match arg.as_str() {
                // cargo bench passes --bench to every harness = false bench.
                "--bench" => {}
                "--no-pin" => args.pin = false,
                "--redis" => args.redis = true,
                "-h" | "--help" => return Ok(None),
                flag if flag.starts_with("--") => {
                    let (key, value) = match flag[2..].split_once('=') {
                        Some((k, v)) => (k.to_string(), v.to_string()),
                        None => (
                            flag[2..].to_string(),
                            argv.next().ok_or_else(|| format!("{flag} needs a value"))?,
                        ),
                    };
                    args.set(&key, &value)?;
                }
                scenario if args.scenario.is_empty() => args.scenario = scenario.to_string(),
                other => return Err(format!("unexpected argument {other}")),
            }
        }
        if args.nodes > 1 && !args.redis {
            return Err("--nodes needs --redis".into());
        }
        if args.redis && args.connect.is_some() {
            return Err("--redis starts its own nodes: not with --connect".into());
        }
        Ok((!args.scenario.is_empty()).then_some(args))
    }
}

fn main() {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("{e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    net::raise_fd_limit();
    if args.pin && !server::pin_pid(0, args.client_cpu) {
        eprintln!(
            "warning: could not pin the load generator to CPU {}",
            args.client_cpu
        );
    }
    let runs: Vec<Args> = match &args.sweep {
        None => vec![args.clone()],
        Some((key, values)) => {
            let mut runs = Vec::new();
            for value in values {
                let mut run = args.clone();
                if let Err(e) = run.set(key, value) {
                    eprintln!("{e}");
                    std::process::exit(2);
                }
                runs.push(run);
            }
            runs
        }
    };
    let mut failed = false;
    for run in &runs {
        let reports = match run.scenario.as_str() {
            "fanout" => scenarios::fanout(run),
            "idle" => scenarios::idle(run),
            "churn" => scenarios::churn(run),
            "login" => scenarios::login(run),
            "http" => scenarios::http(run),
            "fresh" => scenarios::fresh(run),
            other => {
                eprintln!("unknown scenario {other}\n\n{USAGE}");
                std::process::exit(2);
            }
        };
        for (report, ok) in reports {
            report.print();
            failed |= !ok;
            if let Some(path) = &run.csv {
                if let Err(e) = report.append_csv(path) {
                    eprintln!("cannot append to {}: {e}", path.display());
                }
            }
        }
    }
    if failed {
        eprintln!("\nFAILED: at least one run lost deliveries or saw errors (see above)");
        std::process::exit(1);
    }
}
