from vem3d.logs import workflow_job
from vem3d.preprocess import preprocess_stack

with workflow_job(snakemake.log[0]):
    preprocess_stack(
        snakemake.params.source,
        snakemake.params.names,
        snakemake.output[0],
        reference_name=snakemake.params.reference_name,
        **snakemake.params.settings,
    )
