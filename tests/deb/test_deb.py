"""The Debian package: built twice from copies of the tree, it is the same
file; it holds the expected files; lintian finds nothing unexplained; the
unit verifies and scores below 2.0; the packaged binary, extracted with
dpkg -x, serves tokens that verify against its JWKS.

Run by CTest (package_deb) with JWKS_SOURCE_DIR set to the source tree.
Needs dpkg-dev, debhelper, fakeroot, lintian, systemd, man-db and the
build dependencies (scripts/dev deps installs them).
"""

import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

SOURCE = Path(os.environ.get("JWKS_SOURCE_DIR",
                             Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(SOURCE / "tests" / "integration"))
import harness  # noqa: E402
import jwt  # noqa: E402

BUILD_TIMEOUT = 900
MULTIARCH = subprocess.run(["dpkg-architecture", "-qDEB_HOST_MULTIARCH"],
                           capture_output=True, text=True,
                           check=True).stdout.strip()
EXPECTED_FILES = {
    "./usr/sbin/jwksd",
    # CivetWeb's OpenSSL 3 stand-ins, in a directory ldconfig never scans
    # (crypto/tls_compat.c).
    f"./usr/lib/{MULTIARCH}/jwksd/libjwksd-compat-crypto.so",
    f"./usr/lib/{MULTIARCH}/jwksd/libjwksd-compat-ssl.so",
    "./usr/share/man/man8/jwksd.8.gz",
    "./lib/systemd/system/jwksd.service",
    "./etc/default/jwksd",
    "./usr/share/doc/jwksd/copyright",
    "./usr/share/doc/jwksd/changelog.gz",
}
MAX_EXPOSURE = 2.0


def cmake_version():
    text = (SOURCE / "CMakeLists.txt").read_text()
    m = re.search(r"^project\(jwksd VERSION ([0-9.]+)", text, re.M)
    assert m, "no project(jwksd VERSION ...) in CMakeLists.txt"
    return m.group(1)


def ignore_build_outputs(directory, names):
    """Leave out build trees, VCS data and caches when copying the source."""
    top = Path(directory) == SOURCE
    return {n for n in names
            if n in (".git", "__pycache__")
            or (top and (n.startswith("build") or n.startswith("obj-")))}


def run(cmd, **kw):
    kw.setdefault("timeout", 120)
    return subprocess.run(cmd, capture_output=True, text=True, check=False,
                          **kw)


def build_package(parent, dirname):
    """Copy the tree to parent/dirname, dpkg-buildpackage there; the .deb."""
    tree = Path(parent) / dirname
    shutil.copytree(SOURCE, tree, ignore=ignore_build_outputs, symlinks=True)
    out = run(["dpkg-buildpackage", "-b", "-us", "-uc"], cwd=tree,
              timeout=BUILD_TIMEOUT)
    if out.returncode != 0:
        raise AssertionError(f"dpkg-buildpackage in {tree}: exit "
                             f"{out.returncode}\n{out.stdout[-4000:]}"
                             f"\n{out.stderr[-4000:]}")
    return Path(parent) / f"jwksd_{cmake_version()}_amd64.deb"


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class DebPackageTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="jwksd-deb-")
        tmp = Path(cls.tmp.name)
        # Two builds from copies at different paths: a reproducible build
        # gives the same bytes.
        (tmp / "a").mkdir()
        (tmp / "b").mkdir()
        cls.deb = build_package(tmp / "a", "jwksd")
        cls.deb_again = build_package(tmp / "b", "jwksd-elsewhere")
        cls.root = tmp / "root"
        out = run(["dpkg", "-x", str(cls.deb), str(cls.root)])
        if out.returncode != 0:
            raise AssertionError(f"dpkg -x: {out.stderr}")
        cls.bin = cls.root / "usr/sbin/jwksd"

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_name_version_and_architecture(self):
        self.assertTrue(self.deb.is_file(), f"no {self.deb.name}")
        for field, want in (("Package", "jwksd"),
                            ("Version", cmake_version()),
                            ("Architecture", "amd64")):
            out = run(["dpkg-deb", "-f", str(self.deb), field])
            self.assertEqual(out.stdout.strip(), want, field)
        depends = run(["dpkg-deb", "-f", str(self.deb), "Depends"]).stdout
        for dep in ("adduser", "procps", "libssl3", "libcivetweb1",
                    "libsqlite3-0"):
            self.assertIn(dep, depends)

    def test_build_is_reproducible(self):
        self.assertEqual(sha256(self.deb), sha256(self.deb_again),
                         "two builds of the same tree differ")

    def test_contents(self):
        out = run(["dpkg-deb", "--contents", str(self.deb)])
        self.assertEqual(out.returncode, 0, out.stderr)
        entries = {}
        for line in out.stdout.splitlines():
            fields = line.split()
            entries[fields[5]] = (fields[0], fields[1])
        missing = EXPECTED_FILES - set(entries)
        self.assertFalse(missing, f"not in the package: {sorted(missing)}")
        self.assertEqual(entries["./usr/sbin/jwksd"],
                         ("-rwxr-xr-x", "root/root"))
        # Nothing else that an installer would have to own.
        others = {p for p, (mode, _) in entries.items()
                  if not mode.startswith("d")} - EXPECTED_FILES
        self.assertFalse(others, f"unexpected files: {sorted(others)}")

    def test_maintainer_scripts(self):
        ctl = Path(self.tmp.name) / "control"
        out = run(["dpkg-deb", "-e", str(self.deb), str(ctl)])
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual((ctl / "conffiles").read_text().split(),
                         ["/etc/default/jwksd"])
        postinst = (ctl / "postinst").read_text()
        self.assertRegex(postinst, r"adduser --system --group")
        self.assertIn("/etc/jwksd/kek", postinst)
        self.assertIn("deb-systemd-helper", postinst)  # enabled by dh
        # The user goes only on purge: every deluser is after the test
        # for "purge".
        postrm = (ctl / "postrm").read_text()
        purge = postrm.index('if [ "$1" = "purge" ]; then\n\t# Purge')
        self.assertGreater(postrm.index("deluser"), purge)
        self.assertEqual(postrm.count("deluser --"), 1)
        for script in ("postinst", "postrm", "prerm"):
            out = run(["sh", "-n", str(ctl / script)])
            self.assertEqual(out.returncode, 0, f"{script}: {out.stderr}")

    def test_lintian_finds_no_error_or_warning(self):
        out = run(["lintian", "--fail-on", "error,warning", str(self.deb)],
                  timeout=300)
        bad = [l for l in out.stdout.splitlines() if re.match(r"[EW]: ", l)]
        self.assertEqual(bad, [])
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)

    def packaged_unit_at(self, directory):
        """The packaged unit with ExecStart on the extracted binary."""
        unit = (self.root / "lib/systemd/system/jwksd.service").read_text()
        self.assertIn("ExecStart=/usr/sbin/jwksd ", unit)
        path = Path(directory) / "jwksd.service"
        path.write_text(unit.replace("/usr/sbin/jwksd", str(self.bin)))
        return path

    def test_unit_verifies(self):
        with tempfile.TemporaryDirectory() as d:
            unit = self.packaged_unit_at(d)
            # Documentation=man:jwksd(8) is looked up in the package's pages.
            env = dict(os.environ, MANPATH=str(self.root / "usr/share/man"))
            out = run(["systemd-analyze", "verify", str(unit)], env=env)
            self.assertEqual((out.returncode, out.stdout + out.stderr),
                             (0, ""))

    def test_unit_exposure_below_2(self):
        unit = self.root / "lib/systemd/system/jwksd.service"
        out = run(["systemd-analyze", "security", "--offline=yes",
                   "--no-pager", str(unit)])
        m = re.search(r"Overall exposure level for jwksd\.service: "
                      r"([0-9.]+)", out.stdout)
        self.assertIsNotNone(m, out.stdout + out.stderr)
        self.assertLess(float(m.group(1)), MAX_EXPOSURE, out.stdout)

    def test_unit_settings(self):
        unit = (self.root / "lib/systemd/system/jwksd.service").read_text()
        settings = set(re.findall(r"^([A-Za-z]+=.*)$", unit, re.M))
        for want in ("Type=exec", "User=jwksd", "StateDirectory=jwksd",
                     "WorkingDirectory=/var/lib/jwksd",
                     "EnvironmentFile=-/etc/default/jwksd",
                     "LoadCredential=kek:/etc/jwksd/kek",
                     "CapabilityBoundingSet=", "UMask=0077",
                     "SystemCallFilter=@system-service",
                     "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6"):
            self.assertIn(want, settings)
        self.assertRegex(unit, r"(?m)^ExecStart=/usr/sbin/jwksd --kek-file "
                         r"\$\{CREDENTIALS_DIRECTORY\}/kek \$JWKSD_OPTS$")

    def test_packaged_man_page_matches_packaged_binary(self):
        page = Path(self.tmp.name) / "jwksd.8"
        with gzip.open(self.root / "usr/share/man/man8/jwksd.8.gz") as f:
            page.write_bytes(f.read())
        self.assertIn(f'"jwksd {cmake_version()}"', page.read_text())
        out = run(["/usr/bin/python3",
                   str(SOURCE / "tests/deb/check_man_flags.py"),
                   str(self.bin), str(page),
                   str(self.root / "etc/default/jwksd")])
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        # groff finds nothing to warn about.
        out = run(["groff", "-man", "-ww", "-z", str(page)],
                  env=dict(os.environ, LC_ALL="C.UTF-8"))
        self.assertEqual((out.returncode, out.stderr), (0, ""))

    def test_extracted_binary_serves_verifiable_tokens(self):
        """As the unit runs it: a kek file, the store in the working
        directory."""
        version = run([str(self.bin), "--version"])
        self.assertIn(f"jwksd {cmake_version()}", version.stdout)
        with tempfile.TemporaryDirectory() as d:
            work = Path(d)
            kek = work / "kek"
            kek.write_bytes(os.urandom(32).hex().encode() + b"\n")
            kek.chmod(0o600)
            os.environ["JWKSD_BIN"] = str(self.bin)
            server = harness.Server(work, backend=None,
                                    args=["--kek-file", kek])
            server.start()
            try:
                resp = server.request("POST", "/auth")
                self.assertEqual(resp.status, 200, resp.describe())
                token = resp.json()["token"]
                jwks = server.request("GET", harness.JWKS_PATH)
                self.assertEqual(jwks.status, 200, jwks.describe())
                kid = jwt.get_unverified_header(token)["kid"]
                jwk = harness.jwk_for_kid(jwks.json(), kid)
                self.assertIsNotNone(jwk, f"kid {kid} not in the JWKS")
                claims = jwt.decode(token, jwk.key, algorithms=["RS256"])
                self.assertGreater(claims["exp"], claims["iat"])
            finally:
                self.assertEqual(server.stop(), 0, server.stderr_text())
            store = work / harness.DEFAULT_STORE_NAMES["sqlite"]
            self.assertTrue(store.is_file(), "no store in the working dir")
            listing = run([str(self.bin), "keys", "list", "--json",
                           "--kek-file", str(kek)], cwd=work)
            self.assertEqual(listing.returncode, 0, listing.stderr)
            self.assertRegex(listing.stdout, r'"encrypted":\s*true')
            self.assertNotRegex(listing.stdout, r'"encrypted":\s*false')


if __name__ == "__main__":
    unittest.main()
