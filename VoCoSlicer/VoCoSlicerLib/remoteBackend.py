"""Run the backend on another machine (where the GPU is) over SSH, with the protocol of ``docs/PROTOCOL.md``.

Why the system's OpenSSH client (``ssh``/``scp``) and not a library such as paramiko or asyncssh: nothing of ours
has to be installed or kept running on the host (only its sshd and a Python with ``voco_backend``), and the
user's SSH set-up works as it is: the agent, ``~/.ssh/config`` (aliases, ``ProxyJump``, ports, keys),
``known_hosts``, hardware keys. Host-key checking stays on: no option here lowers it (``BatchMode=yes`` only
makes ssh fail instead of prompting, since there is no terminal to prompt in). The host's login shell must be a
POSIX shell.

A run:

1. copies its input files and folders (every argv path that exists here) and a small driver script into a
   per-run folder on the host (``<workDir>/<run id>/in``), as one tar stream through ``ssh`` (one connection
   for a DICOM folder's hundreds of files; links followed);
2. runs ``python driver.py -- <argv with the paths rewritten>`` there through ``ssh``. The driver starts
   ``python -m voco_backend`` in its own session, writing to files in the run folder, and forwards those lines
   to ssh: a dropped connection kills only the driver, never the run, so a training run goes on and its
   checkpoint stays resumable on the host;
3. parses the JSON lines streamed back with the local runner's parser (:func:`parseEventLine`);
4. copies the outputs (``--output``, ``--out``, ``--output-dir``) back, each into place atomically (a temporary
   name beside the target, then a rename), and removes the run folder.

Cancel sends SIGTERM through ssh to the remote backend's process group, so the run checkpoints and exits 130
(SIGKILL after the grace period). A training run (one with ``--out``) has a run folder named after the host and
its local output folder: when it is cancelled or the connection drops, the folder is kept, and the same run
started again with ``--resume`` continues from its checkpoint there.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import io
import os
import queue
import shlex
import shutil
import subprocess
import tarfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from VoCoSlicerLib.backendRunner import (
    EXIT_BAD_DATA,
    EXIT_CANCELLED,
    STDERR_TAIL_LINES,
    EventRun,
    FinishedCallback,
    LogCallback,
    ProgressCallback,
    Runner,
    RunOutcome,
    exitMessage,
    parseEventLine,
)

EXIT_SSH_FAILED = 255  # ssh's own exit code for a connection or authentication failure
EXIT_NOT_FOUND = 127  # the remote shell's exit code for a command it cannot find
OUTPUT_FLAGS = ("--output", "--out", "--output-dir")
TRAINING_COMMANDS = ("pretrain", "finetune")

# Runs on the host with the remote Python: starts the backend in its own session (files in the run folder, so
# the run outlives the connection), then forwards its stdout and stderr lines until it has ended.
DRIVER = r"""
import json, os, subprocess, sys, time
argv = sys.argv[sys.argv.index("--") + 1:]
here = os.getcwd()
out, err = open("stdout.jsonl", "wb"), open("stderr.log", "wb")
env = dict(os.environ, PYTHONUNBUFFERED="1")
proc = subprocess.Popen([sys.executable, "-m", "voco_backend", *argv], stdin=subprocess.DEVNULL, stdout=out,
                        stderr=err, env=env, start_new_session=True)
with open("pid.tmp", "w") as f:
    f.write(str(proc.pid))
os.replace("pid.tmp", "pid")
streams = [(open("stdout.jsonl", "rb"), sys.stdout.buffer), (open("stderr.log", "rb"), sys.stderr.buffer)]
try:
    sys.stdout.write(json.dumps({"event": "remote", "pid": proc.pid, "dir": here}) + "\n")
    sys.stdout.flush()
    while True:
        ended = proc.poll() is not None
        for source, target in streams:
            data = source.read()
            if data:
                target.write(data)
                target.flush()
        if ended:
            break
        time.sleep(0.2)
except (BrokenPipeError, OSError):
    sys.exit(0)
with open("exit_code", "w") as f:
    f.write(str(proc.returncode))
