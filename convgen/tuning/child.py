"""The worker child process, and ``Runner``, the parent's handle on it.

The tuner's compile workers and its measurement process are such children: plain
subprocesses (not multiprocessing), so they work from scripts without a ``__main__``
guard, after the parent has started OpenMP threads, and inside daemonic Dask workers.
Kernels are checked and timed in a child process (``python -m convgen.tuning.child``), so
a kernel that crashes takes down only the child: the parent records the crash (with the
signal and the end of the child's stderr), starts a fresh child and goes on. A kernel that
runs past its time limit is killed the same way. The child lives across measurements (it
keeps the layer's data loaded) and ignores SIGINT: Ctrl-C is the parent's to handle.

The protocol is length-prefixed pickles over the child's stdin and a private copy of its
stdout (anything a kernel prints goes to stderr). Both ends are this same convgen on this
same machine; nothing else writes to these pipes.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time

_HEADER = struct.Struct(">Q")


def _write(stream, message) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(payload)) + payload)
    stream.flush()


def _read_exact(stream, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


# -- the child -------------------------------------------------------------------------------
def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)                     # a kernel's printf must not corrupt the protocol
    requests = sys.stdin.buffer
    from . import measure
    loaded: dict = {}
    while True:
        header = _read_exact(requests, _HEADER.size)
        if header is None:
            return 0
        job = pickle.loads(_read_exact(requests, _HEADER.unpack(header)[0]))
        try:
            reply = _serve(job, measure, loaded)
        except Exception as exc:   # a Python-level failure: reported, the child lives on
            reply = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
        _write(replies, reply)


def _serve(job: dict, measure, loaded: dict):
    if job["op"] == "ping":
        return {"status": "ok", "pid": os.getpid()}
    if job["op"] == "build":
        from .build import build
        return build(job["workload"], job["plan"], job["target"])
    if job["op"] == "data":
        from .build import make_data_files
        return {"status": "ok", "data": make_data_files(job["workload"], job["seed"],
                                                         job["directory"])}
    directory = job["data"]
    if directory not in loaded:
        loaded.clear()
        loaded[directory] = measure.load_data(directory)
    data = loaded[directory]
    if job["op"] == "measure":
        return measure.measure(job["workload"], job["plan"], job["target"], data, job["settings"])
    if job["op"] == "confirm":
        return {"status": "ok", "times": measure.confirm(job["workload"], job["plans"],
                                                         job["target"], data, job["settings"])}
    raise ValueError(f"unknown job {job['op']!r}")


# -- the parent's side -------------------------------------------------------------------------
class Runner:
    """Runs jobs in the measurement child, one at a time; restarts it after a crash."""

    def __init__(self, env: dict | None = None):
        self._proc: subprocess.Popen | None = None
        self._stderr = None
        self._env = None if env is None else {**os.environ, **env}

    def _start(self) -> subprocess.Popen:
        if self._stderr is not None:
            self._stderr.close()
        self._stderr = tempfile.TemporaryFile()   # noqa: SIM115 (lives with the child)
        self._proc = subprocess.Popen([sys.executable, "-m", "convgen.tuning.child"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._stderr, env=self._env)
        return self._proc

    def call(self, job: dict, timeout_s: float, cancelled=None) -> dict:
        """The child's reply to ``job``, or a crash/timeout reply if it died or hung.
        ``cancelled()`` (checked five times a second) abandons the job: the child is
        killed and the reply's status is "cancelled"."""
        proc = self._proc if self._proc is not None and self._proc.poll() is None \
            else self._start()
        try:
            _write(proc.stdin, job)
            reply = self._reply(proc, timeout_s, cancelled)
        except BrokenPipeError:
            reply = None
        except KeyboardInterrupt:
            self.kill()
            raise
        if reply == "cancelled":
            self.kill()
            return {"status": "cancelled", "error": "interrupted"}
        if reply is None:
            return self._died(proc)
        if reply == "timeout":
            self.kill()
            return {"status": "timeout",
                    "error": f"no result after {timeout_s:.0f} s; the child was killed"}
        return reply

    def _reply(self, proc, timeout_s: float, cancelled=None):
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        data = b""
        need = _HEADER.size
        header_done = False
        while True:
            while len(data) < need:
                left = deadline - time.monotonic()
                if left <= 0:
                    return "timeout"
                if cancelled is not None and cancelled():
                    return "cancelled"
                ready, _, _ = select.select([fd], [], [], min(left, 0.2))
                if not ready:
                    continue
                chunk = os.read(fd, max(need - len(data), 1 << 16))
                if not chunk:
                    return None
                data += chunk
            if header_done:
                return pickle.loads(data[:need])
            need = _HEADER.unpack(data[:_HEADER.size])[0]
            data = data[_HEADER.size:]
            header_done = True

    def _died(self, proc) -> dict:
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
            code = proc.returncode
        how = (f"killed by {signal.Signals(-code).name}" if code is not None and code < 0
               else f"exit status {code}")
        tail = self._stderr_tail()
        self._proc = None
        return {"status": "crash", "error": f"the measurement process died ({how})"
                                            + (f": {tail}" if tail else "")}

    def _stderr_tail(self, limit: int = 400) -> str:
        if self._stderr is None:
            return ""
        with contextlib.suppress(OSError, ValueError):
            self._stderr.seek(0)
            text = self._stderr.read().decode(errors="replace").strip()
            return " | ".join(text.splitlines()[-3:])[-limit:]
        return ""

    def kill(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.kill()
            with contextlib.suppress(Exception):
                self._proc.wait(timeout=10)
        self._proc = None

    def close(self) -> None:
        """Ask the child to exit (end of its stdin), kill it if it does not."""
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()
        self._proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


if __name__ == "__main__":
    sys.exit(main())
