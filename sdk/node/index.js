"use strict";
// fyvault: read secrets from the local fyvault agent (HTTP/1.1 over its Unix socket).
//
// Every call asks the agent: nothing is cached here, so the call after a rotation gets the new
// value. Values never appear in an error message or a log line.

const http = require("node:http");

const DEFAULT_SOCKET = "/run/fyvault.sock";
const RETRY_MIN_MS = 100;
const RETRY_MAX_MS = 5000;
// Strict: a value that is not UTF-8 is an error, never silently altered; the BOM is kept (the
// bytes are the value). Stateless between calls (no `stream` option), so one serves all.
const UTF8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

class FyvaultError extends Error {
  /**
   * @param {string} code  not_found | denied | no_previous | agent_unavailable | bad_response |
   *                       invalid_name | user_secret_missing | user_required | invalid_user |
   *                       not_user_vault | vault_unreachable
   * @param {string} message
   * @param {{status?: number, socket?: string, cause?: unknown, connect?: boolean}} [extra]
   */
  constructor(code, message, extra = {}) {
    super(message, extra.cause === undefined ? undefined : { cause: extra.cause });
    this.name = "FyvaultError";
    this.code = code;
    this.status = extra.status;
    this.socket = extra.socket;
    // user_secret_missing: show the "Connect your API key" step (a link from connect()).
    this.connect = extra.connect === true;
  }
}

/** The agent's error codes → the SDK's. */
const CODES = {
  not_found: "not_found",
  no_previous: "no_previous",
  forbidden: "denied",
  invalid_name: "invalid_name",
  user_secret_missing: "user_secret_missing",
  user_required: "user_required",
  invalid_user: "invalid_user",
  not_user_vault: "not_user_vault",
  vault_unreachable: "vault_unreachable",
};

function defaultSocket() {
  return process.env.FYVAULT_SOCKET || DEFAULT_SOCKET;
}

function unavailable(socket, err) {
  const why = err && err.code ? err.code : String(err && err.message ? err.message : err);
  return new FyvaultError(
    "agent_unavailable",
    `cannot reach the fyvault agent at ${socket} (${why}); is it running? ` +
      "Start it with `systemctl start fyvault-agent` (or `fyvault dev`), " +
      "or set FYVAULT_SOCKET to its socket",
    { socket, cause: err },
  );
}

/** Turns a non-2xx answer into a FyvaultError (error bodies never carry a value). */
function answerError(socket, status, body) {
  let code = "";
  let message = "";
  let connect = false;
  try {
    const parsed = JSON.parse(body.toString("utf8"));
    code = String(parsed.error.code);
    message = String(parsed.error.message);
    connect = parsed.error.connect === true;
  } catch {
    return new FyvaultError("bad_response", `the fyvault agent answered HTTP ${status}`, {
      status,
      socket,
    });
  }
  const mapped = CODES[code];
  if (mapped) return new FyvaultError(mapped, message, { status, socket, connect });
  return new FyvaultError("bad_response", `the fyvault agent answered HTTP ${status} ${code}: ${message}`, {
    status,
    socket,
  });
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    if (signal && signal.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      if (signal) signal.removeEventListener("abort", done);
      resolve();
    }
    if (signal) signal.addEventListener("abort", done, { once: true });
  });
}

/** Splits a server-sent-events stream into `{event, data}` blocks. */
async function* sseBlocks(res) {
  let buf = "";
  for await (const chunk of res) {
    buf += chunk.toString("utf8");
    buf = buf.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      let event = "";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") event = value;
        else if (field === "data") data.push(value);
      }
      if (event) yield { event, data: data.join("\n") };
    }
  }
}

/** One event of `GET /v1/events`, in the SDK's shape. */
function toEvent(event, data) {
  let d = {};
  try {
    d = JSON.parse(data);
  } catch {
    d = {};
  }
  if (event === "resync") return { type: "resync", missed: typeof d.missed === "number" ? d.missed : null };
  const out = { type: event, name: d.name, version: d.version };
  if (d.previous_version !== undefined && d.previous_version !== null) {
    out.previousVersion = d.previous_version;
  }
  return out;
}

