"""The workdir: checked writable before anything runs, and one training per workdir.

`ensure_writable_directory` fails at start (not after hours of training or sampling) when a
folder a program will write is a file or cannot be written.

`WorkdirLock` is an exclusive lock on `<workdir>/training.lock`, the kernel's (`fcntl.flock`),
held by the open file: the process releases it on any exit, kill -9 included, so a lock is
never stale. The file keeps the holder's host, pid, start time and command for the message a
second run prints. Only process 0 of a multi-process run takes it. Remote workdirs (`gs://...`)
and file systems without flock (some NFS mounts) are not locked; a warning says so.
"""
import errno
import fcntl
import os
import socket
import sys
import time

import jax
from absl import logging

from marjax.errors import ConfigError, WorkdirInUse

LOCK_FILE = "training.lock"


def ensure_writable_directory(path: str, what: str) -> None:
    """ConfigError naming `what` (e.g. "--workdir") when `path` is a file or cannot be written (it,
    or the nearest folder above it that exists, when it does not yet exist). Creates nothing.
    Remote paths (gs://...) are left to their writers."""
    if "://" in path:
        return
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{what}: {path} is a file, not a directory")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"{what}: cannot create {path}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}: {existing} is not writable, so {path} cannot be written")


class WorkdirLock:
    """`with WorkdirLock(workdir):` trains alone in `workdir`, or raises WorkdirInUse naming the holder."""

    def __init__(self, workdir: str):
        self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
        self._file = None

    def __enter__(self) -> "WorkdirLock":
        if "://" in self.path or jax.process_index() != 0:
            return self
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            handle.seek(0)
            holder = handle.read().strip() or "an unknown process"
            handle.close()
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise WorkdirInUse(f"{os.path.dirname(self.path)} is in use by another training ({holder}); "
                                   f"wait for it, stop it, or choose another --workdir") from e
            logging.warning("cannot lock %s (%s): two trainings on this workdir would not be refused", self.path, e)
            return self
        handle.truncate(0)
        handle.write(f"host {socket.gethostname()}, pid {os.getpid()}, since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}, command: {' '.join(sys.argv)}\n")
        handle.flush()
        self._file = handle
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()  # releases the lock; the file stays, its text is only a description
            self._file = None
