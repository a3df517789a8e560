"""The workflow on a real single-node Slurm, through profiles/slurm.

The module starts a Slurm of its own (munged, slurmctld, slurmd; state in a temporary
folder, ports of its own) with one fake GPU (a gres on a character device), so that
Slurm gives the jobs that ask for a GPU ``CUDA_VISIBLE_DEVICES`` as on a GPU node. Its
configuration goes to /etc/slurm for the time of the tests, because the executor's
job step runs srun without SLURM_CONF; a machine with a Slurm configuration of its own
is left alone (the tests skip). They need root; Slurm is installed by
tests/slurm/setup.sh (.ci/run calls it; the tests call it too when Slurm is missing and
they can). They skip, saying why, only where Slurm cannot be installed or configured.
"""

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from test_workflow import (
    DEMO_ROW,
    EVERYTHING_FOREGROUND,
    ROOT,
    check_tiny_demo_outputs,
    make_project,
    own_stack,
    row,
    snakemake,
)

pytestmark = pytest.mark.slow

PROFILE = str(ROOT / "profiles" / "slurm")
SETUP_SCRIPT = Path(__file__).parent / "slurm" / "setup.sh"
SLURM_PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo")
GPU_RULES = ("segment", "train")
SLURM_CONFIG_DIR = Path("/etc/slurm")
# First line of the configuration files the tests write, which tells them from a site's.
OWN_CONFIG_MARK = "# written by vem3d tests/test_slurm.py, removed when they end\n"

# Test-only settings on top of the profile: two jobs at a time (the test machine may
# have two cores), and job states from squeue because sacct needs slurmdbd, which this
# Slurm does without.
TEST_OVERRIDES = (
    "--jobs", "2",
    "--slurm-status-command", "squeue",
    "--slurm-init-seconds-before-status-checks", "2",
)  # fmt: skip


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def slurm_config(state, host):
    """slurm.conf of a one-node cluster whose node has one GPU.

    The node claims 8 CPUs and 32 GB (config_overrides: slurmd does not check them
    against the machine) so that the profile's requests fit unchanged; nothing is
    enforced (no cgroups), the jobs just share the real cores.
    """
    return f"""{OWN_CONFIG_MARK}\
ClusterName=vem3dtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={state}/munge.socket
SlurmUser=root
StateSaveLocation={state}/slurmctld
SlurmdSpoolDir={state}/slurmd
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
MinJobAge=600
DefMemPerCPU=1000
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName={host} NodeAddr=127.0.0.1 CPUs=8 RealMemory=32000 Gres=gpu:1 State=UNKNOWN
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def why_slurm_is_unavailable():
    """Install Slurm when it is missing and can be; None when it is there, else why not."""
    if os.geteuid() != 0:
        return "running the test Slurm (slurmd) needs root"
    if all(shutil.which(program) for program in SLURM_PROGRAMS):
        return None
    if shutil.which("apt-get") is None:
        return f"Slurm is not installed and there is no apt-get to install it ({SETUP_SCRIPT})"
    result = subprocess.run([SETUP_SCRIPT], capture_output=True, text=True)
    if result.returncode != 0:
        return f"installing Slurm with {SETUP_SCRIPT} failed: {result.stderr[-2000:]}"
    return None


def why_slurm_cannot_be_configured():
    """None when the tests may write /etc/slurm/{slurm,gres}.conf, else why not."""
    for name in ("slurm.conf", "gres.conf"):
        path = SLURM_CONFIG_DIR / name
        if path.exists() and not path.read_text().startswith(OWN_CONFIG_MARK):
            return f"this machine has a Slurm configuration of its own ({path}), which the tests leave alone"
    return None


def wait_for(condition, what, state, daemons, timeout=30):
    """Wait until condition() holds; fail with the daemons' logs when one exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline or any(daemon.poll() is not None for daemon in daemons):
            logs = "\n".join(f"--- {path.name}\n{path.read_text()[-3000:]}" for path in state.glob("*.log"))
            pytest.fail(f"test Slurm: {what}\n{logs}")
        time.sleep(0.2)


def node_is_idle():
    states = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True)
    return states.stdout.strip() == "idle"


