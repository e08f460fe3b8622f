//! The cost floor of fixed-rate fan-out on this machine: a sender that, at a
//! fixed rate, writes the same 170-byte frame to each of N connected sockets
//! (one `send` per delivery, nothing else), and a reader that drains them
//! with epoll. The sender's CPU is what the kernel charges for delivering
//! one TCP segment per recipient, which any server pays at rates too low to
//! batch; BENCHMARKS.md compares chatroom's fixed-rate scenario with it.
//!
//! `benches/fanout-floor.sh` runs both sides pinned to separate cores:
//!   fanout_floor send ADDR CONNS RATE SECONDS   (prints its CPU %)
//!   fanout_floor read ADDR CONNS

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

const FRAME_BYTES: usize = 170;

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass and nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn send(addr: SocketAddr, conns: usize, rate: f64, seconds: f64) -> io::Result<()> {
    let listener = std::net::TcpListener::bind(addr)?;
    let mut sockets = Vec::with_capacity(conns);
    while sockets.len() < conns {
        let (socket, _) = listener.accept()?;
        socket.set_nodelay(true)?;
        socket.set_nonblocking(true)?;
        sockets.push(socket);
    }
    let frame = [b'x'; FRAME_BYTES];
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let cpu_start = cpu_seconds();
    let mut next = start;
    let mut messages = 0u64;
    let mut refused = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        for socket in &mut sockets {
            match socket.write(&frame) {
                Ok(n) if n == FRAME_BYTES => {}
                Ok(n) => eprintln!("short write {n}"),
                Err(e) => {
                    if refused == 0 {
                        eprintln!("first refusal after {messages} messages: {e}");
                    }
                    refused += 1
                }
            }
        }
        messages += 1;
        next += interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_start;
    let deliveries = messages * conns as u64;
    println!(
        "fanout floor: {messages} messages x {conns} connections in {wall:.1} s: \
         sender CPU {:.0} % of a core, {:.2} us per delivery ({refused} writes refused)",
        cpu / wall * 100.0,
        cpu / deliveries as f64 * 1e6,
    );
    Ok(())
}

fn read(addr: SocketAddr, conns: usize) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut sockets = Vec::with_capacity(conns);
    for index in 0..conns {
        let mut socket = TcpStream::from_std(connect_when_listening(addr)?);
        poll.registry()
            .register(&mut socket, Token(index), Interest::READABLE)?;
        sockets.push(Some(socket));
    }
    let mut open = conns;
    let mut buffer = vec![0u8; 256 * 1024];
    let mut events = Events::with_capacity(1024);
    while open > 0 {
        poll.poll(&mut events, None)?;
        for event in events.iter() {
            let Some(slot) = sockets.get_mut(event.token().0) else {
                continue;
            };
            let Some(socket) = slot.as_mut() else {
                continue;
            };
            loop {
                match socket.read(&mut buffer) {
                    Ok(0) => {
                        *slot = None;
                        open -= 1;
                        break;
                    }
                    Ok(n) if n < buffer.len() => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        *slot = None;
                        open -= 1;
                        break;
                    }
                }
            }
        }
    }
    Ok(())
}

/// The sender may still be starting: retry for a few seconds.
fn connect_when_listening(addr: SocketAddr) -> io::Result<std::net::TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::net::TcpStream::connect(addr) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            result => return result,
        }
    }
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "usage: fanout_floor send ADDR CONNS RATE SECONDS | read ADDR CONNS",
        )
    };
    let arg = |i: usize| args.get(i).ok_or_else(usage);
    let addr: SocketAddr = arg(2)?.parse().map_err(|_| usage())?;
    let conns: usize = arg(3)?.parse().map_err(|_| usage())?;
    match arg(1)?.as_str() {
        "send" => {
            let rate: f64 = arg(4)?.parse().map_err(|_| usage())?;
            let seconds: f64 = arg(5)?.parse().map_err(|_| usage())?;
            send(addr, conns, rate, seconds)
        }
        "read" => read(addr, conns),
        _ => Err(usage()),
    }
}
