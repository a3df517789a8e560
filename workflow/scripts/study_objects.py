from vem3d.logs import workflow_job
from vem3d.stats import study_table

with workflow_job(snakemake.log[0]):
    study_table(snakemake.input, snakemake.params.samples, snakemake.output[0])
