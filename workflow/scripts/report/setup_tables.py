"""Set-up tables generated from what ran (so they cannot disagree with it): Table 12 backbones, Table 13
hyper-parameters beside the paper's, the hyper-parameter searches, Table 14 datasets, and how this run maps
the paper's compression degrees.

Table 13 reads the settings every model and plugin records in its safetensors header (models.csv,
plugins.csv: `settings.<field>` columns), grouped by stage and recipe, next to the paper's Table 13
(reference/paper_hparams.csv); a `≠ paper` column names the columns that differ, and says when
docs/protocol.md documents the difference. The search table reads tables/search.csv (the appendix's
FGVC learning-rate and AdaptFormer-scale searches: the grid, the value chosen on val per dataset).
Sizes come from the headers and the evaluated sample counts (eval.csv)."""

import json
import math
from pathlib import Path

import pandas as pd

from common.ctx import GROUPS, Ctx, run
from common.table import stub, write_plain
from items import REFERENCES, ROLES, Item
from tocom import layout
from tocom.settings import DENSE_METHODS, DistillSettings, FinetuneSettings   # torch-free: names and defaults

REPO = Path(__file__).resolve().parents[3]
HPARAMS = REPO / REFERENCES["paper_hparams"]
PROTOCOL = REPO / REFERENCES["protocol"]

PAPER_DEGREES = {"fig5_source": "0", "fig6_source": "16", "inference": "targets 16, 12; sources 0, 4",
                 "training": "sources 16, 12; targets 0, 4", "ablation": "0 → 16, 0 → 12, 16 → 0",
                 "other": "0 → 16, 16 → 0", "other_readings": "16 → 0 (inferred), or 0 → 12"}
USES = {"fig5_source": "Figs. 5, 7 (source r)", "fig6_source": "Fig. 6 (source r)",
        "inference": "Tables 2-3", "training": "Table 4", "ablation": "Tables 5-7", "other": "Tables 8-10, IdleViT",
        "other_readings": "Tables 8-10 (a block's other reading)"}

# Table 13's rows (and the text's ToCom settings) in the paper's order -> how to read ours from a stage's
# settings (a dict field -> value). Keys the code fixes rather than a setting (optimizer, decay, augmentation,
# LoRA targets) are named in the caption instead.
PAPER_KEYS = ["epochs", "batch_size", "base_learning_rate", "learning_rate", "weight_decay", "warmup_epochs",
              "label_smoothing", "stochastic_depth", "mixup_prob", "cutmix_prob", "peft_method",
              "adaptformer_scale_grid", "tocom_lora_rank_h", "tocom_num_lora_groups", "tocom_scale_s_train",
              "tocom_scale_s_infer_grid"]
FIELD_OF = {"stochastic_depth": "drop_path", "mixup_prob": "mixup", "cutmix_prob": "cutmix",
            "tocom_lora_rank_h": "rank", "tocom_scale_s_train": "scale", "tocom_num_lora_groups": "groups"}
EXTRA = ["split", "scale_lr", "min_lr", "mode", "adapter_dim", "adapter_scale", "limit", "variant", "loss",
         "teacher_side", "temperature", "lora_dropout", "r_max"]
SEARCH_KEY = {"lr": "base_learning_rate", "adapter_scale": "adaptformer_scale_grid"}
CODE_FIXED = ("Fixed in code rather than settings, so not rows here: AdamW, cosine decay (per step), the LoRA "
              "targets W_q/W_v, and the augmentation (RandAugment 9/0.5 and random erasing 0.25 on datasets "
              "with the DeiT transform); tests/test_protocol.py checks them against Table 13.")
DISTILL = "ToCom distillation"


def degrees_text(d) -> str:
    if isinstance(d, list) and d and isinstance(d[0][0], list):      # other_readings: [pair, its other reading]
        return "; ".join(f"{a} → {b} or {c} → {e}" for (a, b), (c, e) in d)
    if isinstance(d, dict):
        return "; ".join(f"{k} {', '.join(map(str, v))}" for k, v in d.items())
    if isinstance(d, list):
        return ", ".join(f"{a} → {b}" for a, b in d)
    return str(d)


