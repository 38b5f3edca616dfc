"""The hyper-parameter searches of the paper's appendix, as a stage of the DAG.

Table 13 searches FGVC's base learning rate over {5e-3, 2e-3, 1e-3, 5e-4, 2e-4, 1e-4} and the
AdaptFormer scale (Eq. 10) over {0.01, 0.1, 1, 10, 100}, "on the validation data": 10 % held out of
train for CIFAR/FGVC, val200 for VTAB-1k. Each candidate is a fine-tune on `train` at the search's
source degree (`SearchSettings.source_r`; the paper is silent, we search once per dataset at r = 0
and reuse the choice for every source), scored plain on `val` by `tocom finetune --score-split val`.
`select` keeps the best (ties: the earlier candidate in grid order) and writes the chosen settings,
which `tocom finetune --chosen` applies on top of the recipe. Torch-free.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from .errors import TocomError
from .io import write_json
from .lineage import describe, file_entry, same_backbone
from .settings import SEARCHABLE, check_choosing_split


def candidate_label(overrides: dict) -> str:
    """File-name label of a candidate, e.g. lr0.001_adapter_scale10.0."""
    return "_".join(f"{k}{overrides[k]!r}" for k in SEARCHABLE if k in overrides)


def _read(path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise TocomError(f"no search score at {path}; run the search candidate first") from None
    except ValueError:
        raise TocomError(f"{path} is not valid JSON; delete it and rerun the search candidate") from None
    if not isinstance(data, dict) or "top1" not in data or "settings" not in data or "split" not in data:
        raise TocomError(f"{path} is not a search score (needs 'top1', 'split' and 'settings'); rerun the search "
                         "candidate")
    kinds = {"top1": (int, float), "split": (str,), "settings": (dict,)}
    wrong = [k for k, types in kinds.items() if not isinstance(data[k], types) or isinstance(data[k], bool)]
    if wrong:
        raise TocomError(f"{path}: its {', '.join(f'{k} {data[k]!r}' for k in wrong)} is not what a search score "
                         "holds (top1 a number, split a name, settings a mapping); rerun the search candidate")
    return data


def _check_scores(candidates: list[str], scores: list[dict]) -> None:
    """Candidates are comparable only when scored alike: each on a held-out split that is never test, with a
    finite score, all on the same split, dataset and backbone (else the 'best' is chosen across tasks, or on
    test, or is a NaN that wins every comparison)."""
    for path, sc in zip(candidates, scores):
        split = sc.get("split")
        if not isinstance(split, str):
            raise TocomError(f"{path} does not say which split it was scored on; rerun the search candidate")
        try:
            check_choosing_split(split, (), f"{path}: the score's split")
        except TocomError as e:
            raise TocomError(f"{e} (rerun the candidate with --score-split val)") from None
        top1 = sc["top1"]
        if isinstance(top1, bool) or not isinstance(top1, (int, float)) or not math.isfinite(top1):
            raise TocomError(f"{path} has top1={top1!r}, not a finite number; rerun the search candidate")
    for key in ("split", "dataset", "source_r"):
        values = {json.dumps(sc.get(key)) for sc in scores}
        if len(values) != 1:
            raise TocomError(f"search candidates were scored with different {key}s ({', '.join(sorted(values))}); "
                             "select among candidates of one search only")
    first = scores[0].get("backbone")
    for path, sc in zip(candidates[1:], scores[1:]):
        other = sc.get("backbone")
        if (first is None) != (other is None) or (first and not same_backbone(first, other)):
            raise TocomError(f"search candidates come from different backbones ({candidates[0]}: {describe(first)}, "
                             f"{path}: {describe(other)}); select among candidates of one search only")


def select(candidates: list[str], out: str | Path) -> dict:
    """Pick the candidate with the best held-out top-1; write {chosen, split, dataset, backbone, candidates} to
    `out` (and the candidates' digests under `lineage`)."""
    scores = [_read(p) for p in candidates]
    _check_scores(candidates, scores)
    splits = {s["split"] for s in scores}
    best = max(range(len(scores)), key=lambda i: (scores[i]["top1"], -i))
    chosen = {k: scores[best]["settings"][k] for k in SEARCHABLE if k in scores[best]["settings"]}
    varied = {k for k in SEARCHABLE if len({json.dumps(s["settings"].get(k)) for s in scores}) > 1}
    result = {"chosen": {k: v for k, v in chosen.items() if k in varied or len(scores) == 1},
              "split": splits.pop(), "dataset": scores[0].get("dataset"), "backbone": scores[0].get("backbone"),
              "candidates": [{"path": str(p), "top1": s["top1"], **{k: s["settings"].get(k) for k in varied}}
                             for p, s in zip(candidates, scores)],
              "lineage": {"candidates": [file_entry(p) for p in candidates]}}
    write_json(result, out)
    return result


def read_chosen(path: str | Path, dataset: str | None = None, backbone: dict | None = None) -> dict:
    """The chosen settings of a search result, to override a recipe's fields; refused (one line) when the result
    says it was searched on another dataset or backbone than the fine-tune applying it."""
    try:
        data = json.loads(Path(path).read_text())
        chosen = data["chosen"]
    except FileNotFoundError:
        raise TocomError(f"no search result at {path}; run `tocom select` first") from None
    except (ValueError, KeyError, TypeError):
        raise TocomError(f"{path} is not a search result (`tocom select` output); rerun the search") from None
    if not isinstance(chosen, dict):
        raise TocomError(f"{path}: its 'chosen' is a JSON {type(chosen).__name__}, not a mapping of settings to "
                         "values; rerun the search (`tocom select`)")
    searched = data.get("dataset") if isinstance(data, dict) else None
    if dataset and searched and searched != dataset:
        raise TocomError(f"{path} was searched on {searched}, not {dataset}; apply the search result of this dataset")
    origin = data.get("backbone") if isinstance(data, dict) else None
    if backbone and isinstance(origin, dict) and not same_backbone(origin, backbone):
        raise TocomError(f"{path} was searched on {describe(origin)}, but this fine-tune starts from "
                         f"{describe(backbone)}; apply the search result of this backbone")
    unknown = sorted(set(chosen) - set(SEARCHABLE))
    if unknown:
        raise TocomError(f"{path}: {', '.join(unknown)} cannot be searched; searchable: {', '.join(SEARCHABLE)}")
    return chosen