class Client {
  /** @param {{socket?: string}} [options] */
  constructor(options = {}) {
    this.socket = options.socket || defaultSocket();
    // Keep-alive: one connection reused between calls (idle sockets do not hold the process).
    this._agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
  }

  /** `GET path` (or `POST path` with a JSON `body`); resolves to {status, body: Buffer,
   * headers}. Retries once on a stale reused keep-alive connection. */
  _request(path, headers = {}, retried = false, body = undefined) {
    return new Promise((resolve, reject) => {
      const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
      const extra = payload
        ? { "content-type": "application/json", "content-length": String(payload.length) }
        : {};
      const req = http.request(
        {
          socketPath: this.socket,
          path,
          method: payload ? "POST" : "GET",
          agent: this._agent,
          headers: { host: "fyvault", ...extra, ...headers },
        },
        (res) => {
          const chunks = [];
          res.on("data", (c) => chunks.push(c));
          res.on("end", () =>
            resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }),
          );
          res.on("error", (e) =>
            reject(new FyvaultError("bad_response", "the fyvault agent's answer was cut short", {
              socket: this.socket,
              cause: e,
            })),
          );
        },
      );
      req.on("error", (e) => {
        if (!retried && req.reusedSocket && (e.code === "ECONNRESET" || e.code === "EPIPE")) {
          this._request(path, headers, true, body).then(resolve, reject);
        } else {
          reject(unavailable(this.socket, e));
        }
      });
      req.end(payload);
    });
  }

  async _value(name, options) {
    if (typeof name !== "string" || name === "") {
      throw new TypeError("fyvault: a secret name is a non-empty string");
    }
    const previous = options && options.previous;
    const user = options && options.user;
    if (user !== undefined && (typeof user !== "string" || user === "")) {
      throw new TypeError("fyvault: a user id is a non-empty string");
    }
    const query = [];
    if (previous) query.push("version=previous");
    if (user !== undefined) query.push(`user=${encodeURIComponent(user)}`);
    const path =
      `/v1/secrets/${encodeURIComponent(name)}` + (query.length ? `?${query.join("&")}` : "");
    const res = await this._request(path);
    if (res.status === 200) return res.body;
    const err = answerError(this.socket, res.status, res.body);
    res.body.fill(0);
    throw err;
  }

  /**
   * The secret's value as a string (UTF-8). For a user-vault secret pass `{ user }`: that
   * user's value; a user without one rejects with code `user_secret_missing` (`err.connect`
   * is true: send them to a link from `connect()`).
   * @param {string} name
   * @param {{previous?: boolean, user?: string}} [options]
   */
  async get(name, options) {
    const buf = await this._value(name, options);
    try {
      return UTF8.decode(buf);
    } catch {
      throw new FyvaultError("bad_response", `${name} is not UTF-8 text; read it with getBuffer`, {
        socket: this.socket,
      });
    } finally {
      buf.fill(0);
    }
  }

  /** The secret's exact bytes. */
  async getBuffer(name, options) {
    return this._value(name, options);
  }

  /**
   * A connect link for `user` to supply their own value of the user-vault secret `name`:
   * `{url, expiresAt}`, single use, valid one hour. Same access rule as reading `name`.
   * @param {string} name
   * @param {string} user
   */
  async connect(name, user) {
    if (typeof name !== "string" || name === "" || typeof user !== "string" || user === "") {
      throw new TypeError("fyvault: connect takes a secret name and a user id");
    }
    const res = await this._request("/v1/connect", {}, false, { secret_name: name, user_id: user });
    if (res.status !== 200) throw answerError(this.socket, res.status, res.body);
    let parsed = null;
    try {
      parsed = JSON.parse(res.body.toString("utf8"));
    } catch {
      parsed = null;
    }
    if (!parsed || typeof parsed.url !== "string") {
      throw new FyvaultError("bad_response", "the fyvault agent's connect answer is not JSON", {
        status: res.status,
        socket: this.socket,
      });
    }
    return { url: parsed.url, expiresAt: parsed.expires_at };
  }

  /** The secrets this process may read (names and versions, no values). */
  async list() {
    const res = await this._request("/v1/secrets");
    if (res.status !== 200) throw answerError(this.socket, res.status, res.body);
    let parsed;
    try {
      parsed = JSON.parse(res.body.toString("utf8"));
    } catch {
      parsed = null;
    }
    if (!parsed || !Array.isArray(parsed.secrets)) {
      throw new FyvaultError("bad_response", "the fyvault agent's listing is not JSON", {
        status: res.status,
        socket: this.socket,
      });
    }
    return parsed.secrets.map((s) => {
      const out = { name: s.name, version: s.version, updatedAt: s.updated_at };
      if (s.previous_version !== undefined && s.previous_version !== null) {
        out.previousVersion = s.previous_version;
      }
      return out;
    });
  }

  /** Opens `GET /v1/events`; resolves to the response once its head has arrived. */
  _openEvents(signal) {
    return new Promise((resolve, reject) => {
      const req = http.request({
        socketPath: this.socket,
        path: "/v1/events",
        method: "GET",
        agent: false,
        headers: { host: "fyvault", accept: "text/event-stream" },
        signal,
      });
      req.on("response", (res) => {
        if (res.statusCode !== 200) {
          const chunks = [];
          res.on("data", (c) => chunks.push(c));
          res.on("end", () => reject(answerError(this.socket, res.statusCode, Buffer.concat(chunks))));
          res.on("error", reject);
          return;
        }
        resolve(res);
      });
      req.on("error", (e) => reject(unavailable(this.socket, e)));
      req.end();
    });
  }

  /**
   * The agent's events as an async iterator: `{type, name, version, previousVersion?}` with
   * type added | rotated | updated | revoked | expired, or `{type: "resync", missed}`.
   * Reconnects by itself (100 ms to 5 s backoff); after a reconnection it yields a `resync`
   * (events may have been missed: list again). Ends when `options.signal` aborts or the loop
   * is left.
   * @param {{signal?: AbortSignal}} [options]
   */
  async *events(options = {}) {
    const signal = options.signal;
    let delay = RETRY_MIN_MS;
    let connected = false;
    while (!(signal && signal.aborted)) {
      let res;
      try {
        res = await this._openEvents(signal);
      } catch (e) {
        if (signal && signal.aborted) return;
        await sleep(Math.random() * delay, signal);
        delay = Math.min(delay * 2, RETRY_MAX_MS);
        continue;
      }
      if (connected) yield { type: "resync", missed: null };
      connected = true;
      delay = RETRY_MIN_MS;
      try {
        for await (const { event, data } of sseBlocks(res)) {
          yield toEvent(event, data);
        }
      } catch {
        // The stream broke (agent restarted, aborted): reconnect unless aborted.
      } finally {
        res.destroy();
      }
      if (!(signal && signal.aborted)) await sleep(Math.random() * delay, signal);
    }
  }

  /**
   * Calls `callback(event)` for every event until `close()`; reconnects by itself.
   * @returns {{close(): void, closed: Promise<void>}}
   */
  watch(callback, options = {}) {
    const ac = new AbortController();
    if (options.signal) options.signal.addEventListener("abort", () => ac.abort(), { once: true });
    const closed = (async () => {
      for await (const ev of this.events({ signal: ac.signal })) {
        try {
          await callback(ev);
        } catch (e) {
          process.emitWarning(`fyvault: a watch callback threw: ${e && e.name ? e.name : "error"}`);
        }
      }
    })();
    return { close: () => ac.abort(), closed };
  }

  /** Closes idle keep-alive connections. */
  close() {
    this._agent.destroy();
  }
}

// The module-level functions use a client for FYVAULT_SOCKET (or /run/fyvault.sock), read at
// each call so a variable set after `require` still counts.
let shared = null;
function client() {
  const socket = defaultSocket();
  if (!shared || shared.socket !== socket) {
    if (shared) shared.close();
    shared = new Client({ socket });
  }
  return shared;
}

const fyvault = {
  get: (name, options) => client().get(name, options),
  getBuffer: (name, options) => client().getBuffer(name, options),
  list: () => client().list(),
  connect: (name, user) => client().connect(name, user),
  events: (options) => client().events(options),
  watch: (callback, options) => client().watch(callback, options),
  Client,
  FyvaultError,
  DEFAULT_SOCKET,
};
fyvault.default = fyvault;

module.exports = fyvault;
