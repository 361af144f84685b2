"""How fast the 3D Slicer extension's worker thread gets through HTTP work when the main thread holds
the GIL the way 3D Slicer's does.

3D Slicer's main thread keeps Python's GIL while it idles in the Qt event loop (PythonQt releases it
only with thread support, which nothing in Slicer 5.6-5.10 or CTK enables; see MedSAMLib/tasks.py),
and runs Python only in callbacks such as the extension's 100 ms poll timer. A worker thread then
advances only while main-thread Python runs. This benchmark compiles a small C program that embeds
Python and behaves the same way (sleeps between ticks *holding* the GIL, then calls the Python
``tick()``), runs the extension's own ``BackgroundTask`` in it against a stub HTTP server in another
process, and times each workload:

- ``free``: a plain Python process whose main thread sleeps with the GIL released (the ideal);
- ``slicer, no wait``: the embedded host, the poll only checks ``task.done`` (the extension before);
- ``slicer, task.poll()``: the embedded host, the poll waits up to ``WORKER_TIME_PER_TICK_S`` on the
  task with the GIL released (the extension now).

    python benchmarks/slicer_gil.py                # 5 small requests, 64 MB raw upload, 64 MB create_session
    python benchmarks/slicer_gil.py --workloads small --repeats 5

Needs a C compiler and Python's headers and shared library (``Py_ENABLE_SHARED``); figures are in
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
MODULE_DIR = REPOSITORY / "slicer_extension" / "MedSAM"
TICK_MS = 100  # the extension's poll timer (MedSAMWidget._timer)
UPLOAD_BYTES = 64 * 2**20
WORKLOADS = ("small", "upload", "create_session")
MODES = ("free", "slicer, no wait", "slicer, task.poll()")
IN_HOST = "MEDSAM_GIL_HOST"  # set in the embedded host's environment: the script must not exit there

# The main thread of 3D Slicer as far as the GIL goes: Py_Initialize leaves the GIL with it, it never
# releases it, and it runs Python only in timer callbacks; in between it is in C++ (Qt's event loop).
HOST_SOURCE = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static void sleep_holding_the_gil(long microseconds) {
    struct timespec pause = {microseconds / 1000000, (microseconds % 1000000) * 1000};
    nanosleep(&pause, NULL);  /* no Py_BEGIN_ALLOW_THREADS: other threads cannot run Python */
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: gil_host TICK_MS SCRIPT [ARGS...]\n");
        return 2;
    }
    long tick_us = atol(argv[1]) * 1000L;
    Py_Initialize();
    PyObject *arguments = PyList_New(0);
    for (int i = 2; i < argc; i++) {
        PyObject *text = PyUnicode_DecodeFSDefault(argv[i]);
        PyList_Append(arguments, text);
        Py_DECREF(text);
    }
    PySys_SetObject("argv", arguments);
    Py_DECREF(arguments);
    FILE *script = fopen(argv[2], "r");
    if (script == NULL || PyRun_SimpleFileEx(script, argv[2], 1) != 0) {
        fprintf(stderr, "gil_host: cannot run %s\n", argv[2]);
        return 1;
    }
    PyObject *tick = PyObject_GetAttrString(PyImport_AddModule("__main__"), "tick");
    if (tick == NULL) {
        PyErr_Print();
        return 1;
    }
    for (;;) {
        sleep_holding_the_gil(tick_us);
        PyObject *finished = PyObject_CallNoArgs(tick);
        if (finished == NULL) {
            PyErr_Print();
            return 1;
        }
        int done = PyObject_IsTrue(finished);
        Py_DECREF(finished);
        if (done) {
            break;
        }
    }
    fflush(stdout);
    _exit(0);  /* daemon worker threads may still exist; Slicer's exit is not what is measured */
}
"""


class HostUnavailable(RuntimeError):
    """No C compiler, Python headers or shared libpython here."""


# ----- the embedded host ------------------------------------------------------------------------


