//! The HTTP JSON API (SPEC §2.2, §2.3, §3) through real sockets and an
//! independent client: every endpoint, every `res` outcome, parameter
//! sources, validation and the response headers.

mod common;

use common::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// /auth/register and /auth/login
// ---------------------------------------------------------------------------

#[test]
fn register_then_duplicate_phone_or_name_is_user_exist() {
    let server = TestServer::start();
    let addr = server.http_addr();
    register_ok(addr, "13800000001", "alice", "secret-1");

    // Same phone, different name.
    let reply = register(addr, "13800000001", "alice2", "secret-2");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.res(), "user exist");

    // Same name, different phone.
    let reply = register(addr, "13800000002", "alice", "secret-2");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.res(), "user exist");

    // Neither duplicate took anything: the other phone and name are free.
    register_ok(addr, "13800000002", "alice2", "secret-2");
}

#[test]
fn login_outcomes() {
    let server = TestServer::start();
    let addr = server.http_addr();

    let reply = login(addr, "13800000009", "whatever1");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.res(), "user not exist");
    assert!(
        reply.json().get("data").is_some_and(Value::is_null),
        "{reply:?}"
    );

    register_ok(addr, "13800000009", "bob", "correct-horse");

    let reply = login(addr, "13800000009", "wrong-horse");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.res(), "password wrong");
    assert!(
        reply.json().get("data").is_some_and(Value::is_null),
        "{reply:?}"
    );

    let reply = login(addr, "13800000009", "correct-horse");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.res(), "login successfully");
    let data = &reply.json()["data"];
    // An 11-digit number does not fit the Android app's 32-bit Int: null.
    assert_eq!(data["user_tel"], Value::Null);
    assert_eq!(data["user_name"], json!("bob"));
    assert_eq!(data["user_avatar_url"], json!(""));
    let token = data["token"].as_str().expect("token is a string");
    assert_eq!(token.len(), 22, "128 bits in unpadded base64: {token:?}");
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "token is not URL-safe base64: {token:?}"
    );
    // The password is never returned, under any key.
    assert!(!reply.body.contains("password"), "{}", reply.body);
    assert!(!reply.body.contains("correct-horse"), "{}", reply.body);

    // Each login issues a fresh token.
    let again = login(addr, "13800000009", "correct-horse").json();
    assert_ne!(again["data"]["token"].as_str(), Some(token));
}

#[test]
fn register_keeps_the_avatar_url() {
    let server = TestServer::start();
    let addr = server.http_addr();
    let reply = post_form(
        addr,
        "/auth/register",
        &[
            ("user_tel", "+8613800000000"),
            ("user_name", "carol"),
            ("user_password", "pa55word"),
            ("user_avatar_url", "https://img.example/c.png"),
        ],
    );
    assert_eq!(reply.res(), "register successfully");
    let data = login(addr, "+8613800000000", "pa55word").json()["data"].clone();
    assert_eq!(data["user_tel"], Value::Null, "not a plain decimal");
    assert_eq!(data["user_avatar_url"], json!("https://img.example/c.png"));
}

#[test]
fn failed_logins_for_one_phone_are_limited() {
    let server = TestServer::start();
    let addr = server.http_addr();
    register_ok(addr, "5550001", "dora", "right-password");
    for attempt in 1..=5 {
        let reply = login(addr, "5550001", "wrong-password");
        assert_eq!(reply.res(), "password wrong", "attempt {attempt}");
    }
    // SPEC §2.3: after 5 failures within 15 minutes, even the right password
    // is refused until the window passes.
    let reply = login(addr, "5550001", "right-password");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.res(), "too many attempts");
    assert!(
        reply.json().get("data").is_some_and(Value::is_null),
        "{reply:?}"
    );
    // Other phone numbers are unaffected.
    register_ok(addr, "5550002", "dora2", "right-password");
    assert_eq!(
        login(addr, "5550002", "right-password").res(),
        "login successfully"
    );
}

#[test]
fn failed_logins_from_one_ip_are_limited() {
    let server = TestServer::start();
    let addr = server.http_addr();
    let users: Vec<String> = (0..8).map(|i| format!("55510{i:02}")).collect();
    for (i, tel) in users.iter().enumerate() {
        register_ok(addr, tel, &format!("ip-user-{i}"), "right-password");
    }
    // 30 failures spread so that no phone number reaches its own limit of 5.
    for n in 0..30 {
        let tel = &users[n % users.len()];
        assert_eq!(
            login(addr, tel, "wrong-password").res(),
            "password wrong",
            "failure {n}"
        );
    }
    // users[7] has failed only 3 times, yet this client IP is now limited.
    let reply = login(addr, &users[7], "right-password");
    assert_eq!(reply.res(), "too many attempts", "{reply:?}");
}

