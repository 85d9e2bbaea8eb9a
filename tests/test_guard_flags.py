"""Bad numbers on the command line: NaN/inf and out-of-range values are refused (never clamped or replaced) with
one `error:` line, exit 2, naming the flag the user typed. The rules live in the generated parsers
(`setting(..., bounds=...)`, TaskSettings' `_setting(..., bounds)`) and in `beit3core.errors.ArgumentParser`,
so every flag of every command gets them."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest

from beit3core.errors import (
    ArgumentParser,
    UserError,
    check_bounds,
    check_range,
    in_range,
    run_main,
)
from beit3core.tasks import TaskSettings, settings_for
from beit3train import finetune, pretrain

FINETUNE = ["--task", "classification", "--data", "d", "--text-tokenizer", "t", "--init", "random", "--out", "o"]
PRETRAIN = ["--data", "d", "--text-tokenizer", "t", "--visual-tokens", "v", "--out", "o",
            "--arch", "beit3_tiny_patch8_64"]


def _error_line(capsys) -> str:
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("error: "), err
    return err


@pytest.mark.parametrize("extra,flag", [
    (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"), (["--label-smoothing", "2"], "--label-smoothing"),
    (["--mixup", "-1"], "--mixup"), (["--cutmix", "-0.5"], "--cutmix"), (["--betas", "0.9", "1"], "--betas"),
    (["--weight-decay", "-0.1"], "--weight-decay"), (["--eps", "0"], "--eps"), (["--steps", "-3"], "--steps"),
    (["--min-lr", "nan"], "--min-lr"), (["--threads", "-1"], "--threads"), (["--keep-last", "0"], "--keep-last"),
    (["--num-workers", "-2"], "--num-workers"), (["--clip-grad", "-1"], "--clip-grad"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_finetune_bad_number_is_one_line_naming_the_flag(extra, flag, capsys):
    """Before: `--lr nan` and `--label-smoothing 2` trained (NaN loss / a negative target mass); `--mixup -1`
    crashed in timm with a traceback."""
    assert run_main(finetune.main, FINETUNE + extra) == 2
    assert f"{flag}:" in _error_line(capsys)


@pytest.mark.parametrize("extra,flag", [
    (["--text-mask-ratio", "0"], "--text-mask-ratio"), (["--image-mask-ratio", "1.5"], "--image-mask-ratio"),
    (["--grounding-pairs", "-1"], "--grounding-pairs"), (["--lr", "nan"], "--lr"), (["--steps", "0"], "--steps"),
    (["--betas", "0.9", "inf"], "--betas"), (["--drop-path", "1"], "--drop-path"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_pretrain_bad_number_is_one_line_naming_the_flag(extra, flag, capsys):
    assert run_main(pretrain.main, PRETRAIN + extra) == 2
    assert f"{flag}:" in _error_line(capsys)


def test_meaningful_zeros_are_kept():
    """0 threads is every usable core and 0 DataLoader workers loads in the main process (PyTorch DataLoader
    `num_workers=0`): documented meanings, so they are accepted, not refused."""
    cfg = finetune.parse_args(FINETUNE + ["--threads", "0", "--num-workers", "0", "--mixup", "0"])
    assert (cfg.threads, cfg.num_workers, cfg.settings.mixup) == (0, 0, 0.0)


def _float_flags(cls):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        annotation = hints[f.name]
        args = typing.get_args(annotation) or (annotation,)
        if float in args:
            yield f.name, len(args) if typing.get_origin(annotation) is tuple else 1


@pytest.mark.parametrize("cls,base", [(finetune.FinetuneConfig, FINETUNE), (TaskSettings, FINETUNE),
                                      (pretrain.PretrainConfig, PRETRAIN)], ids=["finetune", "task", "pretrain"])
def test_every_float_flag_refuses_nan_and_inf(cls, base):
    parse = finetune.parse_args if base is FINETUNE else pretrain.parse_args
    flags = list(_float_flags(cls))
    assert flags or cls is finetune.FinetuneConfig
    for name, count in flags:
        for bad in ("nan", "inf"):
            with pytest.raises(UserError, match=f"--{name.replace('_', '-')}"):
                parse(base + [f"--{name.replace('_', '-')}"] + [bad] * count)


def test_any_project_parser_refuses_nan_in_groups_and_subcommands():
    """`beit3core.errors.ArgumentParser` registers a finite float type: `beit3 tokenize text --lr nan`,
    `beit3 launch --timeout inf` and the like are refused wherever the flag is declared."""
    parser = ArgumentParser(prog="beit3 x")
    parser.add_argument_group("g").add_argument("--scale", type=float)
    parser.add_subparsers(dest="cmd").add_parser("sub").add_argument("--lr", type=float)
    for argv, flag in ((["--scale", "nan"], "--scale"), (["sub", "--lr", "inf"], "--lr"),
                       (["sub", "--lr=-inf"], "--lr")):
        with pytest.raises(UserError, match=f"argument {flag}: must be a finite number"):
            parser.parse_args(argv)
    assert parser.parse_args(["sub", "--lr", "1e-3"]).lr == 1e-3


@pytest.mark.parametrize("field,value", [("lr", math.nan), ("label_smoothing", 2.0), ("mixup", -1.0),
                                         ("eps", math.inf), ("img_size", "224"), ("hflip", 1)])
def test_task_settings_built_without_a_parser_are_checked_too(field, value):
    """task.json and params.yaml reach TaskSettings without argparse: the same bounds (and types) apply."""
    with pytest.raises(UserError, match=f"--{field.replace('_', '-')}:"):
        TaskSettings(**{field: value})


def test_released_recipes_are_within_bounds():
    for task in ("classification", "vqa", "nlvr2", "retrieval", "captioning"):
        settings_for(task)


def test_check_bounds_on_a_config_built_directly():
    with pytest.raises(UserError, match="--text-mask-ratio: a mask ratio must be in \\(0, 1\\], got 0"):
        pretrain.PretrainConfig(data="d", text_tokenizer="t", visual_tokens="v", out="o", arch="a",
                                text_mask_ratio=0.0)
    check_bounds(finetune.FinetuneConfig(task="vqa", data="d", text_tokenizer="t", init="random", out="o"))


@pytest.mark.parametrize("value,bounds,ok", [(0, "[0, 1)", True), (1, "[0, 1)", False), (1, "[0, 1]", True),
                                             (0, "(0, inf)", False), (math.nan, "(-inf, inf)", False),
                                             (True, "[0, inf)", False), ("1", "[0, inf)", False)])
def test_check_range(value, bounds, ok):
    if ok:
        check_range("--x", value, bounds)
    else:
        with pytest.raises(UserError, match="^--x: must be"):
            check_range("--x", value, bounds)


def test_in_range_type_for_hand_written_flags():
    """For flags declared by hand (`data import --workers`): 0 workers is refused naming the flag, not replaced."""
    parser = ArgumentParser(prog="beit3 data import")
    parser.add_argument("--workers", type=in_range(int, "[1, inf)"), default=8)
    with pytest.raises(UserError, match="^beit3 data import: argument --workers: must be >= 1, got 0$"):
        parser.parse_args(["--workers", "0"])
    with pytest.raises(UserError, match="invalid int value: 'many'"):
        parser.parse_args(["--workers", "many"])
    assert parser.parse_args(["--workers", "3"]).workers == 3


@pytest.mark.parametrize("argv", [["tokenize", "visual", "--data", "d", "--out", "o", "--lr", "nan"],
                                  ["data", "validate", "s", "--out", "o", "--max-reject-fraction", "nan"],
                                  ["data", "synth", "--out", "o", "--scale", "inf"]], ids=lambda a: " ".join(a[:2]))
def test_hand_written_float_flags_of_other_commands_refuse_nan(argv, capsys):
    """Through the `beit3` command: the float flags declared by hand get the finite type too. Before: `--lr nan`
    started a tokenizer training with a NaN learning rate."""
    from beit3ops import cli

    assert cli.main(argv) == 2
    assert "must be a finite number" in _error_line(capsys)


@pytest.mark.parametrize("argv", [["data", "import", "text", "s", "o", "--workers", "0"],
                                  ["data", "validate", "s", "--out", "o", "--workers", "0"]],
                         ids=lambda a: " ".join(a[:2]))
def test_zero_workers_are_refused_not_replaced(argv, capsys):
    """Issue 16 §3: `--workers 0` used to become the CPU count (validate) or 1 (import) silently."""
    from beit3ops import cli

    assert cli.main(argv) == 2
    assert _error_line(capsys).rstrip().endswith("argument --workers: must be >= 1, got 0")
