"""Servers the kernel starts, as process groups that end with the kernel, however it ends.

A guard process leads the group: it starts the server as its child, and when the kernel is
gone (it is re-parented), the server exited, or it is told to stop (SIGTERM), it sends SIGTERM
to the whole group, then SIGKILL if the server outlives a grace period. This covers what a
parent-death signal (prctl PR_SET_PDEATHSIG) does not: that signal
fires when the *thread* that started the child ends (the panel starts `%aml_ui`'s server from
a worker thread) and reaches only the leader, while `mlflow server` (MLflow 3) starts uvicorn
and job runners of its own.
"""

import os
import signal
import subprocess
import sys
import time

__all__ = ["start_group", "stop_group", "live_members", "GRACE"]

# Seconds between SIGTERM and SIGKILL (uvicorn needs about a second to exit).
GRACE = 10.0

# The guard: only the standard library, so it starts in milliseconds. It polls its parent
# because nothing tells a process that its parent was SIGKILLed; 5 wake-ups a second cost nothing.
_GUARD = """
import os, signal, subprocess, sys, time
kernel, grace = os.getppid(), float(sys.argv[1])
told = []
signal.signal(signal.SIGTERM, lambda *_: told.append(1))
child = subprocess.Popen(sys.argv[2:])
while child.poll() is None and not told and os.getppid() == kernel:
    time.sleep(0.2)
by_itself = child.poll() is not None
signal.signal(signal.SIGTERM, signal.SIG_IGN)
os.killpg(0, signal.SIGTERM)
deadline = time.monotonic() + grace
while child.poll() is None and time.monotonic() < deadline:
    time.sleep(0.1)
if not by_itself or child.poll() is None:
    os.killpg(0, signal.SIGKILL)  # nothing of the group stays, this guard included
code = child.returncode  # the server's own exit: its code tells why
os._exit(code if code >= 0 else 128 - code)
"""


def start_group(command: list[str], log, env: dict) -> subprocess.Popen:
    """`command` under a guard in a new process group; the Popen is the guard's (the group's
    leader: its pid is the group id)."""
    return subprocess.Popen(
        [sys.executable, "-c", _GUARD, str(GRACE), *command],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )


def stop_group(process: subprocess.Popen, timeout: float = GRACE + 5) -> None:
    """Stop the whole group: the guard passes SIGTERM on; SIGKILL if anything is left after `timeout`.

    Returns once no live member is left (bounded by `timeout`): reaping the guard is not
    enough, because the members it SIGKILLed are not our children and a large Python process
    (uvicorn with a model loaded) can take a while to tear down after the signal, longest
    on a loaded machine."""
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    _signal_group(process.pid, signal.SIGKILL)  # whatever is left of the group
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + timeout
    while live_members(process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def live_members(pgid: int) -> list[int]:
    """Members of group `pgid` that are not zombies (a container's init may never reap the
    members the guard left behind; a zombie holds no port and no memory)."""
    proc = "/proc"
    if not os.path.isdir(proc):  # not Linux: the group answers while any member exists
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    found = []
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            with open(f"{proc}/{name}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            found.append(int(name))
    return found


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
