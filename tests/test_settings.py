"""Settings are the one home of every default: the config schema's stage settings, the CLI's flags and
config/README.md are generated from the dataclasses of tocom/settings.py."""
import copy
import sys
import typing
from dataclasses import fields
from pathlib import Path

import jsonschema
import pytest
import yaml

from tocom.cli import build_parser
from tocom.errors import TocomError
from tocom.experiments import validate_config
from tocom.settings import (METHODS, UNCOMPRESSED, EvalMethodSettings, MeasureSettings, Settings, SourceMethodSettings,
                            SweepSettings, _base_type, config_schema)

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow/schemas/config.schema.yaml"


def _all_settings(cls=Settings):
    return [c for sub in cls.__subclasses__() for c in (sub, *_all_settings(sub))]


def _bad_values(cls, f, default):
    """Values the field's declared type, choices or check rule out."""
    check, choices = f.metadata["check"], f.metadata["choices"]
    tp, seq, _ = _base_type(typing.get_type_hints(cls)[f.name])
    sample = tp(1) if default is None else default[0] if seq else default
    bad = []
    if choices:
        bad.append("no-such-choice")
    if check == "positive":
        bad.append(0)
    if check == "nonneg":
        bad.append(-1)
    if check == "unit":
        bad.append(1.5)
    if isinstance(sample, (int, float)) and not isinstance(sample, bool):
        bad.append("text")
    if isinstance(sample, bool):
        bad.append("yes")
    return [7, *([v] for v in bad)] if seq else bad       # lists: also a scalar where the list belongs


@pytest.mark.parametrize("cls", _all_settings(), ids=lambda c: c.__name__)
def test_generated_schema_accepts_and_refuses_what_the_dataclass_does(cls):
    """Field by field: the default passes both the schema and the dataclass; every value the dataclass
    refuses (a wrong choice, out of range, wrong type) the schema refuses too."""
    schema = cls.json_schema()
    validator = jsonschema.Draft202012Validator(schema)
    defaults = cls().asdict()
    validator.validate(defaults)
    assert set(schema["properties"]) == {f.name for f in fields(cls)}
    for f in fields(cls):
        for bad in _bad_values(cls, f, defaults[f.name]):
            with pytest.raises(TocomError):
                cls(**{f.name: bad})
            assert list(validator.iter_errors({f.name: bad})), (cls.__name__, f.name, bad)
        assert schema["properties"][f.name]["description"] == f.metadata["help"]
        if None in (defaults[f.name], *(f.metadata["choices"] or ())):
            validator.validate({f.name: None})


def test_config_schema_fills_the_settings_and_methods():
    schema = config_schema(SCHEMA)
    assert schema["$defs"]["METHODS"]["enum"] == list(METHODS)
    distill = schema["$defs"]["DistillSettings"]["properties"]
    assert distill["teacher_side"]["enum"] == ["source", "target"]
    assert distill["drop_path"]["minimum"] == 0 and distill["drop_path"]["maximum"] == 1
    assert distill["img_size"]["type"] == ["integer", "null"]
    assert "teacher_side" not in SCHEMA.read_text()        # written once, in tocom/settings.py


@pytest.mark.parametrize("change, message", [
    (lambda c: c["distill"].update(teacher_side="student"), "distill/teacher_side: 'student' is not one of"),
    (lambda c: c["distill"].update(bogus=1), "distill: Unevaluated properties are not allowed ('bogus' was unexpected)"),
    (lambda c: c["distill"].pop("dataset"), "distill: 'dataset' is a required property"),
    (lambda c: c["recipes"]["cifar"].update(drop_path=1.5), "recipes/cifar/drop_path: 1.5 is greater than the maximum of 1"),
    (lambda c: c["backbones"]["tiny"]["pretrain"].update(mixup=0.5), "('mixup' was unexpected)"),
    (lambda c: c["studies"][0].update(method="tomee"), "studies/0/method: 'tomee' is not one of ['tome', 'evit', 'idle']"),
    (lambda c: c.update(device="gpu"), "device: 'gpu' is not one of"),
    (lambda c: c["segmentation"].update(evaluate={"batchsize": 2}), "('batchsize' was unexpected)"),
])
def test_bad_settings_in_a_config_are_one_line(change, message):
    config = yaml.safe_load((REPO / "config/smoke.yaml").read_text())
    validate_config(copy.deepcopy(config), SCHEMA)
    change(config)
    with pytest.raises(TocomError) as err:
        validate_config(config, SCHEMA)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("config", ["cpu", "smoke", "paper", "gpu"])
def test_committed_configs_are_valid(config):
    validate_config(yaml.safe_load((REPO / f"config/{config}.yaml").read_text()), SCHEMA)


def test_cli_flags_come_from_settings():
    """A flag left out takes the dataclass default; the flags keep their names and meanings."""
    parse = build_parser().parse_args
    args = parse(["bench"])
    assert MeasureSettings.from_args(args) == MeasureSettings()
    args = parse(["bench", "--model", "m", "--method", "evit", "--r", "0", "4", "--mode", "train", "--precision",
                  "bf16", "--threads", "3", "--plugin-check", "--device", "cpu"])     # (--amp was bf16 autocast)
    assert MeasureSettings.from_args(args) == MeasureSettings(model="m", method="evit", r=(0, 4), mode="train",
                                                              precision="bf16", threads=3, plugin_check=True, device="cpu")
    assert SweepSettings.from_args(parse(["flops", "--r", "2"])) == SweepSettings(r=(2,))
    args = parse(["finetune", "--dataset", "d", "--out", "o", "--r", "2", "--method", "idle"])
    assert SourceMethodSettings.from_args(args) == SourceMethodSettings(r=2, method="idle")
    assert SourceMethodSettings.from_args(parse(["finetune", "--dataset", "d", "--out", "o"])).method == METHODS[0]
    args = parse(["evaluate", "--checkpoint", "c", "--targets", "0", "--out", "o"])
    assert EvalMethodSettings.from_args(args).method is None


@pytest.mark.parametrize("argv", [["flops", "--method", UNCOMPRESSED], ["flops", "--head", "mask"],
                                  ["bench", "--method", "tome_ffn"], ["bench", "--method", UNCOMPRESSED],
                                  ["bench", "--mode", "plugin"],
                                  ["evaluate", "--checkpoint", "c", "--targets", "0", "--out", "o", "--method", "none2"]])
def test_cli_choices_come_from_settings(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_config_readme_is_generated():
    """config/README.md is the generator's output for the committed schema, settings and paper config."""
    sys.path.insert(0, str(REPO / "workflow/scripts"))
    import config_readme

    text = config_readme.render()
    assert (REPO / "config/README.md").read_text() == text, "regenerate: python workflow/scripts/config_readme.py"
    assert text.splitlines()[2].startswith("Generated by `python workflow/scripts/config_readme.py`")
    for line in ("| `distill.teacher_side` | one of source, target |", "| `recipes.<name>.epochs` | integer ≥ 1 |",
                 "| `seeds` | list of distinct integer in [0, 4294967295] |"):
        assert line in text, line
    assert "| `recipes.<name>.epochs` | integer ≥ 1 | training epochs | `30` | `cifar: 100; fgvc: 30; vtab: 100` |" in text
