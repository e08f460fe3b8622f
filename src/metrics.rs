//! Counters the reactor keeps and their Prometheus text rendering.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Upper bounds, in seconds, of the fsync latency histogram buckets.
const SYNC_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Debug, Default, Clone)]
pub struct Histogram {
    /// Cumulative counts per bucket of `SYNC_BUCKETS`.
    buckets: [u64; SYNC_BUCKETS.len()],
    count: u64,
    sum_seconds: f64,
}

impl Histogram {
    pub fn observe(&mut self, seconds: f64) {
        for (bucket, bound) in self.buckets.iter_mut().zip(SYNC_BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        self.count += 1;
        self.sum_seconds += seconds;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (count, bound) in self.buckets.iter().zip(SYNC_BUCKETS) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum_seconds);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// Counters; only ever incremented, on the reactor thread.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub websocket_upgrades: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub ws_messages_in: u64,
    pub ws_messages_out: u64,
    pub slow_consumer_closes: u64,
    pub frames_dropped: u64,
    pub fsync_seconds: Histogram,
    pub storage_failures: u64,
    /// Message log: fsyncs, compactions, failed writes.
    pub message_log_sync_seconds: Histogram,
    pub history_compactions: u64,
    pub message_log_write_failures: u64,
    /// Requests whose client address a trusted proxy named (`--trusted-proxy`).
    pub forwarded_requests: u64,
    /// Requests from a trusted proxy whose forwarding header could not be
    /// read: counted under the proxy's address, which an operator should
    /// hear about, since every such client then shares one login limit.
    pub malformed_forwarding_headers: u64,
    /// Keyed by (endpoint, outcome); both come from fixed sets, so the
    /// number of series is bounded whatever clients send.
    requests: BTreeMap<(&'static str, &'static str), u64>,
}

/// Values read at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gauges {
    pub http_connections: usize,
    pub ws_connections: usize,
    pub rooms: usize,
    pub users: usize,
    pub seats: usize,
    pub tokens: usize,
    pub messages_retained: usize,
    pub history_disk_bytes: u64,
    pub history: crate::api::HistoryCounters,
    /// Cluster mode only.
    pub cluster: Option<crate::cluster::ClusterCounters>,
    pub redis_up: bool,
}

impl Metrics {
    pub fn count_request(&mut self, endpoint: &'static str, outcome: &'static str) {
        *self.requests.entry((endpoint, outcome)).or_default() += 1;
    }

