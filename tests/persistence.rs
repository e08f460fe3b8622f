//! Durability (SPEC §6): restart, torn tails, malformed lines, the lock, and
//! a missing data directory.

mod common;

use std::fs;

use common::*;
use tempfile::TempDir;

const USERS: &str = "users.jsonl";
const ROOMS: &str = "rooms.jsonl";

#[test]
fn users_and_rooms_survive_a_restart() {
    let server = TestServer::start();
    let addr = server.http_addr();
    register_ok(addr, "13900000001", "persisted", "password1");
    create_room_ok(addr, "kept room");
    create_room_ok(addr, "second room");

    let restarted = server.restart_with(|_| {});
    let addr = restarted.http_addr();
    let reply = login(addr, "13900000001", "password1");
    assert_eq!(reply.res(), "login successfully");
    assert_eq!(reply.json()["data"]["user_name"], "persisted");
    assert_eq!(
        login(addr, "13900000001", "wrong-pass").res(),
        "password wrong"
    );
    // Rooms come back in creation order, with no seats.
    assert_eq!(
        rooms_of(&list(addr)),
        vec![("kept room".to_string(), 0), ("second room".to_string(), 0)]
    );
    // Uniqueness still holds against replayed records.
    assert_eq!(
        register(addr, "13900000001", "other", "password1").res(),
        "user exist"
    );
    assert_eq!(
        register(addr, "13900000002", "persisted", "password1").res(),
        "user exist"
    );
    assert_eq!(
        create_room(addr, "kept room").res(),
        "chatroom already exist"
    );
    restarted.stop();
}

#[test]
fn records_are_on_disk_when_acknowledged() {
    let server = TestServer::start();
    register_ok(server.http_addr(), "13900000003", "durable", "password1");
    // Read right after each reply, with the server still running: the
    // reply itself must imply the write.
    let users = fs::read_to_string(server.dir.path().join(USERS)).unwrap();
    create_room_ok(server.http_addr(), "durable room");
    let rooms = fs::read_to_string(server.dir.path().join(ROOMS)).unwrap();
    assert_eq!(users.lines().count(), 1, "{users:?}");
    assert!(users.ends_with('\n'));
    assert!(users.contains("durable"));
    assert!(
        !users.contains("password1"),
        "plain password on disk: {users}"
    );
    assert!(
        users.contains("$argon2id$"),
        "not an argon2id PHC hash: {users}"
    );
    assert_eq!(rooms.lines().count(), 1, "{rooms:?}");
    assert!(rooms.contains("durable room"));
}

/// Registers one user on a fresh dir and returns the dir and that line.
fn one_user_line() -> (TempDir, String) {
    let server = TestServer::start();
    register_ok(server.http_addr(), "13900000004", "torn", "password1");
    let dir = server.stop();
    let users = fs::read_to_string(dir.path().join(USERS)).unwrap();
    assert_eq!(users.lines().count(), 1);
    (dir, users)
}

#[test]
fn a_torn_last_line_is_cut_off() {
    let (dir, valid) = one_user_line();
    let partial = r#"{"tel":"13900000005","name":"half","passw"#;
    fs::write(dir.path().join(USERS), format!("{valid}{partial}")).unwrap();

    // It starts despite the torn tail.
    let server = TestServer::start_in(dir, |_| {});
    let addr = server.http_addr();
    assert_eq!(
        login(addr, "13900000004", "password1").res(),
        "login successfully"
    );
    assert_eq!(
        login(addr, "13900000005", "password1").res(),
        "user not exist"
    );
    let on_disk = fs::read_to_string(server.dir.path().join(USERS)).unwrap();
    assert_eq!(on_disk, valid, "the partial bytes are still there");

    // New records follow the good line, not the cut garbage.
    register_ok(addr, "13900000006", "after cut", "password1");
    let again = server.restart_with(|_| {});
    let addr = again.http_addr();
    assert_eq!(
        login(addr, "13900000004", "password1").res(),
        "login successfully"
    );
    assert_eq!(
        login(addr, "13900000006", "password1").res(),
        "login successfully"
    );
    again.stop();
}

#[test]
fn a_torn_rooms_tail_is_cut_off() {
    let server = TestServer::start();
    create_room_ok(server.http_addr(), "whole");
    let dir = server.stop();
    let valid = fs::read_to_string(dir.path().join(ROOMS)).unwrap();
    fs::write(dir.path().join(ROOMS), format!("{valid}{{\"name\":\"bro")).unwrap();

    // It starts despite the torn tail.
    let server = TestServer::start_in(dir, |_| {});
    assert_eq!(
        rooms_of(&list(server.http_addr())),
        vec![("whole".to_string(), 0)]
    );
    assert_eq!(
        fs::read_to_string(server.dir.path().join(ROOMS)).unwrap(),
        valid
    );
    server.stop();
}

#[test]
fn a_malformed_middle_line_stops_start_up() {
    let (dir, valid) = one_user_line();
    let second = valid
        .replace("13900000004", "13900000007")
        .replace("torn", "another");
    let content = format!("{valid}this is not a record\n{second}");
    let path = dir.path().join(USERS);
    fs::write(&path, &content).unwrap();

    let error = match TestServer::try_start_with(|c| c.data_dir = dir.path().into()) {
        Ok(_) => panic!("a server started over a malformed users.jsonl"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains(USERS),
        "error does not name the file: {error}"
    );
    assert!(
        error.contains("line 2"),
        "error does not name line 2: {error}"
    );
    // Nothing was dropped or rewritten.
    assert_eq!(fs::read_to_string(&path).unwrap(), content);
}

#[test]
fn a_malformed_rooms_line_stops_start_up() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join(ROOMS);
    let content = "{\"name\":\"a\",\"capacity\":5,\"created_ms\":1}\n{\"name\":\"b\",\"capacity\":\"many\",\"created_ms\":2}\n{\"name\":\"c\",\"capacity\":5,\"created_ms\":3}\n";
    fs::write(&path, content).unwrap();
    let error = match TestServer::try_start_with(|c| c.data_dir = dir.path().into()) {
        Ok(_) => panic!("a server started over a malformed rooms.jsonl"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains(ROOMS), "{error}");
    assert!(error.contains("line 2"), "{error}");
    assert_eq!(fs::read_to_string(&path).unwrap(), content);
}

#[test]
fn a_second_server_on_the_same_dir_is_refused() {
    let server = TestServer::start();
    let error = match TestServer::try_start_with(|c| c.data_dir = server.dir.path().into()) {
        Ok(_) => panic!("two servers run on one data directory"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("in use"),
        "error does not say the dir is in use: {error}"
    );
    // The first server is unaffected.
    assert_eq!(get(server.http_addr(), "/healthz").status, 200);
    // Once it stops, the directory can be used again: the lock is released.
    let again = server.restart_with(|_| {});
    again.stop();
}

#[test]
fn a_missing_data_dir_is_created() {
    let parent = TempDir::new().unwrap();
    let data = parent.path().join("nested").join("data");
    assert!(!data.exists());
    let server = TestServer::start_with(|c| c.data_dir = data.clone());
    assert!(data.is_dir());
    register_ok(server.http_addr(), "13900000008", "fresh", "password1");
    assert_eq!(
        fs::read_to_string(data.join(USERS))
            .unwrap()
            .lines()
            .count(),
        1
    );
    server.stop();
}
