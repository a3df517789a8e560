from vem3d.logs import log_to
from vem3d.metrics import evaluate_folders

with log_to(snakemake.log[0]):
    evaluate_folders(
        snakemake.input.masks,
        snakemake.params.truth_dir,
        snakemake.output.scores,
        snakemake.output.objects,
    )
