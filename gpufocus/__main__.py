"""The ``gpufocus`` command (and ``python -m gpufocus``): start the command line.

Ctrl-C works at any moment: ``interrupted`` and exit code 130, nothing written. The
handler is installed before anything else is imported, and raises ``KeyboardInterrupt``
only where that is safe. An interrupt that lands while a module is being imported
(torch loading its C extensions, say), or inside the standard library's locking code
(threads, futures, queues, logging), or in pydantic (typer's option parsing), is held
and raised once that code is left:
an import cut short leaves a half-made module behind (``cannot load module more than
once``, or an abort in a native library's start-up), and a lock taken but not yet
guarded stays taken (a decoding thread then waits for it forever).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import NoReturn

_HELD = [False]  # an interrupt waits for a safe place


# Modules in which an exception raised between two bytecodes can leave a lock taken or
# a module half made, or is lost: typer parses options through pydantic validators,
# and an interrupt raised inside one of them was lost (the command ran on to exit 0; 4
# of 480 interrupts sent 0.14-0.22 s after the start).
_UNSAFE = {"threading", "queue", "logging", "importlib", "concurrent", "pydantic"}


def _unsafe(frame) -> bool:
    """Whether the code at ``frame`` runs inside an import or the standard library's
    locking code."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib._bootstrap"):
            return True
        if str(frame.f_globals.get("__name__", "")).split(".")[0] in _UNSAFE:
            return True
        frame = frame.f_back
    return False


def _on_interrupt(signum, frame) -> None:
    """SIGINT, and SIGALRM while one is held: raise ``KeyboardInterrupt``, unless that
    is unsafe here (``_unsafe``); then look again in 20 ms."""
    if signum == signal.SIGALRM and not _HELD[0]:
        return
    if _unsafe(frame):
        _HELD[0] = True
        signal.setitimer(signal.ITIMER_REAL, 0.02)
        return
    _HELD[0] = False
    raise KeyboardInterrupt


def _guard() -> None:
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background: keep ignoring
        return
    if not hasattr(signal, "setitimer"):  # no timers (Windows): Python's own handler
        return
    signal.signal(signal.SIGINT, _on_interrupt)
    signal.signal(signal.SIGALRM, _on_interrupt)


_guard()


def main() -> None:
    """Run the command line on ``sys.argv`` and exit with its code."""
    try:
        _native_stderr_off()
        import gc

        from gpufocus.cli import PROCESS_HOOKS, run
        from gpufocus.allocator import tune_host_allocator

        tune_host_allocator()
        # torch's hundreds of thousands of objects live as long as the process: frozen,
        # the collector's full passes skip them, in the run and at exit (0.15 s and
        # 0.4 s of a fuse here, bench/RESULTS.md)
        PROCESS_HOOKS.append(gc.freeze)

        code = run(sys.argv[1:])
        gc.freeze()
        if code == 130:  # a Ctrl-C that the command line met
            interrupted()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the work is done: a Ctrl-C now changes nothing
        _HELD[0] = False
    except KeyboardInterrupt:
        interrupted()
    except Exception as error:  # noqa: BLE001 - a bug: one line here, the traceback in a file
        code = _internal_error(error)
    sys.exit(code)


def interrupted() -> NoReturn:
    """Say so once and end with 130, whatever else is pending.

    By now the interrupt has unwound the work (temporaries removed, pools shut down).
    The process ends here, not through Python's exit: CPython ends a process whose
    KeyboardInterrupt ever passed through an ``exec`` of source text (dataclasses and
    namedtuples are made that way while modules import) with a SIGINT of its own,
    caught or not, and the exit code would not be 130.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print("interrupted", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(130)


def _internal_error(error: Exception) -> int:
    """A bug is no reason for 40 lines on the user's terminal: one line that says where
    the traceback went, for the report."""
    import tempfile
    import traceback

    text = " ".join(str(error).split())[:200]
    try:
        with tempfile.NamedTemporaryFile("w", prefix="gpufocus-crash-", suffix=".txt", delete=False) as report:
            traceback.print_exception(error, file=report)
        where = f"; details in {report.name}"
    except OSError:
        where = ""
    print(f"error: internal error ({type(error).__name__}: {text}){where}; please report it", file=sys.stderr)
    return 70  # EX_SOFTWARE: not the user's input


def _native_stderr_off() -> None:
    """C libraries (libpng, LibRaw, ...) print warnings straight to file descriptor
    2, around our one-line error. Point descriptor 2 at the null device and give
    Python's ``sys.stderr`` a copy of the real one: our messages still reach the user,
    the libraries' chatter does not."""
    try:
        sys.stderr.flush()
        real = os.dup(2)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
    except (OSError, AttributeError, ValueError):  # no descriptor 2 at all: nothing to protect
        return
    sys.stderr = open(real, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace")


if __name__ == "__main__":
    main()
