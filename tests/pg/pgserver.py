#!/usr/bin/python3
"""A throwaway PostgreSQL 15 server for the tests.

    pgserver.py start STATE_DIR    initdb + pg_ctl start; writes STATE_DIR/conninfo
    pgserver.py stop STATE_DIR     pg_ctl stop; removes the data directory
    pgserver.py halt STATE_DIR     pg_ctl stop -m fast; keeps the data directory
    pgserver.py resume STATE_DIR   pg_ctl start again after halt
    pgserver.py env STATE_DIR PROGRAM ARGS...
                                   runs PROGRAM with JWKS_TEST_PG set to the
                                   conninfo in STATE_DIR/conninfo

The server lives in a fresh temporary directory under /tmp (kept short: a
Unix socket path has at most 107 bytes), listens on a Unix socket in that
directory only (listen_addresses = '', no TCP port), trusts every local
connection, and runs with durability off (fsync, synchronous_commit,
full_page_writes) because the data is thrown away. PostgreSQL refuses to run
as root: when the tests run as root, the server runs as the unprivileged
`postgres` user (the data directory is chowned to it); otherwise as the
current user.

STATE_DIR/conninfo holds one line, a libpq conninfo for the superuser on the
scratch database `postgres`: `host=DIR port=5432 user=USER dbname=postgres`.
The CTest fixture (tests/CMakeLists.txt: pg_start, pg_stop) shares one server
per build directory; the tests read that file (env JWKS_TEST_PG_FILE) or the
conninfo itself (env JWKS_TEST_PG).

The Python API (PgServer) is what the integration harness and the several-hosts
suite use; a PgServer that is started registers its own removal with atexit,
so it is stopped and removed also when a test run fails or is interrupted.
"""

import atexit
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PG_BIN = Path(os.environ.get("JWKS_PG_BIN", "/usr/lib/postgresql/15/bin"))
PORT = 5432
START_TIMEOUT = 60  # seconds, for pg_ctl -w (a loaded 2-core machine)


def server_user():
    """The user the server runs as: `postgres` when we are root."""
    if os.geteuid() == 0:
        return "postgres"
    return pwd.getpwuid(os.geteuid()).pw_name


def _as_server_user():
    """The command prefix that runs a program as server_user()."""
    if os.geteuid() != 0:
        return []
    entry = pwd.getpwnam("postgres")
    return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}",
            "--clear-groups", "--reset-env"]


class PgError(RuntimeError):
    pass