def compile_host(folder: Path) -> Path:
    """Build the embedding host program in ``folder``; raises HostUnavailable when this Python cannot be embedded."""
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    include = sysconfig.get_paths().get("include")
    libdir = sysconfig.get_config_var("LIBDIR")
    version = sysconfig.get_config_var("LDVERSION") or sysconfig.get_config_var("VERSION")
    if not compiler or not include or not (Path(include) / "Python.h").is_file():
        raise HostUnavailable("needs a C compiler and Python.h")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not libdir:
        raise HostUnavailable("needs a Python built with --enable-shared (libpython)")
    source, program = folder / "gil_host.c", folder / "gil_host"
    source.write_text(HOST_SOURCE)
    command = [
        compiler,
        str(source),
        f"-I{include}",
        f"-L{libdir}",
        f"-Wl,-rpath,{libdir}",
        f"-lpython{version}",
        "-o",
        str(program),
    ]
    built = subprocess.run(command, capture_output=True, text=True, check=False)
    if built.returncode != 0:
        raise HostUnavailable(f"compiling the host failed: {built.stderr.strip()[-500:]}")
    return program


def host_environment() -> dict[str, str]:
    """The embedded interpreter finds this interpreter's standard library, packages and the extension."""
    paths = [str(MODULE_DIR)] + [p for p in sys.path if p]
    home = sys.base_prefix if sys.base_prefix == sys.base_exec_prefix else f"{sys.base_prefix}:{sys.base_exec_prefix}"
    return {**os.environ, "PYTHONHOME": home, "PYTHONPATH": os.pathsep.join(paths), IN_HOST: "1"}


def run_guest(program: Path | None, port: int, mode: str, workloads: list[str]) -> dict[str, list[float]]:
    """Seconds each run of each workload took under ``mode`` (workloads may repeat, one after the other);
    ``program`` None runs a plain Python process."""
    arguments = [
        str(Path(__file__).resolve()),
        "--guest",
        "--port",
        str(port),
        "--mode",
        mode,
        "--workloads",
        ",".join(workloads),
    ]
    if program is None:
        command, environment = [sys.executable, *arguments], {**os.environ}
    else:
        command, environment = [str(program), str(TICK_MS), *arguments], host_environment()
    done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600, check=False)
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"the {mode!r} run failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----- the stub server (another process, as medsam serve is) ------------------------------------------


class StubHandler(http.server.BaseHTTPRequestHandler):
    """Answers what MedSAMClient.health and create_session ask, and swallows raw uploads."""

    protocol_version = "HTTP/1.1"

    def _answer(self, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 - http.server's name
        self._answer({"status": "ok", "variant": "stub", "max_upload_bytes": 0})

    def do_POST(self):  # noqa: N802
        remaining = int(self.headers.get("Content-Length", 0))
        while remaining:
            remaining -= len(self.rfile.read(min(remaining, 1 << 20)))
        self._answer({"session_id": "stub-session", "shape": [1, 1, 1]})

    def log_message(self, *args):
        pass


def serve_stub(port: int) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), StubHandler)
    print("ready", flush=True)
    server.serve_forever()


def start_stub_server() -> tuple:
    """``(process, port)`` of a stub server in its own process."""
    sys.path.insert(0, str(MODULE_DIR))
    from MedSAMLib.server_process import free_port

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve", str(port)], stdout=subprocess.PIPE, text=True
    )
    if process.stdout.readline().strip() != "ready":
        process.kill()
        raise RuntimeError("the stub server did not start")
    return process, port


# ----- the guest: the extension's polling, driven by the host's ticks ---------------------------------