// ---------------------------------------------------------------------------
// /chatroom/list and /chatroom/create
// ---------------------------------------------------------------------------

#[test]
fn list_is_empty_then_shows_rooms_in_creation_order_in_both_shapes() {
    let server = TestServer::start();
    let addr = server.http_addr();
    let empty = list(addr);
    assert_eq!(empty, json!({"rooms": [], "room_list": []}));

    for name in ["zeta", "alpha", "房间", "mid"] {
        create_room_ok(addr, name);
    }
    let listed = list(addr);
    assert_eq!(
        rooms_of(&listed),
        vec![
            ("zeta".to_string(), 0),
            ("alpha".to_string(), 0),
            ("房间".to_string(), 0),
            ("mid".to_string(), 0)
        ]
    );
    // Exactly the documented keys in each entry of both lists: the name
    // under both keys (SPEC §2.3), and the population.
    for key in ["rooms", "room_list"] {
        for entry in listed[key].as_array().unwrap() {
            let keys: Vec<&str> = entry
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(keys.len(), 3, "{entry}");
            assert_eq!(entry["name"], entry["room_name"], "{entry}");
            assert!(entry["population"].is_u64(), "{entry}");
        }
    }
}

#[test]
fn create_twice_is_already_exist() {
    let server = TestServer::start();
    let addr = server.http_addr();
    create_room_ok(addr, "lobby");
    let reply = create_room(addr, "lobby");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.res(), "chatroom already exist");
    assert_eq!(rooms_of(&list(addr)).len(), 1);
}

#[test]
fn create_past_max_rooms_is_too_many_rooms() {
    let server = TestServer::start_with(|c| c.max_rooms = 2);
    let addr = server.http_addr();
    create_room_ok(addr, "one");
    create_room_ok(addr, "two");
    let reply = create_room(addr, "three");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.res(), "too many rooms");
    // An existing name is still reported as existing.
    assert_eq!(create_room(addr, "one").res(), "chatroom already exist");
    assert_eq!(
        rooms_of(&list(addr))
            .into_iter()
            .map(|(n, _)| n)
            .collect::<Vec<_>>(),
        vec!["one", "two"]
    );
}

#[test]
fn create_capacity_is_respected_and_checked() {
    let server = TestServer::start();
    let addr = server.http_addr();
    for user in ["u1", "u2", "u3"] {
        register_ok(
            addr,
            &format!("9{}", &user[1..]).repeat(3),
            user,
            "password",
        );
    }
    let reply = create_room_with_capacity(addr, "duo", "2");
    assert_eq!(reply.res(), "chatroom create successfully");
    assert_eq!(room_res(addr, "duo", "u1", "1"), "join chatroom");
    assert_eq!(room_res(addr, "duo", "u2", "1"), "join chatroom");
    assert_eq!(room_res(addr, "duo", "u3", "1"), "full room");
    assert_eq!(population(addr, "duo"), Some(2));

    for bad in ["0", "10001", "x", "-1", "1.5"] {
        let reply = create_room_with_capacity(addr, &format!("bad-{bad}"), bad);
        reply.assert_invalid("capacity");
    }
    // None of the refused rooms was created.
    assert_eq!(rooms_of(&list(addr)).len(), 1);

    assert_eq!(
        create_room_with_capacity(addr, "huge", "10000").res(),
        "chatroom create successfully"
    );
    assert_eq!(
        create_room_with_capacity(addr, "single", "1").res(),
        "chatroom create successfully"
    );
    assert_eq!(room_res(addr, "single", "u1", "1"), "join chatroom");
    assert_eq!(room_res(addr, "single", "u2", "1"), "full room");
}

#[test]
fn default_capacity_comes_from_config() {
    let server = TestServer::start_with(|c| c.room_capacity = 1);
    let addr = server.http_addr();
    register_ok(addr, "1001", "first", "password");
    register_ok(addr, "1002", "second", "password");
    create_room_ok(addr, "tiny");
    assert_eq!(room_res(addr, "tiny", "first", "1"), "join chatroom");
    assert_eq!(room_res(addr, "tiny", "second", "1"), "full room");
}