def configure_slurm(state):
    """Write the munge key, the fake GPU and /etc/slurm/{slurm,gres}.conf."""
    host = socket.gethostname().split(".")[0]  # what slurmd takes as its node name
    for folder in ("slurmctld", "slurmd"):
        (state / folder).mkdir()
    (state / "munge.key").write_bytes(os.urandom(1024))
    (state / "munge.key").chmod(0o600)
    os.mknod(state / "fakegpu0", 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a character device, like /dev/null
    SLURM_CONFIG_DIR.mkdir(exist_ok=True)
    (SLURM_CONFIG_DIR / "gres.conf").write_text(
        f"{OWN_CONFIG_MARK}AutoDetect=off\nNodeName={host} Name=gpu File={state}/fakegpu0\n"
    )
    (SLURM_CONFIG_DIR / "slurm.conf").write_text(slurm_config(state, host))


@pytest.fixture(scope="module")
def slurm():
    """A running one-node Slurm with a fake GPU, yielding the folder of its state and logs."""
    reason = why_slurm_is_unavailable() or why_slurm_cannot_be_configured()
    if reason:
        pytest.skip(reason)
    state = Path(tempfile.mkdtemp(prefix="vem3d-slurm-"))
    state.chmod(0o755)  # munged wants the folder of its socket open to all
    daemons = []
    try:
        with pytest.MonkeyPatch.context() as environment:
            # Slurm's commands find this Slurm (not one SLURM_CONF names), and jobs get
            # CUDA_VISIBLE_DEVICES only where Slurm sets it.
            environment.delenv("SLURM_CONF", raising=False)
            environment.delenv("CUDA_VISIBLE_DEVICES", raising=False)
            configure_slurm(state)
            for name, command in (
                ("munged", ["munged", "--foreground", f"--socket={state}/munge.socket", f"--key-file={state}/munge.key",
                            f"--pid-file={state}/munged.pid", f"--seed-file={state}/munged.seed"]),
                ("slurmctld", ["slurmctld", "-D"]),
                ("slurmd", ["slurmd", "-D"]),
            ):  # fmt: skip
                with (state / f"{name}.log").open("w") as log:
                    daemons.append(
                        subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                    )
                if name == "munged":
                    wait_for((state / "munge.socket").exists, "munged did not start", state, daemons)
            wait_for(node_is_idle, "the node did not come up", state, daemons)
            yield state
    finally:
        for daemon in reversed(daemons):
            os.killpg(daemon.pid, signal.SIGTERM)
            daemon.wait(timeout=30)
        shutil.rmtree(state)
        for name in ("slurm.conf", "gres.conf"):
            (SLURM_CONFIG_DIR / name).unlink(missing_ok=True)


def slurm_job_fields(project):
    """Slurm's record of each job that ran in a project folder (scontrol's fields).

    Finished jobs stay in slurmctld's memory for MinJobAge seconds.
    """
    listing = subprocess.run(["scontrol", "show", "job", "--details", "--oneliner"], capture_output=True, text=True, check=True)
    records = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in listing.stdout.splitlines()]
    return [fields for fields in records if fields.get("WorkDir") == str(project)]


def slurm_jobs(project):
    """The jobs that ran in a project folder, as (rule, state, allocated gres)."""
    jobs = []
    for fields in slurm_job_fields(project):
        # The executor plugin names the rule in the comment: rule_NAME[_wildcards_...].
        rule = fields["Comment"].removeprefix("rule_").split("_wildcards_")[0]
        jobs.append((rule, fields["JobState"], fields["JOB_GRES"]))
    return sorted(jobs)


def test_demo_runs_on_slurm_with_a_gpu_for_the_network_steps(slurm, tmp_path):
    project = make_project(tmp_path, **EVERYTHING_FOREGROUND)
    result = snakemake(project, "--profile", PROFILE, *TEST_OVERRIDES)
    assert result.returncode == 0, result.stderr[-3000:]
    check_tiny_demo_outputs(project, result)
    jobs = slurm_jobs(project)
    # One Slurm job per step and chunk (8 slices in chunks of 4), not per slice.
    assert [rule for rule, _, _ in jobs] == [
        "evaluate", "mesh", "mesh_pictures", "montage", "object_statistics", "preprocess",
        "preprocess", "provenance", "segment", "segment", "study_objects", "synthesise_demo", "train", "volume",
    ]  # fmt: skip
    for rule, job_state, gres in jobs:
        assert job_state == "COMPLETED", rule
        assert gres == ("gpu:1" if rule in GPU_RULES else "(null)"), rule
    # The network steps saw the GPU Slurm gave them (a fake one: Keras finds no GPU on it).
    for log in [project / "logs/train.log", *project.glob("logs/demo/segment/chunk*.log")]:
        assert "; CUDA_VISIBLE_DEVICES=0;" in log.read_text(), log


def test_failing_job_is_retried_then_reported_failed(slurm, tmp_path):
    stack = own_stack(tmp_path)
    (stack / "img2.png").write_bytes(b"")
    project = make_project(tmp_path, rows=(DEMO_ROW, row("own", stack)))
    result = snakemake(project, "--profile", PROFILE, *TEST_OVERRIDES, "results/own/preprocessed/chunk0000")
    assert result.returncode != 0
    # The profile's one retry: two attempts, both failed in Slurm.
    assert [(rule, job_state) for rule, job_state, _ in slurm_jobs(project)] == [("preprocess", "FAILED")] * 2
    # The retry asks for twice the memory and time: a job killed for either would fail again.
    limits = sorted((int(fields["JobId"]), fields["MinMemoryNode"], fields["TimeLimit"]) for fields in slurm_job_fields(project))
    assert [limit[1:] for limit in limits] == [("4000M", "01:00:00"), ("8000M", "02:00:00")]
    output = result.stdout + result.stderr
    assert "Trying to restart job" in output and "Error in rule preprocess" in output
    assert "img2.png: slice file is empty" in (project / "logs/own/preprocess/chunk0000.log").read_text()
