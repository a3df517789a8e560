from vem3d.logs import workflow_job
from vem3d.volume import write_volumes

with workflow_job(snakemake.log[0]):
    write_volumes(
        path=snakemake.output[0],
        voxel_size_nm=snakemake.params.voxel_size_nm,
        block_size=snakemake.params.block_size,
        memory_gib=snakemake.params.memory_gib,
        workers=snakemake.threads,
        cache_dir=snakemake.params.cache_dir,
        **snakemake.params.clean_up,
    )
