"""The producer's durable spool: one append-only JSONL file per process, fsync'd, replayed into Redis later.

Layout: every file in the spool directory named `spool-<dest>-<pid>-<token>.jsonl` holds one event's JSON
text per line, exactly as it would have been published; `<dest>` is a short hash of the Redis and
queue the events were meant for, so a publisher's automatic replay only takes files of its own
destination when apps aimed at different Redis servers share the default directory.

A writer creates its file under a hidden temporary name, takes an exclusive `flock` on it and only
then renames it into place, so a replayer never sees a file whose writer does not hold the lock yet.
A replayer takes each file's lock without blocking: a live writer's file is skipped, never stolen.
A file is removed only after all its events were enqueued; a replay that fails part-way leaves it
in place, and the event ids make the next replay safe. A torn last line (a crash in the middle of a
write, never fsync'd, so never accepted) is reported and skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

logger = logging.getLogger("usagebill.producer")

SPOOL_PREFIX = "spool-"
SPOOL_SUFFIX = ".jsonl"
_TMP_PREFIX = ".tmp-spool-"

#: events read from a spool file and handed to `send` at a time during a replay
REPLAY_CHUNK = 10_000

#: sends a list of event JSON texts to Redis, raising on failure (the publisher's batching enqueue)
SendFn = Callable[[Sequence[str]], None]


@dataclass
class ReplayReport:
    """What one replay did: files replayed and removed, events enqueued, lines skipped, files left."""

    files: int = 0
    events: int = 0
    torn_lines: int = 0
    bad_lines: int = 0
    locked_files: int = 0
    failed_files: int = 0
    #: events of a failed file that did reach Redis before the failure (they go again with the file)
    events_resent_later: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {
            "files": self.files,
            "events": self.events,
            "torn_lines": self.torn_lines,
            "bad_lines": self.bad_lines,
            "locked_files": self.locked_files,
            "failed_files": self.failed_files,
        }


def destination_tag(redis_url: str, queue: str) -> str:
    """A short, password-free name for where events go: host, port, db and queue."""
    try:
        parts = urlsplit(redis_url)
        where = f"{(parts.hostname or 'localhost').lower()}:{parts.port or 6379}/{parts.path.strip('/') or '0'}"
    except ValueError:  # an unparseable URL fails at connect time; its files still get a stable name
        where = redis_url
    return hashlib.sha256(f"{where}|{queue}".encode()).hexdigest()[:8]


class Spool:
    """This process's spool file: opened lazily, locked for the file's life, appended with fsync."""

    def __init__(self, directory: str | os.PathLike[str], tag: str = "any") -> None:
        self.directory = Path(directory).expanduser()
        self.tag = tag
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self.pending = 0  # events written to the current (sealed or not) files of this process

    @property
    def path(self) -> Path | None:
        """The current file, if one is open."""
        return self._path

    def append(self, texts: Sequence[str], timeout: float = -1) -> None:
        """Write the events as lines in one write, then fsync. Raises OSError if the disk refuses.

        `timeout` bounds the wait for the file (a signal handler must not wait for the very code it
        interrupted); TimeoutError when it expires.
        """
        if not texts:
            return
        data = "".join(t + "\n" for t in texts).encode()
        if not self._lock.acquire(timeout=timeout):
            raise TimeoutError("spool file busy")
        try:
            fd = self._open()
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
            self.pending += len(texts)
        finally:
            self._lock.release()

    def seal(self, timeout: float = -1) -> Path | None:
        """Close the current file (its lock goes with it) so a replay can take it; the next append starts a new one."""
        if not self._lock.acquire(timeout=timeout):
            return None
        try:
            return self._close()
        finally:
            self._lock.release()

    def close(self) -> None:
        self.seal()

    def reset_after_fork(self) -> None:
        """In a forked child: drop the parent's file without touching it (the parent keeps writing it)."""
        self._lock = threading.Lock()
        if self._fd is not None:
            # the child's copy of the descriptor shares the parent's lock; closing it keeps the lock alive
            # in the parent only, so the parent's file becomes replayable once the parent lets it go
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None
        self._path = None
        self.pending = 0

    def _open(self) -> int:
        if self._fd is not None:
            return self._fd
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"{self.tag}-{os.getpid()}-{secrets.token_hex(6)}{SPOOL_SUFFIX}"
        tmp = self.directory / f"{_TMP_PREFIX}{name}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            final = self.directory / f"{SPOOL_PREFIX}{name}"
            # renamed only once locked: a replayer can never take a file its writer has not locked yet
            os.rename(tmp, final)
            _fsync_dir(self.directory)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        self._fd, self._path = fd, final
        return fd

    def _close(self) -> Path | None:
        path = self._path
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None
        self._path = None
        return path


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def spool_files(directory: str | os.PathLike[str], tag: str | None = None) -> list[Path]:
    """The spool files in a directory (only those of one destination tag if given), oldest first."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        return []
    prefix = SPOOL_PREFIX if tag is None else f"{SPOOL_PREFIX}{tag}-"
    files = [p for p in root.iterdir() if p.name.startswith(prefix) and p.name.endswith(SPOOL_SUFFIX)]
    return sorted(files, key=_mtime)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def read_lines(data: bytes, source: str, report: ReplayReport) -> list[str]:
    """The events of one spool file's bytes; a torn last line or a line that is not JSON is reported and skipped."""
    return list(iter_lines(io.BytesIO(data), source, report))


