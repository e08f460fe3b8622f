//! Each scenario: set the server up, run, and turn the figures into reports.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::fanout::{self, FanoutOutcome, FanoutParams, Phase, PhaseResult};
use crate::report::{num, us, Report};
use crate::server::{self, ClusterOptions, Server, SpawnOptions};
use crate::Args;

type Runs = Vec<(Report, bool)>;

fn start_server(args: &Args, max_connections: usize, default_argon2: bool) -> Server {
    if let Some((http, ws)) = args.connect {
        return Server::attach(http, ws, args.server_pid);
    }
    let options = SpawnOptions {
        bin: args.server_bin.clone(),
        pin: args.pin.then_some(args.server_cpu),
        max_connections,
        default_argon2,
        extra: args.server_args.clone(),
    };
    if !args.redis {
        return Server::spawn(&options);
    }
    let cluster = ClusterOptions {
        redis_bin: args.redis_bin.clone(),
        nodes: args.nodes,
        node_cpus: match (&args.node_cpus, args.pin) {
            (_, false) => Vec::new(),
            (Some(cpus), true) => cpus.clone(),
            (None, true) => vec![args.server_cpu],
        },
        redis_cpu: args.pin.then(|| args.redis_cpu.unwrap_or(args.server_cpu)),
    };
    Server::spawn_cluster(&options, &cluster).unwrap_or_else(|e| {
        eprintln!("cluster mode: {e}");
        std::process::exit(1);
    })
}

/// The run's mode for the CSV `note` column, so medians group by it.
fn mode_note(report: &mut Report, args: &Args) {
    if args.redis {
        report.field("nodes", args.nodes);
        let mut note = format!("redis nodes={}", args.nodes);
        if let (Some(cpus), true) = (&args.node_cpus, args.pin) {
            let cpus: Vec<String> = cpus.iter().map(usize::to_string).collect();
            note.push_str(&format!(" node-cpus={}", cpus.join("+")));
        }
        if let (Some(cpu), true) = (args.redis_cpu, args.pin) {
            note.push_str(&format!(" redis-cpu={cpu}"));
        }
        report.field("note", note);
    }
}

fn server_notes(report: &mut Report, server: &Server) -> bool {
    match server.log_summary() {
        Some(summary) => {
            report.line("SERVER LOG", summary);
            false
        }
        None => true,
    }
}

fn cpu_fields(report: &mut Report, cpu: &server::CpuUse) {
    report.line("CPU", cpu.describe());
    if let Some(p) = cpu.server_pct {
        report.field("server_cpu_pct", format!("{p:.1}"));
    }
    report.field("gen_cpu_pct", format!("{:.1}", cpu.gen_pct));
}

fn latency_line(report: &mut Report, label: &str, l: &crate::hist::Latency) {
    report.line(
        label,
        format!(
            "p50 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
            us(l.p50),
            us(l.p99),
            us(l.p999),
            us(l.max),
            num(l.count as f64)
        ),
    );
}

fn outcome_lines(report: &mut Report, outcome: &FanoutOutcome) -> bool {
    report.line(
        "deliveries",
        format!(
            "{} expected, {} received, lost {}{}",
            num(outcome.expected as f64),
            num(outcome.delivered as f64),
            outcome.lost,
            if outcome.drained {
                ""
            } else {
                " (NOT DRAINED within 10 s)"
            }
        ),
    );
    report.field("lost", outcome.lost);
    report.field("errors", outcome.problems.len());
    if outcome.behind > 0 {
        report.line(
            "rate not met",
            format!(
                "{} due messages skipped: senders had --max-inflight outstanding",
                num(outcome.behind as f64)
            ),
        );
    }
    for problem in &outcome.problems {
        report.line("PROBLEM", problem.clone());
    }
    outcome.lost == 0 && outcome.problems.is_empty() && outcome.drained
}

fn fanout_params(args: &Args) -> FanoutParams {
    FanoutParams {
        rooms: args.rooms,
        members: args.members,
        senders: args.senders,
        window: args.window,
        rate: args.rate,
        msg_bytes: args.msg_bytes,
        users_per_room: args.users_per_room.unwrap_or(args.members),
        max_inflight: args.max_inflight,
    }
}

