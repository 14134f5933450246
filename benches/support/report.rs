//! Samples and percentiles, the printed table, and `target/bench/NAME.json`.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

/// Latency samples (nanoseconds).
#[derive(Debug, Clone, Default)]
pub struct Samples {
    ns: Vec<u64>,
    sorted: bool,
}

impl Samples {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(n: usize) -> Self {
        Samples {
            ns: Vec::with_capacity(n),
            sorted: true,
        }
    }

    pub fn push(&mut self, d: Duration) {
        self.ns.push(d.as_nanos().min(u64::MAX as u128) as u64);
        self.sorted = false;
    }

    pub fn extend(&mut self, other: &Samples) {
        self.ns.extend_from_slice(&other.ns);
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.ns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ns.is_empty()
    }

    fn sort(&mut self) {
        if !self.sorted {
            self.ns.sort_unstable();
            self.sorted = true;
        }
    }

    /// The `q` quantile (0.0..=1.0), nearest rank.
    pub fn quantile(&mut self, q: f64) -> Duration {
        self.sort();
        if self.ns.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((q * self.ns.len() as f64).ceil() as usize).clamp(1, self.ns.len());
        Duration::from_nanos(self.ns[rank - 1])
    }

    pub fn p50(&mut self) -> Duration {
        self.quantile(0.50)
    }

    pub fn p99(&mut self) -> Duration {
        self.quantile(0.99)
    }

    pub fn max(&mut self) -> Duration {
        self.quantile(1.0)
    }

    pub fn min(&mut self) -> Duration {
        self.sort();
        self.ns
            .first()
            .map_or(Duration::ZERO, |n| Duration::from_nanos(*n))
    }

    /// `{"n", "p50_us", "p99_us", "max_us"}`.
    pub fn json(&mut self) -> Value {
        json!({
            "n": self.len(),
            "p50_us": us(self.p50()),
            "p99_us": us(self.p99()),
            "max_us": us(self.max()),
        })
    }
}

/// `FYVAULT_BENCH_QUICK=1` (`scripts/bench --quick`): fewer and shorter rounds.
pub fn quick() -> bool {
    std::env::var("FYVAULT_BENCH_QUICK").is_ok_and(|v| v == "1")
}

/// The load average now (1, 5, 15 minutes), as `/proc/loadavg` shows it.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// One row of the table `scripts/bench` prints: what was measured, fyvault's figure, the floor
/// measured in the same run, their ratio, the target and whether it is met (None: no target).
#[derive(Debug, Clone)]
pub struct SummaryRow {
    pub what: String,
    pub fyvault: String,
    pub floor: String,
    pub ratio: String,
    pub target: String,
    pub met: Option<bool>,
}

impl SummaryRow {
    pub fn new(what: impl Into<String>, fyvault: impl Into<String>) -> Self {
        SummaryRow {
            what: what.into(),
            fyvault: fyvault.into(),
            floor: String::new(),
            ratio: String::new(),
            target: String::new(),
            met: None,
        }
    }

    pub fn floor(mut self, floor: impl Into<String>, ratio: f64) -> Self {
        self.floor = floor.into();
        self.ratio = format!("{ratio:.1}×");
        self
    }

    pub fn target(mut self, target: impl Into<String>, met: bool) -> Self {
        self.target = target.into();
        self.met = Some(met);
        self
    }
}

/// Prints `rows` as the benchmark's summary and stores them in the report (`summary`), where
/// `scripts/bench` collects them into one table.
pub fn summarize(report: &mut Report, rows: &[SummaryRow]) {
    let mut t = Table::new(
        &format!("summary (load average at the end: {})", loadavg()),
        &[
            "what",
            "fyvault",
            "floor, same run",
            "ratio",
            "target",
            "met",
        ],
    );
    for r in rows {
        t.row(vec![
            r.what.clone(),
            r.fyvault.clone(),
            r.floor.clone(),
            r.ratio.clone(),
            r.target.clone(),
            match r.met {
                Some(true) => "met".into(),
                Some(false) => "NOT met".into(),
                None => String::new(),
            },
        ]);
    }
    t.print();
    report.set(
        "summary",
        Value::Array(
            rows.iter()
                .map(|r| {
                    json!({"what": r.what, "fyvault": r.fyvault, "floor": r.floor,
                           "ratio": r.ratio, "target": r.target, "met": r.met})
                })
                .collect(),
        ),
    );
    report.set("loadavg_at_end", json!(loadavg()));
    report.set("quick", json!(quick()));
}

