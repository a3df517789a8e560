"""Logging set-up shared by the command line and the workflow scripts, and the workflow jobs' process set-up."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import signal
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3


@contextlib.contextmanager
def log_to(path: str | os.PathLike | None = None, level: int = logging.INFO):
    """Send vem3d's log records (and uncaught errors) to a file, or to stderr when ``path`` is None.

    Errors raised inside the block are logged with their traceback before they
    propagate, so a failed Snakemake job's log says what went wrong.
    """
    handler = logging.FileHandler(path, mode="w") if path else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    logger = logging.getLogger("vem3d")
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield logger
    except Exception:
        logger.exception("failed")
        raise
    finally:
        logger.removeHandler(handler)
        handler.close()


@contextlib.contextmanager
def workflow_job(log_path: str | os.PathLike):
    """The body of a workflow script: one Snakemake job, which its process ends with, logged to ``log_path``.

    Logs as :func:`log_to`. First, the objects alive (mostly what the imports made:
    440 000 of them once Keras and TensorFlow are imported) are moved out of the
    garbage collector's way for good (``gc.freeze``). Python would otherwise walk them
    all once more as the process ends: 1.2 s of each segment job's 18 s on a 2-core
    CPU, 0.3 s of the other jobs. Objects made inside the job are collected as usual:
    the collector is enabled again, for scripts that disable it while they import.
    The allocator then keeps what the job frees (:func:`keep_freed_memory`).
    Not for a process that goes on after the block (a test, a notebook): what it had
    made before would not be collected any more.
    """
    gc.freeze()
    gc.enable()
    keep_freed_memory()
    exit_cleanly_on_terminate()
    with log_to(log_path) as logger:
        yield logger


def exit_cleanly_on_terminate() -> None:
    """Make SIGTERM (a cancelled or timed-out Slurm job, a stopped Snakemake run) end this
    process as an error raised where it was, instead of at once.

    The writers' clean-up then runs: temporary files and folders beside the outputs
    are removed, and what was finished stays. Call from the main thread.
    """

    def terminate(signal_number, frame):
        raise SystemExit(128 + signal_number)

    signal.signal(signal.SIGTERM, terminate)


def keep_freed_memory() -> None:
    """Have this process's allocator reuse the memory it frees instead of returning it to the system.

    By default glibc hands an allocation of more than 128 KiB (up to 32 MiB, as it
    adapts) back to the kernel when it is freed, and the next one of that size is
    page-faulted in again, zeroed. A step that works block by block frees and
    allocates such buffers for every block: the mesh step of a 256 x 1024 x 1024
    volume took 537 000 page faults and 2.1-2.4 s of system time with the allocator's
    defaults, 44 000 and 1.0-1.6 s with these settings (11.0-12.6 s in all against
    11.8-13.3 s, on a 2-core virtual machine).
    So allocations below 32 MiB stay on the heap, and up to 1 GiB of freed heap is
    kept for reuse; larger arrays (whole volumes) are still given back when freed,
    so that peak memory stays that of the data alive. Freed memory is returned when
    the process ends, which for a workflow job is soon. Does nothing where the C
    library is not glibc.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    for parameter, value in ((M_MMAP_THRESHOLD, 32 * 2**20), (M_TRIM_THRESHOLD, 2**30), (M_TOP_PAD, 64 * 2**20)):
        mallopt(parameter, value)
