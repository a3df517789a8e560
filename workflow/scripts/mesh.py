from vem3d.logs import workflow_job
from vem3d.mesh import mesh_volumes

with workflow_job(snakemake.log[0]):
    mesh_volumes(
        snakemake.input.volume,
        mesh_dir=snakemake.output.meshes,
        summary_path=snakemake.output.summary,
        smoothing_sigma=snakemake.params.smoothing_sigma,
        block_size=snakemake.params.block_size,
        memory_gib=snakemake.params.memory_gib,
        cache_dir=snakemake.params.cache_dir,
        max_faces=snakemake.params.max_faces,
        workers=snakemake.threads,
    )
