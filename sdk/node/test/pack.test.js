"use strict";
// Packaging: `npm pack` the SDK, install the tarball into an empty project, and run the
// published sample verbatim with a stand-in Stripe class that records its key. One process
// handles two "requests": the first prints the pushed value, the second (after a rotation)
// the rotated one.

const { test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const { spawn, spawnSync } = require("node:child_process");
const fs = require("node:fs");
const path = require("node:path");
const readline = require("node:readline");

const { Dev, openTempdir } = require("./dev");

const SDK = path.resolve(__dirname, "..");

// The published sample, verbatim, inside a request handler.
const APP = `import fyvault from "fyvault";
import { createInterface } from "node:readline";

// A stand-in for the Stripe SDK: it only records the key it is given.
class Stripe {
  constructor(key) {
    this.key = key;
  }
}

async function handleRequest() {
const stripe = new Stripe(
  await fyvault.get("STRIPE_SK")
);
// Key rotated. Zero downtime. No .env touched.
  return stripe.key;
}

for await (const _ of createInterface({ input: process.stdin })) {
  console.log(await handleRequest());
}
`;

let dev;
let work;

before(async () => {
  dev = await Dev.start();
  work = openTempdir("fyvault-sdk-node-pack-");
});

after(async () => {
  if (dev) await dev.stop();
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

function npm(args, cwd) {
  const out = spawnSync("npm", args, {
    cwd,
    env: { ...process.env, npm_config_audit: "false", npm_config_fund: "false", npm_config_update_notifier: "false" },
  });
  assert.equal(out.status, 0, `npm ${args.join(" ")}: ${out.stderr}`);
  return out.stdout.toString();
}

test("npm pack → install into an empty project → the published sample prints pushed, then rotated", async () => {
  const packed = JSON.parse(npm(["pack", "--json", "--pack-destination", work], SDK));
  const files = packed[0].files.map((f) => f.path).sort();
  assert.deepEqual(files, ["README.md", "index.d.ts", "index.js", "index.mjs", "package.json"]);
  const tarball = path.join(work, packed[0].filename);

  const project = path.join(work, "app");
  fs.mkdirSync(project);
  fs.writeFileSync(path.join(project, "package.json"), JSON.stringify({ name: "app", private: true }));
  npm(["install", "--no-package-lock", "--offline", tarball], project);
  const installed = path.join(project, "node_modules", "fyvault");
  assert.ok(fs.existsSync(path.join(installed, "index.d.ts")));
  fs.writeFileSync(path.join(project, "app.mjs"), APP);

  // CommonJS from the installed package too.
  const cjs = spawnSync(process.execPath, ["-e", 'const f = require("fyvault"); process.stdout.write(typeof f.get + typeof f.default.get)'], { cwd: project });
  assert.equal(cjs.stdout.toString(), "functionfunction", cjs.stderr.toString());

  await dev.push("STRIPE_SK", "sk_test_pushed");
  await dev.waitFor("STRIPE_SK", "sk_test_pushed");
  const app = spawn(process.execPath, ["app.mjs"], {
    cwd: project,
    env: { ...process.env, FYVAULT_SOCKET: dev.socket },
    stdio: ["pipe", "pipe", "inherit"],
  });
  const lines = readline.createInterface({ input: app.stdout })[Symbol.asyncIterator]();
  try {
    app.stdin.write("request\n");
    assert.equal((await lines.next()).value, "sk_test_pushed");
    await dev.rotate("STRIPE_SK", "sk_test_rotated");
    await dev.waitFor("STRIPE_SK", "sk_test_rotated");
    app.stdin.write("request\n");
    assert.equal((await lines.next()).value, "sk_test_rotated");
  } finally {
    app.stdin.end();
  }
  const code = await new Promise((r) => (app.exitCode !== null ? r(app.exitCode) : app.once("exit", r)));
  assert.equal(code, 0);
});
