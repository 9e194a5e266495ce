"""A ``raydal`` process ends within a few seconds of SIGINT/SIGTERM, with one line, and takes
the local Ray cluster it started with it.

Python runs signal handlers only when the main thread is back in the interpreter. A main thread
in Ray's C++ (``ray.init`` asking a GCS the same signal killed, ``ray.shutdown`` flushing to it)
kept a signalled run alive for 10-31 s, and one interrupted inside ``ray.init`` deadlocked for
good in a Ray destructor that holds the interpreter lock. Ray's agents outlived a SIGTERM to the
process group by more than a minute. So:

- Python's C-level handler writes the signal number to a wakeup pipe at once (no lock needed);
- a small watcher process (this module run as a script; it ignores SIGINT/SIGTERM) reads that
  pipe and forwards the byte to a thread of the raydal process;
- the thread gives the main thread ``grace_s`` to unwind (records are whole at any instant:
  every write is atomic), prints the stop line if the main thread has not, kills what the
  process started and still runs, and ends it with status 128 + the signal; a main thread
  that unwinds in time does the same without ``ray.shutdown`` (see ``end``);
- the watcher process is the backup for an interpreter lock that never comes back: 1.5 s after
  the grace it kills the same processes and the raydal process (status -9, with its own line).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

#: Seconds a signalled ``raydal`` process has to end on its own before it is ended for it.
GRACE_S = 4.0
#: Further seconds the watcher process waits before it ends a process that could not end itself.
BACKUP_S = 1.5
_STOP_LINE = ("raydal {command} {what}: every record on disk is whole; run the same command "
              "again to continue where it stopped")
_STOPS = (signal.SIGINT, signal.SIGTERM)

told: list[bool] = []  # the stop line was printed
received: list[int] = []  # stop signals that reached this process (handlers and watcher thread)
_telling = threading.Lock()
_seen: set = set()  # what this process ran when the signal came (psutil.Process objects)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it unwinds like Ctrl-C (locks released)."""


def raise_terminated(signum, frame) -> None:
    """The SIGTERM handler of the ``raydal`` command."""
    received.append(signum)
    raise Terminated()


def raise_interrupt(signum, frame) -> None:
    """The SIGINT handler of the ``raydal`` command: Python's own, recorded."""
    received.append(signum)
    raise KeyboardInterrupt()


def stopped_by(e: KeyboardInterrupt) -> int:
    """The signal behind ``e``: SIGTERM or SIGINT (SIGTERM once it came: code that re-raises a
    plain KeyboardInterrupt loses the Terminated class)."""
    return (signal.SIGTERM if isinstance(e, Terminated) or signal.SIGTERM in received
            else signal.SIGINT)


def _deliver_again(hook_args) -> None:
    """sys.unraisablehook: a stop signal whose exception landed in a finalizer or callback
    (Python prints "Exception ignored in ..." and goes on; Ray's own SIGTERM handler, while
    ``ray.init`` runs, raises SystemExit(15)) is delivered to the main thread again, from
    another thread a moment later (not inside this hook), without the stack dump; anything
    else goes to the default hook."""
    exc = hook_args.exc_value
    if isinstance(exc, KeyboardInterrupt) or (isinstance(exc, SystemExit)
                                              and exc.code == signal.SIGTERM):
        import _thread
        signum = signal.SIGTERM if isinstance(exc, SystemExit) else stopped_by(exc)
        threading.Timer(0.05, _thread.interrupt_main, args=(signum,)).start()
        return
    sys.__unraisablehook__(hook_args)


def stop_line(command: str, signum: int) -> str:
    what = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted (Ctrl-C)"
    return _STOP_LINE.format(command=command, what=what)


def say_stopped(command: str, signum: int) -> None:
    """Print the stop line once (the main thread or the watcher thread, whichever comes first)."""
    with _telling:
        if not told:
            told.append(True)
            print(stop_line(command, signum), file=sys.stderr, flush=True)


