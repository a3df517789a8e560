from vem3d.logs import workflow_job
from vem3d.stats import statistics_from_volumes

with workflow_job(snakemake.log[0]):
    statistics_from_volumes(
        snakemake.input.volume,
        objects_path=snakemake.output.objects,
        summary_path=snakemake.output.summary,
        smoothing_sigma=snakemake.params.smoothing_sigma,
        block_size=snakemake.params.block_size,
        memory_gib=snakemake.params.memory_gib,
        cache_dir=snakemake.params.cache_dir,
        workers=snakemake.threads,
    )
