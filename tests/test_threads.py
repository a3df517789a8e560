import os
import subprocess
import sys
import time

import pytest

from vem3d.threads import map_ahead, ordered_results, process_pool

# CPU seconds per wall second of a run of large matrix products, in a fresh process.
BUSY_CORES = """
import os, time
{limit}
import keras, numpy as np
x = keras.ops.convert_to_tensor(np.ones((1024, 1024), np.float32))
keras.ops.matmul(x, x)
started, cpu = time.perf_counter(), os.times()
for _ in range(40):
    y = keras.ops.matmul(x, x)
float(keras.ops.sum(y))
now = os.times()
print((now.user + now.system - cpu.user - cpu.system) / (time.perf_counter() - started))
"""


def _busy_cores(limit: str) -> float:
    environment = {key: value for key, value in os.environ.items() if key not in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS")}
    environment["KERAS_BACKEND"] = "tensorflow"
    code = BUSY_CORES.format(limit=limit)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, check=True)
    return float(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores to tell 1 thread from several")
def test_tensorflow_keeps_to_the_thread_limit_set_before_keras_is_imported():
    assert _busy_cores("from vem3d.threads import limit_cpu_threads; limit_cpu_threads(1)") < 1.15


def test_a_thread_limit_after_keras_is_imported_is_refused():
    import keras  # noqa: F401

    from vem3d.threads import limit_cpu_threads

    with pytest.raises(RuntimeError, match="before keras is imported"):
        limit_cpu_threads(1)


def test_map_ahead_keeps_order_and_takes_few_items_ahead():
    taken = []

    def items():
        for index in range(40):
            taken.append(index)
            yield index

    def slow_square(index):
        time.sleep(0.01 * (index % 3))  # finish out of order
        return index * index

    results = map_ahead(slow_square, items(), workers=3)
    assert [next(results) for _ in range(5)] == [0, 1, 4, 9, 16]
    assert len(taken) <= 5 + 2 * 3  # yielded, and at most 2 * workers ahead
    assert list(results) == [index * index for index in range(5, 40)]


def test_map_ahead_raises_an_items_error_in_its_place():
    def failing(index):
        if index == 3:
            raise OSError("slice 3: disk full")
        return index

    results = map_ahead(failing, range(10), workers=2)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(OSError, match="slice 3: disk full"):
        next(results)


def _fails_at_three(index):
    # At module level, so that worker processes find it by name.
    if index == 3:
        raise ValueError("block 3: unreadable")
    return index * index


@pytest.mark.parametrize("workers", [1, 2])  # in this process, in worker processes
def test_process_pool_results_come_in_order_and_an_error_in_its_place(workers):
    with process_pool(workers) as submit:
        results = ordered_results((submit(_fails_at_three, index) for index in range(8)), ahead=4)
        assert [next(results) for _ in range(3)] == [0, 1, 4]
        with pytest.raises(ValueError, match="block 3: unreadable"):
            next(results)
