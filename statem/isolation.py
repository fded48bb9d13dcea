"""Isolated evaluation: expressions run in a child process with CPU and memory limits.

For definitions from authors who are not trusted with the host, the in-process sandbox
(:mod:`statem.sandbox`) is the first wall; this is the second. ``Engine(...,
isolate_expressions=True)`` compiles every machine's expressions as
:class:`IsolatedExpression`, whose ``evaluate()`` sends the source and the bindings (as
JSON) to a child process (``python -I -c`` importing only this module and the sandbox),
one per calling thread, started on first use and reused.

The child runs the same sandbox under operating-system limits: an address space of
:data:`ADDRESS_SPACE_BYTES` (``RLIMIT_AS``) and, per evaluation, a CPU-time limit of
:data:`CPU_SECONDS` (``RLIMIT_CPU``, renewed before each evaluation). The parent waits at
most ``LIMITS.seconds`` + :data:`GRACE_SECONDS`; past that, or if the child dies (a signal
from the kernel, an out-of-memory kill), the child is killed and replaced, and the
evaluation fails with an ExpressionError saying so. Whatever an expression does, its
evaluation ends, and the worker that asked does not.

Cost: a round trip through a pipe and JSON encoding of the bindings per evaluation
(``python -m bench.isolation`` measures it), and one extra process per thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Mapping
from typing import IO, Any

from .bounds import JSON, LIMITS
from .errors import ExpressionError
from .expressions import Expression, compile_expression

#: Address space of the child process (RLIMIT_AS), in bytes.
ADDRESS_SPACE_BYTES = 1024 * 1024 * 1024
#: CPU seconds one evaluation may use in the child (RLIMIT_CPU, renewed per evaluation).
CPU_SECONDS = 2
#: How much longer than LIMITS.seconds the parent waits for an answer before killing the child.
GRACE_SECONDS = 2.0
#: How long the parent waits for a new child to start and answer its first request.
START_SECONDS = 30.0
#: Compiled expressions a child keeps, by (source, path).
CHILD_CACHE = 512


#: What the child runs: statem's expression modules without the package's ``__init__``
#: (which imports the engine, SQLAlchemy and pydantic: 2 s of start-up instead of 0.3 s).
_BOOT = """
import sys, types
package = types.ModuleType("statem")
package.__path__ = [sys.argv[1]]
sys.modules["statem"] = package
from statem.isolation import serve
serve(sys.stdin.buffer, sys.stdout.buffer)
"""


class _Child:
    """One child process and the pipe to it; killed when dropped or dead."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _BOOT, os.path.dirname(os.path.abspath(__file__))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
        self.fresh = True
        self._finalizer = weakref.finalize(self, _kill, self.proc)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        self._finalizer()

    def ask(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """Send one request, wait for its answer; None if the child died or timed out."""
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None
        wait = LIMITS.seconds + GRACE_SECONDS + (START_SECONDS if self.fresh else 0.0)
        try:
            stdin.write(json.dumps(request, separators=(",", ":")).encode() + b"\n")
            stdin.flush()
        except (BrokenPipeError, OSError):
            return None
        line = _read_line(stdout, time.monotonic() + wait)
        if line is None:
            return None
        self.fresh = False
        answer: dict[str, Any] = json.loads(line)
        return answer


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


def _read_line(stream: IO[bytes], deadline: float) -> bytes | None:
    """One line from the child before ``deadline``, or None (timeout or end of file)."""
    chunks: list[bytes] = []
    fd = stream.fileno()
    poller = select.poll()  # not select.select: a busy process may hold descriptors past 1024
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        if not poller.poll(max(int(left * 1000), 1)):
            return None
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return None
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            return b"".join(chunks)


_local = threading.local()


def _child() -> _Child:
    child: _Child | None = getattr(_local, "child", None)
    if child is None or not child.alive():
        child = _local.child = _Child()
    return child


def evaluate_isolated(source: str, path: str, bindings: Mapping[str, object]) -> JSON:
    """Evaluate ``source`` in this thread's child process; ExpressionError on any failure."""
    child = _child()
    try:
        request = {"source": source, "path": path, "bindings": dict(bindings)}
        answer = child.ask(request)
    except (TypeError, ValueError) as exc:
        raise ExpressionError(f"bindings cannot be sent to the isolated process: {exc}", expression=source,
                              path=path) from None  # fmt: skip
    if answer is None:
        with contextlib.suppress(subprocess.TimeoutExpired):  # an exiting child closes its pipe
            child.proc.wait(timeout=0.5)  # just before it can be reaped
        timed_out = child.alive()
        child.kill()
        _local.child = None
        code = child.proc.returncode
        if timed_out:
            why = f"it ran longer than {LIMITS.seconds + GRACE_SECONDS:g}s and was killed"
        elif code is not None and code < 0:
            why = f"its process was killed by {signal.Signals(-code).name} (CPU or memory limit)"
        else:
            why = f"its process exited with status {code}"
        raise ExpressionError(f"isolated evaluation failed: {why}", expression=source, path=path)
    if "error" in answer:
        raise ExpressionError(str(answer["error"]), expression=source, path=path)
    return answer["ok"]


class IsolatedExpression(Expression):
    """An expression evaluated in a child process with CPU and address-space limits."""

    __slots__ = ()

    @classmethod
    def of(cls, expression: Expression) -> IsolatedExpression:
        """The isolated twin of a compiled expression."""
        return cls(expression.source, expression.path, expression._tree)

    def evaluate(self, bindings: Mapping[str, object]) -> JSON:
        """Evaluate in this thread's child process; the result is a JSON value, else ExpressionError."""
        return evaluate_isolated(self.source, self.path, bindings)


# ---------------------------------------------------------------------- the child


def _limit_cpu() -> None:
    used = resource.getrusage(resource.RUSAGE_SELF)
    spent = int(used.ru_utime + used.ru_stime) + 1
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    soft = spent + CPU_SECONDS
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def serve(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    """The child's loop: one JSON request per line in, one JSON answer per line out."""
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_BYTES, ADDRESS_SPACE_BYTES))
    cache: dict[tuple[str, str], Expression] = {}
    for line in stdin:
        request = json.loads(line)
        key = (request["source"], request["path"])
        answer: dict[str, Any]
        try:
            expr = cache.get(key)
            if expr is None:
                if len(cache) >= CHILD_CACHE:
                    cache.clear()
                expr = cache[key] = compile_expression(*key)
            _limit_cpu()
            answer = {"ok": expr.evaluate(request["bindings"])}
        except ExpressionError as exc:
            answer = {"error": exc.reason}
        except MemoryError:
            answer = {"error": "MemoryError: the isolated process ran out of memory"}
        stdout.write(json.dumps(answer, separators=(",", ":")).encode() + b"\n")
        stdout.flush()


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