// ---------------------------------------------------------------------------
// /chatroom/room
// ---------------------------------------------------------------------------

#[test]
fn room_outcomes_and_population() {
    let server = TestServer::start();
    let addr = server.http_addr();
    register_ok(addr, "2001", "ann", "password");
    register_ok(addr, "2002", "ben", "password");
    register_ok(addr, "2003", "cat", "password");

    // No such room, whatever the status (room is checked first).
    assert_eq!(room_res(addr, "nowhere", "ann", "1"), "invalid room");
    assert_eq!(room_res(addr, "nowhere", "ann", "0"), "invalid room");
    assert_eq!(room_res(addr, "nowhere", "ann", "2"), "invalid room");
    assert_eq!(room_res(addr, "nowhere", "ann", "x"), "invalid room");
    assert_eq!(room_res(addr, "nowhere", "nobody", "x"), "invalid room");

    let reply = create_room_with_capacity(addr, "den", "2");
    assert_eq!(reply.res(), "chatroom create successfully");

    assert_eq!(room_res(addr, "den", "ann", "2"), "invalid status");
    assert_eq!(room_res(addr, "den", "ann", "x"), "invalid status");
    assert_eq!(room_res(addr, "den", "nobody", "2"), "invalid status");
    assert_eq!(population(addr, "den"), Some(0));

    // Join: unknown user, then admissions.
    assert_eq!(room_res(addr, "den", "nobody", "1"), "user not exist");
    assert_eq!(population(addr, "den"), Some(0));
    assert_eq!(room_res(addr, "den", "ann", "1"), "join chatroom");
    assert_eq!(population(addr, "den"), Some(1));
    // A repeat join refreshes the seat; it does not take a second one.
    assert_eq!(room_res(addr, "den", "ann", "1"), "join chatroom");
    assert_eq!(population(addr, "den"), Some(1));
    assert_eq!(room_res(addr, "den", "ben", "1"), "join chatroom");
    assert_eq!(population(addr, "den"), Some(2));
    assert_eq!(room_res(addr, "den", "cat", "1"), "full room");
    assert_eq!(population(addr, "den"), Some(2));
    // Seat holders may still repeat their join in a full room.
    assert_eq!(room_res(addr, "den", "ben", "1"), "join chatroom");

    // Leave: no seat (registered or not), then a release.
    assert_eq!(room_res(addr, "den", "cat", "0"), "user not exist");
    assert_eq!(room_res(addr, "den", "nobody", "0"), "user not exist");
    assert_eq!(room_res(addr, "den", "ann", "0"), "leave chatroom");
    assert_eq!(population(addr, "den"), Some(1));
    assert_eq!(room_res(addr, "den", "ann", "0"), "user not exist");
    assert_eq!(population(addr, "den"), Some(1));

    // The freed seat can be taken.
    assert_eq!(room_res(addr, "den", "cat", "1"), "join chatroom");
    assert_eq!(population(addr, "den"), Some(2));
    assert_eq!(room_res(addr, "den", "ben", "0"), "leave chatroom");
    assert_eq!(room_res(addr, "den", "cat", "0"), "leave chatroom");
    assert_eq!(population(addr, "den"), Some(0));
}

#[test]
fn seats_are_per_room() {
    let server = TestServer::start();
    let addr = server.http_addr();
    register_ok(addr, "3001", "eve", "password");
    create_room_ok(addr, "r1");
    create_room_ok(addr, "r2");
    assert_eq!(room_res(addr, "r1", "eve", "1"), "join chatroom");
    assert_eq!(room_res(addr, "r2", "eve", "1"), "join chatroom");
    assert_eq!(
        rooms_of(&list(addr)),
        vec![("r1".to_string(), 1), ("r2".to_string(), 1)]
    );
    assert_eq!(room_res(addr, "r1", "eve", "0"), "leave chatroom");
    assert_eq!(
        rooms_of(&list(addr)),
        vec![("r1".to_string(), 0), ("r2".to_string(), 1)]
    );
}