# ---- values ------------------------------------------------------------------------------------------
def missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def show(v) -> str:
    """One spelling of a setting's value."""
    if missing(v):
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple)):
        return "{" + ", ".join(show(x) for x in v) + "}"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e6 else f"{v:g}"
    return str(v)


def norm(value) -> str:
    """Comparable form: numbers by value, sets as {a, b}; 0, '-', off and not set are one thing."""
    if missing(value) or value in ("-", "", "—", False) or (isinstance(value, (int, float)) and value == 0):
        return "-"
    if isinstance(value, (list, tuple)):
        return "{" + ", ".join(sorted(norm(v) for v in value)) + "}"
    text = str(value).strip()
    if text.startswith("{"):
        return norm([v.strip() for v in text.strip("{}").split(",")])
    try:
        return repr(float(text)) if float(text) != 0 else "-"
    except ValueError:
        return text.lower()


def parse(v):
    """A settings cell read back from CSV (lists were written as JSON)."""
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return json.loads(v)
        except ValueError:
            return v
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    return v


# ---- what ran, per stage and recipe ---------------------------------------------------------------------
def paper_column(recipe: str) -> str | None:
    """The paper's Table 13 column a recipe stands for (by name: cifar*, fgvc*, vtab*)."""
    for prefix, column in (("cifar", "CIFAR"), ("fgvc", "FGVC"), ("vtab", "VTAB-1k")):
        if recipe.lower().startswith(prefix) or prefix in recipe.lower():
            return column
    return None


def recipe_map(cfg) -> dict:
    """(backbone key, dataset) -> recipe, from the config (for results that do not record it)."""
    out = {}
    for st in cfg.get("studies", []):
        for s in st["sets"]:
            for d in s["datasets"]:
                out.setdefault((st["backbone"], d), s["recipe"])
    for tr in cfg.get("transfer", []):
        out.setdefault((tr["backbone"], tr["a"]), tr["recipe_a"])
        for b in tr["b"]:
            out.setdefault((tr["backbone"], b), tr["recipe_b"])
    return out


def records(df: pd.DataFrame, key: str) -> list[tuple[str, dict]]:
    """(label, {field: value}) per row, from the flattened `settings.<field>` columns."""
    cols = [c for c in df.columns if c.startswith("settings.")]
    out = []
    for _, row in df.iterrows():
        values = {c.removeprefix("settings."): parse(row[c]) for c in cols}
        if "groups" in row:
            values["groups"] = row["groups"]
        out.append((str(row[key]), values))
    return out