pub fn fanout(args: &Args) -> Runs {
    let params = fanout_params(args);
    let server = start_server(args, params.rooms * params.members + 100, false);
    let shape = format!("{}x{}x{}", params.rooms, params.members, params.senders);
    let mode = match params.rate {
        Some(rate) => format!("rate {} msg/s", num(rate)),
        None => format!("window {}", params.window),
    };
    let cluster = if args.redis {
        format!(", cluster: {} node(s) on Redis", args.nodes)
    } else {
        String::new()
    };
    let mut report = Report::new(format!("fanout {shape} {mode}{cluster}"));
    mode_note(&mut report, args);
    report.field(
        "scenario",
        if params.rate.is_some() {
            "fanout-rate"
        } else {
            "fanout"
        },
    );
    report.field("rooms", params.rooms);
    report.field("members", params.members);
    report.field("senders", params.senders);
    match params.rate {
        Some(rate) => report.field("offered_rate", rate),
        None => report.field("window", params.window),
    }
    let phases = [Phase {
        name: "fanout".into(),
        warmup: args.warmup(),
        seconds: args.seconds(),
        login_clients: 0,
    }];
    let outcome = match fanout::run(&server, &params, &phases) {
        Ok(outcome) => outcome,
        Err(e) => {
            report.line("SETUP FAILED", e);
            server_notes(&mut report, &server);
            return vec![(report, false)];
        }
    };
    let phase = &outcome.phases[0];
    phase_lines(&mut report, phase, params.members);
    let mut ok = outcome_lines(&mut report, &outcome);
    if outcome.join_announcements_delta != 0 {
        report.line(
            "join announcements",
            format!(
                "{:+} beyond the count a joiner's predecessors are owed",
                outcome.join_announcements_delta
            ),
        );
    }
    if let Some(rss) = server.rss_kib() {
        report.line("server RSS after", format!("{} KiB", num(rss as f64)));
        report.field("server_rss_kib", rss);
    }
    ok &= server_notes(&mut report, &server);
    vec![(report, ok)]
}

fn phase_lines(report: &mut Report, phase: &PhaseResult, _members: usize) {
    let secs = phase.cpu.wall;
    let deliveries = phase.deliveries as f64 / secs;
    report.line("deliveries/s", num(deliveries));
    report.line("messages sent/s", num(phase.sent as f64 / secs));
    report.field("seconds", format!("{secs:.2}"));
    report.field("deliveries_per_s", format!("{deliveries:.0}"));
    report.field("msgs_per_s", format!("{:.0}", phase.sent as f64 / secs));
    latency_line(report, "latency", &phase.latency);
    report.field("p50_us", format!("{:.1}", phase.latency.p50));
    report.field("p99_us", format!("{:.1}", phase.latency.p99));
    report.field("p999_us", format!("{:.1}", phase.latency.p999));
    report.field("max_us", format!("{:.1}", phase.latency.max));
    cpu_fields(report, &phase.cpu);
    if let (Some(s), true) = (phase.cpu.server_seconds, phase.deliveries > 0) {
        let per = s * 1e9 / phase.deliveries as f64;
        report.line("server CPU per delivery", format!("{per:.0} ns"));
        report.field("server_us_per_op", format!("{:.4}", per / 1e3));
    }
    process_lines(report, phase);
}

/// Cluster mode: each node's CPU per delivery (to its own members) and per
/// message, and Redis's per message.
fn process_lines(report: &mut Report, phase: &PhaseResult) {
    if phase.cpu.processes.is_empty() {
        return;
    }
    let wall = phase.cpu.wall;
    let messages = phase.sent.max(1) as f64;
    let (mut pcts, mut per_delivery, mut per_msg) = (Vec::new(), Vec::new(), Vec::new());
    for (i, (name, seconds)) in phase.cpu.processes.iter().enumerate() {
        let pct = 100.0 * seconds / wall;
        let us_per_msg = seconds * 1e6 / messages;
        match phase.deliveries_by_node.get(i).filter(|_| name != "redis") {
            Some(&deliveries) => {
                let ns = seconds * 1e9 / deliveries.max(1) as f64;
                report.line(
                    format!("CPU {name}"),
                    format!(
                        "{pct:.0} % of a core, {ns:.0} ns per delivery ({} to its members), \
                         {us_per_msg:.1} µs per message",
                        num(deliveries as f64)
                    ),
                );
                pcts.push(format!("{pct:.1}"));
                per_delivery.push(format!("{ns:.0}"));
                per_msg.push(format!("{us_per_msg:.2}"));
            }
            None => {
                report.line(
                    format!("CPU {name}"),
                    format!(
                        "{pct:.0} % of a core, {us_per_msg:.1} µs per message, {:.1} ns per delivery",
                        seconds * 1e9 / phase.deliveries.max(1) as f64
                    ),
                );
                report.field("redis_cpu_pct", format!("{pct:.1}"));
                report.field("redis_us_per_msg", format!("{us_per_msg:.2}"));
            }
        }
    }
    report.field("node_cpu_pct", pcts.join("/"));
    report.field("node_ns_per_delivery", per_delivery.join("/"));
    report.field("node_us_per_msg", per_msg.join("/"));
}

