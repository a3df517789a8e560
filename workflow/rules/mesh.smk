rule mesh:
    input:
        volume="results/{sample}/volume.zarr",
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
    # Before the montage, which only provenance waits for: the pictures and tables wait for this.
    priority: 1
    conda:
        "../../envs/imaging.yaml"
    threads: surface_threads
    params:
        smoothing_sigma=config["mesh"]["smoothing_sigma"],
        block_size=config["mesh"]["block_size"],
        memory_gib=config["mesh"]["memory_gib"],
        max_faces=config["mesh"]["max_faces"] or 0,
        # Block meshes of the last run, reused where a block's voxels did not change.
        cache_dir=lambda wildcards: f"results/{wildcards.sample}/mesh_cache",
    script:
        "../scripts/mesh.py"
