"use strict";
// The Node SDK against a real vault and agent (`fyvault dev --no-mount`, a subprocess).

const { test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const { spawnSync } = require("node:child_process");
const fs = require("node:fs");
const path = require("node:path");

const fyvault = require("..");
const { Client, FyvaultError } = fyvault;
const { Dev, eventually, asNobody, openTempdir } = require("./dev");

let dev;
let client;

before(async () => {
  dev = await Dev.start();
  client = new Client({ socket: dev.socket });
});

after(async () => {
  if (client) client.close();
  if (dev) await dev.stop();
});

/** The FyvaultError `p` rejects with. */
async function failure(p) {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof FyvaultError, `not a FyvaultError: ${e}`);
    return e;
  }
  assert.fail("expected a FyvaultError");
}

test("get resolves to the pushed value; the module-level get reads FYVAULT_SOCKET", async () => {
  await dev.push("NODE_GET", "sk_live_node_get");
  await dev.waitFor("NODE_GET", "sk_live_node_get");
  assert.equal(await client.get("NODE_GET"), "sk_live_node_get");
  const saved = process.env.FYVAULT_SOCKET;
  process.env.FYVAULT_SOCKET = dev.socket;
  try {
    assert.equal(await fyvault.get("NODE_GET"), "sk_live_node_get");
    assert.equal(await fyvault.default.get("NODE_GET"), "sk_live_node_get");
    // The ESM entry is the same module.
    const esm = await import("../index.mjs");
    assert.equal(await esm.default.get("NODE_GET"), "sk_live_node_get");
    assert.equal(await esm.get("NODE_GET"), "sk_live_node_get");
    assert.equal(esm.FyvaultError, FyvaultError);
  } finally {
    if (saved === undefined) delete process.env.FYVAULT_SOCKET;
    else process.env.FYVAULT_SOCKET = saved;
  }
});

test("getBuffer gives the exact bytes", async () => {
  const value = "  clé ✓ with spaces and a newline\n";
  await dev.push("NODE_BYTES", value);
  await dev.waitFor("NODE_BYTES", value);
  const buf = await client.getBuffer("NODE_BYTES");
  assert.ok(Buffer.isBuffer(buf));
  assert.deepEqual(buf, Buffer.from(value, "utf8"));
  assert.equal(await client.get("NODE_BYTES"), value);
});

test("list names what the caller may read, with versions and no values", async () => {
  await dev.push("NODE_LIST", "v-list-1");
  await dev.waitFor("NODE_LIST", "v-list-1");
  const all = await client.list();
  const names = all.map((s) => s.name);
  for (const n of ["DEMO_GREETING", "DEMO_DATABASE_URL", "NODE_LIST"]) assert.ok(names.includes(n), n);
  const mine = all.find((s) => s.name === "NODE_LIST");
  assert.equal(mine.version, 1);
  assert.equal(typeof mine.updatedAt, "string");
  assert.ok(!JSON.stringify(all).includes("v-list-1"));
});

test("previous during grace, no_previous after; the next get sees the rotation", async () => {
  await dev.push("NODE_ROT", "old-value");
  await dev.waitFor("NODE_ROT", "old-value");
  assert.equal((await failure(client.get("NODE_ROT", { previous: true }))).code, "no_previous");
  await dev.rotate("NODE_ROT", "new-value", 2);
  await dev.waitFor("NODE_ROT", "new-value");
  // The agent has it: the very next get of the same (keep-alive) client returns it.
  assert.equal(await client.get("NODE_ROT"), "new-value");
  assert.equal(await client.get("NODE_ROT", { previous: true }), "old-value");
  const listed = (await client.list()).find((s) => s.name === "NODE_ROT");
  assert.equal(listed.version, 2);
  assert.equal(listed.previousVersion, 1);
  // The 2 s grace runs out.
  const e = await eventually("the grace period to end", async () => {
    try {
      await client.get("NODE_ROT", { previous: true });
      return undefined;
    } catch (err) {
      return err;
    }
  });
  assert.ok(e instanceof FyvaultError);
  assert.equal(e.code, "no_previous");
  assert.equal(e.status, 404);
  assert.ok(!e.message.includes("old-value"));
});

