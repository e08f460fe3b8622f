//! Sockets and WebSocket frames. The handshake and the frame layer are
//! tungstenite's (an implementation independent of the server's codec);
//! everything else is kept cheap enough to read millions of frames a second
//! on one core: one shared read buffer, headers parsed in place, no copy of
//! payloads and no allocation per frame.

use std::io::{self, Cursor, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::FromRawFd;

use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};

/// The client address for connection number `i`: 127.0.0.2 upwards, a new
/// address every 10 000 connections, so the ephemeral ports of one source
/// address never run out.
pub fn source_for(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (i / 10_000 % 250) as u8)
}

/// A TCP socket bound to `source` and connecting to `to`; with `nonblocking`
/// the connect may still be in progress.
pub fn connect_from(
    source: Ipv4Addr,
    to: SocketAddr,
    nonblocking: bool,
) -> io::Result<std::net::TcpStream> {
    let SocketAddr::V4(to) = to else {
        return Err(io::Error::new(ErrorKind::InvalidInput, "IPv4 only"));
    };
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let mut kind = libc::SOCK_STREAM | libc::SOCK_CLOEXEC;
    if nonblocking {
        kind |= libc::SOCK_NONBLOCK;
    }
    // SAFETY: plain socket calls on an fd this function owns; the fd is
    // closed on every error path and otherwise handed to TcpStream.
    unsafe {
        let fd = libc::socket(libc::AF_INET, kind, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fail = |fd| {
            let e = io::Error::last_os_error();
            libc::close(fd);
            Err(e)
        };
        let one: libc::c_int = 1;
        let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // Let connect() pick the port for the whole 4-tuple rather than
        // bind() reserving one per source address.
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            len,
        );
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            len,
        );
        let from = sockaddr(source, 0);
        let size = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(fd, (&from as *const libc::sockaddr_in).cast(), size) != 0 {
            return fail(fd);
        }
        let dest = sockaddr(*to.ip(), to.port());
        if libc::connect(fd, (&dest as *const libc::sockaddr_in).cast(), size) != 0
            && io::Error::last_os_error().raw_os_error() != Some(libc::EINPROGRESS)
        {
            return fail(fd);
        }
        Ok(std::net::TcpStream::from_raw_fd(fd))
    }
}

/// Opens a WebSocket with tungstenite's blocking client handshake and hands
/// back the raw stream, nonblocking, for the frame-level loop. The server
/// sends nothing before the client's first packet, so tungstenite holds no
/// bytes past the handshake that would be lost here.
pub fn open_ws(index: usize, ws: SocketAddr) -> io::Result<mio::net::TcpStream> {
    let stream = connect_from(source_for(index), ws, false)?;
    // A server out of file descriptors leaves connections in its backlog
    // unanswered; the `idle` scenario must notice that, not hang.
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let (socket, _response) = tungstenite::client::client(format!("ws://{ws}/"), stream)
        .map_err(|e| io::Error::other(format!("WebSocket handshake: {e}")))?;
    let stream = socket.into_inner();
    stream.set_nonblocking(true)?;
    Ok(mio::net::TcpStream::from_std(stream))
}

/// Appends one masked client text frame, formatted by tungstenite.
pub fn push_text_frame(out: &mut Vec<u8>, payload: &[u8], mask_seed: &mut u32) {
    // xorshift: masks only need to vary, not to be secret, here.
    *mask_seed ^= *mask_seed << 13;
    *mask_seed ^= *mask_seed >> 17;
    *mask_seed ^= *mask_seed << 5;
    let mut frame = Frame::message(payload.to_vec(), OpCode::Data(Data::Text), true);
    frame.header_mut().mask = Some(mask_seed.to_le_bytes());
    frame
        .format(out)
        .expect("formatting into a Vec cannot fail");
}

pub fn push_close_frame(out: &mut Vec<u8>, mask_seed: &mut u32) {
    let mut frame = Frame::close(Some(tungstenite::protocol::CloseFrame {
        code: tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    }));
    frame.header_mut().mask = Some(mask_seed.to_le_bytes());
    frame
        .format(out)
        .expect("formatting into a Vec cannot fail");
}