#[test]
fn an_unused_seat_expires_after_the_ttl() {
    let server = TestServer::start_with(|c| c.seat_ttl = std::time::Duration::from_millis(300));
    let addr = server.http_addr();
    register_ok(addr, "4001", "fay", "password");
    create_room_ok(addr, "ttl");
    assert_eq!(room_res(addr, "ttl", "fay", "1"), "join chatroom");
    assert_eq!(
        population(addr, "ttl"),
        Some(1),
        "seat present right after admission"
    );
    wait_until("the seat to expire", || population(addr, "ttl") == Some(0));
    // The user no longer holds a seat, and can be admitted again.
    assert_eq!(room_res(addr, "ttl", "fay", "0"), "user not exist");
    assert_eq!(room_res(addr, "ttl", "fay", "1"), "join chatroom");
    assert_eq!(population(addr, "ttl"), Some(1));
}

// ---------------------------------------------------------------------------
// /healthz, /metrics, unknown paths and methods, CORS
// ---------------------------------------------------------------------------

#[test]
fn healthz_is_ok() {
    let server = TestServer::start();
    let reply = get(server.http_addr(), "/healthz");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), json!({"status": "ok"}));
    assert_eq!(reply.header("content-type"), Some(JSON_TYPE));
}

#[test]
fn metrics_are_prometheus_text() {
    if common::embedded_only("it counts users, rooms and fsyncs of the embedded store") {
        return;
    }
    let server = TestServer::start();
    assert_eq!(
        register(server.http_addr(), "5551234", "meg", "secret1").res(),
        "register successfully"
    );
    assert_eq!(
        register(server.http_addr(), "5551234", "meg", "secret1").res(),
        "user exist"
    );
    assert_eq!(
        get_query(
            server.http_addr(),
            "/chatroom/create",
            &[("room_name", "hall")]
        )
        .res(),
        "chatroom create successfully"
    );
    let reply = get(server.http_addr(), "/metrics");
    assert_eq!(reply.status, 200, "{reply:?}");
    let content_type = reply.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("text/plain"), "{content_type:?}");
    let body = &reply.body;
    for line in [
        "chatroom_users 1",
        "chatroom_rooms 1",
        "chatroom_seats 0",
        "chatroom_http_requests_total{endpoint=\"/auth/register\",outcome=\"register successfully\"} 1",
        "chatroom_http_requests_total{endpoint=\"/auth/register\",outcome=\"user exist\"} 1",
        "chatroom_http_requests_total{endpoint=\"/chatroom/create\",outcome=\"chatroom create successfully\"} 1",
        "chatroom_store_sync_seconds_count 2",
        "chatroom_backpressure_closes_total 0",
    ] {
        assert!(body.lines().any(|l| l == line), "missing `{line}` in\n{body}");
    }
    let open_http: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("chatroom_open_connections_http "))
        .and_then(|v| v.parse().ok())
        .expect("open HTTP connections gauge");
    assert!(open_http >= 1, "the scrape's own connection is open");
    assert!(body.contains("# TYPE chatroom_bytes_in_total counter"));
    assert!(body.contains("# TYPE chatroom_ws_messages_out_total counter"));
    let post = post_form(server.http_addr(), "/metrics", &[]);
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
}

#[test]
fn unknown_path_is_404() {
    let server = TestServer::start();
    // `/` is the web client (tests/web.rs).
    for path in ["/nope", "/auth", "/auth/register/", "/chatroom/list/x"] {
        let reply = get(server.http_addr(), path);
        assert_eq!(reply.status, 404, "{path}");
        assert_eq!(reply.json(), json!({"res": "not found"}), "{path}");
        assert_eq!(reply.header("content-type"), Some(JSON_TYPE));
        let reply = post_form(server.http_addr(), path, &[("a", "b")]);
        assert_eq!(reply.status, 404, "POST {path}");
    }
}

#[test]
fn other_methods_are_405_with_allow() {
    let server = TestServer::start();
    let a = agent();
    for path in [
        "/auth/register",
        "/auth/login",
        "/chatroom/list",
        "/chatroom/create",
        "/chatroom/room",
        "/healthz",
    ] {
        let url = server.url(path);
        let mut response = a.put(&url).send("x=1").unwrap();
        assert_eq!(response.status().as_u16(), 405, "PUT {path}");
        let allow = response
            .headers()
            .get("allow")
            .expect("Allow header")
            .to_str()
            .unwrap()
            .to_string();
        for method in ["GET", "POST", "HEAD", "OPTIONS"] {
            assert!(allow.contains(method), "Allow {allow:?} lacks {method}");
        }
        assert!(!allow.contains("PUT"), "{allow:?}");
        let body = response.body_mut().read_to_string().unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            json!({"res": "method not allowed"})
        );

        let response = a.delete(&url).call().unwrap();
        assert_eq!(response.status().as_u16(), 405, "DELETE {path}");
        assert!(response.headers().get("allow").is_some());
    }
    // Nothing was registered by the PUT.
    assert_eq!(rooms_of(&list(server.http_addr())).len(), 0);
}