def iter_lines(stream: BinaryIO, source: str, report: ReplayReport) -> Iterator[str]:
    """The events of a spool file, streamed; a torn last line or a line that is not JSON is reported and skipped."""
    for number, raw in enumerate(stream, start=1):
        if not raw.endswith(b"\n"):  # only the last line can lack its newline: a write cut short
            report.torn_lines += 1
            logger.warning("spool %s: torn last line (%d bytes, never fsync'd) skipped", source, len(raw))
            return
        if not raw.strip():
            continue
        try:
            text = raw[:-1].decode()
            json.loads(text)
        except ValueError as exc:
            report.bad_lines += 1
            logger.warning("spool %s line %d: not a JSON event (%s); skipped", source, number, exc)
            continue
        yield text


def _chunks(items: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[int | None]:
    """The file opened and locked without blocking; None when a live writer (or another replay) holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        # another replay may have removed it between our open and our lock
        yield fd if os.fstat(fd).st_nlink > 0 else None
    finally:
        os.close(fd)


def replay_dir(directory: str | os.PathLike[str], send: SendFn, *, tag: str | None = None) -> ReplayReport:
    """Replay every unlocked spool file in the directory (of one destination tag if given) through `send`,
    removing each once sent.

    `send` raises when Redis refuses; the file is then kept for a later replay and the replay stops
    (the other files would fail the same way).
    """
    report = ReplayReport()
    for path in spool_files(directory, tag):
        with _locked(path) as fd:
            if fd is None:
                if path.exists():
                    report.locked_files += 1
                continue
            sent = 0
            try:
                # in chunks: a long outage's file need not fit in memory
                with os.fdopen(os.dup(fd), "rb") as fh:
                    for chunk in _chunks(iter_lines(fh, path.name, report), REPLAY_CHUNK):
                        send(chunk)
                        sent += len(chunk)
            except Exception as exc:
                # the chunks already sent will be sent again by the next replay: the event ids make that safe
                report.failed_files += 1
                report.events_resent_later += sent
                report.errors.append(f"{path.name}: {exc}")
                logger.warning("spool replay of %s failed, file kept: %s", path.name, exc)
                break
            # unlinked while still locked: a replay waiting on this lock sees st_nlink == 0 and skips it
            path.unlink()
            report.files += 1
            report.events += sent
    if report.files:
        with contextlib.suppress(OSError):
            _fsync_dir(Path(directory).expanduser())
    return report
