"""The demo's DVC stages as DVC itself resolves them (dvc.repo.Repo(...).index, the commands `dvc repro` runs):
the comparison's seeds run the main fine-tune's recipe, and no stage pins a thread count (issue 17)."""

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def commands() -> dict[str, list[str]]:
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:  # (data.dvc is a stage without a command)
        return {stage.addressing: shlex.split(stage.cmd) for stage in repo.index.stages if stage.cmd}


def _flags(argv: list[str], drop=("--init", "--out", "--seed", "--data")) -> list[str]:
    """The command's flags without the ones that differ by design between the arms (each with its value)."""
    out, skip = [], False
    for word in argv[2:]:
        if skip:
            skip = False
        elif word in drop:
            skip = True
        else:
            out.append(word)
    return out


def _option_pairs(argv: list[str]) -> set[tuple[str, ...]]:
    """{(flag, values...)} so that flag order does not matter."""
    pairs, current = set(), None
    for word in argv:
        if word.startswith("--"):
            if current:
                pairs.add(tuple(current))
            current = [word]
        else:
            current.append(word)
    if current:
        pairs.add(tuple(current))
    return pairs


def test_every_compared_task_runs_at_least_three_seeds_per_arm_with_the_main_recipe(commands):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())["finetune"]
    seeds, tasks = params["compare"]["seeds"], [t["task"] for t in params["compare"]["tasks"]]
    assert len(seeds) >= 3 and 0 in seeds and sorted(params["compare"]["more_seeds"]) == sorted(set(seeds) - {0})
    assert tasks and set(tasks) <= set(params["tasks"])
    for i, task in enumerate(tasks):
        main = commands[f"finetune@{task}"]
        assert "--seed" not in main  # seed 0, the pretrained arm's first seed
        arms = {"pretrained": [commands[f"finetune_pretrained@run{i}-{s}"] for s in params["compare"]["more_seeds"]],
                "random": [commands[f"finetune_random@run{i}-{s}"] for s in seeds]}
        for arm, argvs in arms.items():
            for argv in argvs:
                assert _option_pairs(_flags(argv)) == _option_pairs(_flags(main)), (task, arm)
                init = argv[argv.index("--init") + 1]
                assert init == ("random" if arm == "random" else main[main.index("--init") + 1])
                out, seed = argv[argv.index("--out") + 1], argv[argv.index("--seed") + 1]
                assert re.fullmatch(rf"artifacts/finetune_{arm}/{task}-seed{seed}", out)


def test_no_stage_pins_a_thread_count(commands):
    """Before: `--threads 2` on every fine-tune, so a 16-core machine ran as slowly as this 2-core one."""
    for name, argv in commands.items():
        if "--threads" in argv:
            assert argv[argv.index("--threads") + 1] == "0", name
    assert all("--threads" in commands[n] for n in commands if n.startswith(("finetune", "evaluate")))
