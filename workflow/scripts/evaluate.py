from vem3d.logs import workflow_job
from vem3d.metrics import evaluate_volumes

with workflow_job(snakemake.log[0]):
    evaluate_volumes(
        snakemake.input.volume,
        truth_dir=snakemake.params.truth_dir,
        scores_path=snakemake.output.scores,
        objects_path=snakemake.output.objects,
        label_values=snakemake.params.label_values,
    )