#[test]
fn options_preflight_is_204_with_allowed_methods() {
    let server = TestServer::start();
    let response = agent()
        .options(server.url("/auth/login"))
        .header("Origin", "https://app.example")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type")
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    let methods = response
        .headers()
        .get("access-control-allow-methods")
        .expect("Access-Control-Allow-Methods")
        .to_str()
        .unwrap();
    assert!(
        methods.contains("POST") && methods.contains("GET"),
        "{methods:?}"
    );
    let allowed_headers = response
        .headers()
        .get("access-control-allow-headers")
        .expect("Access-Control-Allow-Headers")
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        allowed_headers.contains("content-type"),
        "{allowed_headers:?}"
    );
    assert_eq!(
        response
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap()),
        Some("*")
    );
}

#[test]
fn configured_cors_origin_is_sent() {
    let server = TestServer::start_with(|c| c.cors_origin = "https://chat.example".to_string());
    for reply in [
        get(server.http_addr(), "/healthz"),
        get(server.http_addr(), "/missing"),
        post_form(server.http_addr(), "/auth/login", &[("user_tel", "1")]),
    ] {
        assert_eq!(
            reply.header("access-control-allow-origin"),
            Some("https://chat.example"),
            "{reply:?}"
        );
    }
}

#[test]
fn head_has_the_get_length_and_no_body() {
    let server = TestServer::start();
    create_room_ok(server.http_addr(), "heady");
    let get_reply = get(server.http_addr(), "/chatroom/list");
    let response = agent().head(server.url("/chatroom/list")).call().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let length = response
        .headers()
        .get("content-length")
        .expect("HEAD has Content-Length")
        .to_str()
        .unwrap()
        .parse::<usize>()
        .unwrap();
    assert_eq!(length, get_reply.body.len());
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap()),
        Some(JSON_TYPE)
    );
}

// ---------------------------------------------------------------------------
// Parameter sources
// ---------------------------------------------------------------------------

#[test]
fn get_with_query_string_works_for_every_endpoint() {
    let server = TestServer::start();
    let addr = server.http_addr();
    let reply = get_query(
        addr,
        "/auth/register",
        &[
            ("user_tel", "6001"),
            ("user_name", "query user"),
            ("user_password", "q-password"),
        ],
    );
    assert_eq!(reply.res(), "register successfully");
    let reply = get_query(
        addr,
        "/auth/login",
        &[("user_tel", "6001"), ("user_password", "q-password")],
    );
    assert_eq!(reply.res(), "login successfully");
    assert_eq!(reply.json()["data"]["user_name"], json!("query user"));
    let reply = get_query(addr, "/chatroom/create", &[("room_name", "q room & co")]);
    assert_eq!(reply.res(), "chatroom create successfully");
    let reply = get_query(
        addr,
        "/chatroom/room",
        &[
            ("room_name", "q room & co"),
            ("user_name", "query user"),
            ("status", "1"),
        ],
    );
    assert_eq!(reply.res(), "join chatroom");
    assert_eq!(rooms_of(&list(addr)), vec![("q room & co".to_string(), 1)]);
}

#[test]
fn post_with_query_string_only_works() {
    let server = TestServer::start();
    let reply = into_post_empty(server.url("/chatroom/create?room_name=from%20query"));
    assert_eq!(reply.0, 200);
    assert_eq!(
        rooms_of(&list(server.http_addr())),
        vec![("from query".to_string(), 0)]
    );
}

fn into_post_empty(url: String) -> (u16, String) {
    let mut response = agent().post(url).send_empty().unwrap();
    (
        response.status().as_u16(),
        response.body_mut().read_to_string().unwrap(),
    )
}

#[test]
fn urlencoded_body_with_percent_and_plus_decoding() {
    let server = TestServer::start();
    let addr = server.http_addr();
    let reply = post_body(
        addr,
        "/auth/register",
        "application/x-www-form-urlencoded",
        b"user_tel=%2B4412345&user_name=J%C3%BCrgen+M&user_password=p%26ss%3Dw0rd".to_vec(),
    );
    assert_eq!(reply.res(), "register successfully");
    let reply = login(addr, "+4412345", "p&ss=w0rd");
    assert_eq!(reply.res(), "login successfully");
    assert_eq!(reply.json()["data"]["user_name"], json!("Jürgen M"));
}

