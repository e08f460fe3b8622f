//! The reactor never blocks on password hashing (SPEC §1): while an
//! expensive hash runs on a helper thread, other connections are served.

mod common;

use common::*;

#[test]
fn list_is_answered_while_a_password_hash_is_in_progress() {
    let server = TestServer::start_with(|c| {
        c.argon2_memory_kib = 65_536;
        c.argon2_iterations = 2;
        c.hash_threads = 1;
    });

    let mut registering = server.raw();
    registering.send(&raw_form_post(
        "/auth/register",
        "user_tel=24680&user_name=patient&user_password=password1",
        &[],
    ));

    // A second connection is served meanwhile.
    let mut other = server.raw();
    let listed = other.roundtrip(b"GET /chatroom/list HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(listed.status, 200);
    assert_eq!(listed.text(), r#"{"rooms":[],"room_list":[]}"#);
    let health = other.roundtrip(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(health.status, 200);

    // ...before the register was answered: the hash was not on the reactor.
    assert!(
        registering.nothing_received_yet(),
        "the register was answered before the list: hashing blocked the reactor"
    );

    let registered = registering.read_response();
    assert_eq!(registered.status, 200);
    assert_eq!(registered.res(), "register successfully");
}
