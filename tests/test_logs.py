import subprocess
import sys

# A workflow script's shape: imports with the collector off, then the job. Run in a
# fresh process: workflow_job freezes what exists, which a test process must not.
JOB = """
import gc, sys, weakref
gc.disable()
from vem3d.logs import workflow_job

class Node:
    pass

with workflow_job(sys.argv[1]) as log:
    node = Node()
    node.itself = node  # a cycle: only the collector frees it
    freed = weakref.ref(node)
    del node
    kept = [[] for _ in range(10_000)]  # allocations that set off the collector
    log.info("collected: %s", freed() is None)
    raise ValueError("slice 7 is empty")
"""


def test_a_workflow_job_logs_its_error_and_collects_the_garbage_it_makes(tmp_path):
    log_path = tmp_path / "job.log"
    result = subprocess.run([sys.executable, "-c", JOB, str(log_path)], capture_output=True, text=True)
    assert result.returncode != 0
    log = log_path.read_text()
    # Segment jobs run for minutes after their imports: their cycles must not pile up.
    assert "collected: True" in log
    assert "ValueError: slice 7 is empty" in log
