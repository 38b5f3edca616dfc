"""Cross-evaluation of a fine-tuned model at every target degree, with and without ToCom, and the
task-arithmetic transfer check of the paper's Table 1.

One call per checkpoint: the model is loaded once and moved between degrees (and plugin scales)
with the merged plugin's `switch`, never reloaded.

Choosing s: per target, every s of the grid (Sec. 5.1) is scored on the selection split and the
best one is reported on the others. The selection split must hold no image the selecting model
was trained on: for CIFAR/FGVC the 10 % held out of train; for VTAB-1k (whose final model trains on
train800val200) a companion model trained on train800 at the same source r scores s on val200, and
the chosen s is applied to the final model on test. Every evaluated s is kept in the output
(`checkpoint` says which model produced a row) so the choice can be audited.

A plugin distilled at another training scale than the grid's reference (Table 6) is evaluated on
the grid scaled by its own training scale / `grid_scale`, read from its metadata.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import pandas as pd
from torch import nn

from ..compress import max_r, method_of, patch, set_r
from ..errors import TocomError
from ..io import write_json
from ..lineage import data_entry
from ..plugin import ToCom
from ..settings import METHODS, UNCOMPRESSED, EvalSettings, RunSettings, splits_overlap
from .common import accuracy, evaluate_targets, loader, runtime, write_table

COLUMNS = ["dataset", "backbone", "method", "source_r", "target_r", "tocom", "variant", "s", "split", "seed",
           "top1", "n", "selected", "checkpoint"]


def check_classes(model: nn.Module, data, what: str) -> None:
    """A model can only be scored on a dataset with its own label set."""
    n = getattr(data, "num_classes", None)
    if n is not None and getattr(model, "num_classes", n) != n:
        raise TocomError(f"{what} has {model.num_classes} classes but {data.name} has {n}; evaluate it on the "
                         "dataset it was fine-tuned on")


def resolve_method(meta: dict, model: nn.Module, method: str | None = None) -> str:
    """The compression a model is evaluated under: `method` when given, else the one it was fine-tuned
    with (its header), else the one it is patched with, else ToMe. A model fine-tuned at r = 0 records
    UNCOMPRESSED (nothing was compressed, so every method may evaluate it) and falls through to the latter."""
    trained = meta.get("method")
    if method:
        if int(meta.get("source_r", 0)) and trained not in (None, UNCOMPRESSED, method):
            print(f"[tocom] warning: the model was fine-tuned with {trained} at r={meta['source_r']}; "
                  f"evaluating it with {method}", file=sys.stderr)
        return method
    return trained if trained and trained != UNCOMPRESSED else method_of(model) or METHODS[0]


def check_selection(meta: dict, select_split: str, what: str) -> None:
    """Refuse to pick anything on images the selecting model was trained on."""
    trained = meta.get("split")
    if trained is None:
        print(f"[tocom] warning: {what} does not record its training split; cannot check that s is chosen on "
              "held-out images", file=sys.stderr)
    elif splits_overlap(trained, select_split):
        raise TocomError(f"{what} was trained on '{trained}', which contains the selection split "
                         f"'{select_split}'; choose s with a companion model trained without '{select_split}' "
                         "at the same source r (--select-checkpoint)")


def cross_evaluate(model: nn.Module, meta: dict, splits: dict, targets: Sequence[int],
                   plugins: dict[str, ToCom] | None = None, s: EvalSettings | None = None,
                   run: RunSettings | None = None, selector: tuple[nn.Module, dict, object] | None = None,
                   out: str | Path | None = None, method: str | None = None,
                   plugin_targets: dict[str, Sequence[int]] | None = None) -> pd.DataFrame:
    """Top-1 of `model` (fine-tuned at meta['source_r']) at each target r, plain and with each plugin.

    method: the compression to evaluate under (`resolve_method`: default, the one it was fine-tuned with).

    splits: {"val": dataset, "test": dataset, ...}; plugins: {label: plugin} (the label fills the
    `variant` column, e.g. "tocom", "shared", "h4"); each is scored on the grid scaled to the s it was
    distilled at (`plugin.train_scale`, from its header; the grid's reference when unknown).
    selector: (model, meta, dataset of the selection split) that chooses s instead of `model` itself;
    it must be fine-tuned at the same source r (and, above r = 0, with the same method).
    plugin_targets: {label: targets} for a plugin evaluated at only some of `targets` (default: all of them)."""
    s, run = s or EvalSettings(), run or RunSettings()
    method, source = resolve_method(meta, model, method), int(meta.get("source_r", 0))
    trained = meta.get("method") or method
    patch(model, method)
    too_big = [t for t in targets if t > max_r(model)]
    if too_big:
        raise TocomError(f"target r {too_big} exceeds what the backbone carries (max r = {max_r(model)})")
    for label, own in (plugin_targets or {}).items():
        if label not in (plugins or {}) or not set(own) <= set(targets):
            raise TocomError(f"plugin targets {label}={','.join(map(str, own))}: name a plugin given with --plugin "
                             f"({', '.join(plugins or {}) or 'none'}) and targets among --targets "
                             f"({', '.join(map(str, targets))})")
    rt = runtime(run.device, run.precision)
    models = {"final": (model, meta)}
    eval_splits = {name: ("final", ds) for name, ds in splits.items()}
    select = s.select_split
    if selector is not None:
        sel_model, sel_meta, sel_data = selector
        if int(sel_meta.get("source_r", -1)) != source or (source and sel_meta.get("method", trained) != trained):
            raise TocomError("the selection model must be fine-tuned with the same method at the same source r "
                             f"as the evaluated one (r={source}, {trained if source else UNCOMPRESSED})")
        patch(sel_model, method)
        models["select"] = (sel_model, sel_meta)
        eval_splits = {k: v for k, v in eval_splits.items() if k != select}
        eval_splits[select] = ("select", sel_data)
    if select not in eval_splits:
        raise TocomError(f"selection split {select!r} is not among the evaluated splits {list(eval_splits)}")
    for name, (which, ds) in eval_splits.items():
        check_classes(models[which][0], ds, f"the {which} model")
    check_selection(models[eval_splits[select][0]][1], select, f"the {eval_splits[select][0]} model")
    for m, _ in models.values():
        m.to(rt.device).eval()
    loaders = {name: (which, loader(ds, s.batch_size, rt, train=False, seed=run.seed, workers=run.workers))
               for name, (which, ds) in eval_splits.items()}

    def measure(split, target, variant, scale):
        which, data = loaders[split]
        top1, n = accuracy(models[which][0], data, rt, not run.quiet, desc=f"{split} r={target} {variant} s={scale}")
        return {"top1": top1, "n": n, "checkpoint": which}

    base = dict(dataset=meta.get("dataset", ""), backbone=meta.get("backbone", ""), method=method,
                source_r=source, seed=run.seed)
    rows = evaluate_targets([m for m, _ in models.values()], list(loaders), targets, source, plugins or {}, s,
                            measure, "top1", rt.device, base, plugin_targets)
    return write_table(pd.DataFrame(rows, columns=COLUMNS), out)


def task_arithmetic(high_a: dict, low_a: dict, low_b: dict) -> dict:
    """M_high^A - M_low^A + M_low^B (paper Eq. 2/3) over the shared backbone; B keeps its own head."""
    out = {}
    for key, value in low_b.items():
        shared = key in high_a and key in low_a and high_a[key].shape == value.shape and not key.startswith(("head", "fc_norm"))
        out[key] = value + high_a[key] - low_a[key] if shared and value.is_floating_point() else value
    return out


def transfer(model_b: nn.Module, meta_b: dict, high_a: dict, low_a: dict, test_set, target_r: int,
             s: EvalSettings | None = None, run: RunSettings | None = None,
             out: str | Path | None = None, method: str | None = None, high_r: int = 16) -> pd.DataFrame:
    """Table 1: top-1 on B at `target_r` of M_0^B and of M_high^A - M_0^A + M_0^B (`high_r`: the degree M_high^A
    was fine-tuned at, 16 in the paper; it names the row), under `method` (`resolve_method`: default, the one
    M_0^B records, i.e. ToMe for the uncompressed r = 0 model)."""
    s, run = s or EvalSettings(), run or RunSettings()
    rt = runtime(run.device, run.precision)
    method = resolve_method(meta_b, model_b, method)
    patch(model_b, method)
    if not 0 <= target_r <= max_r(model_b):
        raise TocomError(f"target r {target_r} is outside what the backbone carries (0..{max_r(model_b)})")
    check_classes(model_b, test_set, "model B")
    set_r(model_b, target_r)
    model_b.to(rt.device).eval()
    data = loader(test_set, s.batch_size, rt, train=False, seed=run.seed, workers=run.workers)
    rows = []
    plain = {k: v.clone() for k, v in model_b.state_dict().items()}
    arith = task_arithmetic({k: v.to(rt.device) for k, v in high_a.items()},
                            {k: v.to(rt.device) for k, v in low_a.items()}, plain)
    if all(arith[k] is v for k, v in plain.items()):      # task_arithmetic moved no weight
        raise TocomError("M_high^A and M_0^A share no weight with M_0^B (other architectures); the arithmetic would "
                         "leave M_0^B unchanged: pass models fine-tuned from B's backbone")
    for name, state in (("M0_B", plain), (f"M{high_r}_A-M0_A+M0_B", arith)):
        model_b.load_state_dict(state)
        top1, n = accuracy(model_b, data, rt, not run.quiet, desc=name)
        rows.append(dict(dataset=meta_b.get("dataset", ""), backbone=meta_b.get("backbone", ""),
                         method=method, model=name, target_r=target_r, seed=run.seed, top1=top1, n=n))
    model_b.load_state_dict(plain)
    return write_table(pd.DataFrame(rows), out)


def score(model: nn.Module, meta: dict, data, s: EvalSettings, run: RunSettings, out: str | Path,
          lineage: dict | None = None) -> dict:
    """Plain top-1 at the model's own source r on a held-out split (a search candidate's score), with what `select`
    compares candidates by: the split, dataset, source r and backbone (`lineage['backbone']`)."""
    check_classes(model, data, "the model")
    check_selection(meta, data.split, "the model")
    rt = runtime(run.device, run.precision)
    patch(model, resolve_method(meta, model))
    set_r(model, int(meta.get("source_r", 0)))
    model.to(rt.device).eval()
    top1, n = accuracy(model, loader(data, s.batch_size, rt, train=False, seed=run.seed, workers=run.workers), rt,
                       not run.quiet)
    result = {"top1": top1, "n": n, "split": data.split, "dataset": meta.get("dataset"),
              "source_r": meta.get("source_r"), "settings": meta.get("settings", {}),
              "backbone": (lineage or {}).get("backbone"), "lineage": {**(lineage or {}), "data": data_entry(data)}}
    write_json(result, out)
    return result