def workload(name: str, url: str, port: int):
    """``work(progress, cancelled)`` for a BackgroundTask, its input made beforehand (not timed)."""
    import numpy as np
    from MedSAMLib.client import MedSAMClient

    client = MedSAMClient(url, timeout=120)
    if name == "small":
        return lambda progress, cancelled: [client.health() for _ in range(5)]
    if name == "upload":
        payload = os.urandom(UPLOAD_BYTES)

        def upload(progress, cancelled):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            connection.request("POST", "/upload", body=payload, headers={"Content-Type": "application/octet-stream"})
            connection.getresponse().read()
            connection.close()

        return upload
    if name == "create_session":
        rng = np.random.default_rng(0)
        volume = rng.normal(40, 20, (256, 256, 512)).astype(np.int16)  # 64 MB of noisy "tissue"
        return lambda progress, cancelled: client.create_session(volume, np.eye(4), modality="ct")
    raise ValueError(f"unknown workload {name!r}")


def guest(port: int, mode: str, workloads: list[str]):
    """Set up the ``tick()`` the host (or a plain loop) calls every TICK_MS; returns it."""
    from MedSAMLib import tasks

    worker_time = tasks.WORKER_TIME_PER_TICK_S if mode == "slicer, task.poll()" else 0.0
    url = f"http://127.0.0.1:{port}"
    pending, results, state = list(workloads), {}, {"task": None}

    def timed(name, work):
        def run(progress, cancelled):
            work(progress, cancelled)
            results.setdefault(name, []).append(time.perf_counter() - state["started"])  # worker through

        return run

    def tick() -> bool:
        task = state["task"]
        if task is None:
            if not pending:
                print(json.dumps(results), flush=True)
                return True
            name = pending.pop(0)
            work = timed(name, workload(name, url, port))
            state["started"] = time.perf_counter()
            state["task"] = tasks.BackgroundTask(work, name).start()
            return False
        if task.poll(worker_time):  # what MedSAMWidget._poll_task does each tick
            task.result()
            state["task"] = None
        return False

    return tick


# ----- the driver -----------------------------------------------------------------------------------


def measure(workloads: list[str], repeats: int = 1, modes=MODES) -> dict[str, dict[str, float]]:
    """Median seconds per mode and workload (``repeats`` runs of each, in one process per mode)."""
    with tempfile.TemporaryDirectory() as folder:
        program = compile_host(Path(folder))
        server, port = start_stub_server()
        try:
            runs = {
                mode: run_guest(
                    None if mode == "free" else program, port, mode, [name for name in workloads for _ in range(repeats)]
                )
                for mode in modes
            }
        finally:
            server.kill()
            server.wait()
    return {mode: {name: statistics.median(seconds[name]) for name in workloads} for mode, seconds in runs.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve_stub(args.serve)
        return 0
    workloads = [w for w in args.workloads.split(",") if w]
    try:
        figures = measure(workloads, args.repeats)
    except HostUnavailable as error:
        print(f"slicer_gil: error: {error}", file=sys.stderr)
        return 2
    labels = {"small": "5 small requests", "upload": "64 MB raw upload", "create_session": "create_session, 64 MB"}
    print(f"seconds until the worker is through (median of {args.repeats}), poll timer {TICK_MS} ms")
    print("| workload | " + " | ".join(MODES) + " |")
    print("|---|" + "---:|" * len(MODES))
    for name in workloads:
        print(f"| {labels[name]} | " + " | ".join(f"{figures[mode][name]:.3f}" for mode in MODES) + " |")
    return 0


def run_as_guest(argv: list[str]):
    """The workloads' side: returns the ``tick()`` the host calls; a plain interpreter ("free") loops here."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--guest", action="store_true")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", required=True)
    parser.add_argument("--workloads", required=True)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(MODULE_DIR))
    guest_tick = guest(args.port, args.mode, [w for w in args.workloads.split(",") if w])
    if not os.environ.get(IN_HOST):  # a plain interpreter: the main thread sleeps with the GIL released
        while not guest_tick():
            time.sleep(TICK_MS / 1000)
    return guest_tick


if __name__ == "__main__":
    if "--guest" in sys.argv[1:]:
        # In the host this is __main__.tick, which it calls every TICK_MS (and no sys.exit: SystemExit
        # would end the host before its loop).
        tick = run_as_guest(sys.argv[1:])
    else:
        sys.exit(main())
