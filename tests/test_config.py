"""The one key=value parser (diffusion/config.py): every command's settings typed and checked up front."""

import pytest

from agents.tasks.modular import ModularFamily
from agents.tasks.programs import ProgramsFamily
from diffusion.config import apply_overrides, check_values, parse_settings
from diffusion.train import TrainConfig
from flows.config import LoopConfig


def test_values_are_read_as_their_fields_types():
    cfg = apply_overrides(TrainConfig(), ["max_steps=7", "lr=1e-2", "betas=[0.9, 0.99]", "run_name=123",
                                          "dataset=none", "progress=false", '--family-params={"p": 5}'])
    assert (cfg.max_steps, cfg.lr, cfg.betas, cfg.run_name) == (7, 0.01, (0.9, 0.99), "123")
    assert (cfg.dataset, cfg.progress, cfg.family_params) == (None, False, {"p": 5})
    loop = apply_overrides(LoopConfig(), ['families=["two_hop"]', "balance_cap=null", "error_rate=0"])
    assert (loop.families, loop.balance_cap, loop.error_rate) == (["two_hop"], None, 0.0)
    assert isinstance(loop.error_rate, float)
    # a class's keyword parameters are settings too: the task families'
    assert parse_settings(ProgramsFamily, ["list_len=[2, 4]", "max_len=3"]) == {"list_len": (2, 4), "max_len": 3}
    assert parse_settings(ModularFamily, ['operations=["x+y"]']) == {"operations": ["x+y"]}


@pytest.mark.parametrize(("target", "item", "message"), [
    (TrainConfig(), "max_step=10", "unknown training setting 'max_step'; settings: objective,"),
    (TrainConfig(), "max_steps", "training setting 'max_steps' is not key=value"),
    (TrainConfig(), "batch_size=1.5", "batch_size must be an integer, got '1.5'"),
    (TrainConfig(), "max_steps=true", "max_steps must be an integer, got 'true'"),
    (TrainConfig(), "lr=fast", "lr must be a number, got 'fast'"),
    (TrainConfig(), "progress=yes", "progress must be true or false, got 'yes'"),
    (TrainConfig(), "family_params=[1]", "family_params must be a JSON object, got '[1]'"),
    (TrainConfig(), "betas=[0.9]", "betas must be a JSON list of 2 numbers, got '[0.9]'"),
    (TrainConfig(), "patience=none", "patience must be an integer, got 'none'"),
    (LoopConfig(), "episodes=abc", "episodes must be an integer, got 'abc'"),
    (LoopConfig(), "families=two_hop", "families must be a JSON list of text, got 'two_hop'"),
    (LoopConfig(), "families=[1]", "families must be a JSON list of text, got '[1]'"),
    (ProgramsFamily, "list_len=[2]", "list_len must be a JSON list of 2 integers, got '[2]'"),
])
def test_a_bad_setting_is_one_line_naming_it_its_value_and_what_it_takes(target, item, message):
    what = "training" if isinstance(target, TrainConfig) else ""
    with pytest.raises(ValueError) as err:
        parse_settings(target, [item], what=what)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.mark.parametrize(("item", "message"), [
    ("episodes=abc", "episodes must be an integer, got 'abc'"),
    ('families=["twohop"]', "families may only list modular, two_hop, programs, strings, got 'twohop'"),
    ("families=[]", "families must name at least one of"),
    ("policy=greedy", "policy must be one of solver, explorer, mixed, got 'greedy'"),
    ("episodes=-1", "episodes must be >= 0, got -1"),
    ("error_rate=2", "error_rate must be <= 1"),
    ('train_overrides={"max_step": 5}', "train_overrides: unknown training setting 'max_step'"),
    ('train_overrides={"grokfast": "fast"}', "train_overrides: grokfast must be one of none, ema, ma"),
    ('family_params={"modular": {"p": "x"}}', "family_params.modular: p must be an integer, got 'x'"),
    ('family_params={"modular": {"q": 3}}', "family_params.modular: unknown modular family setting 'q'"),
    ('family_params={"chess": {}}', "family_params.chess: unknown task family 'chess'"),
])
def test_loop_settings_are_checked_whole(item, message):
    with pytest.raises(ValueError, match="^" + message.replace("[", r"\[").replace("(", r"\(")):
        LoopConfig.from_overrides([item])


def test_values_from_json_are_checked_the_same_way():
    assert check_values(TrainConfig, {"max_steps": 5, "betas": [0.9, 0.9]}) == {"max_steps": 5, "betas": (0.9, 0.9)}
    with pytest.raises(ValueError, match="max_steps must be an integer, got '5'"):
        check_values(TrainConfig, {"max_steps": "5"})
