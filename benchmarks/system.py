"""The machine side of the benchmarks: Debian tools, CPU pinning, server processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"wrk": "wrk", "nginx": "nginx"}  # binary -> Debian package
SBIN = "/usr/local/sbin:/usr/sbin:/sbin"
STOP_SECONDS = 15.0


def find_binary(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=SBIN)


def ensure_packages() -> None:
    """Install wrk and nginx with apt-get when they are missing."""
    missing = [pkg for binary, pkg in PACKAGES.items() if find_binary(binary) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"bench: please install {' '.join(missing)} (apt-get needs root)")
    print(f"bench: installing {' '.join(missing)} with apt-get", flush=True)
    apt_get("update", "-q")
    apt_get("install", "-y", "-q", "--no-install-recommends", *missing)


def apt_get(*args: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", *args], env=env, check=True, stdout=subprocess.DEVNULL)


def cores() -> set[int]:
    return os.sched_getaffinity(0)


def pinned(core: int, argv: Sequence[str]) -> list[str]:
    """``argv`` run under ``taskset -c core`` when that core exists, else unpinned."""
    if core in cores() and len(cores()) > 1:
        return ["taskset", "-c", str(core), *argv]
    return list(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def git_describe() -> str:
    """The commit of the checkout, with ``+dirty`` when files differ from it."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(proc: subprocess.Popen[bytes], url: str, name: str, timeout: float = 60.0) -> None:
    """Wait until ``url`` answers anything over HTTP; raise if the process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} before it was ready")
        with contextlib.suppress(OSError):
            http_get(url, timeout=1.0)
            return
        time.sleep(0.1)
    raise RuntimeError(f"{name} did not answer {url} within {timeout:.0f} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group this harness started, then SIGKILL it if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group (e.g. worker processes)


@contextlib.contextmanager
def server(
    name: str,
    argv: Sequence[str],
    *,
    ready_url: str,
    log: Path,
    env: Mapping[str, str] | None = None,
    core: int = 1,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server pinned to ``core`` in its own session; always stopped on exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            pinned(core, argv),
            cwd=ROOT,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_ready(proc, ready_url, name)
            yield proc
        finally:
            stop(proc)