/// Microseconds with two decimals (for JSON).
pub fn us(d: Duration) -> f64 {
    (d.as_nanos() as f64 / 10.0).round() / 100.0
}

/// `3.9 µs`, `12.1 ms`, `1.23 s`.
pub fn fmt_dur(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    if ns < 1_000_000.0 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1_000_000_000.0 {
        format!("{:.1} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// `43,210/s`.
pub fn fmt_rate(per_s: f64) -> String {
    let n = per_s.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out + "/s"
}

/// A printed table.
#[derive(Debug)]
pub struct Table {
    title: String,
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: &str, headers: &[&str]) -> Self {
        Table {
            title: title.to_owned(),
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn print(&self) {
        let n = self.headers.len();
        let mut w: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::from("|");
            for (i, width) in w.iter().enumerate() {
                let c = cells.get(i).map(String::as_str).unwrap_or("");
                let pad = width - c.chars().count();
                s.push(' ');
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
                s.push_str(" |");
            }
            s
        };
        println!("\n### {}\n", self.title);
        println!("{}", line(&self.headers));
        let sep: Vec<String> = w.iter().map(|x| "-".repeat(*x)).collect();
        println!("{}", line(&sep).replace(' ', "-"));
        for r in &self.rows {
            println!("{}", line(r));
        }
    }
}

/// The JSON written to `target/bench/NAME.json`: machine facts plus whatever the benchmark adds.
#[derive(Debug)]
pub struct Report {
    name: String,
    body: serde_json::Map<String, Value>,
}

impl Report {
    pub fn new(name: &str) -> Self {
        let mut body = serde_json::Map::new();
        body.insert("bench".into(), json!(name));
        body.insert("machine".into(), machine());
        body.insert(
            "started_at_unix".into(),
            json!(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            ),
        );
        Report {
            name: name.to_owned(),
            body,
        }
    }

    pub fn set(&mut self, key: &str, value: Value) {
        self.body.insert(key.to_owned(), value);
    }

    /// Writes the report and prints where.
    pub fn write(self) -> PathBuf {
        let dir = target_dir().join("bench");
        std::fs::create_dir_all(&dir).expect("create target/bench");
        let path = dir.join(format!("{}.json", self.name));
        let text = serde_json::to_string_pretty(&Value::Object(self.body)).expect("json");
        std::fs::write(&path, text + "\n").expect("write the report");
        println!("\nwrote {}", path.display());
        path
    }
}

/// `target/` of this build: the benchmark runs as `target/release/deps/NAME-HASH`.
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "target"))
        .map(PathBuf::from)
        .unwrap_or_else(|| exe.parent().unwrap().join("target"))
}

/// `nproc`, CPU model, kernel, load at start.
pub fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu": cpu,
        "kernel": kernel,
        "loadavg_at_start": load,
    })
}

/// Prints the machine line under a benchmark's title.
pub fn print_header(name: &str, what: &str) {
    let m = machine();
    println!(
        "# {name}: {what}\nmachine: {} CPUs, {}, Linux {}, load {}",
        m["nproc"],
        m["cpu"].as_str().unwrap_or("?"),
        m["kernel"].as_str().unwrap_or("?"),
        m["loadavg_at_start"].as_str().unwrap_or("?")
    );
}

/// Resident set size of `pid` from `/proc/PID/status` (`VmRSS`), in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// `RssAnon`, `RssFile`, `RssShmem` (bytes) and `Threads` of `pid`.
pub fn memory_breakdown(pid: u32) -> serde_json::Value {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    json!({
        "rss_anon_bytes": field("RssAnon:") * 1024,
        "rss_file_bytes": field("RssFile:") * 1024,
        "rss_shmem_bytes": field("RssShmem:") * 1024,
        "vm_lck_bytes": field("VmLck:") * 1024,
        "threads": field("Threads:"),
    })
}

/// `12.3 MB` (MiB).
pub fn fmt_mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / (1024.0 * 1024.0))
}

/// CPU time (ns) used so far by every thread of `pid` (`/proc/PID/task/*/schedstat`).
pub fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}
