//! Does a message write wait for an fsync? Appends one chat message at a
//! fixed rate to the message log (`store::MessageLog`) with a sync interval
//! short enough that an fsync round is nearly always running, and measures
//! the time from `append` to `Written` (what a broadcast waits for). For
//! comparison it runs the same load through a writer that fsyncs each group
//! before reporting it (the shape `users.jsonl` uses, where the reply must
//! wait for durability).
//!
//!   cargo run --release --example msglog_latency -- [SECONDS] [RATE] [noise]
//!
//! `noise` adds a thread that writes and fsyncs 4 MiB at a time to another
//! file in the same filesystem, which makes every fsync (sharing the
//! journal) much slower: the appends' latency must not follow it.
//! The log lives in a temporary directory under `target/`, on the disk the
//! server would use, never in a tmpfs.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatroom::store::{LogConfig, LogEvent, MessageLog, MessageRecord};

fn record(seq: u64) -> MessageRecord {
    MessageRecord {
        room: "lobby".to_owned(),
        seq,
        ts: 1_733_390_000_000 + seq,
        user_name: "ann".to_owned(),
        user_avatar: "https://example.com/avatars/ann.png".to_owned(),
        msg: "hello everyone, the meeting moved to 3pm; see you in room B!".to_owned(),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

fn row(name: &str, mut micros: Vec<f64>) {
    micros.sort_by(f64::total_cmp);
    println!(
        "{name:<34} {:>7} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0}",
        micros.len(),
        percentile(&micros, 0.5),
        percentile(&micros, 0.9),
        percentile(&micros, 0.99),
        percentile(&micros, 0.999),
        micros.last().copied().unwrap_or(0.0)
    );
}

/// Appends at `rate` per second for `seconds`, returning for each append
/// the instant it was made.
fn pace(seconds: f64, rate: f64, mut append: impl FnMut(u64)) -> Vec<Instant> {
    let period = Duration::from_secs_f64(1.0 / rate);
    let count = (seconds * rate) as u64;
    let start = Instant::now();
    let mut sent = Vec::with_capacity(count as usize);
    for i in 0..count {
        let due = start + period * i as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        sent.push(Instant::now());
        append(i + 1);
    }
    sent
}

/// The message log: `Written` after write(2), fsync on another thread.
fn message_log(dir: &std::path::Path, seconds: f64, rate: f64) {
    let config = LogConfig {
        history_size: 1000,
        segment_bytes: 8 << 20,
        // A round is due 1 ms after the first unsynced write: fsyncs run
        // back to back under this load, the worst case for overlap.
        sync_interval: Duration::from_millis(2),
    };
    let (log, _) = MessageLog::open(dir, config).expect("open the log");
    let (tx, rx) = mpsc::channel();
    let writer = log
        .spawn(Box::new(move |event| {
            let _ = tx.send((Instant::now(), event));
        }))
        .expect("spawn");
    let sent = pace(seconds, rate, |i| writer.append(i, vec![record(i)]));
    writer.shutdown();

    let mut written = vec![None; sent.len() + 1];
    let mut fsyncs: Vec<(Instant, Duration)> = Vec::new();
    for (at, event) in rx.try_iter() {
        match event {
            LogEvent::Written { id } => {
                if let Some(slot) = written.get_mut(id as usize) {
                    *slot = Some(at);
                }
            }
            LogEvent::Synced { micros } => fsyncs.push((at, Duration::from_micros(micros))),
            _ => {}
        }
    }
    let mut latency = Vec::new();
    let mut during_fsync = Vec::new();
    for (i, at) in sent.iter().enumerate() {
        let Some(done) = written[i + 1] else { continue };
        let micros = (done - *at).as_secs_f64() * 1e6;
        latency.push(micros);
        // Was an fsync running when this append was made? (Asking whether
        // one ran at any point while it waited would pick the slow appends
        // for their slowness alone.)
        let overlapped = fsyncs
            .iter()
            .any(|(end, took)| *end > *at && end.checked_sub(*took).is_some_and(|s| s <= *at));
        if overlapped {
            during_fsync.push(micros);
        }
    }
    let fsync_micros: Vec<f64> = fsyncs.iter().map(|(_, d)| d.as_secs_f64() * 1e6).collect();
    let busy: Duration = fsyncs.iter().map(|(_, d)| *d).sum();
    println!(
        "message log: {} fsync rounds, an fsync running {:.0}% of the time",
        fsyncs.len(),
        100.0 * busy.as_secs_f64() / seconds
    );
    row("append -> Written (all)", latency);
    row("append -> Written (made mid-fsync)", during_fsync);
    row("fsync round", fsync_micros);
}

/// The kernel's floor under the first row: the bare `write(2)` of one line
/// at the same rate, timed around the call itself, while another thread
/// fsyncs the same file back to back. Whatever the log adds on top is its
/// own (channel, thread wake-ups, the callback).
fn bare_write(dir: &std::path::Path, seconds: f64, rate: f64) {
    let path = dir.join("bare-write.jsonl");
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("open");
    let syncing = file.try_clone().expect("dup");
    let stop = Arc::new(AtomicBool::new(false));
    let stop_syncer = Arc::clone(&stop);
    let syncer = std::thread::spawn(move || {
        while !stop_syncer.load(Ordering::Relaxed) {
            syncing.sync_data().expect("fsync");
        }
    });
    let line = chatroom::store::LogLine::Message(record(1)).to_line();
    let mut took = Vec::new();
    pace(seconds, rate, |_| {
        let started = Instant::now();
        file.write_all(&line).expect("write");
        took.push(started.elapsed().as_secs_f64() * 1e6);
    });
    stop.store(true, Ordering::Relaxed);
    let _ = syncer.join();
    row("bare write(2), fsync looping", took);
}

/// The other durability class: each group written and fsynced before it is
/// reported, as `users.jsonl`'s writer does.
fn fsync_before_reply(dir: &std::path::Path, seconds: f64, rate: f64) {
    let path = dir.join("fsync-before-reply.jsonl");
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("open");
    let (tx, rx) = mpsc::channel::<u64>();
    let (done_tx, done_rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            group.extend(rx.try_iter());
            let mut buf = Vec::new();
            for &i in &group {
                let r = record(i);
                buf.extend_from_slice(
                    format!(
                        "{{\"room\":\"{}\",\"seq\":{},\"msg\":\"{}\"}}\n",
                        r.room, r.seq, r.msg
                    )
                    .as_bytes(),
                );
            }
            file.write_all(&buf).expect("write");
            file.sync_data().expect("fsync");
            let now = Instant::now();
            for i in group {
                let _ = done_tx.send((i, now));
            }
        }
    });
    let sent = pace(seconds, rate, |i| {
        let _ = tx.send(i);
    });
    drop(tx);
    let _ = thread.join();
    let mut done = vec![None; sent.len() + 1];
    for (i, at) in done_rx.try_iter() {
        if let Some(slot) = done.get_mut(i as usize) {
            *slot = Some(at);
        }
    }
    let latency = sent
        .iter()
        .enumerate()
        .filter_map(|(i, at)| done[i + 1].map(|d| (d - *at).as_secs_f64() * 1e6))
        .collect();
    row("append -> written+fsynced", latency);
}

