"""CPU threads: those of the network's framework, which it sizes once, when imported,
and pools of threads or processes that share out the work of a step."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor


def limit_cpu_threads(n_threads: int) -> None:
    """Let the Keras backend use at most ``n_threads`` CPU threads for its computations.

    Sets the variables TensorFlow (``TF_NUM_INTRAOP_THREADS``), PyTorch and other
    OpenMP code (``OMP_NUM_THREADS``) read when imported, and for a single thread the
    XLA flags that keep JAX on one (JAX has no setting for other counts). Values the
    user has set win.

    Parameters
    ----------
    n_threads : int
        At least 1; the CPU cores a job was given (Snakemake's ``threads``).

    Raises
    ------
    RuntimeError
        If Keras is already imported, when this could no longer take effect.
    """
    if n_threads < 1:
        raise ValueError(f"n_threads must be at least 1, got {n_threads}")
    if "keras" in sys.modules:
        raise RuntimeError("limit_cpu_threads must be called before keras is imported")
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(n_threads))
    os.environ.setdefault("OMP_NUM_THREADS", str(n_threads))
    if n_threads == 1 and "XLA_FLAGS" not in os.environ:
        os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def cpu_threads() -> int:
    """CPU threads the Keras backend computes with: the limit set (:func:`limit_cpu_threads`
    or ``TF_NUM_INTRAOP_THREADS``), else the cores this process may run on."""
    limit = os.environ.get("TF_NUM_INTRAOP_THREADS", "")
    return int(limit) if limit.isdigit() and int(limit) > 0 else len(os.sched_getaffinity(0))


def map_ahead(function: Callable, items: Iterable, workers: int) -> Iterator:
    """``map(function, items)`` computed by ``workers`` threads, results in order.

    At most ``2 * workers`` items are taken ahead of the result last yielded, which
    bounds memory. For NumPy, SciPy and image-codec work, which releases the GIL (PNG
    encoding by Pillow ran 1.85 times faster on 2 threads than on 1). An error raised
    by ``function`` is raised here, in its item's place, after the items under way end.
    """
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from ordered_results((pool.submit(function, item) for item in items), ahead=2 * workers)


def ordered_results(futures: Iterable[Future], ahead: int) -> Iterator:
    """The results of ``futures`` in their order, taking at most ``ahead`` futures
    beyond the one whose result is awaited (those submit the next work)."""
    pending = deque()
    for future in futures:
        pending.append(future)
        if len(pending) > ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


@contextlib.contextmanager
def process_pool(workers: int) -> Iterator[Callable[..., Future]]:
    """A ``submit(function, *arguments) -> Future`` that runs in ``workers`` processes;
    with one worker, in this process, at once.

    For work that holds the GIL (scikit-image's marching cubes), which threads would
    only take turns at. Forked: a worker needs nothing but its arguments (module-level
    functions and arrays), and a spawned one would run the calling script again (the
    workflow's scripts have no main guard).
    """
    if workers <= 1:
        yield run_now
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        yield pool.submit


def run_now(function: Callable, *arguments) -> Future:
    """``function(*arguments)`` called now, its result or error in a future, as a pool's
    ``submit`` would give them: the ``submit`` of :func:`process_pool` with one worker."""
    future = Future()
    try:
        future.set_result(function(*arguments))
    except Exception as error:  # noqa: BLE001 -- raised where its result is asked for
        future.set_exception(error)
    return future


def finished(value) -> Future:
    """A future that already holds ``value``: a result at hand among results computed elsewhere."""
    future = Future()
    future.set_result(value)
    return future


# Device files of the NVIDIA and AMD (ROCm) GPU drivers.
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/kfd")


def gpu_device_present() -> bool:
    """Whether this machine has a GPU driver's device file: a check for planning jobs that
    does not import a framework (which takes seconds)."""
    return any(os.path.exists(path) for path in GPU_DEVICE_FILES)
