//! `--trusted-proxy` (SPEC §7) through real sockets: behind a trusted proxy
//! each client named in `X-Forwarded-For` has its own failed-login limit;
//! from any other peer a forged header changes nothing. The test client
//! plays the proxy: it connects from 127.0.0.1 and writes the headers nginx
//! would.

mod common;
mod fault_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use chatroom::http::forwarded::TrustedProxies;
use common::{find, get_with, register_ok, wait_until, RawConn, Reply, TestServer, IO_GUARD};
use fault_support::{metric, ChildServer};

/// SPEC §2.3: failures from one client address within a minute before
/// logins answer `too many attempts`.
const CLIENT_FAILURE_LIMIT: usize = 30;

fn trusting(ranges: &[&str]) -> TrustedProxies {
    TrustedProxies::new(ranges.iter().map(|r| r.parse().expect("a CIDR")).collect())
}

/// A login as a GET (every endpoint takes GET), with the given headers.
fn login_with(addr: SocketAddr, tel: &str, password: &str, headers: &[(&str, &str)]) -> Reply {
    get_with(
        addr,
        &format!("/auth/login?user_tel={tel}&user_password={password}"),
        headers,
    )
}

fn login_res(addr: SocketAddr, tel: &str, password: &str, headers: &[(&str, &str)]) -> String {
    let reply = login_with(addr, tel, password, headers);
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.res()
}

/// Uses up a client's failed logins with phone numbers nobody registered
/// (no hash is needed to refuse those, so the loop is quick).
fn fail_logins_until_the_limit(addr: SocketAddr, headers: &[(&str, &str)]) {
    for n in 0..CLIENT_FAILURE_LIMIT {
        let res = login_res(addr, &format!("4300{n:03}"), "guess1234", headers);
        assert_eq!(res, "user not exist", "failure {n} with {headers:?}");
    }
}

const ALICE: &[(&str, &str)] = &[("X-Forwarded-For", "203.0.113.5")];
const BOB: &[(&str, &str)] = &[("X-Forwarded-For", "198.51.100.7")];

#[test]
fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_login_limit() {
    let server =
        TestServer::start_with(|config| config.trusted_proxies = trusting(&["127.0.0.1/32"]));
    let addr = server.http_addr();
    register_ok(addr, "4400001", "bob", "bobs-password");

    fail_logins_until_the_limit(addr, ALICE);
    assert_eq!(
        login_res(addr, "4300999", "guess1234", ALICE),
        "too many attempts"
    );

    // Another client behind the same proxy is not blocked.
    assert_eq!(
        login_res(addr, "4300999", "guess1234", BOB),
        "user not exist"
    );
    assert_eq!(
        login_res(addr, "4400001", "wrong-password", BOB),
        "password wrong"
    );
    assert_eq!(
        login_res(addr, "4400001", "bobs-password", BOB),
        "login successfully"
    );
    // Nor is the proxy's own address (a request that names no client).
    assert_eq!(
        login_res(addr, "4300999", "guess1234", &[]),
        "user not exist"
    );
    // The same client through nginx's X-Real-IP alone is still that client.
    assert_eq!(
        login_res(
            addr,
            "4300999",
            "guess1234",
            &[("X-Real-IP", "203.0.113.5")]
        ),
        "too many attempts"
    );

    // Alice cannot step out of her limit by writing someone else's address:
    // nginx appends hers after whatever she sent, and that is what counts.
    for forged in ["198.51.100.7, 203.0.113.5", "garbage, 203.0.113.5"] {
        assert_eq!(
            login_res(addr, "4300999", "guess1234", &[("X-Forwarded-For", forged)]),
            "too many attempts",
            "X-Forwarded-For: {forged}"
        );
    }
    // Header lines after the first continue the same list.
    let mut raw = RawConn::connect(addr);
    let response = raw.roundtrip(
        b"GET /auth/login?user_tel=4300999&user_password=guess1234 HTTP/1.1\r\nHost: t\r\n\
          X-Forwarded-For: 198.51.100.7\r\nX-Forwarded-For: 203.0.113.5\r\n\r\n",
    );
    assert_eq!(response.res(), "too many attempts");

    assert_eq!(
        metric(addr, "chatroom_forwarded_requests_total"),
        (CLIENT_FAILURE_LIMIT + 8) as f64
    );
    assert_eq!(
        metric(addr, "chatroom_forwarded_header_malformed_total"),
        0.0
    );
}

