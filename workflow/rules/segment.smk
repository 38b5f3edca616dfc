# Stage 7: semantic segmentation (the appendix's Table 11). Segmenters fine-tuned at each source r with
# tokens merged before each FFN (tome_ffn), by Segmenter's recipe (`segmentation.recipe`, SegmentSettings);
# each evaluated (mIoU) at every target r, plain and with the backbone's tome_ffn plugins (distilled by the
# ordinary `distill` rule with method tome_ffn), s chosen on val; gathered into tables/segment.csv.
from tocom.experiments import SEGMENT_METHOD

SEGMENT_TABLE = run_path(layout.TABLE, table="segment")
SEG_RES = "segment" if "segment" in config["resources"] else "finetune"    # resources entry of segment-finetune


def segment_plugins(wc):
    seg = config.get("segmentation") or {}
    return {v: plugin_file(wc.backbone, SEGMENT_METHOD, v) for v in seg.get("variants", [])}


def segment_finetune_flags(wc):
    run = GRID.segment_run(**wc)
    return " ".join([backbone_flags(run.backbone), flags(dataset=run.dataset, r=run.source),
                     GRID.segment_settings().cli_args(), common_flags(run.dataset, run.seed, SEG_RES)])


def segment_eval_flags(wc):
    run, seg = GRID.segment_run(**wc), config["segmentation"]
    return " ".join([flags(targets=sorted(int(t) for t in seg["targets"]),
                           plugin=[f"{v}={p}" for v, p in segment_plugins(wc).items()]),
                     GRID.eval_settings.replace(**(seg.get("evaluate") or {})).cli_args(),
                     common_flags(run.dataset, run.seed, "eval")])


rule segment_finetune:
    input: backbone_input
    output: run_path(layout.SEGMENT)
    log: job_log("segment", layout.SEGMENT)
    benchmark: job_benchmark("segment", layout.SEGMENT)
    params:
        launch=launch(SEG_RES),
        args=segment_finetune_flags,
    threads: threads(SEG_RES)
    resources: **res(SEG_RES)
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} segment-finetune {params.args} --out {output} > {log} 2>&1"


rule segment_evaluate:
    input:
        model=run_path(layout.SEGMENT),
        plugins=lambda wc: list(segment_plugins(wc).values()),
    output: run_path(layout.SEGMENT_EVAL)
    log: job_log("segment_eval", layout.SEGMENT_EVAL)
    benchmark: job_benchmark("segment_eval", layout.SEGMENT_EVAL)
    params:
        launch=launch("eval"),
        args=segment_eval_flags,
    threads: threads("eval")
    resources: **res("eval")
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} segment-evaluate --checkpoint {input.model} {params.args} "
        "--out {output} > {log} 2>&1"


rule aggregate_segment:
    input: [run_path(r.eval_path) for r in sorted(GRID.segments.values(), key=lambda r: r.eval_path)]
    output: SEGMENT_TABLE
    log: run_path(layout.STEP_LOG, stage="aggregate_segment")
    params:
        backbone_key=(config.get("segmentation") or {}).get("backbone", ""),
    localrule: True
    run:
        import pandas as pd

        from tocom.engine.segment import COLUMNS
        from tocom.io import write_csv, write_text

        frames = [pd.read_csv(p) for p in input]
        df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
        df.insert(0, "backbone_key", params.backbone_key)
        write_csv(df, output[0])
        write_text(f"{output[0]}: {len(df)} rows from {len(frames)} evaluation files\n", log[0])