pub fn login(args: &Args) -> Runs {
    let mut params = fanout_params(args);
    params.rate = Some(args.rate.unwrap_or(100.0));
    params.users_per_room = args.users_per_room.unwrap_or(1);
    let clients = args.clients.unwrap_or(4);
    let server = start_server(args, params.rooms * params.members + clients + 100, true);
    let phases = [
        Phase {
            name: "fan-out alone".into(),
            warmup: args.warmup(),
            seconds: args.seconds(),
            login_clients: 0,
        },
        Phase {
            name: format!("with {clients} register+login loops"),
            warmup: args.warmup(),
            seconds: args.seconds(),
            login_clients: clients,
        },
    ];
    let mut reports = Vec::new();
    let outcome = match fanout::run(&server, &params, &phases) {
        Ok(outcome) => outcome,
        Err(e) => {
            let mut report = Report::new("login");
            report.line("SETUP FAILED", e);
            return vec![(report, false)];
        }
    };
    let shape = format!("{}x{}x{}", params.rooms, params.members, params.senders);
    for phase in &outcome.phases {
        let mut report = Report::new(format!(
            "login: fanout {shape} at {} msg/s, {}",
            num(params.rate.unwrap()),
            phase.name
        ));
        report.field(
            "scenario",
            if phase.login_ops > 0 || phase.name.starts_with("with") {
                "login-busy"
            } else {
                "login-idle"
            },
        );
        report.field("rooms", params.rooms);
        report.field("members", params.members);
        report.field("senders", params.senders);
        report.field("offered_rate", params.rate.unwrap());
        report.field("conns", clients);
        phase_lines(&mut report, phase, params.members);
        let ops = phase.login_ops as f64 / phase.cpu.wall;
        report.line(
            "register+login ops/s",
            format!("{} ({} failed)", num(ops), phase.login_failures),
        );
        if phase.login_latency.count > 0 {
            latency_line(&mut report, "login op latency", &phase.login_latency);
        }
        report.field("ops_per_s", format!("{ops:.1}"));
        reports.push((report, true));
    }
    if let Some((last, ok)) = reports.last_mut() {
        *ok = outcome_lines(last, &outcome) && server_notes(last, &server);
        let (a, b) = (&outcome.phases[0].latency, &outcome.phases[1].latency);
        last.line(
            "fan-out p99 alone → with logins",
            format!(
                "{} → {} (p50 {} → {})",
                us(a.p99),
                us(b.p99),
                us(a.p50),
                us(b.p50)
            ),
        );
    }
    reports
}

