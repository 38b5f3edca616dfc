"""Compare a finished run with the one docs/results.md quotes (or with another finished run): is it the same
run, where do the two first part, and does each claim's verdict agree?

    python workflow/scripts/compare_run.py results/cpu                           # with docs/results.md's block
    python workflow/scripts/compare_run.py results/cpu --with other/results/cpu  # two finished runs

Reads result files only (the run's artefacts, its tidy tables and the claims item's CSV), never models or
engines. A run is fingerprinted stage by stage, in pipeline order (`STAGES`): pre-training (the backbones),
distillation (the plugins), fine-tuning (every fine-tuned model, one combined digest) and evaluation (the tidy
tables eval.csv, transfer.csv, segment.csv). Since each stage computes from the ones before it, the first stage
whose digests differ is where the two runs part: a difference in pre-training carries through everything after
it, while identical plugins and models with different tables point at the evaluation alone.
The verdicts are matched on the claims' keys (claims_at_scale.py's `key` column), which stay the same from run
to run. readme_results.py writes the same record (`record`) into the block it generates.

Exit status: 0 when every digest and every verdict agree, 1 when anything differs (like `cmp`), 2 when an input
is missing or unreadable (one line naming it).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

import pandas as pd
import yaml

from tocom import layout
from tocom.experiments import config_digest

VERDICT_ITEM = "claims_at_scale"        # the report item holding the verdicts (items.VERDICTS.stem)
#: stage -> {artefact: the layout templates of its files}, in pipeline order.
STAGES = {
    "pre-training": {"backbones": [layout.BACKBONE]},
    "distillation": {"teacher outputs": [layout.TEACHER], "plugins": [layout.PLUGIN]},
    "fine-tune": {"fine-tuned models": [layout.FINETUNE, layout.SELECT, layout.SEARCH, layout.SEGMENT]},
    "evaluation": {f"{t}.csv": [layout.TABLE.format(table=t)] for t in ("eval", "transfer", "segment")},
}
RECORD = re.compile(r"<!-- run-record (\{.*?\}) -->", re.S)
SHORT = 16                              # hex digits shown (the record keeps the full digest)


class Unreadable(Exception):
    """An input that is missing or cannot be read: exit 2 with this one line."""


def artefact_digest(path: str | Path) -> str:
    """sha256 of an artefact's content. A safetensors file is hashed as its tensors (name, dtype, shape, bytes,
    by name) and its metadata as canonical JSON, so the order in which the safetensors library happens to write
    the header's keys (not fixed for several metadata keys) does not count; any other file byte for byte.
    The one place that says how an artefact is hashed (tocom.io's own digest can replace it once every
    writer is deterministic)."""
    path = Path(path)
    data = path.read_bytes()
    if path.suffix != ".safetensors":
        return hashlib.sha256(data).hexdigest()
    try:
        n = int.from_bytes(data[:8], "little")
        if not 2 <= n <= len(data) - 8:
            raise ValueError(f"a header of {n} bytes in a file of {len(data)}")
        header = json.loads(data[8:8 + n])
        body = data[8 + n:]
        digest = hashlib.sha256(json.dumps(header.pop("__metadata__", None) or {}, sort_keys=True).encode())
        for name in sorted(header):
            start, end = header[name]["data_offsets"]
            if not 0 <= start <= end <= len(body):
                raise ValueError(f"tensor {name} lies outside the file")
            digest.update(json.dumps([name, header[name]["dtype"], header[name]["shape"]]).encode())
            digest.update(body[start:end])
    except (ValueError, KeyError, TypeError) as e:
        raise Unreadable(f"{path} is not a readable safetensors file ({e}); rerun the step that wrote it") from None
    return digest.hexdigest()


def digests(run: Path) -> dict[str, dict[str, dict]]:
    """stage -> artefact -> {"files": how many, "sha256": digest}: one file's digest, or for several files the
    digest of their (path below the run folder, digest) lines, so adding, dropping or renaming one counts too."""
    out = {}
    for stage, artefacts in STAGES.items():
        out[stage] = {}
        for name, templates in artefacts.items():
            files = sorted({f for t in templates for f in run.glob(re.sub(r"{\w+}", "*", t)) if f.is_file()})
            lines = "".join(f"{f.relative_to(run).as_posix()}\t{artefact_digest(f)}\n" for f in files)
            single = len(files) == 1 and len(templates) == 1 and "{" not in templates[0]
            digest = artefact_digest(files[0]) if single else hashlib.sha256(lines.encode()).hexdigest()
            out[stage][name] = {"files": len(files), "sha256": digest if files else None}
    return out


def verdicts(run: Path) -> dict[str, str]:
    """claim key -> verdict, from the claims item's CSV."""
    path = run / layout.REPORT_ITEM.format(item=VERDICT_ITEM, ext=".csv")
    if not path.exists():
        raise Unreadable(f"{path} is missing: finish the run (its report step writes it), then compare")
    df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    df = df[df.kind == "claim"]
    keys = df["key"] if "key" in df else df.block.str.cat(df.row, sep=": ")    # before claims had keys
    return dict(zip(keys, df.verdict, strict=True))


def seeds(run: Path) -> list[int]:
    path = run / layout.TABLE.format(table="eval")
    return sorted(pd.read_csv(path, usecols=["seed"]).seed.unique().tolist()) if path.exists() else []