sys.exit(proc.returncode if proc.returncode >= 0 else 128 - proc.returncode)
"""


@dataclasses.dataclass
class RemoteHost:
    """Where and how to run the backend remotely.

    Attributes:
        host: ``user@host`` or a ``Host`` alias of the user's ``~/.ssh/config``.
        python: the host's Python that has ``voco_backend`` installed.
        port: the SSH port (None: ssh's default or the config's).
        identityFile: a private key (None: the agent's keys or the config's).
        workDir: the host's folder of run folders, relative to the remote home or absolute.
        environment: environment variables for the remote backend (e.g. ``VOCO_CACHE_DIR``).
        sshOptions: further ``-o`` options for ssh and scp, e.g. ``("UserKnownHostsFile=/path",)``.
        ssh, scp: the client programs.
    """

    host: str
    python: str = "python3"
    port: int | None = None
    identityFile: str | None = None
    workDir: str = ".cache/voco_backend/remote-runs"
    environment: dict[str, str] = dataclasses.field(default_factory=dict)
    sshOptions: Sequence[str] = ()
    ssh: str = "ssh"
    scp: str = "scp"

    def _options(self) -> list[str]:
        options = ["-o", "BatchMode=yes", "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
        if self.identityFile:
            options += ["-i", str(self.identityFile)]
        for option in self.sshOptions:
            options += ["-o", option]
        return options

    def sshArgs(self, remoteCommand: str) -> list[str]:
        """The ssh argv that runs ``remoteCommand`` (a shell command line) on the host."""
        port = ["-p", str(self.port)] if self.port else []
        return [self.ssh, *port, *self._options(), self.host, remoteCommand]

    def scpArgs(self, sources: Sequence[str], target: str) -> list[str]:
        """The scp argv that copies ``sources`` (recursively) to ``target`` (``host:path`` marks the remote)."""
        port = ["-P", str(self.port)] if self.port else []
        return [self.scp, "-q", "-r", *port, *self._options(), *sources, target]

    def remote(self, path: str) -> str:
        """``host:path`` for scp."""
        return f"{self.host}:{path}"


def sshFailureMessage(stderr: str, host: str, during: str) -> str:
    """One line for an ssh/scp failure (exit code 255), from ssh's own message on stderr."""
    text = stderr.lower()
    last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "no message")
    if "host key verification failed" in text or "remote host identification has changed" in text:
        return (
            f"{host}: host key verification failed: connect once in a terminal with `ssh {host}` to check and "
            "accept its host key (known_hosts)"
        )
    if "permission denied" in text:
        return (
            f"{host} refused the login ({last}): add your public key to the host's ~/.ssh/authorized_keys or "
            "load your key in the SSH agent (ssh-add)"
        )
    if any(s in text for s in ("could not resolve", "connection refused", "timed out", "no route to host")):
        return f"cannot reach {host} ({last}): check the host name, the port and that sshd runs there"
    return f"ssh to {host} failed while {during}: {last}"


@dataclasses.dataclass
class RemotePlan:
    """How one backend argv runs on the host.

    Attributes:
        runDir: the run folder on the host (as ``RemoteHost.workDir`` names it).
        argv: the argv for the host, paths relative to the run folder.
        uploads: (local path, name under ``in/``).
        downloads: (path relative to the run folder, local path).
        training: a training run (its folder is kept when it does not finish, for ``--resume``).
    """

    runDir: str
    argv: list[str]
    uploads: list[tuple[Path, str]]
    downloads: list[tuple[str, Path]]
    training: bool


def _looksLikePath(token: str) -> bool:
    return (
        not token.startswith("-")
        and (os.sep in token or "/" in token or token.startswith("."))
        and (os.path.exists(token))
    )


def planRun(argv: Sequence[str], host: RemoteHost) -> RemotePlan:
    """Rewrite ``argv`` for the host: inputs under ``in/``, outputs under ``out/``, a run folder per run."""
    argv = list(argv)
    command = argv[0] if argv else ""
    training = command in TRAINING_COMMANDS and "--out" in argv
    remoteArgv: list[str] = []
    uploads: list[tuple[Path, str]] = []
    downloads: list[tuple[str, Path]] = []
    outputFlag = False
    for token in argv:
        if outputFlag:
            local = Path(token).resolve()
            remotePath = f"out/{len(downloads)}_{local.name}"
            downloads.append((remotePath, local))
            remoteArgv.append(remotePath)
        elif _looksLikePath(token):
            local = Path(token).resolve()
            name = f"{len(uploads)}/{local.name}"  # own folder: the file keeps its name (batch outputs follow it)
            uploads.append((local, name))
            remoteArgv.append(f"in/{name}")
        else:
            remoteArgv.append(token)
        outputFlag = token in OUTPUT_FLAGS
    if training:
        key = f"{host.host}:{host.port}:{downloads[0][1] if downloads else ''}".encode()
        runId = f"{command}-{hashlib.sha1(key).hexdigest()[:12]}"
    else:
        runId = f"{command or 'run'}-{uuid.uuid4().hex[:12]}"
    return RemotePlan(f"{host.workDir.rstrip('/')}/{runId}", remoteArgv, uploads, downloads, training)


