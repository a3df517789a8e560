import gc

gc.disable()  # until workflow_job: collecting took 1 s of TensorFlow's 5 s import
from vem3d.threads import limit_cpu_threads  # noqa: E402

limit_cpu_threads(snakemake.threads)  # before the network's framework is imported

from vem3d.devices import check_devices  # noqa: E402
from vem3d.logs import workflow_job  # noqa: E402
from vem3d.segment import segment_folder  # noqa: E402
from vem3d.unet import UNetConfig  # noqa: E402

with workflow_job(snakemake.log[0]):
    check_devices(gpu_required=snakemake.params.gpu_required)
    segment_folder(
        snakemake.input.preprocessed,
        snakemake.input.weights,
        snakemake.output.probabilities,
        snakemake.output.masks,
        unet_config=UNetConfig(**snakemake.params.unet),
        cache_dir=snakemake.params.cache_dir,
        **snakemake.params.settings,
    )
