"""A real OpenSSH server on 127.0.0.1 for the remote-backend tests: Debian's ``openssh-server``, started per test
session with a throwaway host key and a user key made for the test, and a ``known_hosts`` that names that host
key (host-key checking stays on). ``.ci/run`` installs the package; without it the tests skip outside CI and fail
under CI (``CI=true``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTING_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = TESTING_DIR.parent
MODULE_DIR = REPO_ROOT / "VoCoSlicer"
SSHD = Path("/usr/sbin/sshd")
SFTP_SERVERS = (Path("/usr/lib/openssh/sftp-server"), Path("/usr/libexec/openssh/sftp-server"))

if str(MODULE_DIR) not in sys.path:  # backend_cli is in Testing/, on the path through Testing/conftest.py
    sys.path.insert(0, str(MODULE_DIR))


@dataclasses.dataclass
class LoopbackSshd:
    """A running sshd: its port, the test's keys and known_hosts, the folder remote runs go to."""

    process: subprocess.Popen
    port: int
    user: str
    identityFile: Path
    knownHosts: Path
    runsDir: Path
    cacheDir: Path

    def remoteHost(self, **changes):
        """A :class:`RemoteHost` for this server running this checkout's backend with this Python."""
        from VoCoSlicerLib.remoteBackend import RemoteHost

        fields = dict(
            host=f"{self.user}@127.0.0.1",
            port=self.port,
            identityFile=str(self.identityFile),
            python=sys.executable,
            workDir=str(self.runsDir),
            environment={"PYTHONPATH": str(REPO_ROOT), "VOCO_CACHE_DIR": str(self.cacheDir)},
            sshOptions=(f"UserKnownHostsFile={self.knownHosts}", "IdentitiesOnly=yes", "StrictHostKeyChecking=yes"),
        )
        fields.update(changes)
        return RemoteHost(**fields)

    def sessionPids(self) -> list[int]:
        """The per-connection sshd processes (descendants of the listener named sshd)."""
        parents: dict[int, int] = {}
        names: dict[int, str] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            names[int(entry.name)] = stat[stat.index("(") + 1 : stat.rindex(")")]
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])

        def descends(pid: int) -> bool:
            while pid in parents and pid > 1:
                pid = parents[pid]
                if pid == self.process.pid:
                    return True
            return False

        return [pid for pid, name in names.items() if name.startswith("sshd") and descends(pid)]

    def dropConnections(self) -> None:
        """Kill every open SSH session, as a network failure would end it (the listener stays up)."""
        for pid in self.sessionPids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory) -> Iterator[LoopbackSshd]:
    """sshd on 127.0.0.1 at a free port, logging in the current user with a key made for the test."""
    sftp = next((p for p in SFTP_SERVERS if p.exists()), None)
    if not SSHD.exists() or sftp is None or shutil.which("ssh") is None or shutil.which("scp") is None:
        message = "OpenSSH server/client not installed (apt-get install openssh-server openssh-client)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + ": CI must install them (.ci/run)")
        pytest.skip(message)
    folder = tmp_path_factory.mktemp("sshd")
    folder.chmod(0o700)
    _keygen(folder / "host_key")
    _keygen(folder / "user_key")
    shutil.copy(folder / "user_key.pub", folder / "authorized_keys")
    port = _freePort()
    (folder / "sshd_config").write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {folder / 'host_key'}",
                f"AuthorizedKeysFile {folder / 'authorized_keys'}",
                f"PidFile {folder / 'sshd.pid'}",
                f"Subsystem sftp {sftp}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "UsePAM no",
                "StrictModes no",  # pytest's temporary folders sit below world-writable /tmp
                "",
            ]
        )
    )
    hostKey = (folder / "host_key.pub").read_text().split()
    (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {hostKey[0]} {hostKey[1]}\n")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation folder
    log = open(folder / "sshd.log", "wb")  # noqa: SIM115 (closed at teardown)
    process = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(folder / "sshd_config")], stderr=log)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                log.close()
                pytest.fail(f"sshd did not start: {(folder / 'sshd.log').read_text()[-2000:]}")
            time.sleep(0.1)
    server = LoopbackSshd(
        process=process,
        port=port,
        user=getpass.getuser(),
        identityFile=folder / "user_key",
        knownHosts=folder / "known_hosts",
        runsDir=tmp_path_factory.mktemp("remote_runs"),
        cacheDir=tmp_path_factory.mktemp("remote_cache"),
    )
    yield server
    server.dropConnections()
    process.terminate()
    process.wait(10)
    log.close()
