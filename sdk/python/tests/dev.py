"""Test support: a real ``fyvault dev`` (vault + agent, socket only) as a subprocess in a temp
dir, and the provider API (push, rotate, revoke) from the facts in DATA_DIR/dev.json."""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request

DEADLINE = 60.0
HERE = os.path.dirname(os.path.abspath(__file__))
SDK = os.path.dirname(HERE)
REPO = os.path.dirname(os.path.dirname(SDK))


def fyvault_bin() -> str:
    """$FYVAULT_BIN, else the repository's debug build."""
    path = os.environ.get("FYVAULT_BIN") or os.path.join(REPO, "target", "debug", "fyvault")
    if not os.path.exists(path):
        raise RuntimeError(f"{path} is missing: run `cargo build` first (or set FYVAULT_BIN)")
    return path


def eventually(what, f, deadline=DEADLINE):
    """Polls ``f`` until it returns something truthy; fails after the deadline."""
    end = time.monotonic() + deadline
    while True:
        v = f()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def open_tempdir(prefix: str) -> str:
    """A temp dir every uid may traverse (uid 65534 must reach the socket inside)."""
    d = tempfile.mkdtemp(prefix=prefix)
    os.chmod(d, 0o755)
    return d


class Dev:
    def __init__(self, grace=None):
        self.dir = open_tempdir("fyvault-sdk-py-")
        self.data = os.path.join(self.dir, "data")
        self.socket = os.path.join(self.dir, "agent.sock")
        args = [fyvault_bin(), "dev", "--listen", "127.0.0.1:0", "--data-dir", self.data,
                "--socket", self.socket, "--mount", os.path.join(self.dir, "mnt"), "--no-mount"]
        if grace is not None:
            args += ["--grace", str(grace)]
        self.args = args
        self.stderr = open(os.path.join(self.dir, "dev.log"), "w+")
        try:
            self._spawn()
        except BaseException:
            self.stop()
            raise

    def _spawn(self):
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=self.stderr)
        self.facts = eventually("fyvault dev to be ready", self._ready)

    def _terminate(self):
        if getattr(self, "proc", None) is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self):
        """Stops the vault and agent (SIGTERM) and starts them again on the same data and
        socket."""
        self._terminate()
        self._spawn()

    def _ready(self):
        if self.proc.poll() is not None:
            self.stderr.seek(0)
            raise AssertionError(f"fyvault dev exited: {self.stderr.read()}")
        try:
            with open(os.path.join(self.data, "dev.json")) as f:
                facts = json.load(f)
        except (OSError, ValueError):
            return None
        return facts if facts.get("pid") == self.proc.pid and os.path.exists(self.socket) else None

    def _provider(self, method, suffix, body):
        f = self.facts
        url = f"{f['url']}/api/v1/orgs/{f['org_id']}/providers/{f['provider_id']}{suffix}"
        req = urllib.request.Request(url, method=method, data=json.dumps(body).encode(), headers={
            "Authorization": f"Bearer {f['provider_token']}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)

    def push(self, name, value):
        return self._provider("POST", "/push", {
            "secret_name": name, "value": value, "environment": self.facts["environment"]})

    def rotate(self, name, value, grace=None):
        body = {"secret_name": name, "value": value, "environment": self.facts["environment"]}
        if grace is not None:
            body["grace_period_seconds"] = grace
        return self._provider("PATCH", "", body)

    def revoke(self, name, user_id=None):
        body = {"secret_name": name}
        if user_id is not None:
            body["user_id"] = user_id
        return self._provider("DELETE", "", body)

    def push_user(self, name, user, value):
        """Pushes ``user``'s value of a user-vault secret."""
        return self._provider("POST", "/push", {
            "secret_name": name, "value": value, "environment": self.facts["environment"],
            "user_id": user})

    def policy(self, name, policy):
        """Sets a secret's policy (``creator`` or ``user``) with the admin token."""
        f = self.facts
        url = (f"{f['url']}/api/v1/orgs/{f['org_id']}/environments/{f['environment']}"
               f"/secrets/{name}/policy")
        req = urllib.request.Request(url, method="PUT", data=json.dumps({"policy": policy}).encode(),
                                     headers={"Authorization": f"Bearer {f['admin_token']}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)

    def cli_get(self, name):
        """What ``fyvault get NAME`` prints now (None when it fails)."""
        out = subprocess.run([fyvault_bin(), "get", name, "--socket", self.socket],
                             capture_output=True)
        return out.stdout.decode() if out.returncode == 0 else None

    def wait_for(self, name, value):
        eventually(f"the agent to serve the new {name}", lambda: self.cli_get(name) == value)

    def wait_gone(self, name):
        eventually(f"{name} to be gone", lambda: self.cli_get(name) is None)

    def stop(self):
        self._terminate()
        self.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)


SETPRIV = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def nobody_python():
    """A Python that uid 65534 can run (this one, else Debian's), or None (not root, no
    setpriv, none runnable): a pyenv Python under /root is not."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return None
    import sys
    for candidate in (sys.executable, "/usr/bin/python3"):
        if candidate and subprocess.run(SETPRIV + [candidate, "-c", "pass"],
                                        capture_output=True).returncode == 0:
            return candidate
    return None