#[test]
fn json_body_with_number_phone() {
    let server = TestServer::start();
    let addr = server.http_addr();
    let reply = post_json(
        addr,
        "/auth/register",
        &json!({"user_tel": 13800000000u64, "user_name": "json user", "user_password": "json-pass"}),
    );
    assert_eq!(reply.res(), "register successfully");
    let reply = post_json(
        addr,
        "/auth/login",
        &json!({"user_tel": 13800000000u64, "user_password": "json-pass"}),
    );
    assert_eq!(reply.res(), "login successfully");
    assert_eq!(reply.json()["data"]["user_tel"], Value::Null);
    // The string form is the same user.
    assert_eq!(
        login(addr, "13800000000", "json-pass").res(),
        "login successfully"
    );

    let reply = post_json(
        addr,
        "/chatroom/create",
        &json!({"room_name": "json room", "capacity": 1}),
    );
    assert_eq!(reply.res(), "chatroom create successfully");
    let reply = post_json(
        addr,
        "/chatroom/room",
        &json!({"room_name": "json room", "user_name": "json user", "status": 1}),
    );
    assert_eq!(reply.res(), "join chatroom");
}

#[test]
fn json_values_of_other_types_are_400_naming_the_field() {
    let server = TestServer::start();
    let addr = server.http_addr();
    for (field, value) in [
        ("user_tel", json!(true)),
        ("user_tel", json!(null)),
        ("user_name", json!(["a"])),
        ("user_password", json!({"x": 1})),
    ] {
        let mut body =
            json!({"user_tel": "7001", "user_name": "typed", "user_password": "password"});
        body[field] = value.clone();
        let reply = post_json(addr, "/auth/register", &body);
        reply.assert_invalid(field);
    }
    // Not an object, or not JSON at all.
    for body in [&b"[1,2]"[..], b"\"text\"", b"{\"user_tel\":", b"{nope}"] {
        let reply = post_body(addr, "/auth/register", "application/json", body.to_vec());
        assert_eq!(reply.status, 400, "{:?}", String::from_utf8_lossy(body));
        assert_eq!(reply.res(), "invalid parameters");
    }
    // Nothing was registered.
    assert_eq!(login(addr, "7001", "password").res(), "user not exist");
}

#[test]
fn multipart_text_fields() {
    let server = TestServer::start();
    let addr = server.http_addr();
    let (content_type, body) = multipart(&[
        ("user_tel", "8001"),
        ("user_name", "multi part"),
        ("user_password", "mp-password"),
    ]);
    let reply = post_body(addr, "/auth/register", &content_type, body);
    assert_eq!(reply.res(), "register successfully");
    let (content_type, body) = multipart(&[("user_tel", "8001"), ("user_password", "mp-password")]);
    let reply = post_body(addr, "/auth/login", &content_type, body);
    assert_eq!(reply.res(), "login successfully");
    assert_eq!(reply.json()["data"]["user_name"], json!("multi part"));
}

#[test]
fn body_overrides_query() {
    let server = TestServer::start();
    let addr = server.http_addr();
    let reply = post_form(
        addr,
        "/auth/register?user_name=from-query&user_tel=1111",
        &[("user_name", "from-body"), ("user_password", "password")],
    );
    assert_eq!(reply.res(), "register successfully");
    let reply = login(addr, "1111", "password");
    assert_eq!(reply.json()["data"]["user_name"], json!("from-body"));

    let reply = post_json(
        addr,
        "/chatroom/create?room_name=query-room",
        &json!({"room_name": "json-room"}),
    );
    assert_eq!(reply.res(), "chatroom create successfully");
    assert_eq!(rooms_of(&list(addr)), vec![("json-room".to_string(), 0)]);
}

#[test]
fn other_content_type_is_415() {
    let server = TestServer::start();
    let addr = server.http_addr();
    for content_type in ["text/plain", "application/xml", "application/octet-stream"] {
        let reply = post_body(
            addr,
            "/chatroom/create",
            content_type,
            b"room_name=x".to_vec(),
        );
        assert_eq!(reply.status, 415, "{content_type}: {reply:?}");
        assert_eq!(reply.header("content-type"), Some(JSON_TYPE));
        assert!(
            reply.json().get("res").is_some_and(Value::is_string),
            "{reply:?}"
        );
    }
    assert_eq!(rooms_of(&list(addr)).len(), 0);
}