pub fn idle(args: &Args) -> Runs {
    let wanted = args.conns.unwrap_or(1000);
    let fd_limit = crate::net::raise_fd_limit() as usize;
    // Leave this process and the server a few descriptors of their own.
    let target = wanted.min(fd_limit.saturating_sub(20));
    let per_room = 100;
    let rooms_n = target.div_ceil(per_room);
    let server = start_server(args, target + 1000, false);
    let label = if wanted == usize::MAX {
        "max".to_string()
    } else {
        num(wanted as f64)
    };
    let mut report = Report::new(format!(
        "idle: {label} joined WebSocket connections, rooms of {per_room}"
    ));
    report.field("scenario", "idle");
    mode_note(&mut report, args);
    std::thread::sleep(Duration::from_millis(300));
    let fresh = server.settled_rss_kib(3);
    let tag = server::run_tag();
    let names: Vec<(String, String)> = (0..target)
        .map(|i| (format!("4{tag:06}{i:07}"), format!("i{tag}u{i}")))
        .collect();
    server::register_users(&server, &names);
    let rooms: Vec<String> = (0..rooms_n).map(|r| format!("i{tag}r{r}")).collect();
    server::create_rooms(&server, &rooms, per_room);
    std::thread::sleep(Duration::from_millis(300));
    let baseline = server.settled_rss_kib(3);
    let began = Instant::now();
    let mut swarm = crate::swarm::Swarm::new();
    // Node 0 holds every connection: the figure is its RSS per connection.
    let result = swarm.join_rooms(&[server.ws], &rooms, per_room, target, |r, m| {
        format!("i{tag}u{}", r * per_room + m)
    });
    let held = swarm.conns.len();
    let setup = began.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let after = server.settled_rss_kib(5);
    report.line(
        "connections held",
        format!(
            "{} of {} tried (fd limit {fd_limit}), opened and joined in {:.1} s",
            num(held as f64),
            num(target as f64),
            setup.as_secs_f64()
        ),
    );
    report.field("conns", held);
    let mut ok = true;
    if let Err(e) = &result {
        report.line(
            if wanted == usize::MAX {
                "stopped by"
            } else {
                "ERROR"
            },
            e.clone(),
        );
        ok = wanted == usize::MAX;
    }

    if let (Some(fresh), Some(baseline), Some(after)) = (fresh, baseline, after) {
        report.line("server RSS fresh", format!("{} KiB", num(fresh as f64)));
        report.line(
            "server RSS with users and rooms",
            format!("{} KiB", num(baseline as f64)),
        );
        report.line(
            "server RSS with connections",
            format!("{} KiB", num(after as f64)),
        );
        let per = (after.saturating_sub(baseline) * 1024) as f64 / held.max(1) as f64;
        report.line("per joined connection", format!("{per:.0} bytes"));
        report.field("server_rss_kib", after);
        report.field("bytes_per_conn", format!("{per:.0}"));
    }
    if wanted == usize::MAX {
        // Running out of descriptors is the point of this run; the server's
        // warnings about it are expected.
        if let Some(summary) = server.log_summary() {
            report.line("server log", summary);
        }
        return vec![(report, ok)];
    }
    ok &= server_notes(&mut report, &server);
    vec![(report, ok)]
}

pub fn churn(args: &Args) -> Runs {
    let clients = args.clients.unwrap_or(32);
    let server = start_server(args, clients * 4 + 100, false);
    let result = crate::churn::run(&server, clients, args.warmup(), args.seconds());
    let mut report = Report::new(format!("churn: {clients} virtual clients"));
    report.field("scenario", "churn");
    report.field("conns", clients);
    let rate = result.cycles as f64 / result.cpu.wall;
    report.line("cycles/s", num(rate));
    report.field("ops_per_s", format!("{rate:.0}"));
    latency_line(&mut report, "cycle latency", &result.latency);
    report.field("p50_us", format!("{:.1}", result.latency.p50));
    report.field("p99_us", format!("{:.1}", result.latency.p99));
    report.field("p999_us", format!("{:.1}", result.latency.p999));
    report.field("max_us", format!("{:.1}", result.latency.max));
    cpu_fields(&mut report, &result.cpu);
    if let (Some(s), true) = (result.cpu.server_seconds, result.cycles > 0) {
        let per = s * 1e6 / result.cycles as f64;
        report.line("server CPU per cycle", format!("{per:.1} µs"));
        report.field("server_us_per_op", format!("{per:.2}"));
    }
    report.field("errors", result.errors);
    for e in &result.first_errors {
        report.line("PROBLEM", e.clone());
    }
    let ok = result.errors == 0 && server_notes(&mut report, &server);
    vec![(report, ok)]
}

pub fn fresh(args: &Args) -> Runs {
    let server = start_server(args, 10_000, false);
    let mut report = Report::new("fresh server, empty data");
    report.field("scenario", "fresh");
    let at_start = server.rss_kib();
    std::thread::sleep(Duration::from_secs(1));
    let later = server.rss_kib();
    if let (Some(a), Some(b)) = (at_start, later) {
        report.line("RSS at start", format!("{} KiB", num(a as f64)));
        report.line("RSS after 1 s idle", format!("{} KiB", num(b as f64)));
        report.field("server_rss_kib", b);
    }
    vec![(report, true)]
}

/// wrk's figures from its `--latency` output.
struct Wrk {
    requests: f64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    errors: String,
}

fn wrk_time(text: &str) -> Option<f64> {
    let unit = text.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.');
    let value: f64 = text[..text.len() - unit.len()].parse().ok()?;
    Some(match unit {
        "us" => value,
        "ms" => value * 1e3,
        "s" => value * 1e6,
        "m" => value * 60e6,
        _ => return None,
    })
}

