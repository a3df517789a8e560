from vem3d.logs import log_to
from vem3d.stats import study_table

with log_to(snakemake.log[0]):
    study_table(snakemake.input, snakemake.params.samples, snakemake.output[0])
