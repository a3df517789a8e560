# One job for both pictures: made apart, each read the whole STL, half of a job's time.
rule mesh_pictures:
    input:
        "results/{sample}/meshes",
    output:
        preview=report(
            "results/{sample}/mesh_preview/{class_name}.png",
            caption="../report/mesh_preview.rst",
            category="Meshes",
            subcategory="{sample}",
        ),
        viewer=report(
            "results/{sample}/mesh_viewer/{class_name}.html",
            caption="../report/mesh_viewer.rst",
            category="Meshes",
            subcategory="{sample}",
        ),
    log:
        "logs/{sample}/mesh_pictures/{class_name}.log",
    benchmark:
        "results/benchmarks/{sample}/mesh_pictures/{class_name}.tsv"
    # Before the montage, which can start as soon as the masks are there.
    priority: 1
    conda:
        "../../envs/imaging.yaml"
    params:
        stl=lambda wildcards, input: f"{input[0]}/{wildcards.class_name}.stl",
        preview_max_faces=config["report"]["preview_max_faces"],
        viewer_max_faces=config["report"]["viewer_max_faces"],
    script:
        "../scripts/mesh_pictures.py"


rule montage:
    input:
        slices=lambda wildcards: slice_files(
            wildcards.sample, SLICE_NAMES[wildcards.sample]
        ),
        masks=lambda wildcards: class_chunk_dirs(wildcards.sample, "masks")[
            wildcards.class_name
        ],
        references=get_montage_references,
    output:
        report(
            "results/{sample}/montage/{class_name}.png",
            caption="../report/montage.rst",
            category="Segmentation",
            subcategory="{sample}",
        ),
    log:
        "logs/{sample}/montage/{class_name}.log",
    benchmark:
        "results/benchmarks/{sample}/montage/{class_name}.tsv"
    conda:
        "../../envs/imaging.yaml"
    params:
        source=lambda wildcards: samples.loc[wildcards.sample, "slices"],
        reference=montage_reference_params,
        n_panels=config["report"]["montage_slices"],
        classes=CLASSES,
        label_values=config["model"]["label_values"],
    script:
        "../scripts/montage.py"