def groups_of(ctx: Ctx) -> tuple[list[dict], bool]:
    """The stages to tabulate: [{label, paper column, records [(who, settings)]}], and whether every one
    was read from result headers (False: some fall back to the config's values)."""
    cfg, plugins, mods = ctx.config, ctx.table("plugins"), ctx.table("models")
    from_results, out = True, []
    if len(plugins) and "method" in plugins:      # Table 11's dense-prediction plugins: their own recipe
        plugins = plugins[~plugins.method.isin(DENSE_METHODS)]
    pl = plugins[plugins.variant == "tocom"] if len(plugins) and (plugins.variant == "tocom").any() else plugins
    seg_only = {(cfg.get("segmentation") or {}).get("backbone")} - \
        {st["backbone"] for st in cfg.get("studies", [])} - {t["backbone"] for t in cfg.get("transfer", [])}
    if len(pl) and any(c.startswith("settings.") for c in pl.columns):
        recs = records(pl, "backbone_key")
    else:
        from_results = False
        recs = []
        for bb in [b for b in cfg["backbones"] if b not in seg_only]:
            values = {**cfg["distill"], **cfg["backbones"][bb].get("distill", {}), **cfg["variants"].get("tocom", {})}
            values.pop("dataset", None)
            recs.append((bb, {**DistillSettings.from_mapping(values).asdict(), "groups": None}))
    out.append({"label": DISTILL, "paper": "ImageNet", "records": recs})
    if len(mods):
        if "role" in mods:
            mods = mods[mods.role.fillna("final") == "final"]
        known = recipe_map(cfg)
        if "recipe" not in mods:
            mods = mods.assign(recipe=None)
        mods = mods.assign(recipe=[r if isinstance(r, str) else known.get((b, d))
                                   for r, b, d in zip(mods.recipe, mods.backbone_key, mods.dataset)])
    has_settings = len(mods) and any(c.startswith("settings.") for c in mods.columns)
    for name, recipe in cfg["recipes"].items():
        rows = mods[mods.recipe == name] if has_settings else mods.iloc[:0]
        if len(rows):
            recs = records(rows, "dataset")
        else:
            used = any(s["recipe"] == name for st in cfg.get("studies", []) for s in st["sets"]) or \
                any(name in (t["recipe_a"], t["recipe_b"]) for t in cfg.get("transfer", []))
            if not used:
                continue
            from_results = False
            values = {k: v for k, v in recipe.items() if k != "search"}
            recs = [("config", FinetuneSettings.from_mapping(values).asdict())]
        out.append({"label": f"fine-tune: {name}", "recipe": name, "paper": paper_column(name), "records": recs})
    return out, from_results


def searched_grid(ctx: Ctx, recipe: str, setting: str):
    """The grid a recipe searched `setting` over: from search.csv (what ran), else the config."""
    s = ctx.table("search")
    if len(s) and setting in s and "recipe" in s:
        values = s[s.recipe == recipe][setting].dropna()
        if len(values):
            return list(dict.fromkeys(float(v) for v in values))
    grid = (ctx.config["recipes"].get(recipe, {}).get("search") or {}).get(setting)
    return list(grid) if grid else None


def our_value(ctx: Ctx, group: dict, key: str, settings: dict):
    """Our value of a Table 13 key (or one of our own settings) in one stage's settings."""
    if key in ("adapter_dim", "adapter_scale") and settings.get("mode") != "adaptformer":
        return None                                   # no adapter: the setting does nothing
    if key in EXTRA:
        return settings.get(key)
    distill, recipe = group["label"] == DISTILL, group.get("recipe")
    if key == "base_learning_rate":
        if recipe and searched_grid(ctx, recipe, "lr"):
            return searched_grid(ctx, recipe, "lr")
        return settings.get("lr") if settings.get("scale_lr") else "-"
    if key == "learning_rate":
        return "-" if settings.get("scale_lr") else settings.get("lr")
    if key == "label_smoothing":
        return None if distill and "label_smoothing" not in settings else settings.get("label_smoothing")
    if key == "peft_method":
        return None if distill else (f"AdaptFormer (hidden dim {show(settings.get('adapter_dim'))})"
                                     if settings.get("mode") == "adaptformer" else settings.get("mode"))
    if key == "adaptformer_scale_grid":
        return searched_grid(ctx, recipe, "adapter_scale") if recipe and settings.get("mode") == "adaptformer" \
            else None
    if key.startswith("tocom_"):
        if not distill:
            return None
        if key == "tocom_scale_s_infer_grid":
            return list(ctx.config.get("evaluate", {}).get("scales", []))
        return settings.get(FIELD_OF[key])
    return settings.get(FIELD_OF.get(key, key))


def cell(ctx: Ctx, group: dict, key: str) -> tuple[str, list]:
    """(display, [values]) of one stage and key; values that differ across datasets/backbones are listed
    with who had them."""
    by_value: dict[str, tuple] = {}
    for who, settings in group["records"]:
        v = our_value(ctx, group, key, settings)
        by_value.setdefault(show(v), (v, []))[1].append(who)
    if not by_value:
        return "—", []
    if len(by_value) == 1:
        text, (v, _) = next(iter(by_value.items()))
        return text, [v]
    return "; ".join(f"{t} ({', '.join(sorted(set(w)))})" for t, (_, w) in by_value.items()), \
        [v for v, _ in by_value.values()]


