//! The human-readable table and the CSV row each run produces.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

/// Columns of the CSV file, in order; a run fills the ones that apply.
pub const COLUMNS: &[&str] = &[
    "scenario",
    "rooms",
    "members",
    "senders",
    "window",
    "offered_rate",
    "conns",
    "seconds",
    "deliveries_per_s",
    "msgs_per_s",
    "p50_us",
    "p99_us",
    "p999_us",
    "max_us",
    "lost",
    "errors",
    "server_cpu_pct",
    "gen_cpu_pct",
    "server_rss_kib",
    "bytes_per_conn",
    "ops_per_s",
    "server_us_per_op",
    "note",
    "nodes",
    "node_cpu_pct",
    "node_ns_per_delivery",
    "node_us_per_msg",
    "redis_cpu_pct",
    "redis_us_per_msg",
];

#[derive(Default)]
pub struct Report {
    title: String,
    rows: Vec<(String, String)>,
    csv: Vec<(&'static str, String)>,
}

impl Report {
    pub fn new(title: impl Into<String>) -> Report {
        Report {
            title: title.into(),
            ..Report::default()
        }
    }

    /// A line of the table only.
    pub fn line(&mut self, label: impl Into<String>, value: impl Into<String>) {
        self.rows.push((label.into(), value.into()));
    }

    /// A CSV field (the column must be in `COLUMNS`).
    pub fn field(&mut self, column: &'static str, value: impl ToString) {
        debug_assert!(COLUMNS.contains(&column), "unknown column {column}");
        self.csv.push((column, value.to_string()));
    }

    pub fn print(&self) {
        println!("\n== {} ==", self.title);
        let width = self.rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        for (label, value) in &self.rows {
            println!("  {label:<width$}  {value}");
        }
    }

    pub fn append_csv(&self, path: &Path) -> std::io::Result<()> {
        let fresh = std::fs::metadata(path)
            .map(|m| m.len() == 0)
            .unwrap_or(true);
        let mut file = OpenOptions::new().create(true).append(true).open(path)?;
        if fresh {
            writeln!(file, "{}", COLUMNS.join(","))?;
        }
        let row: Vec<String> = COLUMNS
            .iter()
            .map(|c| {
                self.csv
                    .iter()
                    .rev()
                    .find(|(k, _)| k == c)
                    .map(|(_, v)| v.replace(',', ";"))
                    .unwrap_or_default()
            })
            .collect();
        writeln!(file, "{}", row.join(","))
    }
}

pub fn us(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} ms", v / 1e3)
    } else {
        format!("{v:.0} µs")
    }
}

/// Thousands separated, for counts and rates.
pub fn num(v: f64) -> String {
    let s = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}