class PgServer:
    """One PostgreSQL cluster in a temporary directory.

    listen: '' (default) for a Unix socket only, or an IP address to listen on
    as well (the socket stays); hba_cidr: a network to trust over TCP;
    netns: a network namespace to run the server in (`ip netns exec`).
    The conninfo always uses the Unix socket, which works from any network
    namespace because it is a file.
    """

    def __init__(self, listen="", hba_cidr=None, netns=None, base=None,
                 label="pg"):
        self.listen = listen
        self.hba_cidr = hba_cidr
        self.netns = netns
        self.dir = Path(tempfile.mkdtemp(prefix=f"jwksd-{label}-", dir=base or "/tmp"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.user = server_user()
        self.running = False
        self._removed = False
        atexit.register(self.remove)

    # -- commands

    def _prefix(self):
        prefix = []
        if self.netns:
            prefix += ["ip", "netns", "exec", self.netns]
        return prefix + _as_server_user()

    def _run(self, *cmd, check=True, timeout=START_TIMEOUT + 30):
        res = subprocess.run(self._prefix() + [str(c) for c in cmd],
                             cwd=self.dir, stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise PgError(f"{' '.join(str(c) for c in cmd)} exited "
                          f"{res.returncode}:\n{res.stdout}{res.stderr}"
                          f"{self.log_tail()}")
        return res

    def log_tail(self, limit=3000):
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return f"\n--- PostgreSQL log ({self.log}) ---\n{text[-limit:]}"

    # -- lifecycle

    def init(self):
        """initdb and the test configuration (once)."""
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        os.chmod(self.dir, 0o755)  # the socket is reachable by other users
        self._run(PG_BIN / "initdb", "-D", self.data, "-U", self.user,
                  "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")
        conf = [
            f"listen_addresses = '{self.listen}'",
            f"port = {PORT}",
            f"unix_socket_directories = '{self.dir}'",
            "fsync = off",
            "synchronous_commit = off",
            "full_page_writes = off",
            "max_connections = 300",
            "shared_buffers = 32MB",
            "log_min_messages = warning",
            "log_connections = off",
        ]
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as f:
            f.write("\n# jwksd tests (tests/pg/pgserver.py)\n")
            f.write("\n".join(conf) + "\n")
        if self.hba_cidr:
            with open(self.data / "pg_hba.conf", "a", encoding="utf-8") as f:
                f.write(f"host all all {self.hba_cidr} trust\n")
        return self

    def start(self):
        """Start (initdb first if needed) and wait until it accepts connections."""
        if not (self.data / "PG_VERSION").exists():
            self.init()
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-l", self.log, "-w",
                  "-t", str(START_TIMEOUT), "start")
        self.running = True
        return self

    def stop(self, mode="fast"):
        """Stop the server, keep the data (start() brings it back)."""
        if not self.running:
            return
        res = self._run(PG_BIN / "pg_ctl", "-D", self.data, "-m", mode, "-w",
                        "-t", "30", "stop", check=False)
        if res.returncode != 0 and self._postmaster_alive():
            self._run(PG_BIN / "pg_ctl", "-D", self.data, "-m", "immediate",
                      "-w", "stop", check=False)
        self._kill_postmaster()
        self.running = False

    def remove(self):
        """Stop (immediately) and delete the directory; idempotent."""
        if self._removed:
            return
        try:
            self.stop(mode="immediate")
        finally:
            self._kill_postmaster()
            shutil.rmtree(self.dir, ignore_errors=True)
            self._removed = True

    def _postmaster_pid(self):
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _postmaster_alive(self):
        pid = self._postmaster_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False

    def _kill_postmaster(self):
        pid = self._postmaster_pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            return
        for _ in range(100):
            if not self._postmaster_alive():
                return
            time.sleep(0.05)

    # -- clients

    @property
    def conninfo(self):
        return conninfo_for(self.dir, self.user)

    def tcp_conninfo(self, host):
        return f"host={host} port={PORT} user={self.user} dbname=postgres connect_timeout=3"

    def psql(self, sql, conninfo=None, timeout=30):
        return psql(conninfo or self.conninfo, sql, timeout=timeout)


def conninfo_for(directory, user):
    return f"host={directory} port={PORT} user={user} dbname=postgres"


def psql(conninfo, sql, timeout=30, check=True):
    """Run SQL with psql (unaligned, tuples only, stop on the first error);
    returns stdout. Raises PgError with psql's stderr on failure."""
    res = subprocess.run(
        [str(PG_BIN / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
         "-d", conninfo, "-c", sql],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise PgError(f"psql exited {res.returncode} on {sql!r}: {res.stderr.strip()}")
    return res.stdout


# ----------------------------------------------------------- command line

def _cli_start(state):
    state.mkdir(parents=True, exist_ok=True)
    _cli_stop(state)  # a server left behind by an interrupted run
    server = PgServer(label="ctest")
    try:
        server.start()
    except BaseException:
        server.remove()
        raise
    atexit.unregister(server.remove)  # it outlives this process until `stop`
    (state / "datadir").write_text(f"{server.dir}\n")
    (state / "conninfo").write_text(f"{server.conninfo}\n")
    print(server.conninfo)


def _cli_server(state):
    """The server that `start` left in state, or None."""
    dirfile = state / "datadir"
    if not dirfile.exists():
        return None
    directory = Path(dirfile.read_text().strip())
    server = PgServer.__new__(PgServer)
    server.dir = directory
    server.data = directory / "data"
    server.log = directory / "server.log"
    server.netns = None
    server.user = server_user()
    server.running = server._postmaster_alive()
    server._removed = False
    return server


def _cli_halt(state):
    server = _cli_server(state)
    if server is None:
        raise PgError(f"no server in {state}")
    server.stop(mode="fast")
    print(f"halted {server.dir}")


def _cli_resume(state):
    server = _cli_server(state)
    if server is None:
        raise PgError(f"no server in {state}")
    if not server.running:
        server.start()
    print(f"resumed {server.dir}")


def _cli_stop(state):
    server = _cli_server(state)
    if server is None:
        return
    dirfile = state / "datadir"
    directory = server.dir
    server.remove()
    dirfile.unlink()
    (state / "conninfo").unlink(missing_ok=True)
    print(f"stopped and removed {directory}")


def main(argv):
    if len(argv) >= 4 and argv[1] == "env":
        conninfo = (Path(argv[2]) / "conninfo").read_text().strip()
        os.environ["JWKS_TEST_PG"] = conninfo
        os.execv(argv[3], argv[3:])
    commands = {"start": _cli_start, "stop": _cli_stop, "halt": _cli_halt,
                "resume": _cli_resume}
    if len(argv) != 3 or argv[1] not in commands:
        print(f"usage: {argv[0]} start|stop|halt|resume STATE_DIR | "
              "env STATE_DIR PROGRAM ARGS...", file=sys.stderr)
        return 2
    state = Path(argv[2]).resolve()
    try:
        commands[argv[1]](state)
    except (PgError, OSError, subprocess.SubprocessError) as exc:
        print(f"pgserver: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