#[test]
fn invalid_utf8_is_400() {
    let server = TestServer::start();
    let addr = server.http_addr();
    let reply = get(addr, "/chatroom/create?room_name=%FF%FE");
    assert_eq!(reply.status, 400, "{reply:?}");
    let reply = post_body(
        addr,
        "/chatroom/create",
        "application/x-www-form-urlencoded",
        b"room_name=%C3%28".to_vec(),
    );
    assert_eq!(reply.status, 400, "{reply:?}");
    let reply = post_body(
        addr,
        "/chatroom/create",
        "application/json",
        b"{\"room_name\":\"\xff\"}".to_vec(),
    );
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(rooms_of(&list(addr)).len(), 0);
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

fn register_params<'a>(overrides: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut params = vec![
        ("user_tel", "12345678"),
        ("user_name", "valid name"),
        ("user_password", "valid-password"),
    ];
    for (key, value) in overrides {
        match params.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => params.push((key, value)),
        }
    }
    params
}

#[test]
fn register_validation_names_the_field() {
    let server = TestServer::start();
    let addr = server.http_addr();
    let long_name = "n".repeat(33);
    let long_password = "p".repeat(129);
    let long_tel = "1".repeat(21);
    let long_url = format!("https://example.com/{}", "a".repeat(500));
    let cases: Vec<(&str, &str)> = vec![
        ("user_tel", "12"),
        ("user_tel", "+12"),
        ("user_tel", &long_tel),
        ("user_tel", "12a45"),
        ("user_tel", "123.456"),
        ("user_tel", "1-2"),
        ("user_tel", " - "),
        ("user_tel", ""),
        ("user_name", ""),
        ("user_name", &long_name),
        ("user_name", "bell\u{7}name"),
        ("user_name", "new\nline"),
        ("user_name", "   "),
        ("user_name", "\u{3000}\t"),
        ("user_password", "12345"),
        ("user_password", &long_password),
        ("user_password", ""),
        ("user_avatar_url", "ftp://example.com/a.png"),
        ("user_avatar_url", "javascript:alert(1)"),
        ("user_avatar_url", "example.com/a.png"),
        ("user_avatar_url", &long_url),
    ];
    for (field, value) in cases {
        let reply = post_form(addr, "/auth/register", &register_params(&[(field, value)]));
        reply.assert_invalid(field);
    }
    // Nothing got through.
    assert_eq!(
        login(addr, "12345678", "valid-password").res(),
        "user not exist"
    );
}

#[test]
fn register_validation_boundaries_are_accepted() {
    let server = TestServer::start();
    let addr = server.http_addr();
    let tel20 = "9".repeat(20);
    let tel20_plus = format!("+{}", "8".repeat(20));
    let name32 = "é".repeat(32); // 32 characters, 64 bytes
    let password6 = "123456".to_string();
    let password128 = "p".repeat(128);
    let url512 = format!("http://e.com/{}", "a".repeat(512 - "http://e.com/".len()));
    let accepted: Vec<Vec<(&str, &str)>> = vec![
        vec![("user_tel", "123"), ("user_name", "a")],
        vec![("user_tel", "+123"), ("user_name", "b")],
        vec![("user_tel", &tel20), ("user_name", &name32)],
        vec![
            ("user_tel", &tel20_plus),
            ("user_name", "d"),
            ("user_password", &password6),
        ],
        vec![
            ("user_tel", "5550000"),
            ("user_name", "e"),
            ("user_password", &password128),
        ],
        vec![
            ("user_tel", "5550001"),
            ("user_name", "f"),
            ("user_avatar_url", &url512),
        ],
        vec![
            ("user_tel", "5550002"),
            ("user_name", "g"),
            ("user_avatar_url", ""),
        ],
        vec![("user_tel", "5550003"), ("user_name", " spaced name ")],
    ];
    for overrides in accepted {
        let reply = post_form(addr, "/auth/register", &register_params(&overrides));
        assert_eq!(reply.status, 200, "{overrides:?}: {reply:?}");
        assert_eq!(reply.res(), "register successfully", "{overrides:?}");
    }
}

