# Stage 5: task-arithmetic transfer check (Table 1): M_high^A - M_0^A + M_0^B evaluated on B.


def transfer_run(wc):
    return GRID.transfer_run(**wc)


def transfer_models(wc):
    """M_high^A, M_0^A and M_0^B (the r = 0 models are the fine-tunes every method shares)."""
    high_a, low_a, model_b = transfer_run(wc).models
    return dict(high_a=f"{OUT}/{high_a.path}", low_a=f"{OUT}/{low_a.path}", model_b=f"{OUT}/{model_b.path}")


rule transfer:
    input:
        unpack(transfer_models),
        data=lambda wc: data_input(dataset_name(wc.b)),
    output:
        f"{OUT}/{TRANSFER}",
    benchmark:
        f"{OUT}/benchmarks/transfer/{{backbone}}_{{method}}_{{a}}_to_{{b}}_r{{high}}_seed{{seed}}.tsv"
    log:
        f"{LOGS}/transfer/{{backbone}}_{{method}}_{{a}}_to_{{b}}_r{{high}}_seed{{seed}}.log",
    params:
        launch=launch("eval"),
        args=lambda wc: " ".join([flags(method=wc.method, target_r=transfer_run(wc).target_r),
                                  GRID.eval_settings.cli_args(), common_flags(dataset_name(wc.b), int(wc.seed))]),
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
