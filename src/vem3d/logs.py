"""Logging set-up shared by the command line and the workflow scripts."""

from __future__ import annotations

import contextlib
import logging
import os
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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
