from vem3d.logs import workflow_job
from vem3d.render import mesh_pictures_from_stl

with workflow_job(snakemake.log[0]):
    mesh_pictures_from_stl(
        snakemake.params.stl,
        snakemake.output.preview,
        snakemake.output.viewer,
        preview_max_faces=snakemake.params.preview_max_faces,
        viewer_max_faces=snakemake.params.viewer_max_faces,
    )
