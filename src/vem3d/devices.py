"""The devices the network steps run on, and a check that a GPU is there when one is required.

Slurm hands a job its GPUs through ``CUDA_VISIBLE_DEVICES``; the framework behind Keras
then has to find and use them (a CPU-only TensorFlow build, or missing CUDA libraries,
fall back to the CPU without complaint). Logging both, at the start of training and
segmentation, shows in the job's log which of the two went wrong.
"""

from __future__ import annotations

import logging
import os

import keras

from vem3d.threads import cpu_threads

log = logging.getLogger(__name__)


# Instruction-set extensions (as Linux's /proc/cpuinfo names them) on which TensorFlow
# turns on its oneDNN CPU kernels by itself: AVX-512 VNNI and BF16, and AMX.
ONEDNN_NATIVE_CPU_FLAGS = frozenset({"avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16"})


def cpu_flags(cpuinfo_path: str | os.PathLike = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's instruction-set extensions, e.g. ``{"avx2", "avx512f", ...}``; empty where
    the file is missing or lists none (not Linux, not x86)."""
    try:
        with open(cpuinfo_path) as cpuinfo:
            for line in cpuinfo:
                name, _, value = line.partition(":")
                if name.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def xla_speeds_up_inference(on_gpu: bool | None = None, flags: frozenset[str] | None = None) -> bool:
    """Whether to compile the network's forward pass with XLA on this machine.

    Always on JAX (its operations run compiled), never on PyTorch (Keras's XLA is not
    PyTorch's). On TensorFlow, on a GPU; on a CPU only where TensorFlow's oneDNN
    kernels lack the AVX-512 VNNI, BF16 or AMX instructions. Measured on 2 cores with
    the default U-Net: on AVX2 CPUs (AMD EPYC) XLA needed 1.15 times less CPU time per
    forward pass and made 16-bit precisions 1.9 to 2.4 times faster; on an AMX CPU
    (Intel Xeon, Sapphire Rapids), with two one-thread segment jobs at once, oneDNN's
    kernels were 1.3 times faster in float32 (86 against 67 GFLOP/s a job), reached
    147 GFLOP/s in bfloat16 (on AMX; XLA's bfloat16 was no faster than its float32),
    and their first forward pass took 0.6 s where XLA's compilation took 1.5 s.

    Parameters
    ----------
    on_gpu : bool, optional
        Whether the network runs on a GPU; by default, whether the Keras backend sees one.
    flags : frozenset of str, optional
        The CPU's instruction-set extensions; by default :func:`cpu_flags`.

    Returns
    -------
    bool
        True to compile with XLA (``jit_compile`` of ``keras.Model.compile``).
    """
    backend = keras.backend.backend()
    if backend != "tensorflow":
        return backend == "jax"
    if on_gpu is None:
        on_gpu = bool(visible_gpus())
    if on_gpu:
        return True
    return not (ONEDNN_NATIVE_CPU_FLAGS & (cpu_flags() if flags is None else flags))


class GPUMissingError(RuntimeError):
    """A GPU is required (config ``gpu.required``) but the Keras backend sees none."""


def visible_gpus() -> list[str]:
    """The GPUs the Keras backend sees, e.g. ``["gpu:0"]``; empty on a CPU-only machine."""
    # keras.distribution knows the devices of the TensorFlow and JAX backends: the GPUs
    # when there are any, else the CPUs, e.g. ["gpu:0"] or ["cpu:0"].
    return [device for device in keras.distribution.list_devices() if device.startswith("gpu")]


def check_devices(gpu_required: bool = False) -> list[str]:
    """Log the devices the Keras backend sees and ``CUDA_VISIBLE_DEVICES``; return the GPUs.

    Raises
    ------
    GPUMissingError
        When ``gpu_required`` and the backend sees no GPU.
    """
    devices = keras.distribution.list_devices()
    gpus = visible_gpus()
    cuda_visible_devices = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
    log.info(
        "devices: keras backend %s sees %s; CUDA_VISIBLE_DEVICES=%s; %d CPU threads",
        keras.backend.backend(),
        ", ".join(devices),
        cuda_visible_devices,
        cpu_threads(),
    )
    if gpus:
        return gpus
    if gpu_required:
        raise GPUMissingError(
            f"gpu.required is true but the keras backend {keras.backend.backend()} sees no GPU "
            f"(CUDA_VISIBLE_DEVICES={cuda_visible_devices}). On Slurm, run with "
            "--profile profiles/slurm, which requests a GPU for this step, on a partition "
            "with GPUs; check that the environment has a CUDA build of the framework "
            "(envs/tensorflow.yaml). Set gpu.required to false to run on the CPU."
        )
    log.warning("devices: no GPU visible, running on the CPU")
    return gpus
