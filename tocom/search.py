"""The hyper-parameter searches of the paper's appendix, as a stage of the DAG.

Table 13 searches FGVC's base learning rate over {5e-3, 2e-3, 1e-3, 5e-4, 2e-4, 1e-4} and the
AdaptFormer scale (Eq. 10) over {0.01, 0.1, 1, 10, 100}, "on the validation data": 10 % held out of
train for CIFAR/FGVC, val200 for VTAB-1k. Each candidate is a fine-tune on `train` at the search's
source degree (`SearchSettings.source_r`; the paper is silent, we search once per dataset at r = 0
and reuse the choice for every source), scored plain on `val` by `tocom finetune --score-split val`.
`select` keeps the best (ties: the earlier candidate in grid order) and writes the chosen settings,
which `tocom finetune --chosen` applies on top of the recipe. A fine-tune on `train` at the search's
source r with the chosen settings would retrain the winning candidate (same seed, split and settings):
`link_chosen` links the winner's model next to the result instead (tocom/experiments.py decides when a
model is such a retraining). Torch-free.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .errors import TocomError
from .io import write_json
from .layout import SCORE
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
    for path, sc in zip(candidates, scores):       # `_read` checked their types: split a str, top1 a number
        try:
            check_choosing_split(sc["split"], (), f"{path}: the score's split")
        except TocomError as e:
            raise TocomError(f"{e} (rerun the candidate with --score-split val)") from None
        if not math.isfinite(sc["top1"]):
            raise TocomError(f"{path} has top1={sc['top1']!r}, not a finite number; rerun the search candidate")
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


def best(top1s: list[float]) -> int:
    """Index of the best held-out score; ties go to the earlier candidate (grid order)."""
    return max(range(len(top1s)), key=lambda i: (top1s[i], -i))


def applied(settings: list[dict]) -> set[str]:
    """The searched settings a choice applies (`--chosen`): those the candidates' settings vary, or every
    searched one of a single candidate."""
    return {k for k in SEARCHABLE if any(k in s for s in settings)
            and (len(settings) == 1 or len({json.dumps(s.get(k)) for s in settings}) > 1)}


def select(candidates: list[str], out: str | Path) -> dict:
    """Pick the candidate with the best held-out top-1; write {chosen, split, dataset, backbone, candidates} to
    `out` (and the candidates' digests under `lineage`)."""
    scores = [_read(p) for p in candidates]
    _check_scores(candidates, scores)
    winner = scores[best([s["top1"] for s in scores])]["settings"]
    keys = applied([s["settings"] for s in scores])
    varied = keys if len(scores) > 1 else set()
    result = {"chosen": {k: winner[k] for k in SEARCHABLE if k in winner and k in keys},
              "split": scores[0]["split"], "dataset": scores[0].get("dataset"), "backbone": scores[0].get("backbone"),
              "candidates": [{"path": str(p), "top1": s["top1"], **{k: s["settings"].get(k) for k in varied}}
                             for p, s in zip(candidates, scores)],
              "lineage": {"candidates": [file_entry(p) for p in candidates]}}
    write_json(result, out)
    return result


def link_chosen(result: str | Path, models: list[str | Path], out: str | Path) -> Path:
    """Link (relative symlink, replaced atomically) `out` to the model of the candidate `result` chose, among the
    candidates' `models` (each scored into <model>.score.json); its header must hold the chosen settings.
    Returns the linked model."""
    from .io import header_json, read_safetensors_header

    chosen = read_chosen(result)
    try:
        candidates = json.loads(Path(result).read_text())["candidates"]
        winner = candidates[best([float(c["top1"]) for c in candidates])]["path"]
    except (KeyError, TypeError, ValueError, IndexError):
        raise TocomError(f"{result} lists no scored candidates; rerun the search (`tocom select`)") from None
    model = {os.path.abspath(f"{m}{SCORE}"): Path(m) for m in models}.get(os.path.abspath(winner))   # by score file
    if model is None or not model.is_file():
        raise TocomError(f"{result} chose {winner}, whose model is not among the given candidates (or missing); "
                         "pass every candidate's model with --candidates, or rerun the search")
    fix = "rerun the search candidate"
    settings = (header_json(model, read_safetensors_header(model, fix)[0], "tocom", "tocom header", fix)
                or {}).get("settings") or {}
    wrong = sorted(k for k, v in chosen.items() if settings.get(k) != v)
    if wrong:
        raise TocomError(f"{model} was not trained with the chosen {', '.join(wrong)} ({result}); rerun the search")
    out = Path(out)
    if os.path.lexists(out) and not out.is_symlink():      # a link replaces a link, never a file it did not write
        raise TocomError(f"--out {out} exists and is not a link; link-chosen writes a symlink: name another path")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(model, out.parent), tmp)
    os.replace(tmp, out)
    return model


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
    searched, origin = data.get("dataset"), data.get("backbone")     # `data["chosen"]` worked: data is a dict
    if dataset and searched and searched != dataset:
        raise TocomError(f"{path} was searched on {searched}, not {dataset}; apply the search result of this dataset")
    if backbone and isinstance(origin, dict) and not same_backbone(origin, backbone):
        raise TocomError(f"{path} was searched on {describe(origin)}, but this fine-tune starts from "
                         f"{describe(backbone)}; apply the search result of this backbone")
    unknown = sorted(set(chosen) - set(SEARCHABLE))
    if unknown:
        raise TocomError(f"{path}: {', '.join(unknown)} cannot be searched; searchable: {', '.join(SEARCHABLE)}")
    return chosen
