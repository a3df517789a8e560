from vem3d.logs import workflow_job
from vem3d.render import render_mesh_preview

with workflow_job(snakemake.log[0]):
    render_mesh_preview(
        snakemake.params.stl, snakemake.output[0], max_faces=snakemake.params.max_faces
    )
