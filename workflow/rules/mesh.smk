rule mesh:
    input:
        chunk_dirs("masks"),
    output:
        meshes=directory("results/{sample}/meshes"),
        summary=report(
            "results/{sample}/mesh_summary.tsv",
            caption="../report/mesh_summary.rst",
            category="Meshes",
            subcategory="{sample}",
        ),
    log:
        "logs/{sample}/mesh.log",
    benchmark:
        "results/benchmarks/{sample}/mesh.tsv"
    conda:
        "../../envs/imaging.yaml"
    params:
        voxel_size_nm=lambda wildcards: voxel_size_nm(wildcards.sample),
        class_name=config["model"]["class_name"],
        min_object_voxels=config["mesh"]["min_object_voxels"],
        smoothing_sigma=config["mesh"]["smoothing_sigma"],
        fill_cavities=config["mesh"]["fill_cavities"],
        block_size=config["mesh"]["block_size"],
        memory_gib=config["mesh"]["memory_gib"],
        max_faces=config["mesh"]["max_faces"] or 0,
    script:
        "../scripts/mesh.py"
