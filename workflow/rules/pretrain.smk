# Stage 1: train the tiny backbone from scratch (only for backbones whose config has `pretrain`).


def pretrain_flags(wc):
    dataset, s = GRID.pretrain_settings(wc.backbone)
    return " ".join([flags(backbone=config["backbones"][wc.backbone]["timm"], dataset=dataset), s.cli_args(),
                     common_flags(dataset, config["seeds"][0], "pretrain")])


rule pretrain_backbone:
    output: run_path(layout.BACKBONE)
    log: job_log("pretrain", layout.BACKBONE)
    benchmark: job_benchmark("pretrain", layout.BACKBONE)
    params:
        launch=launch("pretrain"),
        args=pretrain_flags,
    threads: threads("pretrain")
    resources: **res("pretrain")
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} pretrain-backbone {params.args} --out {output} > {log} 2>&1"
