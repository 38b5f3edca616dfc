# Stage 5: task-arithmetic transfer check (Table 1): M_high^A - M_0^A + M_0^B evaluated on B.


def transfer_run(wc):
    path = f"transfer/{wc.backbone}/{wc.method}/{wc.a}_to_{wc.b}_r{wc.high}_seed{wc.seed}.csv"
    return next(t for t in GRID.transfers if t.path == path)


def transfer_models(wc):
    t = transfer_run(wc)
    ft = f"{OUT}/finetune/{t.backbone}/{t.method}"
    return dict(high_a=f"{ft}/{wc.a}/r{t.high_r}_seed{t.seed}.safetensors",
                low_a=f"{ft}/{wc.a}/r0_seed{t.seed}.safetensors",
                model_b=f"{ft}/{wc.b}/r0_seed{t.seed}.safetensors")


rule transfer:
    input:
        unpack(transfer_models),
    output:
        f"{OUT}/transfer/{{backbone}}/{{method}}/{{a}}_to_{{b}}_r{{high}}_seed{{seed}}.csv",
    log:
        f"{LOGS}/transfer/{{backbone}}_{{method}}_{{a}}_to_{{b}}_r{{high}}_seed{{seed}}.log",
    params:
        launch=launch("eval"),
        args=lambda wc: flags(target_r=transfer_run(wc).target_r, seed=wc.seed,
                              batch_size=config["evaluate"]["batch_size"])
        + " " + common_flags(dataset_name(wc.b), config["evaluate"].get("limit")),
    wildcard_constraints:
        a=r"[^/]+?",
        b=r"[^/]+?",
        high=r"\d+",
    threads: threads("eval")
    resources:
        **res("eval"),
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} transfer --model-b {input.model_b} --high-a {input.high_a} "
        "--low-a {input.low_a} {params.args} --out {output} > {log} 2>&1"
