"""jwksd as a library: examples/embed.c, a host program with a route of its
own, mounts jwksd's routes on its CivetWeb context. Built in the tree (env
JWKS_EMBED_BIN), and again outside it from an installed jwksd with
`pkg-config --cflags --libs jwksd` (env JWKS_BUILD_DIR: the build tree to
`cmake --install`).

Each binary serves its own GET /hello and jwksd's POST /auth, JWKS and
probes on one port; tokens verify with PyJWT against that JWKS.
"""
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

import jwt

from harness import LOOPBACK, free_port, http_request, jwk_for_kid, split_jwt

SOURCE = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0


class EmbedTests(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="jwksd-embed-"))
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)

    def start(self, binary):
        for _ in range(5):
            port = free_port()
            out = open(self.tmp / f"embed-{port}.out", "w+")
            proc = subprocess.Popen(
                [str(binary), f"{LOOPBACK}:{port}", str(self.tmp / "keys.db")],
                stdout=out, stderr=subprocess.STDOUT, cwd=self.tmp)
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and proc.poll() is None:
                out.seek(0)
                if f"listening on port {port}" in out.read():
                    self.addCleanup(self.stop, proc, out)
                    return port
                time.sleep(0.05)
            proc.kill()
            proc.wait()
            out.seek(0)
            text = out.read()
            out.close()
            if "cannot listen" not in text:
                self.fail(f"{binary} did not start:\n{text}")
        self.fail(f"{binary}: no free port in 5 tries")

    def stop(self, proc, out):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                self.assertEqual(proc.wait(timeout=15), 0, "exit status")
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                self.fail("the host did not stop on SIGTERM")
        out.close()

    def check_host(self, binary):
        port = self.start(binary)
        # The host's own route.
        resp = http_request(port, "GET", "/hello")
        self.assertEqual((resp.status, resp.body), (200, b"hello from the host\n"))
        # jwksd's routes on the same port.
        resp = http_request(port, "GET", "/healthz")
        self.assertEqual(resp.status, 200, resp.describe())
        resp = http_request(port, "POST", "/auth")
        self.assertEqual(resp.status, 200, resp.describe())
        token = resp.json()["token"]
        jwks = http_request(port, "GET", "/.well-known/jwks.json")
        self.assertEqual(jwks.status, 200, jwks.describe())
        header = split_jwt(token)[0]
        jwk = jwk_for_kid(jwks.json(), header["kid"])
        self.assertIsNotNone(jwk, "the signing key is in the host's JWKS")
        claims = jwt.decode(token, jwk.key, algorithms=["RS256"])
        self.assertGreater(claims["exp"], time.time())
        # ?expired=true too, and its key is not published.
        resp = http_request(port, "POST", "/auth?expired=true")
        self.assertEqual(resp.status, 200, resp.describe())
        self.assertIsNone(jwk_for_kid(jwks.json(),
                                      split_jwt(resp.json()["token"])[0]["kid"]))
        # Not a catch-all: a path neither serves is CivetWeb's own 404.
        resp = http_request(port, "GET", "/nothing-here")
        self.assertEqual(resp.status, 404, resp.describe())

    def test_in_tree_example(self):
        binary = os.environ.get("JWKS_EMBED_BIN")
        self.assertTrue(binary and os.access(binary, os.X_OK),
                        "JWKS_EMBED_BIN names the built example")
        self.check_host(binary)

    def test_installed_library_builds_the_example_with_pkg_config(self):
        build = os.environ.get("JWKS_BUILD_DIR")
        self.assertTrue(build and Path(build, "CMakeCache.txt").exists(),
                        "JWKS_BUILD_DIR names the build tree")
        prefix = self.tmp / "prefix"
        subprocess.run(["cmake", "--install", build, "--prefix", str(prefix)],
                       check=True, capture_output=True, timeout=120)
        pcs = list(prefix.rglob("jwksd.pc"))
        self.assertEqual(len(pcs), 1, f"one jwksd.pc installed: {pcs}")
        for header in ("jwks_http.h", "service.h", "keystore.h", "accounts.h"):
            self.assertTrue((prefix / "include" / "jwksd" / header).exists(), header)
        env = dict(os.environ, PKG_CONFIG_PATH=str(pcs[0].parent))
        flags = subprocess.run(["pkg-config", "--cflags", "--libs", "jwksd"],
                               env=env, check=True, capture_output=True,
                               text=True, timeout=30).stdout.split()
        # Nothing from the source or build tree: only the installed prefix.
        for flag in flags:
            self.assertFalse(str(SOURCE) in flag or build in flag, flag)
        self.assertTrue(any(re.match(r"-I.*include/jwksd$", f) for f in flags), flags)
        binary = self.tmp / "embed-outside"
        cc = subprocess.run(["cc", "-std=c11", "-Wall", "-Wextra", "-Werror",
                             *os.environ.get("JWKS_EMBED_CFLAGS", "").split(),
                             str(SOURCE / "examples" / "embed.c"), *flags,
                             "-o", str(binary)],
                            cwd=self.tmp, capture_output=True, text=True, timeout=120)
        self.assertEqual(cc.returncode, 0, cc.stderr)
        self.check_host(binary)


if __name__ == "__main__":
    unittest.main()
