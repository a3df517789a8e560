from vem3d.logs import log_to
from vem3d.mesh import mesh_from_masks

with log_to(snakemake.log[0]):
    mesh_from_masks(
        snakemake.input,
        snakemake.params.voxel_size_nm,
        snakemake.output.meshes,
        snakemake.output.summary,
        class_name=snakemake.params.class_name,
        min_object_voxels=snakemake.params.min_object_voxels,
        smoothing_sigma=snakemake.params.smoothing_sigma,
        fill_cavities=snakemake.params.fill_cavities,
        block_size=snakemake.params.block_size,
        memory_gib=snakemake.params.memory_gib,
        max_faces=snakemake.params.max_faces,
    )
