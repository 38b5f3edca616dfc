# Stage 1: train the tiny backbone from scratch (only for backbones whose config has `pretrain`).


rule pretrain_backbone:
    output:
        f"{OUT}/backbones/{{backbone}}.safetensors",
    log:
        f"{LOGS}/pretrain/{{backbone}}.log",
    params:
        launch=launch("pretrain"),
        args=lambda wc: (
            flags(backbone=config["backbones"][wc.backbone]["timm"], seed=config["seeds"][0],
                  **{k: v for k, v in config["backbones"][wc.backbone]["pretrain"].items() if k != "limit"})
            + " " + common_flags(config["backbones"][wc.backbone]["pretrain"]["dataset"],
                                 config["backbones"][wc.backbone]["pretrain"].get("limit"))
        ),
    threads: threads("pretrain")
    resources:
        **res("pretrain"),
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} pretrain-backbone {params.args} --out {output} > {log} 2>&1"
