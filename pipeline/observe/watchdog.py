"""The loop-stall watchdog: say which handler blocks the event loop, and where.

An ``async def`` handler that blocks (``time.sleep``, a synchronous HTTP call, a long
computation) freezes every agent of the organism, and nothing else would say which one.
While the organism runs, a daemon thread pings the event loop every quarter of the
threshold (``loop.call_soon_threadsafe``) and waits for the answer. When a ping stays
unanswered longer than ``limits.loop_stall_warning`` (default 1 s; 0 turns it off), the
thread reads the loop thread's stack (``sys._current_frames``), finds the handler runner
of ``steps/lanes.py`` in it (by code object) for the agent and the spore, and the
innermost frame of user code for the line; it logs one warning per stall, and an info
line with the stall's length once the loop answers again.

Nothing runs per spore. The ping is not a loop timer: a timer due every few hundred
milliseconds would keep a virtual-clock loop (which jumps to its next timer when idle)
from ever waiting, and would move its clock.
"""

from __future__ import annotations

import logging
import os
import sys
import sysconfig
import threading
import time
import weakref
from asyncio import AbstractEventLoop, events, get_running_loop
from pathlib import Path
from types import FrameType

import sporeflow.config
import sporeflow.steps
from sporeflow.steps.lanes import AgentLane

__all__ = ["LoopWatchdog", "describe_stall"]

# The frames a handler runs under: their locals name the lane and the spore.
_RUNNERS = {
    AgentLane.serve.__code__: "self",  # the inline path: `self` is the lane, `spore`
    AgentLane._run.__code__: "self",  # with a timeout or an expiry
}
_LOOP = events.Handle._run.__code__  # where the loop runs a callback: outside are its drivers
# sporeflow's own packages (not the folder above them: in a plain editable install that
# is the whole checkout, tests and user handlers beside the organism included).
_OURS = tuple(str(folder) + os.sep for folder in (
    Path(sporeflow.config.__file__ or "").parent, Path(sporeflow.steps.__file__ or "").parent,
    Path(__file__).parent.parent))  # pipeline/, which is still being imported here
_LIBRARIES = tuple(sorted({str(Path(path)) + os.sep for key, path in sysconfig.get_paths().items()
                           if key in ("stdlib", "platstdlib", "purelib", "platlib")}))
_STDLIB, _SITE = (tuple(sorted({str(Path(path)) + os.sep for key, path
                                 in sysconfig.get_paths().items() if key in keys}))
                   for keys in (("stdlib", "platstdlib"), ("purelib", "platlib")))
_ADVICE = "use a sync handler (runs in a thread) or await instead of blocking"
# A handler's run, but no line of the user's: sporeflow's own work on what it made.
_OUR_WORK = ("sporeflow's own work on what the handler made (a long list returned at once "
             "is shaped, and paged out past limits.max_in_memory, in one go): return a "
             "generator, or yield, to stream it")
_NOT_A_HANDLER = "no agent runs meanwhile"


def _is_user_code(filename: str) -> bool:
    return not (filename.startswith("<") or filename.startswith(_OURS)
                or filename.startswith(_LIBRARIES))


def _where(frame: FrameType) -> str:
    code = frame.f_code
    path = code.co_filename
    with_cwd = os.path.join(os.getcwd(), "")
    if path.startswith(with_cwd):
        path = path[len(with_cwd):]
    return f"{path}:{frame.f_lineno} in {code.co_name}()"


def describe_stall(frame: FrameType | None) -> tuple[str, str]:
    """Who blocks the loop whose innermost frame is ``frame``: "by agent 'x' handling
    spore <id> at handlers.py:12 in slow()", or only where, outside any handler; and what
    to do about it."""
    if frame is None:
        return "(its thread's stack is not available)", _NOT_A_HANDLER
    innermost, user, handler = frame, None, ""
    ours = _works_in_ours(frame)
    current: FrameType | None = frame
    while current is not None and current.f_code is not _LOOP:
        lane_local = _RUNNERS.get(current.f_code)
        if lane_local is not None:
            local = current.f_locals
            name = getattr(local.get(lane_local), "name", None)
            spore = getattr(local.get("spore"), "id", None)
            handler = (f"by agent {name!r}" if name is not None else "by a handler") + (
                f" handling spore {spore} " if spore is not None else " ")
            break
        if user is None and _is_user_code(current.f_code.co_filename):
            user = current
        current = current.f_back
    where = f"at {_where(user or innermost)}"
    if user is not None and user is not innermost:
        where += f", inside {_where(innermost)}"
    advice = _NOT_A_HANDLER if not handler else _OUR_WORK if ours else _ADVICE
    return handler + where, advice


def _works_in_ours(frame: FrameType) -> bool:
    """Whether the innermost frame outside Python's own library is sporeflow's (a
    handler's own code, even installed in site-packages, is not)."""
    current: FrameType | None = frame
    while current is not None:
        filename = current.f_code.co_filename
        if not (filename.startswith("<") or (filename.startswith(_STDLIB)
                                             and not filename.startswith(_SITE))):
            return filename.startswith(_OURS)
        current = current.f_back
    return False


class LoopWatchdog:
    """Warn when the running loop does not answer within ``threshold`` seconds.

    :meth:`start` and :meth:`stop` are called on the loop's thread; a ``threshold`` of
    None or 0 makes both do nothing.
    """

    def __init__(self, threshold: float | None, logger: logging.Logger) -> None:
        self.threshold = threshold or 0.0
        self.logger = logger
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._loop_thread = 0
        self._ping: float | None = None  # when the unanswered ping was sent
        self._answered = 0.0

    def start(self) -> None:
        self.stop()  # one started on a loop since gone (a start after a failed run)
        if not self.threshold:
            return
        loop = get_running_loop()
        self._loop_thread = threading.get_ident()
        self._ping = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._watch, args=(weakref.ref(loop), self._stopping),
            name=f"{self.logger.name}:watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        if self._ping is not None:  # this runs on the loop: whatever stalled it has ended
            self._pong(self._ping)
        self._stopping.set()
        thread.join(timeout=1.0)  # it wakes at once; a stall it reported ends in the log

    def _pong(self, sent: float) -> None:
        if self._ping == sent:
            self._answered = time.monotonic()
            self._ping = None

    def _watch(self, loop_ref: weakref.ref[AbstractEventLoop], stopping: threading.Event) -> None:
        warned: float | None = None  # when the ping of the stall reported was sent
        stall = ""
        interval = self.threshold / 4
        while True:
            stop = stopping.wait(interval)
            ping = self._ping
            if warned is not None and ping != warned:
                self.logger.info("the event loop ran again after being blocked for %.1f s %s",
                                 self._answered - warned, stall)
                warned = None
            loop = loop_ref()
            if stop or loop is None or loop.is_closed():
                return
            now = time.monotonic()
            if ping is None:
                self._ping = now
                try:
                    loop.call_soon_threadsafe(self._pong, now)
                except RuntimeError:  # closed meanwhile
                    return
            elif warned is None and now - ping >= self.threshold and loop.is_running():
                stall, advice = describe_stall(sys._current_frames().get(self._loop_thread))
                if self._ping == ping:  # still blocked once the stack was read
                    warned = ping
                    self.logger.warning("the event loop has been blocked for %.1f s %s; %s",
                                        now - ping, stall, advice)
