"""A private PostgreSQL cluster for tests: `initdb` + `pg_ctl` in a temporary directory, reached
only through a Unix socket in that directory (no TCP), trust authentication on the socket.

PostgreSQL refuses to run as root; as root the cluster runs as the `postgres` system user (Debian's
package creates it), the directory handed to it. The server binaries are taken from PATH, else from
Debian's /usr/lib/postgresql/*/bin (`make system-deps` installs the package where neither has them).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "sai"


def server_bin(name: str) -> str | None:
    """Where the server program `name` (initdb, pg_ctl) is, or None."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return candidates[-1] if candidates else None


def _as_server_user() -> tuple[list[str], pwd.struct_passwd | None]:
    """The command prefix that runs a server program as a user PostgreSQL accepts."""
    if os.geteuid() != 0:
        return [], None
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        user = pwd.getpwnam("nobody")
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"], user


@dataclass
class PgCluster:
    root: Path
    initdb: str
    pg_ctl: str
    port: int = 5432

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root

    def url(self, database: str = "postgres") -> str:
        """A libpq URL that reaches the cluster over its socket (the host is the socket directory)."""
        return f"postgresql://{SUPERUSER}@/{database}?host={self.socket_dir}&port={self.port}"

    def _run(self, *args: str, timeout: float = 60) -> None:
        prefix, _ = _as_server_user()
        done = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}): {done.stdout}{done.stderr}")

    @classmethod
    def create(cls) -> PgCluster:
        initdb, pg_ctl = server_bin("initdb"), server_bin("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise RuntimeError("PostgreSQL server programs (initdb, pg_ctl) not found: run `make system-deps` "
                               "(Debian's postgresql package)")
        root = Path(tempfile.mkdtemp(prefix="sai-pg-", dir="/tmp"))  # short: socket paths are limited
        _, user = _as_server_user()
        if user is not None:
            os.chown(root, user.pw_uid, user.pw_gid)
        cluster = cls(root, initdb, pg_ctl)
        cluster._run(initdb, "-D", str(cluster.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                     "--no-locale", "--no-sync")
        with (cluster.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(f"\nlisten_addresses = ''\nunix_socket_directories = '{root}'\nport = {cluster.port}\n"
                       "max_connections = 200\nfsync = on\nlogging_collector = off\n")
        (cluster.data / "pg_hba.conf").write_text("local all all trust\n", encoding="utf-8")
        return cluster

    def start(self) -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.root / "server.log"), "-m", "fast", "-w",
                  "restart")

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run `sql` with psql as the superuser (for setting up a database)."""
        psql = server_bin("psql") or "psql"
        done = subprocess.run([psql, "-X", "-q", "-At", "-h", str(self.socket_dir), "-p", str(self.port),
                               "-U", SUPERUSER, "-d", database, "-c", sql],
                              capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr}")
        return done.stdout

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.root, ignore_errors=True)
