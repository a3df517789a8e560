from vem3d.logs import workflow_job
from vem3d.render import mesh_viewer_from_stl

with workflow_job(snakemake.log[0]):
    mesh_viewer_from_stl(
        snakemake.params.stl, snakemake.output[0], max_faces=snakemake.params.max_faces
    )
