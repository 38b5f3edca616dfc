# Stage 5: task-arithmetic transfer check (Table 1): M_high^A - M_0^A + M_0^B evaluated on B.


def transfer_models(wc):
    """M_high^A, M_0^A and M_0^B (the r = 0 models are the fine-tunes every method shares)."""
    high_a, low_a, model_b = GRID.transfer_run(**wc).models
    return dict(high_a=run_path(high_a.path), low_a=run_path(low_a.path), model_b=run_path(model_b.path))


rule transfer:
    input:
        unpack(transfer_models),
        data=lambda wc: data_input(layout.dataset_name(wc.b)),
    output: run_path(layout.TRANSFER)
    log: job_log("transfer", layout.TRANSFER)
    benchmark: job_benchmark("transfer", layout.TRANSFER)
    params:
        launch=launch("eval"),
        args=lambda wc: " ".join([flags(method=wc.method, target_r=GRID.transfer_run(**wc).target_r),
                                  GRID.eval_settings.cli_args(),
                                  common_flags(layout.dataset_name(wc.b), int(wc.seed), "eval")]),
    threads: threads("eval")
    resources: **res("eval")
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} transfer --model-b {input.model_b} --high-a {input.high_a} "
        "--low-a {input.low_a} {params.args} --out {output} > {log} 2>&1"
