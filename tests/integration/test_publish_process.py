"""Publisher and the process: fork resets it, SIGTERM flushes and chains to the app's handler, exit flushes."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis

from producer import Publisher
from producer.spool import spool_files
from tests.publish_support import event, queued_event_ids

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]


def test_fork_gives_the_child_a_fresh_publisher(redis_url: str, tmp_path: Path, rconn: redis.Redis) -> None:
    pub = Publisher(
        redis_url=redis_url, mode="buffered", flush_interval=3600, spool_dir=str(tmp_path), handle_sigterm=False
    )
    try:
        for i in range(5):
            pub.publish(event(i))
        assert pub._thread is not None
        pid = os.fork()
        if pid == 0:  # the child: report through the exit code, never return into pytest
            code = 1
            try:
                ok = (
                    pub.buffered == 0  # the parent's events are the parent's to send
                    and pub._thread is None
                    and pub._conns == {}
                    and pub.pid == os.getpid()
                    and pub.counters()["published"] == 0
                )
                pub.publish(event(100))
                pub.flush(5)
                ok = ok and pub.published == 1 and pub._thread is not None and pub._thread.is_alive()
                code = 0 if ok else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        pub.flush(5)
        ids = queued_event_ids(rconn)
    finally:
        pub.close()
    assert sorted(ids) == [f"ev_pub_{i:06d}" for i in (0, 1, 2, 3, 4, 100)]


def test_fork_gives_the_child_its_own_spool_file(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    pub = Publisher(redis_url="redis://127.0.0.1:1/0", mode="direct", spool_dir=str(spool), handle_sigterm=False)
    try:
        pub.publish(event(1))
        parent_file = pub._spool.path
        assert parent_file is not None
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                fresh = pub._spool.path is None
                pub.publish(event(2))
                mine = pub._spool.path
                code = 0 if fresh and mine is not None and mine != parent_file and str(os.getpid()) in mine.name else 3
                pub.close()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        files = spool_files(spool)
        assert len(files) == 2
        assert parent_file in files
        child_file = next(f for f in files if f != parent_file)
        assert child_file.name.startswith(f"spool-{pub.destination}-{pid}-")
        assert child_file.read_text() == event(2).model_dump_json() + "\n"
        # the child's exit did not release the parent's lock: the parent's file is still its own
        with parent_file.open("rb") as fh, pytest.raises(BlockingIOError):
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        pub.publish(event(3))
        assert parent_file.read_text().splitlines() == [event(1).model_dump_json(), event(3).model_dump_json()]
    finally:
        pub.close()


SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    from tests.publish_support import event
    mode, url, spool = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "app-handler":
        def app_handler(signum, frame):
            print("app handler ran", flush=True)
            sys.exit(17)
        signal.signal(signal.SIGTERM, app_handler)
    from producer import Publisher
    kw = dict(redis_url=url, mode="buffered", flush_interval=3600, spool_dir=spool)
    if mode == "thread":
        box = []
        t = threading.Thread(target=lambda: box.append(Publisher(**kw)))
        t.start(); t.join()
        pub = box[0]
        print("handler", "ours" if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL else "default", flush=True)
    else:
        pub = Publisher(**kw)
    for i in range(20):
        pub.publish(event(i))
    print("ready", flush=True)
    if mode == "exit":
        sys.exit(0)
    time.sleep(60)
    """
)


def run_script(mode: str, redis_url: str, spool: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, mode, redis_url, str(spool)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if mode == "thread":
        assert line.strip() == "handler default"  # a publisher made off the main thread leaves signals alone
        line = proc.stdout.readline()
    assert line.strip() == "ready", proc.stderr.read() if proc.stderr else ""
    return proc


def test_sigterm_flushes_then_chains_to_the_apps_handler(redis_url: str, tmp_path: Path, rconn: redis.Redis) -> None:
    proc = run_script("app-handler", redis_url, tmp_path)
    time.sleep(0.1)
    assert queued_event_ids(rconn) == []  # buffered for an hour
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 17, err  # the app's own handler decided how the process ends
    assert "app handler ran" in out
    assert queued_event_ids(rconn) == [f"ev_pub_{i:06d}" for i in range(20)]


def test_sigterm_without_an_app_handler_still_terminates_the_process(
    redis_url: str, tmp_path: Path, rconn: redis.Redis
) -> None:
    proc = run_script("default", redis_url, tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == -signal.SIGTERM, err
    assert queued_event_ids(rconn) == [f"ev_pub_{i:06d}" for i in range(20)]


def test_interpreter_exit_flushes_the_buffer(redis_url: str, tmp_path: Path, rconn: redis.Redis) -> None:
    proc = run_script("exit", redis_url, tmp_path)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert queued_event_ids(rconn) == [f"ev_pub_{i:06d}" for i in range(20)]


def test_publisher_made_off_the_main_thread_installs_no_handler(
    redis_url: str, tmp_path: Path, rconn: redis.Redis
) -> None:
    proc = run_script("thread", redis_url, tmp_path)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=20)
    assert proc.returncode == -signal.SIGTERM
    # no handler of ours, so no flush on SIGTERM: the buffered events never left the process
    assert queued_event_ids(rconn) == []