def protocol_rows() -> dict[str, str]:
    """docs/protocol.md's table of documented differences: setting id (`<Table 13 column>.<key>`) -> the
    value its `ours` column documents."""
    text = PROTOCOL.read_text() if PROTOCOL.exists() else ""
    if "## Table 13" not in text:
        return {}
    table = text.split("## Table 13", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and "." in cells[0] and not cells[0].startswith("-"):
            rows[cells[0]] = cells[3]
    return rows


def hparams_table(ctx: Ctx) -> tuple[pd.DataFrame, list[dict], bool]:
    groups, from_results = groups_of(ctx)
    paper = pd.read_csv(HPARAMS, dtype=str, keep_default_na=False) if HPARAMS.exists() else \
        pd.DataFrame(columns=["dataset", "key", "value"])
    paper = {(r.dataset, r.key): r.value for r in paper.itertuples()}
    documented = protocol_rows()
    used: set = set()
    for g in groups:                 # "paper CIFAR"; a second recipe standing for the same column names itself
        if g["paper"]:
            name = f"paper {g['paper']}"
            g["paper_label"] = name if name not in used else f"{name} ({g['label'].removeprefix('fine-tune: ')})"
            used.add(g["paper_label"])
    rows = []
    for key in PAPER_KEYS + EXTRA:
        row, differs = {"setting": key}, []
        for g in groups:
            text, values = cell(ctx, g, key)
            row[g["label"]] = text
            if g["paper"] is None:
                continue
            p = paper.get((g["paper"], key))
            row[g["paper_label"]] = p if p is not None else "—"
            if p is not None and any(norm(v) != norm(p) for v in values):
                label = g["label"].removeprefix("fine-tune: ")
                doc = documented.get(f"{g['paper']}.{key}")      # documented: the value the protocol explains
                explained = doc is not None and all(norm(v) == norm(doc) for v in values)
                differs.append(f"{label} (documented)" if explained else label)
        row["≠ paper"] = ", ".join(differs)
        informative = [v for k, v in row.items() if k not in ("setting", "≠ paper")]
        if any(v not in ("—", "-") for v in informative):
            rows.append(row)
    columns = ["setting"] + [c for g in groups for c in (g["label"], g.get("paper_label")) if c] + ["≠ paper"]
    return pd.DataFrame(rows).reindex(columns=columns).fillna("—"), groups, from_results


def search_table(ctx: Ctx) -> pd.DataFrame:
    """One row per search and searched setting: the grid, the value chosen on val, the val top-1s."""
    s = ctx.table("search")
    if s.empty:
        return pd.DataFrame()
    base = {"backbone_key", "method", "dataset", "seed", "recipe", "candidate", "split", "top1", "chosen"}
    settings = [c for c in s.columns if c not in base]
    paper = pd.read_csv(HPARAMS, dtype=str, keep_default_na=False) if HPARAMS.exists() else None
    rows = []
    keys = ["backbone_key", "method", "dataset", "seed"]
    for (bk, method, dataset, seed), cands in s.groupby(keys, sort=False):
        recipe = cands.recipe.iloc[0] if "recipe" in cands and isinstance(cands.recipe.iloc[0], str) else None
        best = cands[cands.chosen]
        for setting in settings:
            values = cands[setting].dropna()
            if values.empty:
                continue
            grid = list(dict.fromkeys(float(v) for v in values))
            pcol = paper_column(recipe) if recipe else None
            pgrid = None
            if paper is not None and pcol and setting in SEARCH_KEY:
                hit = paper[(paper.dataset == pcol) & (paper.key == SEARCH_KEY[setting])]
                pgrid = hit.value.iloc[0] if len(hit) else None
            top1, split = cands.top1.astype(float), cands.split.iloc[0]
            rows.append({"backbone": bk, "method": method, "dataset": dataset, "seed": seed, "recipe": recipe,
                         "setting": setting, "grid": show(grid), "paper grid": pgrid or "—",
                         "chosen": show(float(best[setting].iloc[0])) if len(best) else "—",
                         f"{split} top-1 (chosen)": f"{float(best.top1.iloc[0]):.1f}" if len(best) else "—",
                         f"{split} top-1 (range)": f"{top1.min():.1f}–{top1.max():.1f}"})
    return pd.DataFrame(rows)


def generated(ctx: Ctx) -> str:
    return f"Generated from the `{ctx.name}` config (scale `{ctx.scale}`)."


def backbones(ctx: Ctx, item: Item) -> None:
    """Table 12: each backbone, its roles, weights, ToCom loss, and the plugin's size from its header."""
    cfg, plugins = ctx.config, ctx.table("plugins")
    roles = {}
    for role, spec in ctx.report.items():
        if role in ROLES and spec:
            roles.setdefault(spec["backbone"], []).append(f"{ROLES[role]} ({spec['method']})")
    rows = []
    for key, bb in cfg["backbones"].items():
        pl = plugins[plugins.backbone_key == key].sort_values("variant", key=lambda v: v != "tocom") \
            if len(plugins) else plugins
        pre = bb.get("pretrain")
        weights = (f"pre-trained here on {pre['dataset']} ({pre['epochs']} epochs)" if pre else
                   f"checkpoint {bb['checkpoint']}" if bb.get("checkpoint") else "timm hub")
        loss = {**cfg["distill"], **bb.get("distill", {})}.get("loss", "kd")
        rows.append({"key": key, "timm model": bb["timm"], "roles": ", ".join(roles.get(key, [])) or "—",
                     "weights": weights, "ToCom loss": loss,
                     "width": pl.width.iloc[0] if len(pl) else None, "depth": pl.depth.iloc[0] if len(pl) else None,
                     "ToCom params (M)": f"{pl.params.iloc[0] / 1e6:.3f}" if len(pl) else None})
    write_plain(ctx, item, f"{generated(ctx)} Width, depth and plugin size are read from the distilled plugins' "
                "safetensors headers.", pd.DataFrame(rows))


def hparams(ctx: Ctx, item: Item) -> None:
    """Table 13: the settings that ran beside the paper's."""
    cfg = ctx.config
    table, groups, from_results = hparams_table(ctx)
    ev_cfg = cfg.get("evaluate", {})
    scales, grid_scale = ev_cfg.get("scales", []), ev_cfg.get("grid_scale", 0.1)
    overrides = "; ".join(f"{k}: " + ", ".join(f"{a}={b}" for a, b in v.items())
                          for k, v in cfg["variants"].items() if v)
    compared = ", ".join(f"{g['label'].removeprefix('fine-tune: ')} ↔ {g['paper']}" for g in groups if g["paper"])
    source = ("Ours: the settings recorded in the headers of the distilled plugins (variant `tocom`, per backbone) "
              "and of the final fine-tuned models (per recipe; selection companions use the same settings on "
              "`train`), i.e. what ran; a value that differs across backbones or datasets (a search's choice, "
              "`dataset_settings`) is listed with who had it." if from_results else
              "Ours: some results record no settings (written before the headers did), so those columns show "
              "the config's values.")
    searches = {k: v["search"] for k, v in cfg["recipes"].items() if v.get("search")}
    search_note = ("Searched (see the next table): " + "; ".join(
        f"{k}: " + ", ".join(f"{a} over {show(b)}" for a, b in s.items() if a != "source_r")
        + f" at source r = {s.get('source_r', 0)}" for k, s in searches.items()) + ".") if searches else \
        "No recipe searches a setting."
    write_plain(ctx, item, f"{generated(ctx)} {source} Paper: Table 13 and the Sec. 5.1 ToCom settings "
                f"({REFERENCES['paper_hparams']}), compared column by column ({compared}); `≠ paper` names the "
                f"columns whose value differs (`documented`: {REFERENCES['protocol']} documents this very value and "
                "gives the reason). Base learning rates are scaled by batch / 512 when `scale_lr` is on. Inference "
                f"scales s: {', '.join(map(show, scales))}, written for a plugin trained at s = {show(grid_scale)} (a "
                f"plugin trained at another s is evaluated on the grid × its s / {show(grid_scale)}), chosen on "
                f"`{ev_cfg.get('select_split', 'val')}`. {search_note} "
                f"Seeds: {', '.join(map(str, ctx.seeds()))}; plugin variants (overrides of the distillation "
                f"column): {overrides or 'none'}. {CODE_FIXED} The paper's distillation cost (1.8 h on 8 V100s) is "
                "compared with ours in the claims item.", table)


def searches(ctx: Ctx, item: Item) -> None:
    """Table 13 (searches): each search of this run, its grid and the value chosen on val."""
    search = search_table(ctx)
    if search.empty:
        return stub(ctx, item, "no recipe of this run searches a setting (`search` in `recipes`)")
    write_plain(ctx, item, f"{generated(ctx)} The appendix's searches as they ran "
                f"({layout.TABLE.format(table='search')}): each candidate fine-tuned on `train` at the search's "
                "source r and scored plain on the held-out split; the best (ties: the earlier in grid order) is "
                "applied to every model of that backbone and dataset. One search at source r = 0 serves every "
                "compression method (filed under none).", search)


def datasets(ctx: Ctx, item: Item) -> None:
    """Table 14: each dataset, its roles, recipe, classes and sizes."""
    cfg, models, ev = ctx.config, ctx.table("models"), ctx.table("eval")
    role_of = {d: ["CIFAR-100/FGVC role"] for d in ctx.report["cifar_fgvc"]}
    for g, ds in ctx.vtab().items():
        for d in ds:
            role_of.setdefault(d, []).append(f"VTAB-1k {GROUPS[g]}")
    recipes = {d: s["recipe"] for st in cfg.get("studies", []) for s in st["sets"] for d in s["datasets"]}
    for tr in cfg.get("transfer", []):
        recipes.setdefault(tr["a"], tr["recipe_a"])
        recipes.update({b: recipes.get(b, tr["recipe_b"]) for b in tr["b"]})
    rows = []
    for d, recipe in recipes.items():
        m = models[models.dataset == d] if len(models) else models
        if len(m) and "role" in m:
            m = m[m.role.fillna("final") == "final"]
        n = ev[ev.dataset == d].groupby("split").n.max() if len(ev) else {}
        limit = cfg["recipes"][recipe].get("limit")
        split = m.split.dropna().iloc[0] if len(m) and "split" in m and m.split.notna().any() else \
            cfg["recipes"][recipe].get("split", FinetuneSettings().split)
        rows.append({"dataset": d, "role": "; ".join(role_of.get(d, ["transfer only"])), "recipe": recipe,
                     "classes": m.num_classes.iloc[0] if len(m) else None,
                     "train samples": limit or f"all ({split})",
                     "val evaluated": n.get("val"), "test evaluated": n.get("test")})
    write_plain(ctx, item, f"{generated(ctx)} Classes from the fine-tuned models' headers; evaluated sample counts "
                "from eval.csv.", pd.DataFrame(rows))


def degrees(ctx: Ctx, item: Item) -> None:
    """How this run maps the paper's compression degrees onto its own ladder."""
    rows = [{"setting": k, "used by": USES[k], "paper": PAPER_DEGREES[k], "this run": degrees_text(v)}
            for k, v in ctx.report["degrees"].items()]
    write_plain(ctx, item, f"{generated(ctx)} How this run maps the paper's r settings onto its own ladder (config "
                "`report.degrees`).", pd.DataFrame(rows))


if __name__ == "__main__":
    run(snakemake)  # noqa: F821
