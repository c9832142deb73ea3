"""Who may write into a run folder: training holds it alone, evaluations share it.

`hold(run_dir, "train")` claims RUN/.lock exclusively for as long as the block runs (a second
`train` into the folder, a `train --resume` of it, or an `eval` of it is refused), and
`hold(run_dir, "eval", shared=True)` claims it shared: several evaluations of one run may write at
once (each suite's JSON and each sample-cache entry is written atomically and is the same whoever
writes it, so two evaluations of different suites, or even of the same one, never corrupt
anything), but no training runs beside them. A process that cannot claim the folder gets one
`UserError` naming the process(es) that hold it and writes nothing.

The claim is `fcntl.flock` on RUN/.lock, taken without waiting: the kernel grants it to one
process atomically (two `train` commands started together cannot both pass) and releases it when
the holder's process ends, however it ends, so a killed run never blocks its own resume. Holders
append one JSON line each to the lock file ({"id", "pid", "host", "purpose", "since"}) for the
message of a process that is refused; a shared holder that leaves while others stay appends
{"released": id}, lines of processes that have ended are skipped, and the file is emptied by an
exclusive claim and by the last holder to leave (appends are single writes, so lines never mix).
Claims nest within one process (an evaluation may call another that claims the same folder). The
lock file stays in place (deleting a flock'ed file lets two processes lock different inodes).

flock works across the processes of one machine and, on Linux, across NFS clients (emulated with
POSIX locks); a forked child that outlives its parent keeps the parent's claim. Platforms without
`fcntl` (Windows) get a warning and no lock. This module imports nothing heavy: tests use it from
light subprocesses.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from rtdmd_bench.errors import UserError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
"""The lock file inside a run folder."""

PURPOSES = {"train": "training", "eval": "evaluating"}


@dataclass
class _Held:
    fd: int
    shared: bool
    id: str = ""
    count: int = 1


_held: dict[str, _Held] = {}  # resolved run folder -> this process's claim on it


def claim(run_dir: Path, purpose: str, shared: bool = False) -> str | None:
    """Try to claim `run_dir` (which must exist) without waiting. None when claimed (release with
    `release`); else the message for the user, with nothing written."""
    key = str(Path(run_dir).resolve())
    held = _held.get(key)
    if held is not None:
        if held.shared and not shared:  # not atomic with flock: a programming error, not a race
            raise RuntimeError(f"{run_dir}: cannot claim a run folder for {purpose} while this process evaluates it")
        held.count += 1
        return None
    if fcntl is None:
        warnings.warn(f"no fcntl on this platform: {run_dir} is not protected against a second process writing it")
        _held[key] = _Held(-1, shared)
        return None
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as e:
        raise UserError(f"could not open {path} to claim the run folder ({e.strerror}); make {run_dir} "
                        "writable") from None
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            os.close(fd)
            raise
        holders = _holders(fd)
        os.close(fd)
        return in_use_message(run_dir, holders)
    record = {"id": uuid.uuid4().hex[:12], "pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose,
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        if not shared:
            os.ftruncate(fd, 0)  # lines of earlier holders, all gone now
        _append(fd, record)
    except OSError:
        pass  # (disk full) the claim holds; a refused process then cannot name this one
    _held[key] = _Held(fd, shared, record["id"])
    return None


def release(run_dir: Path) -> None:
    """Undo one `claim` of `run_dir` by this process; the last one gives the folder up."""
    key = str(Path(run_dir).resolve())
    held = _held[key]
    held.count -= 1
    if held.count or held.fd < 0:
        if not held.count:
            del _held[key]
        return
    del _held[key]
    try:
        # The last holder (an exclusive one, or a shared one that can turn exclusive) empties the
        # file; a shared holder that cannot marks its line released.
        if not held.shared or _try(held.fd, fcntl.LOCK_EX | fcntl.LOCK_NB):
            os.ftruncate(held.fd, 0)
        else:
            _append(held.fd, {"released": held.id})
    except OSError:
        pass
    finally:
        os.close(held.fd)  # releases the flock


@contextmanager
def hold(run_dir: Path, purpose: str, shared: bool = False, claimant: bool = True,
         agree: Callable[[str | None], str | None] = lambda m: m) -> Iterator[None]:
    """`run_dir` claimed (exclusively, or `shared`) for the block; a `UserError` naming its holders
    if another process holds it. In a process group only the `claimant` (rank 0) claims, and
    `agree` (e.g. `distributed.agree`) gives every rank rank 0's outcome, so all ranks go on or all
    stop."""
    own = claim(run_dir, purpose, shared) if claimant else None
    problem = agree(own)
    if problem is not None:
        if claimant and own is None:
            release(run_dir)
        raise UserError(problem)
    try:
        yield
    finally:
        if claimant:
            release(run_dir)


def in_use_message(run_dir: Path, holders: list[dict]) -> str:
    who = ", ".join(f"process {h.get('pid')} on host {h.get('host')} "
                    f"({PURPOSES.get(h.get('purpose'), h.get('purpose'))} since {h.get('since')})"
                    for h in holders) or "another process"
    return (f"run folder {run_dir} is in use by {who}; wait until it ends (or stop it: a stopped process releases "
            "the folder) and run the command again")


def _append(fd: int, record: dict) -> None:
    os.write(fd, (json.dumps(record) + "\n").encode())  # O_APPEND: one write, never mixed with another's


def _try(fd: int, op: int) -> bool:
    try:
        fcntl.flock(fd, op)
        return True
    except OSError:
        return False


def _holders(fd: int, wait: float = 1.0) -> list[dict]:
    """The live holders recorded in the lock file. A holder writes its line just after its claim, so
    an empty file is read again for up to `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        lines = os.pread(fd, 1 << 20, 0).decode(errors="replace").splitlines()
        parsed = []
        for line in lines:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                parsed.append(rec)
        released = {rec["released"] for rec in parsed if "released" in rec}
        records = [rec for rec in parsed if "pid" in rec and rec.get("id") not in released and _alive(rec)]
        if records or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def _alive(rec: dict) -> bool:
    """False only for a process of this host that has ended (another host's cannot be checked)."""
    if rec.get("host") != socket.gethostname() or not isinstance(rec.get("pid"), int):
        return True
    try:
        os.kill(rec["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
