//! SDK clients for the socket benchmark: a Node and a Python process each doing sequential
//! `get`s for a while, through the SDK and, beside it, through the language's own raw HTTP
//! client on the same keep-alive socket (so the SDK's own overhead shows). Each process prints
//! one JSON line `{"n","p50_ns","p99_ns"}`. A missing `node` or `python3` skips its rows.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// `node -e NODE_CLIENT MODE SDK_DIR SECRET SECONDS`, socket in `FYVAULT_SOCKET`.
const NODE_CLIENT: &str = r#"
const [mode, sdk, secret, secs] = process.argv.slice(1);
const http = require("node:http");
const socket = process.env.FYVAULT_SOCKET;
let get;
if (mode === "sdk") {
  const { Client } = require(sdk);
  const c = new Client({ socket });
  get = () => c.get(secret);
} else {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  get = () => new Promise((resolve, reject) => {
    const r = http.request({ socketPath: socket, path: "/v1/secrets/" + secret, agent,
      headers: { host: "fyvault" } }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    });
    r.on("error", reject);
    r.end();
  });
}
(async () => {
  for (let i = 0; i < 500; i++) await get();
  const ns = [];
  const end = Date.now() + Number(secs) * 1000;
  while (Date.now() < end) {
    const t = process.hrtime.bigint();
    const v = await get();
    ns.push(Number(process.hrtime.bigint() - t));
    if (v.length !== 64) throw new Error("unexpected length " + v.length);
  }
  ns.sort((a, b) => a - b);
  const q = (p) => ns[Math.min(ns.length - 1, Math.floor(ns.length * p))];
  console.log(JSON.stringify({ n: ns.length, p50_ns: q(0.5), p99_ns: q(0.99) }));
  process.exit(0);
})();
"#;

/// `python3 -c PYTHON_CLIENT MODE SDK_DIR SECRET SECONDS`, socket in `FYVAULT_SOCKET`.
const PYTHON_CLIENT: &str = r#"
import http.client, json, os, socket, sys, time
mode, sdk, secret, secs = sys.argv[1:5]
path = os.environ["FYVAULT_SOCKET"]
if mode == "sdk":
    sys.path.insert(0, sdk)
    import fyvault
    c = fyvault.Client(socket=path)
    get = lambda: c.get(secret)
else:
    class Conn(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(path)
    conn = Conn("fyvault")
    def get():
        conn.request("GET", "/v1/secrets/" + secret, headers={"Host": "fyvault"})
        return conn.getresponse().read().decode("utf-8")
for _ in range(500):
    get()
ns = []
end = time.monotonic() + float(secs)
while time.monotonic() < end:
    t = time.perf_counter_ns()
    v = get()
    ns.append(time.perf_counter_ns() - t)
    assert len(v) == 64, len(v)
ns.sort()
q = lambda p: ns[min(len(ns) - 1, int(len(ns) * p))]
print(json.dumps({"n": len(ns), "p50_ns": q(0.5), "p99_ns": q(0.99)}))
"#;

/// One client's figures.
pub struct SdkRun {
    /// `node-sdk`, `node-http`, `python-sdk`, `python-http`.
    pub key: &'static str,
    pub label: &'static str,
    pub n: u64,
    pub p50: Duration,
    pub p99: Duration,
}

fn sdk_dir(lang: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk").join(lang)
}

/// One client process to run.
struct Client {
    program: &'static str,
    /// `-e` (node) or `-c` (python3): the script follows.
    flag: &'static str,
    script: &'static str,
    /// `sdk` or `http`.
    mode: &'static str,
    /// The SDK's folder under `sdk/`.
    lang: &'static str,
    key: &'static str,
    label: &'static str,
}

const CLIENTS: [Client; 4] = [
    Client {
        program: "node",
        flag: "-e",
        script: NODE_CLIENT,
        mode: "http",
        lang: "node",
        key: "node-http",
        label: "Node, raw http.request (keep-alive agent)",
    },
    Client {
        program: "node",
        flag: "-e",
        script: NODE_CLIENT,
        mode: "sdk",
        lang: "node",
        key: "node-sdk",
        label: "Node SDK: await client.get()",
    },
    Client {
        program: "python3",
        flag: "-c",
        script: PYTHON_CLIENT,
        mode: "http",
        lang: "python",
        key: "python-http",
        label: "Python, raw http.client (keep-alive)",
    },
    Client {
        program: "python3",
        flag: "-c",
        script: PYTHON_CLIENT,
        mode: "sdk",
        lang: "python",
        key: "python-sdk",
        label: "Python SDK: client.get()",
    },
];

fn run_one(
    c: &Client,
    socket: &Path,
    secret: &str,
    duration: Duration,
) -> Result<(u64, Duration, Duration), String> {
    let (program, mode) = (c.program, c.mode);
    let out = Command::new(program)
        .arg(c.flag)
        .arg(c.script)
        .arg(mode)
        .arg(sdk_dir(c.lang))
        .arg(secret)
        .arg(duration.as_secs_f64().to_string())
        .env("FYVAULT_SOCKET", socket)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "{program} {mode}: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    let ns = |k: &str| Duration::from_nanos(v[k].as_u64().unwrap_or(0));
    Ok((v["n"].as_u64().unwrap_or(0), ns("p50_ns"), ns("p99_ns")))
}

/// Node (raw `http`, then the SDK) and Python (raw `http.client`, then the SDK), one after the
/// other, each for `duration`. Clients that cannot run are reported on stderr and left out.
pub fn run_all(socket: &Path, secret: &str, duration: Duration) -> Vec<SdkRun> {
    let mut out = Vec::new();
    for c in &CLIENTS {
        match run_one(c, socket, secret, duration) {
            Ok((n, p50, p99)) => out.push(SdkRun {
                key: c.key,
                label: c.label,
                n,
                p50,
                p99,
            }),
            Err(e) => eprintln!("skipping {}: {e}", c.label),
        }
    }
    out
}