#[test]
fn without_a_trusted_proxy_a_forged_x_forwarded_for_changes_nothing() {
    // Nothing trusted (the default), and a trusted range the peer is not in.
    for ranges in [&[][..], &["127.0.0.2/32", "10.0.0.0/8", "::1"]] {
        let server = TestServer::start_with(|config| config.trusted_proxies = trusting(ranges));
        let addr = server.http_addr();

        fail_logins_until_the_limit(addr, ALICE);
        for headers in [ALICE, BOB, &[("X-Real-IP", "198.51.100.7")], &[]] {
            assert_eq!(
                login_res(addr, "4300999", "guess1234", headers),
                "too many attempts",
                "trusting {ranges:?}, headers {headers:?}: one peer, one limit"
            );
        }
        assert_eq!(metric(addr, "chatroom_forwarded_requests_total"), 0.0);
    }
}

#[test]
fn a_malformed_header_from_the_proxy_counts_against_the_proxy() {
    let server =
        TestServer::start_with(|config| config.trusted_proxies = trusting(&["127.0.0.1/32"]));
    let addr = server.http_addr();
    let with_port = &[("X-Forwarded-For", "203.0.113.5:4711")];

    fail_logins_until_the_limit(addr, with_port);
    assert_eq!(
        login_res(addr, "4300999", "guess1234", &[]),
        "too many attempts",
        "the requests were the proxy's own"
    );
    assert_eq!(
        login_res(addr, "4300999", "guess1234", ALICE),
        "user not exist",
        "the client it failed to name was not blamed"
    );
    assert_eq!(
        metric(addr, "chatroom_forwarded_header_malformed_total"),
        CLIENT_FAILURE_LIMIT as f64
    );
}

#[test]
fn a_dual_stack_listener_matches_an_ipv4_proxy() {
    // On a dual-stack socket an IPv4 peer arrives as ::ffff:127.0.0.1.
    if std::net::TcpListener::bind("[::]:0").is_err() {
        eprintln!("no IPv6 on this machine; the dual-stack case is left to the unit tests");
        return;
    }
    let server = TestServer::start_with(|config| {
        config.http_addr = "[::]:0".parse().expect("address");
        config.trusted_proxies = trusting(&["127.0.0.1/32"]);
    });
    let addr = SocketAddr::from(([127, 0, 0, 1], server.http_addr().port()));
    fail_logins_until_the_limit(addr, ALICE);
    assert_eq!(
        login_res(addr, "4300999", "guess1234", BOB),
        "user not exist"
    );
    assert_eq!(
        login_res(addr, "4300999", "guess1234", ALICE),
        "too many attempts"
    );
}

/// Opens a WebSocket at `/ws` with these extra header lines, reads the 101,
/// and closes the TCP connection.
fn websocket_through(addr: SocketAddr, extra_headers: &str) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(IO_GUARD)).expect("timeout");
    stream
        .write_all(
            format!(
                "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
                 {extra_headers}\r\n"
            )
            .as_bytes(),
        )
        .expect("send the upgrade");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while find(&head, b"\r\n\r\n").is_none() {
        assert_eq!(stream.read(&mut byte).expect("read the handshake"), 1);
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101 "),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
}

#[test]
fn logs_name_the_forwarded_client_of_a_websocket() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let server = ChildServer::start(dir.path(), &["--trusted-proxy", "127.0.0.1/32"]);
    assert!(
        server
            .log_text()
            .contains("trusting X-Forwarded-For and X-Real-IP from peers in 127.0.0.1/32"),
        "{}",
        server.log_text()
    );
    websocket_through(
        server.http,
        "X-Forwarded-For: 10.9.9.9, 203.0.113.5\r\nX-Real-IP: 203.0.113.5\r\n",
    );
    wait_until("the WebSocket's close is logged", || {
        server.log_lines().iter().any(|line| {
            line.contains("closed peer=127.0.0.1:")
                && line.contains(" client=203.0.113.5 protocol=websocket ")
        })
    });
}