/// Keeps the filesystem's journal busy: 4 MiB written and fsynced, again
/// and again, to a file beside the log.
fn noise(dir: std::path::PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let chunk = vec![b'n'; 4 << 20];
        let path = dir.join("noise.bin");
        let mut file = File::create(&path).expect("noise file");
        while !stop.load(Ordering::Relaxed) {
            file.write_all(&chunk).expect("noise write");
            file.sync_data().expect("noise fsync");
            if file.metadata().map(|m| m.len()).unwrap_or(0) > 256 << 20 {
                file.set_len(0).expect("noise truncate");
            }
        }
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds: f64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(5.0);
    let rate: f64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2000.0);
    let with_noise = args.iter().any(|a| a == "noise");

    std::fs::create_dir_all("target").expect("target/");
    let tmp = tempfile::tempdir_in("target").expect("temp dir");
    let stop = Arc::new(AtomicBool::new(false));
    let noisy = with_noise.then(|| noise(tmp.path().to_path_buf(), Arc::clone(&stop)));

    println!(
        "{rate} appends/s of one {}-byte message for {seconds} s{}",
        chatroom::store::LogLine::Message(record(1)).to_line().len(),
        if with_noise {
            ", with a 4 MiB write+fsync loop beside"
        } else {
            ""
        }
    );
    println!(
        "{:<34} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "microseconds", "count", "p50", "p90", "p99", "p99.9", "max"
    );
    message_log(&tmp.path().join("log"), seconds, rate);
    bare_write(tmp.path(), seconds, rate);
    fsync_before_reply(tmp.path(), seconds, rate);

    stop.store(true, Ordering::Relaxed);
    if let Some(thread) = noisy {
        let _ = thread.join();
    }
}
