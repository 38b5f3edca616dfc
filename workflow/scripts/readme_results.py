"""Write docs/results.md's "What the CPU default shows" block from a finished run; the block is generated,
never edited by hand.

    python workflow/scripts/readme_results.py results/cpu --config config/cpu.yaml --wall "74 min" \
        --log .snakemake/log/<the run>.snakemake.log [--replicate other/results/cpu]

Reads the run's tables/eval.csv (test top-1 per dataset, seed, source r, target r, plain or + ToCom at
the s chosen on val), tables/runtime.csv (Snakemake's benchmark files: time per job), Snakemake's log
(when each job started and finished: jobs run side by side, so a stage's wall-clock is its span on the
run's timeline, not the sum of its jobs) and the report's verdicts item (items.VERDICTS), and replaces the
text between the `<!-- cpu-results` markers of docs/results.md. The block records the digest of the config the run
used (experiments.config_digest: the resolved config, so comments and layout do not count): tests/test_protocol.py fails when the committed config no longer matches it, so the page always quotes a
run of the committed default. It also records the digests of the run's artefacts stage by stage and its verdicts
(compare_run.record, shown as a table and kept as a `run-record` comment), which
`python workflow/scripts/compare_run.py results/cpu` compares a user's finished run with. `--replicate` adds a
second run of the same config (other seeds, another machine): per claim both verdicts and whether they agree.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

from tocom import layout
from tocom.settings import METHODS

import compare_run  # noqa: E402  (this folder: the run record and the comparison, one definition each)

sys.path.insert(0, str(Path(__file__).resolve().parent / "report"))
from common.ctx import select  # noqa: E402  (the report's selection and paired test, one definition each)
from common.stats import pair_diffs, pair_test  # noqa: E402
from items import VERDICTS  # noqa: E402

START, END = "<!-- cpu-results", "<!-- /cpu-results -->"
# Every method at the inference-time pairs (source 0, targets 4 and 2); the first (ToMe, the main role) also
# at the training-time pair 4 -> 0.
PAIRS = [(m, s, t) for m in METHODS for s, t in ((0, 4), (0, 2), (4, 0)) if s < t or m == METHODS[0]]
NAMES = dict(zip(METHODS, ("ToMe (merge)", "EViT (prune)", "IdleViT (idle)"), strict=True))
STAGES = {"pretrain": "pretrain backbone", "distill": "distil plugins", "finetune": "fine-tune",   # benchmark
          "evaluate": "cross-evaluate", "transfer": "transfer check", "bench": "bench",           # folders
          "segment": "segmentation fine-tune", "segment_eval": "segmentation eval"}
LOG_RULES = {"pretrain": ["pretrain_backbone"], "distill": ["distill", "teacher_outputs"],             # the rules behind each
             "finetune": ["finetune", "finetune_select", "search_candidate"],      # benchmark folder
             "evaluate": ["evaluate"], "transfer": ["transfer"], "bench": ["bench"],
             "segment": ["segment_finetune"], "segment_eval": ["segment_evaluate"]}
STAMP = r"^\[(\w{3} \w{3} +\d+ [\d:]{8} \d{4})\]\n"


def job_times(log: Path) -> pd.DataFrame:
    """rule, start, end of every job in a Snakemake log ("[date]" then "rule X:" ... "jobid: N" when a job
    starts, "[date]" then "Finished jobid: N (Rule: X)" when it ends)."""
    text = log.read_text()
    start = {m[3]: (m[2], m[1]) for m in re.finditer(STAMP + r"(?:local)?rule (\w+):\n(?:    .*\n)*?    jobid: (\d+)",
                                                        text, re.M)}
    end = {m[2]: m[1] for m in re.finditer(STAMP + r"Finished jobid: (\d+)", text, re.M)}
    rows = [(rule, t0, end[j]) for j, (rule, t0) in start.items() if j in end]
    jobs = pd.DataFrame(rows, columns=["rule", "start", "end"])
    for col in ("start", "end"):
        jobs[col] = pd.to_datetime(jobs[col], format="%a %b %d %H:%M:%S %Y")
    return jobs


def main_table(ev: pd.DataFrame) -> list[str]:
    lines = ["| method | source → target | tasks × seeds | at source r | plain at target | + ToCom | "
             "ToCom gain (95 % CI) | Wilcoxon p |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for method, source, target in PAIRS:
        rows = ev[ev.method == method]
        plain, tocom = select(rows, source, target), select(rows, source, target, "tocom")
        if plain.empty or tocom.empty:
            continue
        t = pair_test(pair_diffs(plain, tocom))
        gain = f"{t['mean']:+.1f}" + ("" if t["ci"] != t["ci"] else f" ± {t['ci']:.1f}")
        p = "–" if t["too_few"] or t["p_wilcoxon"] != t["p_wilcoxon"] else f"{t['p_wilcoxon']:.3g}"
        lines.append(f"| {NAMES[method]} | {source} → {target} | {t['n_pairs']} | "
                     f"{select(rows, source, source).top1.mean():.1f} | {plain.top1.mean():.1f} | "
                     f"{tocom.top1.mean():.1f} | {gain} | {p} |")
    return lines


def stage_table(runtime: pd.DataFrame, jobs: pd.DataFrame) -> list[str]:
    if runtime.empty:
        return []
    per = runtime.groupby("rule").agg(jobs=("job", "nunique"), s=("s", "sum"))
    lines = ["| stage | jobs | job time (min, summed over jobs) | on the run's timeline (min from its start) |",
             "| --- | ---: | ---: | --- |"]
    t0 = jobs.start.min()
    for rule, label in STAGES.items():
        if rule not in per.index:
            continue
        mine = jobs[jobs.rule.isin(LOG_RULES[rule])]
        span = ("–" if mine.empty else f"{(mine.start.min() - t0).total_seconds() / 60:.0f} → "
                f"{(mine.end.max() - t0).total_seconds() / 60:.0f}")
        lines.append(f"| {label} | {int(per.loc[rule, 'jobs'])} | {per.loc[rule, 's'] / 60:.1f} | {span} |")
    return lines


def digest_lines(rec: dict) -> list[str]:
    lines = ["| stage | artefact | files | sha256 (first 16 hex digits) |", "| --- | --- | ---: | --- |"]
    for stage, artefacts in rec["digests"].items():
        for name, d in artefacts.items():
            lines.append(f"| {stage} | {name} | {d['files']} | " + (f"`{d['sha256'][:16]}`" if d["sha256"] else "—")
                         + " |")
    return lines


def replicate_lines(rec: dict, other: dict, where: Path) -> list[str]:
    agree, total = compare_run.agreement(rec["verdicts"], other["verdicts"])
    same = compare_run.first_difference(rec["digests"], other["digests"])
    return [f"A second run of the same config, `{where}` (seeds {other['seeds']}; this run's: {rec['seeds']}"
            + ("" if other.get("config") in (None, rec["config"]) else "; **another config**")
            + "): the claims' verdicts side by side; "
            + ("the two runs' artefacts are identical." if same is None else f"the runs first part at {same}.")
            + f" **{agree} of {total} verdicts agree.**", "",
            *compare_run.verdict_table(rec["verdicts"], other["verdicts"], ("this run", "second run"))]


def block(run: Path, config: Path, wall: str, log: Path | None = None, replicate: Path | None = None,
          replicate_config: Path | None = None) -> str:
    ev = pd.read_csv(run / layout.TABLE.format(table="eval"))
    ev = ev[ev.split == "test"]
    runtime_csv = run / layout.TABLE.format(table="runtime")
    runtime = pd.read_csv(runtime_csv) if runtime_csv.exists() else pd.DataFrame()
    jobs = job_times(log) if log else pd.DataFrame(columns=["rule", "start", "end"])
    claims = run / layout.REPORT_ITEM.format(item=VERDICTS.stem, ext=".md")
    claims_text = claims.read_text().strip() if claims.exists() else f"(no {claims.name} in this run)"
    claims_text = re.sub(r"^#+ .*\n", "", claims_text, count=1)   # the README gives its own heading
    rec = compare_run.record(run, config)
    second = [] if replicate is None else \
        ["", *replicate_lines(rec, compare_run.record(replicate, replicate_config), replicate)]
    return "\n".join([
        f"{START} config/{config.name} sha256:{compare_run.digest_of(config)} — generated by "
        f"workflow/scripts/readme_results.py from {run}; do not edit -->",
        f"Wall-clock of the whole run on 2 cores, from a clean clone with the install: **{wall}**. "
        "Per stage: the time its jobs took (Snakemake's benchmark files) and when it ran (Snakemake's log; two "
        "jobs run side by side, so stages overlap):",
        "",
        *stage_table(runtime, jobs),
        "",
        "What the run made, stage by stage (sha256 of each artefact's content; several files: of their paths and "
        "digests). `python workflow/scripts/compare_run.py results/cpu` compares your finished run with these: "
        "identical, or the stage where the two first part, and whether each verdict agrees:",
        "",
        *digest_lines(rec),
        compare_run.record_comment(rec),
        "",
        "Test top-1 (%), mean over tasks × seeds; the gain is ToCom minus plain on the same model, its 95 % t "
        "interval and two-sided Wilcoxon signed-rank test over the (task, seed) pairs:",
        "",
        *main_table(ev),
        "",
        f"The paper's claims at this scale (`{layout.run_dir('cpu')}/{layout.REPORT}`, section *Claims at this "
        "scale*):",
        "",
        claims_text,
        *second,
        END,
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="the run's results folder, e.g. results/cpu")
    ap.add_argument("--config", type=Path, required=True, help="the config the run used")
    ap.add_argument("--wall", required=True, help="measured wall-clock of the whole run, e.g. '74 min'")
    ap.add_argument("--log", type=Path, help="the run's Snakemake log (.snakemake/log/*.snakemake.log)")
    ap.add_argument("--replicate", type=Path, help="a second finished run of the config (e.g. other seeds): its "
                    "verdicts beside this run's")
    ap.add_argument("--replicate-config", type=Path, help="the config the second run used (default: --config)")
    ap.add_argument("--readme", type=Path, default=Path(__file__).resolve().parents[2] / "docs" / "results.md",
                    help="the page holding the block (default: docs/results.md)")
    args = ap.parse_args()
    text = args.readme.read_text()
    i, j = text.find(START), text.find(END)
    if i < 0 or j < 0:
        raise SystemExit(f"{args.readme}: no '{START} ... {END}' block to replace")
    try:
        new = block(args.run, args.config, args.wall, args.log, args.replicate, args.replicate_config or args.config)
    except compare_run.Unreadable as e:
        raise SystemExit(f"readme_results: {e}") from None
    args.readme.write_text(text[:i] + new + text[j + len(END):])


if __name__ == "__main__":
    main()
