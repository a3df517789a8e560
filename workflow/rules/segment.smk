rule segment:
    input:
        preprocessed="results/{sample}/preprocessed/{chunk}",
        weights=WEIGHTS,
    output:
        probabilities=[
            directory(f"results/{{sample}}/probabilities/{name}/{{chunk}}")
            for name in CLASSES
        ],
        masks=[
            directory(f"results/{{sample}}/masks/{name}/{{chunk}}") for name in CLASSES
        ],
    log:
        "logs/{sample}/segment/{chunk}.log",
    benchmark:
        "results/benchmarks/{sample}/segment/{chunk}.tsv"
    conda:
        "../../envs/tensorflow.yaml"
    threads: segment_threads
    params:
        unet=unet_settings(),
        gpu_required=config["gpu"]["required"],
        settings=config["segment"],
        # Earlier results of slices that did not change (vem3d.segment.SliceCache).
        cache_dir=lambda wildcards: f"results/{wildcards.sample}/segment_cache",
    script:
        "../scripts/segment.py"
