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


# A job writing a file atomically, stopped by SIGTERM (Slurm's time limit, scancel)
# while it writes.
TERMINATED_JOB = """
import sys, time
from pathlib import Path
from vem3d.atomic import write_atomically
from vem3d.logs import workflow_job

def save(temporary):
    Path(temporary).write_text("half")
    print("writing", flush=True)
    time.sleep(60)

with workflow_job(sys.argv[1]):
    write_atomically(Path(sys.argv[2]) / "result.txt", save)
"""


def test_a_terminated_job_removes_what_it_was_writing(tmp_path):
    job = subprocess.Popen(
        [sys.executable, "-c", TERMINATED_JOB, str(tmp_path / "job.log"), str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )
    assert job.stdout.readline() == "writing\n"
    job.terminate()
    assert job.wait(timeout=30) == 143  # 128 + SIGTERM, as a shell reports it
    assert sorted(path.name for path in tmp_path.iterdir()) == ["job.log"]  # no .partial-* left
