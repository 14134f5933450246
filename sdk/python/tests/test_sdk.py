"""The Python SDK (blocking and asyncio) against a real vault and agent
(``fyvault dev --no-mount``, a subprocess)."""

import asyncio
import os
import shutil
import subprocess
import threading
import unittest

import fyvault
import fyvault.aio

from .dev import SDK, SETPRIV, Dev, eventually, nobody_python, open_tempdir

dev = None


def setUpModule():
    global dev
    dev = Dev()


def tearDownModule():
    if dev is not None:
        dev.stop()


class Blocking(unittest.TestCase):
    def setUp(self):
        self.client = fyvault.Client(socket=dev.socket)
        self.addCleanup(self.client.close)

    def test_get_and_the_module_level_functions(self):
        dev.push("PY_GET", "sk_live_py_get")
        dev.wait_for("PY_GET", "sk_live_py_get")
        self.assertEqual(self.client.get("PY_GET"), "sk_live_py_get")
        saved = os.environ.get("FYVAULT_SOCKET")
        os.environ["FYVAULT_SOCKET"] = dev.socket
        try:
            self.assertEqual(fyvault.get("PY_GET"), "sk_live_py_get")
            self.assertIn("PY_GET", [s.name for s in fyvault.list()])
        finally:
            if saved is None:
                del os.environ["FYVAULT_SOCKET"]
            else:
                os.environ["FYVAULT_SOCKET"] = saved

    def test_bytes_are_exact(self):
        value = "  clé ✓ with spaces and a newline\n"
        dev.push("PY_BYTES", value)
        dev.wait_for("PY_BYTES", value)
        got = self.client.get_bytes("PY_BYTES")
        self.assertIsInstance(got, bytes)
        self.assertEqual(got, value.encode("utf-8"))
        self.assertEqual(self.client.get("PY_BYTES"), value)

    def test_list_has_versions_and_no_values(self):
        dev.push("PY_LIST", "v-list-py")
        dev.wait_for("PY_LIST", "v-list-py")
        listed = self.client.list()
        names = [s.name for s in listed]
        for n in ("DEMO_GREETING", "DEMO_DATABASE_URL", "PY_LIST"):
            self.assertIn(n, names)
        mine = next(s for s in listed if s.name == "PY_LIST")
        self.assertEqual(mine.version, 1)
        self.assertIsNone(mine.previous_version)
        self.assertNotIn("v-list-py", repr(listed))

    def test_previous_during_grace_then_no_previous_and_next_get_sees_rotation(self):
        dev.push("PY_ROT", "old-value")
        dev.wait_for("PY_ROT", "old-value")
        with self.assertRaises(fyvault.NoPrevious):
            self.client.get("PY_ROT", previous=True)
        dev.rotate("PY_ROT", "new-value", 2)
        dev.wait_for("PY_ROT", "new-value")
        # The agent has it: the very next get on the same keep-alive client returns it.
        self.assertEqual(self.client.get("PY_ROT"), "new-value")
        self.assertEqual(self.client.get("PY_ROT", previous=True), "old-value")
        self.assertEqual(next(s for s in self.client.list() if s.name == "PY_ROT")
                         .previous_version, 1)

        def expired():
            try:
                self.client.get("PY_ROT", previous=True)
                return None
            except fyvault.NoPrevious as e:
                return e
        e = eventually("the 2 s grace to end", expired)
        self.assertEqual((e.code, e.status), ("no_previous", 404))
        self.assertIsInstance(e, fyvault.FyvaultError)
        self.assertNotIn("old-value", str(e))

    def test_revoke_is_not_found(self):
        dev.push("PY_REVOKE", "revoked-soon")
        dev.wait_for("PY_REVOKE", "revoked-soon")
        dev.revoke("PY_REVOKE")
        dev.wait_gone("PY_REVOKE")
        with self.assertRaises(fyvault.NotFound) as cm:
            self.client.get("PY_REVOKE")
        self.assertEqual(cm.exception.code, "not_found")
        self.assertNotIn("revoked-soon", str(cm.exception))

    def test_another_uid_is_denied(self):
        python = nobody_python()
        if python is None:
            self.skipTest("needs root, setpriv and a python3 that uid 65534 can run")
        dev.push("PY_DENIED", "not-for-nobody")
        dev.wait_for("PY_DENIED", "not-for-nobody")
        # A copy of the package uid 65534 can read, wherever this checkout is.
        d = open_tempdir("fyvault-sdk-py-nobody-")
        self.addCleanup(shutil.rmtree, d, True)
        shutil.copytree(os.path.join(SDK, "fyvault"), os.path.join(d, "fyvault"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        for root, dirs, files in os.walk(d):
            for x in dirs:
                os.chmod(os.path.join(root, x), 0o755)
            for x in files:
                os.chmod(os.path.join(root, x), 0o644)
        probe = ("import fyvault\n"
                 "try:\n    fyvault.get('PY_DENIED'); print('READ')\n"
                 "except fyvault.Denied as e:\n"
                 "    print(e.code, 'LEAK' if 'not-for-nobody' in str(e) else 'ok')\n")
        env = dict(os.environ, FYVAULT_SOCKET=dev.socket, PYTHONPATH=d,
                   PYTHONDONTWRITEBYTECODE="1")
        out = subprocess.run(SETPRIV + [python, "-c", probe], env=env, cwd=d,
                             capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.strip(), "denied ok")

    def test_missing_socket_is_agent_unavailable(self):
        missing = os.path.join(dev.dir, "no-such.sock")
        with self.assertRaises(fyvault.AgentUnavailable) as cm:
            fyvault.Client(socket=missing).get("PY_GET")
        e = cm.exception
        self.assertEqual((e.code, e.socket), ("agent_unavailable", missing))
        self.assertIn(missing, str(e))
        with self.assertRaises(fyvault.AgentUnavailable):
            fyvault.Client(socket=missing).list()

    def test_bad_name(self):
        with self.assertRaises(fyvault.InvalidName) as cm:
            self.client.get("../etc/passwd")
        self.assertEqual(cm.exception.status, 400)

    def test_events_deliver_a_rotation(self):
        dev.push("PY_EVENTS", "ev-1")
        dev.wait_for("PY_EVENTS", "ev-1")
        got = []
        stream = self.client.events()
        done = threading.Event()

        def consume():
            for ev in stream:
                got.append(ev)
                if ev.type == "rotated" and ev.name == "PY_EVENTS":
                    break
            done.set()
        t = threading.Thread(target=consume, daemon=True)
        t.start()
        wait_streaming(dev, "PY_EVENTS_CANARY", got)
        dev.rotate("PY_EVENTS", "ev-2", 60)
        self.assertTrue(done.wait(60), f"no rotated event; got {got}")
        stream.close()
        rotated = got[-1]
        self.assertEqual((rotated.version, rotated.previous_version), (2, 1))
        self.assertNotIn("ev-", repr(got))


class Reconnect(unittest.TestCase):
    def test_events_reconnect_after_the_agent_restarts_with_a_resync(self):
        # A dev of its own: restarting the shared one would disturb the other tests.
        own = Dev()
        self.addCleanup(own.stop)
        own.push("PY_RECONNECT", "r-1")
        own.wait_for("PY_RECONNECT", "r-1")
        client = fyvault.Client(socket=own.socket)
        got = []
        stream = client.events()
        stop = threading.Event()

        def consume():
            for ev in stream:
                got.append(ev)
                if stop.is_set():
                    break
        threading.Thread(target=consume, daemon=True).start()
        wait_streaming(own, "PY_RECONNECT_CANARY", got)
        own.restart()
        eventually("a resync after the reconnection",
                   lambda: any(e.type == "resync" for e in got))
        self.assertIsNone(next(e for e in got if e.type == "resync").missed)
        own.rotate("PY_RECONNECT", "r-2", 60)
        eventually("the rotation after the reconnection", lambda: any(
            e.type == "rotated" and e.name == "PY_RECONNECT" for e in got))
        stop.set()


def wait_streaming(d, canary, got):
    """Pushes ``canary`` until a consumer thread has appended an event to ``got``: the stream
    is then open (the agent reports every change from the moment it answered)."""
    n = [0]

    def delivered():
        n[0] += 1
        d.push(canary, f"c-{n[0]}")
        for _ in range(10):
            if got:
                return True
            threading.Event().wait(0.02)
        return False
    eventually("the event stream to deliver", delivered)


    def test_user_vault_secrets(self):
        dev.policy("PY_BYOK", "user")
        dev.push_user("PY_BYOK", "alice", "sk-alice-py")

        def alice():
            try:
                return self.client.get("PY_BYOK", user="alice")
            except (fyvault.UserSecretMissing, fyvault.NotFound):
                return None
        self.assertEqual(eventually("alice's value", alice), "sk-alice-py")
        self.assertEqual(self.client.get_bytes("PY_BYOK", user="alice"), b"sk-alice-py")
        with self.assertRaises(fyvault.UserSecretMissing) as missing:
            self.client.get("PY_BYOK", user="bob")
        self.assertEqual((missing.exception.code, missing.exception.connect), ("user_secret_missing", True))
        self.assertEqual(missing.exception.status, 404)
        with self.assertRaises(fyvault.UserRequired) as required:
            self.client.get("PY_BYOK")
        self.assertEqual((required.exception.code, required.exception.connect), ("user_required", False))
        with self.assertRaises(TypeError):
            self.client.get("PY_BYOK", user="")
        link = self.client.connect("PY_BYOK", "bob")
        self.assertRegex(link.url, r"/connect/fvlink_[A-Za-z0-9]+$")
        self.assertTrue(link.expires_at)
        dev.push("PY_SHARED", "shared-py")
        dev.wait_for("PY_SHARED", "shared-py")
        self.assertEqual(self.client.get("PY_SHARED", user="alice"), "shared-py")
        with self.assertRaises(fyvault.NotUserVault):
            self.client.connect("PY_SHARED", "bob")
        dev.revoke("PY_BYOK", "alice")

        def revoked():
            try:
                self.client.get("PY_BYOK", user="alice")
                return None
            except fyvault.UserSecretMissing:
                return True
        eventually("alice's value revoked", revoked)
        saved = os.environ.get("FYVAULT_SOCKET")
        os.environ["FYVAULT_SOCKET"] = dev.socket
        try:
            with self.assertRaises(fyvault.UserSecretMissing):
                fyvault.get("PY_BYOK", user="carol")
            self.assertTrue(fyvault.connect("PY_BYOK", "carol").url)

            async def aio():
                with self.assertRaises(fyvault.aio.UserSecretMissing):
                    await fyvault.aio.get("PY_BYOK", user="carol")
                self.assertEqual(await fyvault.aio.get("PY_SHARED"), "shared-py")
                link = await fyvault.aio.connect("PY_BYOK", "carol")
                self.assertIn("/connect/fvlink_", link.url)
                with self.assertRaises(fyvault.aio.UserRequired):
                    await fyvault.aio.get("PY_BYOK")
            asyncio.run(aio())
        finally:
            if saved is None:
                del os.environ["FYVAULT_SOCKET"]
            else:
                os.environ["FYVAULT_SOCKET"] = saved


class Asyncio(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self):
        self.client = fyvault.aio.Client(socket=dev.socket)

    async def asyncTearDown(self):
        await self.client.close()

    async def test_get_bytes_list_previous_revoke(self):
        await asyncio.to_thread(dev.push, "PY_AIO", "aio-1")
        await asyncio.to_thread(dev.wait_for, "PY_AIO", "aio-1")
        self.assertEqual(await self.client.get("PY_AIO"), "aio-1")
        self.assertEqual(await self.client.get_bytes("PY_AIO"), b"aio-1")
        self.assertIn("PY_AIO", [s.name for s in await self.client.list()])
        await asyncio.to_thread(dev.rotate, "PY_AIO", "aio-2", 60)
        await asyncio.to_thread(dev.wait_for, "PY_AIO", "aio-2")
        self.assertEqual(await self.client.get("PY_AIO"), "aio-2")
        self.assertEqual(await self.client.get("PY_AIO", previous=True), "aio-1")
        await asyncio.to_thread(dev.revoke, "PY_AIO")
        await asyncio.to_thread(dev.wait_gone, "PY_AIO")
        with self.assertRaises(fyvault.aio.NotFound):
            await self.client.get("PY_AIO")
        with self.assertRaises(fyvault.aio.NoPrevious):
            await self.client.get("DEMO_GREETING", previous=True)
        with self.assertRaises(fyvault.aio.AgentUnavailable) as cm:
            await fyvault.aio.Client(socket=dev.socket + ".missing").get("PY_AIO")
        self.assertIn(dev.socket + ".missing", str(cm.exception))

    async def test_module_level_and_events(self):
        await asyncio.to_thread(dev.push, "PY_AIO_EV", "e-1")
        await asyncio.to_thread(dev.wait_for, "PY_AIO_EV", "e-1")
        saved = os.environ.get("FYVAULT_SOCKET")
        os.environ["FYVAULT_SOCKET"] = dev.socket
        try:
            self.assertEqual(await fyvault.aio.get("PY_AIO_EV"), "e-1")
        finally:
            if saved is None:
                del os.environ["FYVAULT_SOCKET"]
            else:
                os.environ["FYVAULT_SOCKET"] = saved
        stream = self.client.events()
        first = asyncio.ensure_future(stream.__anext__())
        for i in range(1000):
            await asyncio.to_thread(dev.push, "PY_AIO_CANARY", f"c-{i}")
            done, _ = await asyncio.wait({first}, timeout=0.2)
            if done:
                break
        self.assertTrue(first.done(), "the event stream delivered nothing")
        await asyncio.to_thread(dev.rotate, "PY_AIO_EV", "e-2", 60)

        async def rotated():
            async for ev in stream:
                if ev.type == "rotated" and ev.name == "PY_AIO_EV":
                    return ev
        ev = await asyncio.wait_for(rotated(), 60)
        self.assertEqual((ev.version, ev.previous_version), (2, 1))
        await stream.aclose()


if __name__ == "__main__":
    unittest.main()
