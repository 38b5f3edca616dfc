# Stage 2: ToCom self-distillation per backbone x method x variant (main plugin and ablations).


def distill_flags(wc):
    s = GRID.distill_settings(wc.backbone, wc.variant)
    return " ".join([
        backbone_flags(wc.backbone),
        flags(dataset=s["dataset"], method=wc.method, r_max=s["r_max"], rank=s["rank"],
              variant=s.get("variant", "tocom"), loss=s.get("loss", "kd"), scale=s["scale"],
              teacher_side=s.get("teacher_side", "source"), temperature=s.get("temperature", 1.0),
              epochs=s["epochs"], batch_size=s["batch_size"], lr=s["lr"],
              weight_decay=s.get("weight_decay", 0.05), seed=config["seeds"][0]),
        common_flags(s["dataset"], s.get("limit")),
    ])


rule distill:
    input:
        backbone_input,
    output:
        f"{OUT}/plugins/{{backbone}}/{{method}}/{{variant}}.safetensors",
    log:
        f"{LOGS}/distill/{{backbone}}_{{method}}_{{variant}}.log",
    params:
        launch=launch("distill"),
        args=distill_flags,
    threads: threads("distill")
    resources:
        **res("distill"),
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} distill {params.args} --out {output} > {log} 2>&1"
