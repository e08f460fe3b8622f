//! The `chatroom` binary's command line (SPEC §7).

use std::process::Command;

fn run(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_chatroom"))
        .args(args)
        .output()
        .expect("run the chatroom binary");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[test]
fn help_lists_the_flags() {
    let (ok, text) = run(&["--help"]);
    assert!(ok, "--help failed: {text}");
    for flag in [
        "--http",
        "--ws",
        "--data-dir",
        "--seat-ttl",
        "--cors-origin",
        "--room-capacity",
        "--max-rooms",
        "--max-connections",
        "--help",
        "--version",
    ] {
        assert!(
            text.contains(flag),
            "--help does not mention {flag}:\n{text}"
        );
    }
}

#[test]
fn version_prints_the_version() {
    let (ok, text) = run(&["--version"]);
    assert!(ok, "--version failed: {text}");
    assert!(
        text.contains(env!("CARGO_PKG_VERSION")),
        "--version output {text:?} lacks {}",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.contains("chatroom"), "{text:?}");
}

#[test]
fn an_unknown_flag_is_an_error() {
    let (ok, text) = run(&["--no-such-flag"]);
    assert!(!ok, "an unknown flag was accepted: {text}");
    assert!(text.contains("--no-such-flag"), "{text}");
}

#[test]
fn a_bad_data_dir_is_a_clear_error() {
    let dir = tempfile::TempDir::new().unwrap();
    std::fs::write(dir.path().join("users.jsonl"), "garbage\n").unwrap();
    let (ok, text) = run(&[
        "--http",
        "127.0.0.1:0",
        "--ws",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!ok, "started over a malformed users.jsonl: {text}");
    assert!(
        text.contains("users.jsonl") && text.contains("line 1"),
        "{text}"
    );
}
