"""Running ``medsam serve`` on this computer as a child process of 3D Slicer.

A single-computer user points the module at a Python environment where
``pip install "medsam-monai[serve]"`` was run; this module builds the command line, starts the
server, waits until its ``/health`` answers, and stops it again (also when Slicer quits). The
server's Python is separate from Slicer's: torch never enters Slicer's own Python.

Nothing here imports Slicer or Qt; the standard library only.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

VARIANTS = ("vit_b", "vit_l", "vit_h", "tiny")
DEFAULT_PORT = 8123  # medsam serve's default
PRECISIONS = ("fp32", "bf16")
# What ``medsam serve --device`` takes: ``auto`` picks CUDA, else Apple MPS, else the CPU, and says which.
DEVICES = ("auto", "cpu", "cuda", "mps")
# The image pipelines ``medsam serve --preprocessing`` takes: MedSAM's (stretch to 1024, min-max) or SAM's
# (longest side 1024, mean/std, padding). None: pass nothing, and the server follows the checkpoint.
PREPROCESSINGS = ("medsam", "sam")

# Environment variables through which 3D Slicer's launcher points Python at Slicer's own
# interpreter and libraries; another Python started with them would load Slicer's modules.
_SLICER_PYTHON_VARIABLES = ("PYTHONHOME", "PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONSTARTUP", "PYTHONEXECUTABLE")

# Environment variable carrying the access token to the server (kept off the command line,
# which other users of the computer can read).
TOKEN_ENVIRONMENT_VARIABLE = "MEDSAM_SERVER_TOKEN"


class ServerProcessError(RuntimeError):
    """The local server could not be started, did not become ready, or stopped on its own."""


@dataclass(frozen=True)
class ServerSettings:
    """What the user chose for a local server."""

    python: str
    port: int = DEFAULT_PORT
    host: str = "127.0.0.1"
    variant: str = "vit_b"
    checkpoint: Optional[str] = None
    device: str = "auto"
    precision: str = "fp32"
    token: Optional[str] = None
    preprocessing: Optional[str] = None
    extra_arguments: Sequence[str] = field(default_factory=tuple)

    @property
    def url(self) -> str:
        """The address the client connects to."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"


def check_settings(settings: ServerSettings) -> None:
    """Raise ServerProcessError with one sentence when the settings cannot work."""
    if not settings.python:
        raise ServerProcessError("choose the Python of an environment where 'pip install \"medsam-monai[serve]\"' was run")
    if not _is_executable(settings.python):
        raise ServerProcessError(f"{settings.python} is not an executable Python interpreter")
    if not 1 <= int(settings.port) <= 65535:
        raise ServerProcessError(f"port {settings.port} is outside 1..65535")
    if settings.variant not in VARIANTS:
        raise ServerProcessError(f"model variant {settings.variant!r} is not one of {', '.join(VARIANTS)}")
    if settings.device not in DEVICES and not _is_numbered_cuda(settings.device):
        raise ServerProcessError(f"device {settings.device!r} is not one of {', '.join(DEVICES)} (or cuda:N)")
    if settings.precision not in PRECISIONS:
        raise ServerProcessError(f"precision {settings.precision!r} is not one of {', '.join(PRECISIONS)}")
    if settings.preprocessing and settings.preprocessing not in PREPROCESSINGS:
        raise ServerProcessError(
            f"preprocessing {settings.preprocessing!r} is not one of {', '.join(PREPROCESSINGS)} (or none: follow the checkpoint)"
        )
    if settings.checkpoint and not Path(settings.checkpoint).exists():
        raise ServerProcessError(f"checkpoint {settings.checkpoint} does not exist")


def _is_numbered_cuda(device: str) -> bool:
    prefix, _, number = device.partition(":")
    return prefix == "cuda" and number.isdigit()


def _is_executable(path: str) -> bool:
    resolved = shutil.which(path) if os.sep not in path and "/" not in path else path
    return bool(resolved) and os.path.isfile(resolved) and os.access(resolved, os.X_OK)


def serve_command(settings: ServerSettings) -> list[str]:
    """The command line that starts the server (the token is passed in the environment)."""
    command = [
        settings.python,
        "-m",
        "medsam_monai.cli",
        "serve",
        "--host",
        settings.host,
        "--port",
        str(int(settings.port)),
        "--variant",
        settings.variant,
        "--device",
        settings.device,
        "--precision",
        settings.precision,
    ]
    if settings.checkpoint:
        command += ["--checkpoint", str(settings.checkpoint)]
    if settings.preprocessing:
        command += ["--preprocessing", settings.preprocessing]
    command += [str(a) for a in settings.extra_arguments]
    return command