def _replaceInto(source: Path, target: Path) -> None:
    """Move the fetched ``source`` (beside ``target``) into place: a rename, the old folder removed after."""
    if target.is_dir() and source.is_dir():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        target.rename(old)
        source.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(source, target)


def _rewriteValue(value: Any, mapping: Sequence[tuple[str, str]]) -> Any:
    """``value`` with the host's output paths (prefixes of ``mapping``) turned into the local ones."""
    if isinstance(value, str):
        for remotePrefix, localPrefix in mapping:
            if value.startswith(remotePrefix):
                return localPrefix + value[len(remotePrefix) :]
        return value
    if isinstance(value, list):
        return [_rewriteValue(v, mapping) for v in value]
    if isinstance(value, dict):
        return {k: _rewriteValue(v, mapping) for k, v in value.items()}
    return value


class RemoteBackendRun(EventRun):
    """One backend run on the host; the same interface as :class:`BackendRun` (poll from the callbacks' thread).

    The copies and the ssh processes run in a worker thread; :meth:`poll` delivers what they produced.
    """

    def __init__(
        self,
        host: RemoteHost,
        argv: Sequence[str],
        onProgress: ProgressCallback | None = None,
        onLog: LogCallback | None = None,
        onFinished: FinishedCallback | None = None,
        cancelGraceSeconds: float = 30.0,
    ) -> None:
        self.host = host
        self.plan = planRun(argv, host)
        self.onProgress = onProgress
        self.onLog = onLog
        self.onFinished = onFinished
        self.cancelGraceSeconds = cancelGraceSeconds
        self.outcome: RunOutcome | None = None
        self.result: dict[str, Any] = {}
        self.remotePid: int | None = None
        self.remoteDir: str | None = None
        self._process: subprocess.Popen | None = None
        self._errorEvent: dict[str, Any] | None = None
        self._stderrTail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._cancelled = threading.Event()
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._worker = threading.Thread(target=self._work, daemon=True)
        self._worker.start()

    @property
    def pid(self) -> int | None:
        """The process id of the local ssh process of the run (None while copying)."""
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        """True until the outcome has been delivered."""
        return self.outcome is None

    # -- the worker thread -------------------------------------------------------------------------------------

    def _call(self, args: list[str]) -> subprocess.CompletedProcess:
        """Run one ssh/scp command to its end."""
        done = subprocess.run(
            args, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False, start_new_session=True
        )
        return done

    def _upload(self, command: str) -> subprocess.CompletedProcess:
        """Stream the inputs (links followed) and the driver as a tar archive into ``command`` on the host."""
        args = self.host.sshArgs(command)
        process = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        self._process = process
        stopper = threading.Thread(target=self._killOnCancel, args=(process,), daemon=True)
        stopper.start()
        try:
            with tarfile.open(fileobj=process.stdin, mode="w|", dereference=True) as archive:
                driver = DRIVER.encode("utf-8")
                info = tarfile.TarInfo("driver.py")
                info.size, info.mtime = len(driver), int(time.time())
                archive.addfile(info, io.BytesIO(driver))
                for local, name in self.plan.uploads:
                    archive.add(str(local), arcname=f"in/{name}")
        except OSError:
            pass  # the ssh process ended early (its stderr says why)
        finally:
            with contextlib.suppress(OSError):
                process.stdin.close()
        stderr = process.stderr.read().decode("utf-8", "replace")
        process.wait()
        self._process = None
        return subprocess.CompletedProcess(args, process.returncode, "", stderr)

    def _killOnCancel(self, process: subprocess.Popen) -> None:
        while process.poll() is None:
            if self._cancelled.is_set():
                process.kill()
                return
            time.sleep(0.2)

    def _ssh(self, command: str) -> subprocess.CompletedProcess:
        return self._call(self.host.sshArgs(command))

    def _work(self) -> None:
        try:
            exitCode, message = self._stages()
        except Exception as exc:  # the thread boundary: any failure becomes the run's one-line message
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            exitCode, message = -1, f"remote run on {self.host.host} failed: {detail}"
        self._queue.put(("done", (exitCode, message)))

    def _stages(self) -> tuple[int, str]:
        plan, host = self.plan, self.host
        runDir = shlex.quote(plan.runDir)
        self._log(f"copying {len(plan.uploads)} input(s) to {host.host}:{plan.runDir}")
        copied = self._upload(f"mkdir -p {runDir}/out && rm -rf {runDir}/in {runDir}/pid && tar -x -f - -C {runDir}")
        if copied.returncode != 0:
            self._cleanUp(0, "")
            return self._failed(copied, "copying the inputs")
        if self._cancelled.is_set():
            return self._cleanUp(EXIT_CANCELLED, "cancelled")
        exitCode = self._runRemote()
        if exitCode == EXIT_SSH_FAILED and self.remotePid is not None:
            kept = "its checkpoint stays resumable there" if plan.training else "the run goes on there"
            return exitCode, (
                f"the connection to {host.host} was lost during the run; {kept} in {self.remoteDir or plan.runDir}"
                + ("; start it again with resume to continue" if plan.training else "")
            )
        if exitCode != 0:
            if plan.training and exitCode == EXIT_CANCELLED:
                return exitCode, (
                    f"cancelled; the resumable checkpoint stays on {host.host} in {self.remoteDir or plan.runDir}"
                    " (start the run again with resume to continue)"
                )
            message = self._failureMessage(exitCode)
            if plan.training:  # its folder may hold the checkpoint of an earlier try: it stays for resume
                return exitCode, message
            if exitCode == EXIT_BAD_DATA and self.remotePid is not None:
                self._fetchOutputs()  # a batch's other volumes are done: bring them back (best effort)
            return self._cleanUp(exitCode, message)
        fetched = self._fetchOutputs()
        if fetched is not None:
            return fetched
        return self._cleanUp(0, "")

    def _failureMessage(self, exitCode: int) -> str:
        """The one line for a run that ended with ``exitCode`` (not a connection lost mid-run)."""
        host, tail = self.host, "\n".join(self._stderrTail)
        if exitCode == EXIT_SSH_FAILED:
            return sshFailureMessage(tail, host.host, "starting the run")
        if exitCode == EXIT_NOT_FOUND and self.remotePid is None:
            return (
                f"the remote Python '{host.python}' was not found on {host.host}: set the remote Python to the "
                "path of a Python that has voco_backend installed"
            )
        if "No module named voco_backend" in tail:
            return (
                f"voco_backend is not installed for {host.python} on {host.host}: install it there "
                "(pip install voco-backend) or set the remote Python to one that has it"
            )
        return exitMessage(exitCode, self._errorEvent, list(self._stderrTail), self._cancelled.is_set())

    def _runRemote(self) -> int:
        host, plan = self.host, self.plan
        envPrefix = " ".join(shlex.quote(f"{k}={v}") for k, v in host.environment.items())
        command = (
            f"cd {shlex.quote(plan.runDir)} && exec "
            + (f"env {envPrefix} " if envPrefix else "")
            + " ".join(shlex.quote(t) for t in [host.python, "driver.py", "--", *plan.argv])
        )
        process = subprocess.Popen(
            host.sshArgs(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            start_new_session=True,
        )
        self._process = process
        readers = [
            threading.Thread(target=self._read, args=(stream, kind), daemon=True)
            for stream, kind in ((process.stdout, "stdout"), (process.stderr, "stderr"))
        ]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join()
        process.wait()
        return process.returncode

    def _read(self, stream: Any, kind: str) -> None:
        for line in stream:
            line = line.rstrip("\r\n")
            if kind == "stdout":
                event = parseEventLine(line)
                if event is not None and event["event"] == "remote":
                    self.remotePid, self.remoteDir = int(event["pid"]), str(event["dir"])
                    continue
            else:
                self._stderrTail.append(line)
            self._queue.put((kind, line))

    def _fetchOutputs(self) -> tuple[int, str] | None:
        """Copy the run's ``out/`` back beside the first output, then rename each entry into place: the outputs
        and the files the backend wrote beside them (``0_seg.statistics.csv`` lands beside ``seg.nrrd``)."""
        if not self.plan.downloads:
            return None
        parent = self.plan.downloads[0][1].parent
        parent.mkdir(parents=True, exist_ok=True)
        staging = parent / f".remote-out-{uuid.uuid4().hex[:8]}"
        try:
            fetched = self._call(self.host.scpArgs([self.host.remote(f"{self.plan.runDir}/out")], str(staging)))
            if fetched.returncode != 0:
                exitCode, message = self._failed(fetched, "copying the outputs back")
                return exitCode, f"{message} (the outputs stay on the host in {self.plan.runDir})"
            for index, (remotePath, local) in enumerate(self.plan.downloads):
                prefix = f"{index}_"
                for entry in sorted(staging.iterdir()):
                    if f"out/{entry.name}" == remotePath:
                        local.parent.mkdir(parents=True, exist_ok=True)
                        _replaceInto(entry, local)
                    elif entry.name.startswith(prefix) and entry.is_file():
                        os.replace(entry, local.parent / entry.name[len(prefix) :])
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return None

    def _failed(self, done: subprocess.CompletedProcess, during: str) -> tuple[int, str]:
        if self._cancelled.is_set():
            return EXIT_CANCELLED, "cancelled"
        return EXIT_SSH_FAILED, sshFailureMessage(done.stderr or "", self.host.host, during)

    def _cleanUp(self, exitCode: int, message: str) -> tuple[int, str]:
        """Remove the run folder on the host (best effort: the outcome stays what it was)."""
        self._ssh(f"rm -rf {shlex.quote(self.plan.runDir)}")
        return exitCode, message

    def _log(self, message: str) -> None:
        self._queue.put(("log", message))

    # -- the caller's thread -----------------------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop the run: SIGTERM to the remote process group now, SIGKILL after the grace period."""
        if self.outcome is not None or self._cancelled.is_set():
            return
        self._cancelled.set()
        threading.Thread(target=self._signalRemote, daemon=True).start()

    def _signalRemote(self) -> None:
        pidFile = shlex.quote(f"{self.plan.runDir}/pid")
        waitForPid = f"i=0; while [ ! -s {pidFile} ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done"
        for signalName, delay in (("TERM", 0.0), ("KILL", self.cancelGraceSeconds)):
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and self._worker.is_alive():
                time.sleep(0.2)
            if not self._worker.is_alive() or (delay and self.remotePid is None):
                return
            subprocess.run(
                self.host.sshArgs(f'{waitForPid}; [ -s {pidFile} ] && kill -{signalName} -- -"$(cat {pidFile})"'),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
                timeout=60,
            )

    def poll(self) -> bool:
        """Deliver the queued events to the callbacks; returns whether the run is still going."""
        while self.outcome is None:
            try:
                kind, payload = self._queue.get_nowait()
            except queue.Empty:
                break
            if kind == "stdout":
                self._onStdout(payload)
            elif kind in ("stderr", "log"):
                if self.onLog and payload.strip():
                    self.onLog(payload if kind == "stderr" else f"[info] {payload}")
            elif kind == "done":
                exitCode, message = payload
                self.outcome = RunOutcome(exitCode=exitCode, message=message, result=self.result)
                if self.onFinished:
                    self.onFinished(self.outcome)
        return self.outcome is None

    def _pathMapping(self) -> list[tuple[str, str]]:
        mapping = []
        for index, (_, local) in enumerate(self.plan.downloads):
            localPrefix = f"{local.parent}{os.sep}"
            if self.remoteDir:
                mapping.append((f"{self.remoteDir}/out/{index}_", localPrefix))
            mapping.append((f"out/{index}_", localPrefix))
        return mapping

    def _resultOf(self, event: dict[str, Any]) -> dict[str, Any]:
        return _rewriteValue(super()._resultOf(event), self._pathMapping())


class RemoteBackendRunner(Runner):
    """Starts backend commands on a :class:`RemoteHost`; a drop-in for :class:`BackendRunner`.

    Args:
        host: where the backend runs.
        cancelGraceSeconds: after a cancel, how long the remote backend may take to stop before it is killed.
    """

    def __init__(self, host: RemoteHost, cancelGraceSeconds: float = 30.0) -> None:
        self.host = host
        self.cancelGraceSeconds = cancelGraceSeconds

    def start(
        self,
        argv: Sequence[str],
        onProgress: ProgressCallback | None = None,
        onLog: LogCallback | None = None,
        onFinished: FinishedCallback | None = None,
    ) -> RemoteBackendRun:
        """Start ``argv`` on the host; the copies and the run go on in the background."""
        return RemoteBackendRun(self.host, argv, onProgress, onLog, onFinished, self.cancelGraceSeconds)
