"""Set-up tables generated from the config that ran (so they cannot disagree with it): Table 12 backbones,
Table 13 hyper-parameters, Table 14 datasets, and how this run maps the paper's compression degrees.
Sizes come from result files only: plugin/model safetensors headers (plugins.csv, models.csv) and the
evaluated sample counts (eval.csv)."""
import pandas as pd

from common import GROUPS, ROLE_TITLES, Ctx, write_plain

PAPER_DEGREES = {"fig5_source": "0", "fig6_source": "16", "inference": "targets 16, 12; sources 0, 4",
                 "training": "sources 16, 12; targets 0, 4", "ablation": "0 → 16, 0 → 12, 16 → 0",
                 "other": "0 → 16, 16 → 0"}
USES = {"fig5_source": "Figs. 5, 7 (source r)", "fig6_source": "Fig. 6 (source r)",
        "inference": "Tables 2-3", "training": "Table 4", "ablation": "Tables 5-7", "other": "Tables 8-10, IdleViT"}
KEYS = ["dataset", "mode", "split", "epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "label_smoothing",
        "drop_path", "mixup", "cutmix", "adapter_dim", "adapter_scale", "limit", "r_max", "rank", "scale", "variant",
        "loss", "teacher_side", "temperature"]


def degrees(d) -> str:
    if isinstance(d, dict):
        return "; ".join(f"{k} {', '.join(map(str, v))}" for k, v in d.items())
    if isinstance(d, list):
        return ", ".join(f"{a} → {b}" for a, b in d)
    return str(d)


def make(ctx: Ctx) -> None:
    cfg, plugins, models, ev = ctx.config, ctx.table("plugins"), ctx.table("models"), ctx.table("eval")
    scale = f"Generated from the `{ctx.name}` config (scale `{ctx.scale}`)."
    roles = {}
    for role, spec in ctx.report.items():
        if role in ROLE_TITLES and spec:
            roles.setdefault(spec["backbone"], []).append(f"{ROLE_TITLES[role]} ({spec['method']})")
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
    write_plain(ctx, "table12_backbones", "Table 12: backbones", f"{scale} Width, depth and plugin size are read "
                "from the distilled plugins' safetensors headers.", pd.DataFrame(rows))

    cols = {"ToCom distillation": cfg["distill"], **{f"fine-tune: {k}": v for k, v in cfg["recipes"].items()}}
    table = pd.DataFrame({name: [s.get(k) for k in KEYS] for name, s in cols.items()}, index=KEYS)
    table = table[table.notna().any(axis=1)].reset_index(names="setting")
    overrides = "; ".join(f"{k}: " + ", ".join(f"{a}={b}" for a, b in v.items())
                          for k, v in cfg["variants"].items() if v)
    write_plain(ctx, "table13_hparams", "Table 13: hyper-parameters",
                f"{scale} Inference scales s: {', '.join(map(str, cfg['scales']))} (chosen on "
                f"`{cfg['evaluate']['select_split']}`); seeds: {', '.join(map(str, ctx.seeds()))}; plugin variants "
                f"(overrides of the distillation column): {overrides or 'none'}.", table)

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
        n = ev[ev.dataset == d].groupby("split").n.max() if len(ev) else {}
        limit = cfg["recipes"][recipe].get("limit")
        rows.append({"dataset": d, "role": "; ".join(role_of.get(d, ["transfer only"])), "recipe": recipe,
                     "classes": m.num_classes.iloc[0] if len(m) else None,
                     "train samples": limit or f"all ({cfg['recipes'][recipe].get('split', 'trainval')})",
                     "val evaluated": n.get("val"), "test evaluated": n.get("test")})
    write_plain(ctx, "table14_datasets", "Table 14: datasets", f"{scale} Classes from the fine-tuned models' "
                "headers; evaluated sample counts from eval.csv.", pd.DataFrame(rows))

    rows = [{"setting": k, "used by": USES[k], "paper": PAPER_DEGREES[k], "this run": degrees(v)}
            for k, v in ctx.report["degrees"].items()]
    write_plain(ctx, "setup_degrees", "Compression degrees: paper vs this run",
                f"{scale} How this run maps the paper's r settings onto its own ladder (config `report.degrees`).",
                pd.DataFrame(rows))


if __name__ == "__main__":
    make(Ctx.from_snakemake(snakemake))  # noqa: F821