def server_environment(base: Mapping[str, str], token: Optional[str] = None) -> dict[str, str]:
    """The environment for the server: ``base`` without Slicer's Python variables, plus the token.

    Inside Slicer pass ``slicer.util.startupEnvironment()`` (the environment before Slicer's
    launcher changed it) as ``base``; the variables are also removed here in case it was not.
    """
    environment = {str(k): str(v) for k, v in base.items() if k not in _SLICER_PYTHON_VARIABLES}
    environment.pop(TOKEN_ENVIRONMENT_VARIABLE, None)
    if token:
        environment[TOKEN_ENVIRONMENT_VARIABLE] = token
    # Unbuffered output: the log shows the server's messages as they happen.
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something already accepts connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, int(port))) == 0


def probe_health(url: str, token: Optional[str] = None, timeout: float = 2.0) -> Optional[dict]:
    """The server's ``/health`` answer as a dict, or None when it does not answer (yet)."""
    request = urllib.request.Request(url.rstrip("/") + "/health")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - user's own server
            body = response.read()
    except (urllib.error.URLError, OSError, ValueError):
        return None
    try:
        answer = json.loads(body.decode("utf-8") or "{}")
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else {"answer": answer}


class LocalServer:
    """One ``medsam serve`` child process and its log file."""

    def __init__(self, settings: ServerSettings, log_path: Optional[str] = None):
        check_settings(settings)
        self.settings = settings
        self.log_path = log_path or os.path.join(tempfile.gettempdir(), f"medsam-server-{settings.port}.log")
        self._process: Optional[subprocess.Popen] = None
        self._log = None

    @property
    def url(self) -> str:
        return self.settings.url

    @property
    def pid(self) -> Optional[int]:
        return self._process.pid if self._process else None

    def is_running(self) -> bool:
        """True while the child process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, environment: Optional[Mapping[str, str]] = None) -> None:
        """Start the server (returns at once; see :meth:`wait_until_ready`)."""
        if self.is_running():
            return
        if port_in_use(self.settings.port, "127.0.0.1"):
            raise ServerProcessError(
                f"port {self.settings.port} is already in use; connect to that server or choose another port"
            )
        env = server_environment(os.environ if environment is None else environment, self.settings.token)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - kept open for the child's lifetime
        options = {}
        if sys.platform == "win32":
            # No console window popping up next to Slicer, and no Ctrl+C from Slicer's console.
            options["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0) | getattr(
                subprocess, "CREATE_NO_WINDOW", 0
            )
        else:
            # Its own session: a Ctrl+C in Slicer's terminal does not reach the server half-way.
            options["start_new_session"] = True
        try:
            self._process = subprocess.Popen(  # noqa: S603 - the command is built from checked settings
                serve_command(self.settings),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=env,
                **options,
            )
        except OSError as error:
            self._close_log()
            raise ServerProcessError(f"cannot start {self.settings.python}: {error}") from None
        _running_servers.add(self)

    def wait_until_ready(
        self,
        timeout: float = 120.0,
        interval: float = 0.5,
        probe: Callable[[str, Optional[str]], Optional[dict]] = probe_health,
        cancel: Optional[Callable[[], bool]] = None,
    ) -> dict:
        """Block until ``/health`` answers; return its answer.

        Raises ServerProcessError (with the end of the server's log) when the process ends first
        or ``timeout`` seconds pass, and stops the process in the latter case.
        """
        deadline = time.monotonic() + timeout
        while True:
            if not self.is_running():
                code = self._process.returncode if self._process else None
                raise ServerProcessError(f"the server stopped (exit status {code}):\n{self.log_tail()}")
            answer = probe(self.url, self.settings.token)
            if answer is not None:
                return answer
            if cancel is not None and cancel():
                self.stop()
                raise ServerProcessError("starting the server was cancelled")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerProcessError(f"the server did not answer within {timeout:g} s:\n{self.log_tail()}")
            time.sleep(interval)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server: terminate, then kill if it does not end within ``timeout`` seconds."""
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout)
        self._close_log()
        _running_servers.discard(self)

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the server's output."""
        try:
            with open(self.log_path, "rb") as handle:
                text = handle.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


# Servers still running when Python exits are stopped, so no orphan keeps the port or the memory.
_running_servers: "weakref.WeakSet[LocalServer]" = weakref.WeakSet()


@atexit.register
def _stop_all_servers() -> None:
    for server in list(_running_servers):
        server.stop(timeout=5.0)
