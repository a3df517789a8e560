from vem3d.devices import check_devices
from vem3d.logs import log_to
from vem3d.segment import segment_folder
from vem3d.unet import UNetConfig

with log_to(snakemake.log[0]):
    check_devices(gpu_required=snakemake.params.gpu_required)
    segment_folder(
        snakemake.input.preprocessed,
        snakemake.input.weights,
        snakemake.output.probabilities,
        snakemake.output.masks,
        unet_config=UNetConfig(**snakemake.params.unet),
        **snakemake.params.settings,
    )
