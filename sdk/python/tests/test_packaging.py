"""Packaging: ``pip install`` this folder into a fresh venv (made by the ``python3`` running
the tests) and call ``fyvault.get`` from it against a real agent: prints the pushed value,
then the rotated one."""

import os
import shutil
import subprocess
import sys
import unittest

from .dev import SDK, Dev, open_tempdir


class Packaging(unittest.TestCase):
    def setUp(self):
        self.dev = Dev()
        self.addCleanup(self.dev.stop)
        self.work = open_tempdir("fyvault-sdk-py-venv-")
        self.addCleanup(shutil.rmtree, self.work, True)

    def test_pip_install_into_a_fresh_venv_then_get(self):
        venv = os.path.join(self.work, "venv")
        made = subprocess.run([sys.executable, "-m", "venv", venv], capture_output=True, text=True)
        self.assertEqual(made.returncode, 0,
                         f"{sys.executable} -m venv failed (Debian: apt-get install python3-venv):"
                         f" {made.stderr}")
        python = os.path.join(venv, "bin", "python")
        env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
        env.pop("PYTHONPATH", None)
        # Offline: the build backend is in the package's folder and needs nothing else.
        pip = subprocess.run([python, "-m", "pip", "install", "--no-index", "--no-cache-dir",
                              "-q", SDK], capture_output=True, text=True, env=env, cwd=self.work)
        self.assertEqual(pip.returncode, 0, pip.stderr)

        self.dev.push("STRIPE_SK", "sk_test_pushed")
        self.dev.wait_for("STRIPE_SK", "sk_test_pushed")
        app = ("import fyvault, fyvault.aio, asyncio\n"
               "assert fyvault.__file__.startswith(%r), fyvault.__file__\n"
               "print(fyvault.get('STRIPE_SK'))\n"
               "print(asyncio.run(fyvault.aio.get('STRIPE_SK')))\n") % venv
        env["FYVAULT_SOCKET"] = self.dev.socket

        def run():
            out = subprocess.run([python, "-c", app], capture_output=True, text=True, env=env,
                                 cwd=self.work)
            self.assertEqual(out.returncode, 0, out.stderr)
            return out.stdout.splitlines()
        self.assertEqual(run(), ["sk_test_pushed", "sk_test_pushed"])
        self.dev.rotate("STRIPE_SK", "sk_test_rotated")
        self.dev.wait_for("STRIPE_SK", "sk_test_rotated")
        self.assertEqual(run(), ["sk_test_rotated", "sk_test_rotated"])


if __name__ == "__main__":
    unittest.main()