def record(run: Path, config: Path | None = None) -> dict:
    """What a comparison needs of a run: its config's digest, its artefacts' digests, its verdicts, its seeds."""
    return {"config": digest_of(config) if config else None, "digests": digests(run), "verdicts": verdicts(run),
            "seeds": seeds(run)}


def digest_of(config: Path) -> str:
    """experiments.config_digest of a config file: what it computes, not how it is written."""
    return config_digest(yaml.safe_load(config.read_text()))


def record_comment(rec: dict) -> str:
    return f"<!-- run-record {json.dumps(rec, sort_keys=True, ensure_ascii=False)} -->"


def read_record(page: Path) -> dict:
    """The run record in a page's generated block (readme_results.py)."""
    if not page.exists():
        raise Unreadable(f"{page} does not exist; give the page holding the generated block (--page)")
    found = RECORD.search(page.read_text())
    if not found:
        raise Unreadable(f"{page} holds no run record (its block predates compare_run.py); regenerate it with "
                         "workflow/scripts/readme_results.py from a finished run")
    return json.loads(found.group(1))


# ---- the comparison -----------------------------------------------------------------------------------
def first_difference(a: dict, b: dict) -> str | None:
    """The first stage (pipeline order) with an artefact whose digest differs, or None."""
    for stage in STAGES:
        if any((a.get(stage) or {}).get(k, {}).get("sha256") != (b.get(stage) or {}).get(k, {}).get("sha256")
               for k in STAGES[stage]):
            return stage
    return None


def _short(d: dict | None) -> str:
    if not d or not d.get("sha256"):
        return "—"
    return f"`{d['sha256'][:SHORT]}` ({d['files']} file{'s' if d['files'] != 1 else ''})"


def digest_table(a: dict, b: dict, names=("this run", "reference")) -> list[str]:
    lines = [f"| stage | artefact | {names[0]} | {names[1]} | same |", "| --- | --- | --- | --- | --- |"]
    for stage, artefacts in STAGES.items():
        for k in artefacts:
            x, y = (a.get(stage) or {}).get(k), (b.get(stage) or {}).get(k)
            same = "yes" if (x or {}).get("sha256") == (y or {}).get("sha256") else "**no**"
            lines.append(f"| {stage} | {k} | {_short(x)} | {_short(y)} | {same} |")
    return lines


def verdict_table(a: dict[str, str], b: dict[str, str], names=("this run", "reference")) -> list[str]:
    lines = [f"| claim | {names[0]} | {names[1]} | agree |", "| --- | --- | --- | --- |"]
    for key in list(dict.fromkeys([*a, *b])):
        x, y = a.get(key, "—"), b.get(key, "—")
        lines.append(f"| {key} | {x} | {y} | {'yes' if x == y else '**no**'} |")
    return lines


def agreement(a: dict[str, str], b: dict[str, str]) -> tuple[int, int]:
    keys = set(a) | set(b)
    return sum(a.get(k) == b.get(k) for k in keys), len(keys)


def summary(mine: dict, other: dict, names=("this run", "reference")) -> tuple[list[str], bool]:
    """The comparison as Markdown lines, and whether the two runs agree on every digest and verdict."""
    lines = []
    if mine.get("config") and other.get("config"):
        same = mine["config"] == other["config"]
        lines += [f"Config: {'the same' if same else '**different**'} ({names[0]} sha256:{mine['config']}, "
                  f"{names[1]} sha256:{other['config']})" + ("" if same else ": a different run, not a rerun") + ".",
                  ""]
    if mine.get("seeds") or other.get("seeds"):
        lines += [f"Seeds: {names[0]} {mine.get('seeds')}, {names[1]} {other.get('seeds')}.", ""]
    part = first_difference(mine["digests"], other["digests"])
    lines += ["Artefacts, stage by stage (sha256 of the content; several files: of their paths and digests):", "",
              *digest_table(mine["digests"], other["digests"], names), "",
              "**Identical artefacts at every stage.**" if part is None else
              f"**The runs first part at {part}**: every stage before it is identical, and a stage computed from a "
              "different one differs in turn.", ""]
    agree, total = agreement(mine["verdicts"], other["verdicts"])
    lines += [f"Verdicts: **{agree} of {total} agree**.", "", *verdict_table(mine["verdicts"], other["verdicts"], names)]
    return lines, part is None and agree == total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a finished run's results folder, e.g. results/cpu")
    ap.add_argument("--with", dest="other", type=Path,
                    help="another finished run's results folder (default: the run docs/results.md quotes)")
    ap.add_argument("--config", type=Path, default=Path("config/cpu.yaml"),
                    help="the config the run used (compared with the block's; default config/cpu.yaml)")
    ap.add_argument("--page", type=Path, default=Path(__file__).resolve().parents[2] / "docs" / "results.md",
                    help="the page holding the generated block (default: docs/results.md)")
    args = ap.parse_args(argv)
    try:
        for run in [args.run, args.other]:
            if run is not None and not run.is_dir():
                raise Unreadable(f"{run} is not a results folder; give a finished run's folder, e.g. results/cpu")
        if args.other is None:
            other, names = read_record(args.page), ("this run", f"{args.page.name}'s run")
            mine = record(args.run, args.config if args.config.exists() else None)
        else:
            mine, other, names = record(args.run), record(args.other), (str(args.run), str(args.other))
    except Unreadable as e:
        print(f"compare_run: {e}", file=sys.stderr)
        return 2
    lines, same = summary(mine, other, names)
    print("\n".join(lines))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