    pub fn render(&self, gauges: Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let mut gauge = |name: &str, help: &str, value: usize| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        gauge(
            "chatroom_open_connections_http",
            "Open HTTP connections (not upgraded).",
            gauges.http_connections,
        );
        gauge(
            "chatroom_open_connections_websocket",
            "Open WebSocket connections.",
            gauges.ws_connections,
        );
        gauge("chatroom_rooms", "Rooms.", gauges.rooms);
        gauge("chatroom_users", "Registered users.", gauges.users);
        gauge(
            "chatroom_seats",
            "Seats taken over all rooms.",
            gauges.seats,
        );
        gauge("chatroom_login_tokens", "Live login tokens.", gauges.tokens);
        gauge(
            "chatroom_history_messages_retained",
            "Chat messages held for history over all rooms.",
            gauges.messages_retained,
        );
        gauge(
            "chatroom_history_disk_bytes",
            "Bytes of the message log on disk.",
            usize::try_from(gauges.history_disk_bytes).unwrap_or(usize::MAX),
        );
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        counter(
            "chatroom_connections_accepted_total",
            "Connections accepted on both listeners.",
            self.connections_accepted,
        );
        counter(
            "chatroom_connections_refused_total",
            "Connections refused at the connection cap.",
            self.connections_refused,
        );
        counter(
            "chatroom_websocket_upgrades_total",
            "Completed WebSocket handshakes.",
            self.websocket_upgrades,
        );
        counter(
            "chatroom_bytes_in_total",
            "Bytes read from clients.",
            self.bytes_in,
        );
        counter(
            "chatroom_bytes_out_total",
            "Bytes written to clients.",
            self.bytes_out,
        );
        counter(
            "chatroom_ws_messages_in_total",
            "WebSocket data messages received.",
            self.ws_messages_in,
        );
        counter(
            "chatroom_ws_messages_out_total",
            "WebSocket chat frames queued for clients (one per recipient).",
            self.ws_messages_out,
        );
        counter(
            "chatroom_backpressure_closes_total",
            "Connections closed for falling too far behind in reading (1008).",
            self.slow_consumer_closes,
        );
        counter(
            "chatroom_backpressure_dropped_frames_total",
            "Queued frames dropped when closing slow consumers.",
            self.frames_dropped,
        );
        counter(
            "chatroom_storage_failures_total",
            "Batches whose write or fsync failed (not acknowledged).",
            self.storage_failures,
        );
        counter(
            "chatroom_forwarded_requests_total",
            "Requests whose client address a trusted proxy named in X-Forwarded-For or X-Real-IP.",
            self.forwarded_requests,
        );
        counter(
            "chatroom_forwarded_header_malformed_total",
            "Requests from a trusted proxy with an unreadable X-Forwarded-For or X-Real-IP, attributed to the proxy itself.",
            self.malformed_forwarding_headers,
        );
        counter(
            "chatroom_history_compactions_total",
            "Message log compactions finished.",
            self.history_compactions,
        );
        counter(
            "chatroom_message_log_write_failures_total",
            "Message log writes that failed (retried until they succeed).",
            self.message_log_write_failures,
        );
        counter(
            "chatroom_history_messages_refused_total",
            "Chat messages refused with \"service unavailable\" while the message log could not write.",
            gauges.history.messages_refused,
        );
        let _ = writeln!(
            out,
            "# HELP chatroom_history_recoveries_total Joins with since, by whether every missed message could be sent.\n\
             # TYPE chatroom_history_recoveries_total counter\n\
             chatroom_history_recoveries_total{{result=\"complete\"}} {}\n\
             chatroom_history_recoveries_total{{result=\"incomplete\"}} {}",
            gauges.history.recoveries_complete, gauges.history.recoveries_incomplete
        );
        let _ = writeln!(
            out,
            "# HELP chatroom_http_requests_total HTTP requests by endpoint and outcome."
        );
        let _ = writeln!(out, "# TYPE chatroom_http_requests_total counter");
        for ((endpoint, outcome), count) in &self.requests {
            let _ = writeln!(
                out,
                "chatroom_http_requests_total{{endpoint=\"{endpoint}\",outcome=\"{outcome}\"}} {count}"
            );
        }
        self.fsync_seconds.render(
            &mut out,
            "chatroom_store_sync_seconds",
            "Time to write and fsync one group commit.",
        );
        self.message_log_sync_seconds.render(
            &mut out,
            "chatroom_message_log_sync_seconds",
            "Time of one fsync of the message log (off the broadcast path).",
        );
        if let Some(cluster) = gauges.cluster {
            render_cluster(&mut out, &cluster, gauges.redis_up);
        }
        out
    }
}

/// Cluster mode's series (README, "Outgrowing one machine").
fn render_cluster(out: &mut String, cluster: &crate::cluster::ClusterCounters, redis_up: bool) {
    let mut series = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    series(
        "chatroom_redis_up",
        "gauge",
        "1 while Redis answers this node's commands (scripts loaded), else 0.",
        u64::from(redis_up),
    );
    series(
        "chatroom_redis_reconnects_total",
        "counter",
        "Times the command link to Redis was lost after serving.",
        cluster.redis_reconnects,
    );
    series(
        "chatroom_redis_ops_failed_total",
        "counter",
        "Redis commands that could not be sent or lost their reply.",
        cluster.ops_failed,
    );
    series(
        "chatroom_cluster_refills_total",
        "counter",
        "Reads of a room's stream to fill a gap in pub/sub delivery or catch up after subscribing.",
        cluster.refills,
    );
    series(
        "chatroom_cluster_duplicates_dropped_total",
        "counter",
        "Messages received again (pub/sub after a refill) and dropped.",
        cluster.duplicates_dropped,
    );
    series(
        "chatroom_cluster_seats_swept_total",
        "counter",
        "Seats of departed nodes this node released.",
        cluster.seats_swept,
    );
    series(
        "chatroom_cluster_lease_losses_total",
        "counter",
        "Times this node's lease lapsed and it dropped its WebSockets.",
        cluster.lease_losses,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let mut metrics = Metrics::default();
        metrics.count_request("/auth/login", "password wrong");
        metrics.count_request("/auth/login", "password wrong");
        metrics.fsync_seconds.observe(0.003);
        metrics.bytes_in = 42;
        let text = metrics.render(Gauges {
            rooms: 3,
            ..Gauges::default()
        });
        assert!(text.contains("# TYPE chatroom_rooms gauge\nchatroom_rooms 3\n"));
        assert!(text.contains("chatroom_bytes_in_total 42\n"));
        assert!(text.contains(
            "chatroom_http_requests_total{endpoint=\"/auth/login\",outcome=\"password wrong\"} 2\n"
        ));
        assert!(text.contains("chatroom_store_sync_seconds_bucket{le=\"0.0025\"} 0\n"));
        assert!(text.contains("chatroom_store_sync_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("chatroom_store_sync_seconds_count 1\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "not a sample line: {line}");
        }
    }
}