#[test]
fn login_validation_and_missing_parameters() {
    let server = TestServer::start();
    let addr = server.http_addr();
    post_form(addr, "/auth/login", &[("user_password", "password")]).assert_invalid("user_tel");
    post_form(addr, "/auth/login", &[("user_tel", "1234")]).assert_invalid("user_password");
    post_form(
        addr,
        "/auth/login",
        &[("user_tel", "12x4"), ("user_password", "password")],
    )
    .assert_invalid("user_tel");
    // A password no one could have registered is simply wrong, not a 400.
    let reply = post_form(
        addr,
        "/auth/login",
        &[("user_tel", "1234"), ("user_password", "short")],
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.res(), "user not exist");
    get(addr, "/auth/login").assert_invalid("user_tel");
}

#[test]
fn missing_parameters_are_400_naming_the_field() {
    let server = TestServer::start();
    let addr = server.http_addr();
    post_form(
        addr,
        "/auth/register",
        &[("user_name", "x"), ("user_password", "password")],
    )
    .assert_invalid("user_tel");
    post_form(
        addr,
        "/auth/register",
        &[("user_tel", "1234"), ("user_password", "password")],
    )
    .assert_invalid("user_name");
    post_form(
        addr,
        "/auth/register",
        &[("user_tel", "1234"), ("user_name", "x")],
    )
    .assert_invalid("user_password");
    get(addr, "/chatroom/create").assert_invalid("room_name");
    post_form(addr, "/chatroom/create", &[("room_name", "")]).assert_invalid("room_name");
    post_form(
        addr,
        "/chatroom/room",
        &[("user_name", "x"), ("status", "1")],
    )
    .assert_invalid("room_name");
    post_form(
        addr,
        "/chatroom/room",
        &[("room_name", "x"), ("status", "1")],
    )
    .assert_invalid("user_name");
    post_form(
        addr,
        "/chatroom/room",
        &[("room_name", "x"), ("user_name", "x")],
    )
    .assert_invalid("status");
    post_form(
        addr,
        "/chatroom/room",
        &[("room_name", "x"), ("user_name", "x"), ("status", "")],
    )
    .assert_invalid("status");
}

#[test]
fn room_name_validation() {
    let server = TestServer::start();
    let addr = server.http_addr();
    let long = "r".repeat(65);
    for bad in [long.as_str(), "  ", "tab\there", "nul\u{0}x", "del\u{7f}"] {
        create_room(addr, bad).assert_invalid("room_name");
        room(addr, bad, "someone", "1").assert_invalid("room_name");
    }
    let max = "房".repeat(64);
    create_room_ok(addr, &max);
    assert_eq!(rooms_of(&list(addr)), vec![(max.clone(), 0)]);
    // The user name on /chatroom/room follows the user_name rule.
    room(addr, &max, &"u".repeat(33), "1").assert_invalid("user_name");
}

fn get_with_body(
    addr: std::net::SocketAddr,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Reply {
    let mut response = agent()
        .get(format!("http://{addr}{path}"))
        .header("Content-Type", content_type)
        .force_send_body()
        .send(body)
        .unwrap();
    Reply {
        status: response.status().as_u16(),
        headers: Vec::new(),
        body: response.body_mut().read_to_string().unwrap(),
    }
}

#[test]
fn get_with_a_body_reads_every_body_kind() {
    let server = TestServer::start();
    let addr = server.http_addr();
    let reply = get_with_body(
        addr,
        "/auth/register",
        "application/x-www-form-urlencoded",
        b"user_tel=3131&user_name=get+form&user_password=password1".to_vec(),
    );
    assert_eq!(reply.res(), "register successfully");
    let reply = get_with_body(
        addr,
        "/auth/login",
        "application/json",
        json!({"user_tel": 3131, "user_password": "password1"})
            .to_string()
            .into_bytes(),
    );
    assert_eq!(reply.res(), "login successfully");
    assert_eq!(reply.json()["data"]["user_name"], json!("get form"));
    let (content_type, body) = multipart(&[("room_name", "get multipart")]);
    let reply = get_with_body(addr, "/chatroom/create", &content_type, body);
    assert_eq!(reply.res(), "chatroom create successfully");
    // Body over query on GET too.
    let reply = get_with_body(
        addr,
        "/chatroom/room?status=0&user_name=nobody",
        "application/x-www-form-urlencoded",
        b"room_name=get+multipart&user_name=get+form&status=1".to_vec(),
    );
    assert_eq!(reply.res(), "join chatroom");
    assert_eq!(population(addr, "get multipart"), Some(1));
}