fn parse_wrk(out: &str) -> Option<Wrk> {
    let mut wrk = Wrk {
        requests: 0.0,
        rps: 0.0,
        p50_us: 0.0,
        p99_us: 0.0,
        errors: String::new(),
    };
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", t] => wrk.p50_us = wrk_time(t)?,
            ["99%", t] => wrk.p99_us = wrk_time(t)?,
            ["Requests/sec:", r] => wrk.rps = r.parse().ok()?,
            [n, "requests", "in", ..] => wrk.requests = n.parse().ok()?,
            ["Socket", "errors:", ..] | ["Non-2xx", ..] => wrk.errors.push_str(line.trim()),
            _ => {}
        }
    }
    (wrk.rps > 0.0).then_some(wrk)
}

pub fn http(args: &Args) -> Runs {
    if Command::new("wrk")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        let mut report = Report::new("http");
        report.line("SKIPPED", "wrk is not installed (apt-get install -y wrk)");
        return vec![(report, false)];
    }
    let server = start_server(args, 1000, false);
    let tag = server::run_tag();
    let rooms: Vec<String> = (0..20).map(|i| format!("h{tag}r{i}")).collect();
    server::create_rooms(&server, &rooms, 100);
    // Creating a room that exists: the body is parsed and validated and the
    // room looked up, but nothing is hashed, written or changed, so every
    // repetition costs the same.
    let script = std::env::temp_dir().join(format!("chatroom-wrk-{}.lua", std::process::id()));
    let body = format!("room_name={}", rooms[0]);
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = \"{body}\"\nwrk.headers[\"Content-Type\"] = \"application/x-www-form-urlencoded\"\n"
        ),
    )
    .expect("write the wrk script");
    let mut reports = Vec::new();
    let seconds = args.seconds.ceil().max(1.0) as u64;
    for (name, path, post) in [
        ("GET /chatroom/list", "/chatroom/list", false),
        ("POST /chatroom/create (existing)", "/chatroom/create", true),
    ] {
        for conns in [1usize, 64] {
            let mut command = Command::new(if args.pin { "taskset" } else { "wrk" });
            if args.pin {
                command.args(["-c", &args.client_cpu.to_string(), "wrk"]);
            }
            command.args([
                "-t1",
                &format!("-c{conns}"),
                &format!("-d{seconds}s"),
                "--latency",
            ]);
            if post {
                command.arg("-s").arg(&script);
            }
            command.arg(format!("http://{}{path}", server.http));
            let before = server::CpuMark::now(&server);
            let wrk_before = server::children_cpu_seconds();
            let output = command.output().expect("run wrk");
            let cpu = before.since(&server::CpuMark::now(&server));
            let wrk_cpu = server::children_cpu_seconds() - wrk_before;
            let text = String::from_utf8_lossy(&output.stdout);
            let mut report = Report::new(format!("http: {name}, {conns} keep-alive connection(s)"));
            report.field("scenario", if post { "http-post" } else { "http-list" });
            report.field("conns", conns);
            let Some(wrk) = parse_wrk(&text) else {
                report.line(
                    "WRK FAILED",
                    format!("{text}{}", String::from_utf8_lossy(&output.stderr)),
                );
                reports.push((report, false));
                continue;
            };
            report.line("requests/s", num(wrk.rps));
            report.line(
                "latency",
                format!("p50 {}  p99 {}", us(wrk.p50_us), us(wrk.p99_us)),
            );
            let server_pct = cpu
                .server_pct
                .map(|p| format!("{p:.0} %"))
                .unwrap_or_else(|| "n/a".into());
            report.line(
                "CPU",
                format!(
                    "server {server_pct}, wrk {:.0} % (of one core, over {:.1} s)",
                    100.0 * wrk_cpu / cpu.wall,
                    cpu.wall
                ),
            );
            if let Some(s) = cpu.server_seconds {
                let per = s * 1e6 / wrk.requests.max(1.0);
                report.line("server CPU per request", format!("{per:.2} µs"));
                report.field("server_us_per_op", format!("{per:.3}"));
            }
            if !wrk.errors.is_empty() {
                report.line("PROBLEM", wrk.errors.clone());
            }
            report.field("ops_per_s", format!("{:.0}", wrk.rps));
            report.field("p50_us", format!("{:.1}", wrk.p50_us));
            report.field("p99_us", format!("{:.1}", wrk.p99_us));
            if let Some(p) = cpu.server_pct {
                report.field("server_cpu_pct", format!("{p:.1}"));
            }
            report.field("gen_cpu_pct", format!("{:.1}", 100.0 * wrk_cpu / cpu.wall));
            report.field("seconds", seconds);
            let ok = wrk.errors.is_empty();
            reports.push((report, ok));
        }
    }
    let _ = std::fs::remove_file(&script);
    reports
}