def started_by(pid: int, exclude: tuple[int, ...] = ()) -> set:
    """The processes ``pid`` started and that still run (a local Ray cluster's GCS, raylet,
    agents and workers): its descendants, and the members of its process group when it leads
    the group (a shell's job holds only what the job started; Ray's agents stay in it after the
    raylet that started them died)."""
    import psutil
    found = set()
    try:
        found.update(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        pass
    try:
        leads = os.getpgid(pid) == pid
    except OSError:
        leads = False
    if leads:
        for proc in psutil.process_iter():
            try:
                if proc.pid != pid and os.getpgid(proc.pid) == pid:
                    found.add(proc)
            except (psutil.Error, OSError):
                continue
    return {p for p in found if p.pid not in exclude}


def kill(procs: set) -> None:
    """SIGKILL each process that is still the one seen (psutil checks its start time)."""
    import psutil
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            continue


def install(command: str, grace_s: float = GRACE_S) -> None:
    """Bound the time from SIGINT/SIGTERM to exit for this process (call it first, from the
    main thread, before any other thread starts)."""
    import subprocess
    wake_read, wake_write = os.pipe()  # signal numbers, written by Python's C handler
    fwd_read, fwd_write = os.pipe()  # the same, forwarded by the watcher process
    os.set_blocking(wake_write, False)
    watcher = subprocess.Popen(
        [sys.executable, "-c", "import sys; from raydal.stop import watch_from_outside; "
         "watch_from_outside(int(sys.argv[1]), float(sys.argv[2]))",
         str(os.getpid()), str(grace_s)],
        stdin=wake_read, stdout=fwd_write, close_fds=True,
        preexec_fn=_ignore_stops)  # a signal to the group must not end the watcher
    os.close(wake_read)
    os.close(fwd_write)
    signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, raise_interrupt)
    sys.unraisablehook = _deliver_again

    def watch() -> None:
        signum = 0
        while signum not in _STOPS:  # other handled signals pass
            byte = os.read(fwd_read, 1)
            if not byte:
                return  # the watcher process is gone: nothing to forward
            signum = byte[0]
        received.append(signum)
        _seen.update(started_by(os.getpid(), exclude=(watcher.pid,)))  # before agents orphan
        time.sleep(grace_s)
        say_stopped(command, signum)
        kill(_seen | started_by(os.getpid(), exclude=(watcher.pid,)))
        os._exit(128 + signum)

    threading.Thread(target=watch, name="raydal-stop", daemon=True).start()


def end(code: int, command: str = "") -> None:
    """End the process with ``code`` once ``main`` returned. After a stop signal, kill what it
    started and leave at once: ``ray.shutdown`` after a signal could hang on a dead GCS or
    crash (SIGSEGV in 2 of 8 trials), and Ray's agents outlived a plain exit by minutes.
    A signal whose KeyboardInterrupt never reached ``main`` (code that swallows it, e.g. while
    Ray starts, and a run that then ends within the grace) still ends the process as stopped:
    the stop line and 128 + the signal, as the watcher thread would have a moment later."""
    if received and not told:
        say_stopped(command, received[0])
        code = 128 + received[0]
    if told:
        import logging
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        kill(_seen | started_by(os.getpid()))
        os._exit(code)
    sys.exit(code)


def _ignore_stops() -> None:
    for s in _STOPS:
        signal.signal(s, signal.SIG_IGN)


def watch_from_outside(parent: int, grace_s: float) -> None:
    """The watcher process: forward signal bytes from stdin to stdout; after a stop signal,
    end ``parent`` and what it started if it still runs ``grace_s + BACKUP_S`` later. Ends when
    the parent closes the pipe (it exited)."""
    _ignore_stops()
    while True:
        byte = os.read(0, 1)
        if not byte:
            return
        try:
            os.write(1, byte)
        except OSError:
            return
        if byte[0] in _STOPS:
            break
    import psutil
    try:
        proc = psutil.Process(parent)
    except psutil.Error:
        return
    seen = started_by(parent, exclude=(os.getpid(),))
    deadline = time.monotonic() + grace_s + BACKUP_S
    while time.monotonic() < deadline:  # leave as soon as it ends: this process holds stderr
        time.sleep(0.05)
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:  # ended; its parent has not reaped it
                return
        except psutil.Error:
            return
    seen |= started_by(parent, exclude=(os.getpid(),))
    print(f"raydal: the process did not end within {grace_s + BACKUP_S:g} s of the signal (Ray "
          "held it); ended it: every record on disk is whole; run the same command again to "
          "continue where it stopped", file=sys.stderr, flush=True)
    kill(seen | {proc})
