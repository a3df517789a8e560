import gc

gc.disable()  # until workflow_job: collecting took 1 s of TensorFlow's 5 s import
from vem3d.threads import limit_cpu_threads  # noqa: E402

limit_cpu_threads(snakemake.threads)  # before the network's framework is imported

from vem3d.devices import check_devices  # noqa: E402
from vem3d.logs import workflow_job  # noqa: E402
from vem3d.train import TrainingConfig, train_from_folders  # noqa: E402
from vem3d.unet import UNetConfig  # noqa: E402

with workflow_job(snakemake.log[0]):
    check_devices(gpu_required=snakemake.params.gpu_required)
    train_from_folders(
        snakemake.input.preprocessed,
        snakemake.params.label_dirs,
        weights_path=snakemake.output.weights,
        history_path=snakemake.output.history,
        curves_path=snakemake.output.curves,
        checkpoint_dir=snakemake.params.checkpoint_dir,
        unet_config=UNetConfig(**snakemake.params.unet),
        config=TrainingConfig(**snakemake.params.training),
        initial_weights=snakemake.input.initial_weights or None,
        classes=snakemake.params.classes,
        label_values=snakemake.params.label_values,
    )
