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
