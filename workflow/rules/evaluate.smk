rule evaluate:
    input:
        masks=chunk_dirs("masks"),
        ground_truth=lambda wildcards: label_files(wildcards.sample, "ground_truth"),
    output:
        report(
            "results/{sample}/evaluation/scores.tsv",
            caption="../report/scores.rst",
            category="Evaluation",
            subcategory="{sample}",
        ),
    log:
        "logs/{sample}/evaluate.log",
    conda:
        "../../envs/imaging.yaml"
    params:
        truth_dir=lambda wildcards: samples.loc[wildcards.sample, "ground_truth"],
    script:
        "../scripts/evaluate.py"


onsuccess:
    for sample in samples.index:
        scores = Path(f"results/{sample}/evaluation/scores.tsv")
        if scores.is_file():
            volume = pd.read_csv(scores, sep="\t").iloc[-1]
            print(
                f"vem3d: {sample}: Dice {volume['dice']:.4f}, IoU {volume['iou']:.4f} "
                f"against ground truth ({scores})"
            )
