rule evaluate:
    input:
        volume="results/{sample}/volume.zarr",
        ground_truth=lambda wildcards: label_files(wildcards.sample, "ground_truth"),
    output:
        scores=report(
            "results/{sample}/evaluation/scores.tsv",
            caption="../report/scores.rst",
            category="Evaluation",
            subcategory="{sample}",
        ),
        objects=report(
            "results/{sample}/evaluation/object_scores.tsv",
            caption="../report/object_scores.rst",
            category="Evaluation",
            subcategory="{sample}",
        ),
    log:
        "logs/{sample}/evaluate.log",
    benchmark:
        "results/benchmarks/{sample}/evaluate.tsv"
    conda:
        "../../envs/imaging.yaml"
    params:
        truth_dir=lambda wildcards: samples.loc[wildcards.sample, "ground_truth"],
        label_values=config["model"]["label_values"],
    script:
        "../scripts/evaluate.py"


onsuccess:
    for sample in samples.index:
        scores = Path(f"results/{sample}/evaluation/scores.tsv")
        if scores.is_file():
            table = pd.read_csv(scores, sep="\t")
            objects = pd.read_csv(
                scores.with_name("object_scores.tsv"), sep="\t"
            ).set_index("class")
            for volume in table[table["slice"] == "volume"].to_dict("records"):
                print(
                    f"vem3d: {sample}: {volume['class']}: Dice {volume['dice']:.4f}, "
                    f"IoU {volume['iou']:.4f}, object F1 "
                    f"{objects.loc[volume['class'], 'object_f1']:.4f} against ground truth ({scores})"
                )
