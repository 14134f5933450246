"use strict";
// Test support: a real `fyvault dev` (vault + agent, socket only) as a subprocess in a temp
// dir, and the provider API (push, rotate, revoke) from the facts in DATA_DIR/dev.json.

const { spawn, spawnSync } = require("node:child_process");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");

const DEADLINE_MS = 60_000;
const REPO = path.resolve(__dirname, "..", "..", "..");

/** The `fyvault` binary: $FYVAULT_BIN, else the repository's debug build. */
function fyvaultBin() {
  const bin = process.env.FYVAULT_BIN || path.join(REPO, "target", "debug", "fyvault");
  if (!fs.existsSync(bin)) {
    throw new Error(`${bin} is missing: run \`cargo build\` first (or set FYVAULT_BIN)`);
  }
  return bin;
}

/** Polls `f` until it returns something other than undefined/false; throws after the deadline. */
async function eventually(what, f, deadlineMs = DEADLINE_MS) {
  const end = Date.now() + deadlineMs;
  for (;;) {
    const v = await f();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A temp dir every uid may traverse (the socket inside must be reachable by uid 65534). */
function openTempdir(prefix) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  fs.chmodSync(dir, 0o755);
  return dir;
}

class Dev {
  static async start({ grace } = {}) {
    const dir = openTempdir("fyvault-sdk-node-");
    const data = path.join(dir, "data");
    const socket = path.join(dir, "agent.sock");
    const args = ["dev", "--listen", "127.0.0.1:0", "--data-dir", data, "--socket", socket,
      "--mount", path.join(dir, "mnt"), "--no-mount"];
    if (grace !== undefined) args.push("--grace", String(grace));
    const dev = new Dev(dir, data, socket, args);
    try {
      await dev._spawn();
    } catch (e) {
      await dev.stop();
      throw e;
    }
    return dev;
  }

  constructor(dir, data, socket, args) {
    this.dir = dir;
    this.data = data;
    this.socket = socket;
    this.args = args;
    this.child = null;
    // A test that dies still ends its dev process.
    this._onExit = () => this.child && this.child.exitCode === null && this.child.kill("SIGKILL");
    process.on("exit", this._onExit);
  }

  /** Starts `fyvault dev` and waits until dev.json names this process and the socket is up. */
  async _spawn() {
    const child = spawn(fyvaultBin(), this.args, { stdio: ["ignore", "ignore", "pipe"] });
    this.child = child;
    let stderr = "";
    child.stderr.on("data", (c) => (stderr += c.toString()));
    this.stderr = () => stderr;
    this.facts = await eventually("fyvault dev to be ready", () => {
      if (child.exitCode !== null) throw new Error(`fyvault dev exited: ${stderr}`);
      try {
        const f = JSON.parse(fs.readFileSync(path.join(this.data, "dev.json"), "utf8"));
        return f.pid === child.pid && fs.existsSync(this.socket) ? f : undefined;
      } catch {
        return undefined;
      }
    });
  }

  /** Stops the vault and agent (SIGTERM) and starts them again on the same data and socket. */
  async restart() {
    await this._terminate();
    await this._spawn();
  }

  async _terminate() {
    const child = this.child;
    if (child && child.exitCode === null) {
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), 20_000);
      await exited;
      clearTimeout(t);
    }
  }

  async provider(method, suffix, body) {
    const f = this.facts;
    const url = `${f.url}/api/v1/orgs/${f.org_id}/providers/${f.provider_id}${suffix}`;
    const res = await fetch(url, {
      method,
      headers: { authorization: `Bearer ${f.provider_token}`, "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${suffix}: ${res.status} ${text}`);
    return JSON.parse(text);
  }

  push(name, value) {
    return this.provider("POST", "/push", {
      secret_name: name, value, environment: this.facts.environment,
    });
  }

  rotate(name, value, grace) {
    const body = { secret_name: name, value, environment: this.facts.environment };
    if (grace !== undefined) body.grace_period_seconds = grace;
    return this.provider("PATCH", "", body);
  }

  revoke(name, userId) {
    const body = { secret_name: name };
    if (userId !== undefined) body.user_id = userId;
    return this.provider("DELETE", "", body);
  }

  /** Pushes `user`'s value of a user-vault secret. */
  pushUser(name, user, value) {
    return this.provider("POST", "/push", {
      secret_name: name, value, environment: this.facts.environment, user_id: user,
    });
  }

  /** Sets a secret's policy (`creator` or `user`) with the admin token. */
  async policy(name, policy) {
    const f = this.facts;
    const url = `${f.url}/api/v1/orgs/${f.org_id}/environments/${f.environment}/secrets/${name}/policy`;
    const res = await fetch(url, {
      method: "PUT",
      headers: { authorization: `Bearer ${f.admin_token}`, "content-type": "application/json" },
      body: JSON.stringify({ policy }),
    });
    if (!res.ok) throw new Error(`policy ${name}: ${res.status} ${await res.text()}`);
  }

  /** What `fyvault get NAME` prints now (undefined when it fails). */
  cliGet(name) {
    const out = spawnSync(fyvaultBin(), ["get", name, "--socket", this.socket]);
    return out.status === 0 ? out.stdout.toString() : undefined;
  }

  /** Waits until the agent serves `value` for `name`. */
  waitFor(name, value) {
    return eventually(`the agent to serve the new ${name}`, () => this.cliGet(name) === value);
  }

  async stop() {
    process.removeListener("exit", this._onExit);
    await this._terminate();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** `setpriv` arguments that run a program as uid/gid 65534 with no groups, or null when that is
 * not possible here (not root, no setpriv, or `prog` not executable by that uid). */
function asNobody(prog) {
  if (process.getuid() !== 0) return null;
  const base = ["--reuid=65534", "--regid=65534", "--clear-groups"];
  const ok = spawnSync("setpriv", [...base, "test", "-x", prog]);
  return ok.status === 0 ? base : null;
}

module.exports = { Dev, eventually, fyvaultBin, openTempdir, asNobody, REPO };