pub fn json_escape_free(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub fn packet(kind: &str, user: &str, room: &str, msg: Option<&str>) -> String {
    debug_assert!(json_escape_free(user) && json_escape_free(room));
    let msg = msg.map(|m| format!(r#","msg":"{m}""#)).unwrap_or_default();
    format!(
        r#"{{"type":"{kind}","data":{{"user":{{"user_name":"{user}","user_avatar":""}},"room_name":"{room}"{msg}}}}}"#
    )
}

/// Calls `on_frame` for every whole frame at the start of `bytes`; returns
/// how many bytes those frames took. A frame cut off by the end of `bytes`
/// is left for the next read.
#[inline]
pub fn scan_frames(bytes: &[u8], mut on_frame: impl FnMut(OpCode, &[u8])) -> Result<usize, String> {
    let mut at = 0;
    while bytes.len() - at >= 2 {
        let mut cursor = Cursor::new(&bytes[at..]);
        let Some((header, length)) = FrameHeader::parse(&mut cursor).map_err(|e| e.to_string())?
        else {
            break;
        };
        let start = at + cursor.position() as usize;
        let end = start + length as usize;
        if end > bytes.len() {
            break;
        }
        if header.mask.is_some() {
            return Err("the server sent a masked frame".into());
        }
        on_frame(header.opcode, &bytes[start..end]);
        at = end;
    }
    Ok(at)
}

pub enum ReadEnd {
    /// Nothing more to read for now.
    Drained,
    Eof,
    Failed(String),
}

/// Reads what a connection has into the shared buffer and hands over its
/// frames; a frame split across reads waits in `leftover`.
///
/// A short read ends the loop without a second read to see `WouldBlock`:
/// Linux's epoll reports an edge-triggered socket again whenever more data
/// arrives, and that saved syscall is a large share of the client's cost
/// when each read holds only a few frames.
#[inline]
pub fn read_frames(
    stream: &mut mio::net::TcpStream,
    leftover: &mut Vec<u8>,
    buffer: &mut [u8],
    mut on_frame: impl FnMut(OpCode, &[u8]),
) -> ReadEnd {
    loop {
        let kept = leftover.len();
        if kept * 2 > buffer.len() {
            return ReadEnd::Failed(format!("a frame larger than {} bytes", buffer.len() / 2));
        }
        buffer[..kept].copy_from_slice(leftover);
        let space = buffer.len() - kept;
        let n = match stream.read(&mut buffer[kept..]) {
            Ok(0) => return ReadEnd::Eof,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return ReadEnd::Drained,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return ReadEnd::Failed(e.to_string()),
        };
        let filled = kept + n;
        let used = match scan_frames(&buffer[..filled], &mut on_frame) {
            Ok(used) => used,
            Err(e) => return ReadEnd::Failed(e),
        };
        leftover.clear();
        leftover.extend_from_slice(&buffer[used..filled]);
        if n < space {
            return ReadEnd::Drained;
        }
    }
}

/// Writes as much of `out[*sent..]` as the socket takes.
pub fn flush(stream: &mut mio::net::TcpStream, out: &mut Vec<u8>) -> io::Result<()> {
    let mut sent = 0;
    while sent < out.len() {
        match stream.write(&out[sent..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    out.drain(..sent);
    Ok(())
}

/// Raises this process's open-file limit to its hard limit.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit on a struct owned here.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        limit.rlim_cur as u64
    }
}

/// A timerfd in the poll set, for sending on schedule: poll's own timeout
/// is rounded up to whole milliseconds, which would add up to 1 ms of the
/// generator's lateness to every latency in `--rate` mode.
pub struct Timer {
    fd: std::os::fd::OwnedFd,
}

impl Timer {
    pub fn new(registry: &mio::Registry, token: mio::Token) -> io::Result<Timer> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        // SAFETY: timerfd_create returns a new fd or -1; prctl only changes
        // this thread's timer slack, so wakeups come on time.
        let fd = unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, 1u64);
            let fd = libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            );
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            OwnedFd::from_raw_fd(fd)
        };
        registry.register(
            &mut mio::unix::SourceFd(&fd.as_raw_fd()),
            token,
            mio::Interest::READABLE,
        )?;
        Ok(Timer { fd })
    }

    /// Fires once, `after` from now (at least 1 ns).
    pub fn arm(&self, after: std::time::Duration) {
        use std::os::fd::AsRawFd;
        let after = after.max(std::time::Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: a valid timerfd and itimerspec.
        unsafe {
            libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut());
        }
    }

    /// Clears the expiry so the next one is a new edge.
    pub fn clear(&self) {
        use std::os::fd::AsRawFd;
        let mut ticks = [0u8; 8];
        // SAFETY: reads at most 8 bytes into an 8-byte buffer.
        unsafe {
            libc::read(self.fd.as_raw_fd(), ticks.as_mut_ptr().cast(), 8);
        }
    }
}