test("revoke → not_found, value not in the error", async () => {
  await dev.push("NODE_REVOKE", "revoked-soon");
  await dev.waitFor("NODE_REVOKE", "revoked-soon");
  await dev.revoke("NODE_REVOKE");
  await eventually("the revoke to reach the agent", () => dev.cliGet("NODE_REVOKE") === undefined);
  const e = await failure(client.get("NODE_REVOKE"));
  assert.equal(e.code, "not_found");
  assert.ok(!e.message.includes("revoked-soon"));
  assert.equal((await failure(client.get("NEVER_PUSHED_NODE"))).code, "not_found");
});

test("another uid is denied", async (t) => {
  const base = asNobody(process.execPath);
  if (!base) return t.skip("needs root, setpriv and a node that uid 65534 can run");
  await dev.push("NODE_DENIED", "not-for-nobody");
  await dev.waitFor("NODE_DENIED", "not-for-nobody");
  // A copy of the SDK that uid 65534 can read wherever this checkout is.
  const dir = openTempdir("fyvault-sdk-node-nobody-");
  try {
    fs.copyFileSync(path.join(__dirname, "..", "index.js"), path.join(dir, "index.js"));
    fs.writeFileSync(
      path.join(dir, "probe.js"),
      `const f = require("./index.js");
f.get("NODE_DENIED").then(
  (v) => console.log("READ " + v.length),
  (e) => console.log(e.code + " " + (e.message.includes("not-for-nobody") ? "LEAK" : "ok")),
);`,
    );
    fs.chmodSync(dir, 0o755);
    const out = spawnSync("setpriv", [...base, process.execPath, path.join(dir, "probe.js")], {
      env: { ...process.env, FYVAULT_SOCKET: dev.socket },
    });
    assert.equal(out.status, 0, out.stderr.toString());
    assert.equal(out.stdout.toString().trim(), "denied ok");
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("a missing socket → agent_unavailable naming the socket", async () => {
  const missing = path.join(dev.dir, "no-such.sock");
  const e = await failure(new Client({ socket: missing }).get("NODE_GET"));
  assert.equal(e.code, "agent_unavailable");
  assert.equal(e.socket, missing);
  assert.ok(e.message.includes(missing), e.message);
  assert.ok(e.message.includes("fyvault"), e.message);
  assert.equal((await failure(new Client({ socket: missing }).list())).code, "agent_unavailable");
});

test("a name the agent refuses → invalid_name", async () => {
  const e = await failure(client.get("../etc/passwd"));
  assert.equal(e.code, "invalid_name");
  assert.equal(e.status, 400);
});

/** Pushes a canary until `next` (a pending iterator step) yields: the stream is then open. */
async function untilStreaming(next, canary) {
  let i = 0;
  return eventually("the event stream to deliver", async () => {
    await dev.push(canary, `canary-${i++}`);
    const got = await Promise.race([next, new Promise((r) => setTimeout(() => r(undefined), 200))]);
    return got;
  });
}

test("events delivers a rotation (and watch a revoke), never a value", async () => {
  await dev.push("NODE_EVENTS", "ev-1");
  await dev.waitFor("NODE_EVENTS", "ev-1");
  const ac = new AbortController();
  const it = client.events({ signal: ac.signal })[Symbol.asyncIterator]();
  const first = await untilStreaming(it.next(), "NODE_EVENTS_CANARY");
  assert.equal(first.done, false);
  assert.equal(first.value.name, "NODE_EVENTS_CANARY");

  const seen = [];
  const watcher = client.watch((ev) => seen.push(ev));
  await untilStreaming(
    eventually("the watcher to see an event", () => seen.length > 0 || undefined),
    "NODE_EVENTS_CANARY",
  );

  await dev.rotate("NODE_EVENTS", "ev-2", 60);
  let rotated;
  while (!rotated) {
    const step = await it.next();
    assert.equal(step.done, false);
    if (step.value.type === "rotated" && step.value.name === "NODE_EVENTS") rotated = step.value;
  }
  assert.equal(rotated.version, 2);
  assert.equal(rotated.previousVersion, 1);
  assert.ok(!JSON.stringify(rotated).includes("ev-"));
  ac.abort();

  await dev.revoke("NODE_EVENTS");
  await eventually("the watcher to see the revoke", () =>
    seen.some((e) => e.type === "revoked" && e.name === "NODE_EVENTS"),
  );
  watcher.close();
  await watcher.closed;
});

test("events reconnect by themselves after the agent restarts, with a resync", async () => {
  // A dev of its own: restarting the shared one would disturb the other tests.
  const own = await Dev.start();
  const c = new Client({ socket: own.socket });
  try {
    await own.push("NODE_RECONNECT", "r-1");
    await own.waitFor("NODE_RECONNECT", "r-1");
    const ac = new AbortController();
    const it = c.events({ signal: ac.signal })[Symbol.asyncIterator]();
    let i = 0;
    await eventually("the event stream to deliver", async () => {
      await own.push("NODE_RECONNECT_CANARY", `c-${i++}`);
      return Promise.race([it.next(), new Promise((r) => setTimeout(() => r(undefined), 200))]);
    });
    await own.restart();
    let step;
    do {
      step = await it.next();
    } while (step.value.type !== "resync");
    assert.equal(step.value.missed, null);
    await own.rotate("NODE_RECONNECT", "r-2", 60);
    do {
      step = await it.next();
    } while (!(step.value.type === "rotated" && step.value.name === "NODE_RECONNECT"));
    assert.equal(step.value.version, 2);
    ac.abort();
  } finally {
    c.close();
    await own.stop();
  }
});

test("user-vault secrets: { user } reads, user_secret_missing with connect, user_required, connect()", async () => {
  await dev.policy("NODE_BYOK", "user");
  await dev.pushUser("NODE_BYOK", "alice", "sk-alice-node");
  const alice = await eventually("alice's value", async () => {
    try {
      return await client.get("NODE_BYOK", { user: "alice" });
    } catch (e) {
      if (e.code === "user_secret_missing" || e.code === "not_found") return undefined;
      throw e;
    }
  });
  assert.equal(alice, "sk-alice-node");
  assert.equal((await client.getBuffer("NODE_BYOK", { user: "alice" })).toString(), "sk-alice-node");
  const missing = await failure(client.get("NODE_BYOK", { user: "bob" }));
  assert.equal(missing.code, "user_secret_missing");
  assert.equal(missing.connect, true);
  assert.equal(missing.status, 404);
  const required = await failure(client.get("NODE_BYOK"));
  assert.equal(required.code, "user_required");
  assert.equal(required.connect, false);
  await assert.rejects(client.get("NODE_BYOK", { user: "" }), TypeError);
  const link = await client.connect("NODE_BYOK", "bob");
  assert.match(link.url, /\/connect\/fvlink_[A-Za-z0-9]+$/);
  assert.ok(Date.parse(link.expiresAt) > Date.now());
  const notUser = await failure(client.connect("NODE_GET", "bob"));
  assert.equal(notUser.code, "not_user_vault");
  // The link's page API: bob's key arrives sealed (the studio page seals in the browser).
  const info = await (await fetch(link.url.replace("/connect/", "/api/v1/connect/"))).json();
  assert.equal(info.user_id, "bob");
  // A creator secret read with a user is the shared value (the policy decides).
  await dev.push("NODE_SHARED", "shared-node");
  await dev.waitFor("NODE_SHARED", "shared-node");
  assert.equal(await client.get("NODE_SHARED", { user: "alice" }), "shared-node");
  // Revoking alice's value: her reads say "connect" again.
  await dev.revoke("NODE_BYOK", "alice");
  const gone = await eventually("alice's value revoked", async () => {
    try {
      await client.get("NODE_BYOK", { user: "alice" });
      return undefined;
    } catch (e) {
      return e;
    }
  });
  assert.equal(gone.code, "user_secret_missing");
  // The module-level API takes the same options.
  const saved = process.env.FYVAULT_SOCKET;
  process.env.FYVAULT_SOCKET = dev.socket;
  try {
    const err = await failure(fyvault.get("NODE_BYOK", { user: "carol" }));
    assert.equal(err.code, "user_secret_missing");
    assert.equal(typeof fyvault.connect, "function");
  } finally {
    if (saved === undefined) delete process.env.FYVAULT_SOCKET;
    else process.env.FYVAULT_SOCKET = saved;
  }
});
