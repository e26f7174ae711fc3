"""Config: defaults, YAML then dotted overrides, type checks, every validation rule, dump round trip."""

import re
from pathlib import Path

import pytest

from vlmr1.config import Config, ConfigError, dump, load_config, validate


def test_defaults_validate():
    cfg = Config()
    validate(cfg)  # raises on any broken default
    assert load_config() == cfg
    assert load_config(None, []) == cfg


def test_yaml_overrides_then_cli_overrides_win(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "algo:\n  beta: 0.1\n  kl_estimator: k2\n"
        "train:\n  lr: 1e-4\n  steps: 5\n"
        "rollout:\n  top_p: 0.9\n"
    )
    from_yaml = load_config(path)
    assert from_yaml.algo.beta == 0.1
    assert from_yaml.algo.kl_estimator == "k2"
    # YAML 1.1 reads 1e-4 (no dot) as the string "1e-4"; the float field accepts it as a number.
    assert from_yaml.train.lr == 1e-4 and type(from_yaml.train.lr) is float
    assert from_yaml.train.steps == 5

    cfg = load_config(path, ["algo.beta=0.01", "train.lr=1e-5"])
    assert cfg.algo.beta == 0.01  # CLI beats YAML
    assert cfg.train.lr == 1e-5 and type(cfg.train.lr) is float
    assert cfg.algo.kl_estimator == "k2"  # YAML kept where the CLI says nothing
    assert cfg.train.steps == 5
    assert cfg.rollout.top_p == 0.9
    assert cfg.rollout.group_size == Config().rollout.group_size  # untouched default


def test_override_values_are_parsed_as_yaml():
    cfg = load_config(
        None,
        [
            "algo.beta=1",  # int -> float field
            "data.eval_files=null",
            "train.output_dir=runs/x",
            "reward.funcs=[iou, box_format]",
            "reward.weights=[2, 0.5]",
            "model.freeze_vision=true",
            "model.max_pixels=12544",
        ],
    )
    assert cfg.algo.beta == 1.0 and type(cfg.algo.beta) is float
    assert cfg.data.eval_files is None
    assert cfg.train.output_dir == "runs/x"
    assert cfg.reward.funcs == ["iou", "box_format"]
    assert cfg.reward.weights == [2.0, 0.5] and all(type(w) is float for w in cfg.reward.weights)
    assert cfg.model.freeze_vision is True
    assert cfg.model.max_pixels == 12544


@pytest.mark.parametrize(
    "override, expected",
    [
        ("foo.bar=1", "foo.bar: unknown section 'foo'"),
        ("algo.betta=0.1", "algo.betta: unknown field"),
        ("rollout.group=4", "rollout.group: unknown field"),
        ("beta=0.1", "beta: overrides are section.field"),
        ("algo.beta.x=0.1", "algo.beta.x: overrides are section.field"),
        ("algo.beta", "expected section.field=value"),
    ],
)
def test_unknown_keys_are_named(override, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(None, [override])


def test_unknown_key_in_yaml_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("algo:\n  beta: 0.1\n  betta: 0.2\n")
    with pytest.raises(ConfigError, match=re.escape("algo.betta: unknown field")):
        load_config(path)
    path.write_text("algo: 0.1\n")
    with pytest.raises(ConfigError, match="section 'algo' must be a mapping"):
        load_config(path)
    path.write_text("- algo\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_config(path)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.steps=abc", "train.steps: expected int, got 'abc'"),
        ("train.steps=1.5", "train.steps: expected int, got 1.5"),
        ("train.steps=true", "train.steps: expected a number, got True"),
        ("algo.beta=true", "algo.beta: expected a number, got True"),
        ("algo.beta=abc", "algo.beta: expected float, got 'abc'"),
        ("model.freeze_vision=3", "model.freeze_vision: expected true/false, got 3"),
        ("model.freeze_vision=yes please", "model.freeze_vision: expected true/false"),
        ("model.dtype=32", "model.dtype: expected str, got 32"),
        ("model.min_pixels=big", "model.min_pixels: expected int, got 'big'"),
        ("reward.funcs={iou: 1}", "reward.funcs: expected a list, got {'iou': 1}"),
        ("reward.weights=0.5", "reward.weights: expected a list, got 0.5"),
        ("reward.weights=[1.0, x]", "reward.weights: expected float, got 'x'"),
    ],
)
def test_wrong_types_rejected(override, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(None, [override])


# (overrides, text the error must contain). Each breaks exactly one rule of `validate`;
# prompts_per_step * group_size = 8 * 8 = 64 by default.
INVALID = [
    (["rollout.group_size=1"], "rollout.group_size must be >= 2"),
    (["rollout.max_completion_length=0"], "rollout.max_completion_length must be >= 1"),
    (["rollout.temperature=0"], "rollout.temperature must be > 0"),
    (["rollout.temperature=-1"], "rollout.temperature must be > 0"),
    (["rollout.top_p=1.5"], "rollout.top_p must be in (0, 1]"),
    (["rollout.top_p=0"], "rollout.top_p must be in (0, 1]"),
    (["rollout.top_k=-1"], "rollout.top_k must be >= 0"),
    (["rollout.repetition_penalty=0"], "rollout.repetition_penalty must be > 0"),
    (["algo.beta=-0.01"], "algo.beta must be >= 0"),
    (["algo.eps_low=-0.1"], "algo.eps_low and algo.eps_high must be >= 0"),
    (["algo.eps_high=-0.1"], "algo.eps_low and algo.eps_high must be >= 0"),
    (["algo.eps_low=1"], "algo.eps_low must be < 1"),
    (["algo.num_iterations=0"], "algo.num_iterations must be >= 1"),
    (["algo.kl_estimator=k4"], "algo.kl_estimator='k4': expected one of ['k1', 'k2', 'k3']"),
    (["algo.loss_aggregation=mean"], "algo.loss_aggregation='mean': expected one of"),
    (["algo.advantage_scale=std"], "algo.advantage_scale='std': expected one of"),
    (["algo.importance_level=seq"], "algo.importance_level='seq': expected one of"),
    (["model.dtype=int8"], "model.dtype='int8': expected one of"),
    (["data.on_error=ignore"], "data.on_error='ignore': expected one of"),
    (["train.lr_schedule=step"], "train.lr_schedule='step': expected one of"),
    (["train.steps=0"], "train.steps must be >= 1"),
    (["train.prompts_per_step=0"], "train.prompts_per_step must be >= 1"),
    (["train.micro_batch_size=0"], "train.micro_batch_size must be >= 1"),
    (["train.lr=0"], "train.lr must be > 0"),
    (["train.warmup_steps=-1"], "train.warmup_steps must be >= 0"),
    (["train.max_grad_norm=-1"], "train.max_grad_norm must be >= 0"),
    (["train.save_every=-1"], "train.save_every must be >= 0"),
    (["train.eval_every=-1"], "train.eval_every must be >= 0"),
    (["train.log_every=0"], "train.log_every must be >= 1"),
    (["data.num_train=0"], "data.num_train must be >= 1"),
    (["data.num_eval=-1"], "data.num_eval >= 0"),
    (["data.min_objects=0"], "data.min_objects must be in [1, data.max_objects]"),
    (["data.min_objects=5", "data.max_objects=4"], "data.min_objects must be in [1, data.max_objects]"),
    (["train.prompts_per_step=8", "train.micro_batch_size=3"], "train.micro_batch_size=3 must divide the rollout batch prompts_per_step * group_size = 64"),
    (
        ["train.prompts_per_step=3", "rollout.group_size=4", "train.micro_batch_size=8"],
        "must divide the rollout batch prompts_per_step * group_size = 12",
    ),
    (["reward.weights=[1.0]"], "reward.weights has 1 entries for 3 reward.funcs"),
    (["reward.funcs=[iou]"], "reward.weights has 3 entries for 1 reward.funcs"),
    (["reward.funcs=[iou, iou]", "reward.weights=null"], "reward.funcs names a reward twice"),
    (["reward.funcs=[]", "reward.weights=null"], "reward.funcs is empty"),
    (["data.eval_image_folders=imgs"], "data.eval_image_folders is set but data.eval_files is not"),
]


@pytest.mark.parametrize("overrides, expected", INVALID, ids=[" ".join(o) for o, _ in INVALID])
def test_validation_rejects(overrides, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(None, overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        ["rollout.group_size=2"],
        ["rollout.top_p=1.0", "rollout.top_k=0", "algo.beta=0"],
        ["algo.eps_low=0.99", "algo.eps_high=0"],
        ["train.micro_batch_size=16"],  # divides 64
        ["train.micro_batch_size=128"],  # larger than the rollout: one micro-batch
        ["reward.funcs=[iou]", "reward.weights=null"],
        ["data.min_objects=4", "data.max_objects=4", "data.num_eval=0"],
    ],
)
def test_validation_accepts_boundary_values(overrides):
    load_config(None, overrides)  # must not raise


def test_validate_checks_a_config_built_in_python():
    cfg = Config()
    cfg.rollout.group_size = 1
    with pytest.raises(ConfigError, match="rollout.group_size must be >= 2"):
        validate(cfg)


def test_dump_then_load_round_trips(tmp_path):
    cfg = load_config(
        None,
        [
            "algo.beta=0.1",
            "algo.kl_estimator=k2",
            "train.lr=3e-6",
            "train.output_dir=runs/x",
            "train.resume=auto",
            "model.max_pixels=12544",
            "model.freeze_vision=true",
            "reward.funcs=[iou, box_format]",
            "reward.weights=[2, 0.5]",
            "data.eval_files=a.jsonl:b.jsonl",
        ],
    )
    path = tmp_path / "config.yaml"
    dump(cfg, path)
    assert load_config(path) == cfg
    dump(Config(), path)
    assert load_config(path) == Config()


# Training recipes; configs/accelerate/ holds accelerate launcher configs, not vlmr1 configs.
RECIPES = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml") if p.parent.name != "accelerate")


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_recipe_loads_and_validates(recipe):
    # Every YAML under configs/ is a train/sft recipe (accelerate launcher configs live elsewhere):
    # its fields exist, its values type-check and its reward names resolve.
    cfg = load_config(recipe)
    assert cfg.reward.funcs
    if "sft" in recipe.stem or recipe.parent.name == "base":  # SFT recipes: nothing SFT would ignore
        from vlmr1.sft import check_sft_config

        check_sft_config(cfg)


def test_reward_methods_pair_with_the_files_and_name_known_methods():
    files = ["data.train_files=a.jsonl:b.jsonl"]
    assert load_config(None, [*files, "data.reward_methods=rec:default"]).data.reward_methods == "rec:default"
    with pytest.raises(ConfigError, match=r"data.reward_methods has 1 entries for 2 data.train_files \(paired by position"):
        load_config(None, [*files, "data.reward_methods=rec"])
    with pytest.raises(ConfigError, match=r"data.reward_methods: unknown accuracy method 'recc'"):
        load_config(None, [*files, "data.reward_methods=recc:default"])
    with pytest.raises(ConfigError, match=r"data.eval_reward_methods has 2 entries for 1 data.eval_files"):
        load_config(None, ["data.eval_files=e.jsonl", "data.eval_reward_methods=rec:rec"])
    with pytest.raises(ConfigError, match=r"data.eval_reward_methods is set but data.eval_files is not"):
        load_config(None, ["data.eval_reward_methods=rec"])
    with pytest.raises(ConfigError, match=r"data.reward_methods: the embedded data names its own methods"):
        load_config(None, ["data.reward_methods=rec"])


def test_every_setting_has_a_doc_and_every_command_a_help(capsys):
    from vlmr1.cli import COMMANDS, main
    from vlmr1.config import field_docs, to_dict

    docs = field_docs()
    fields = {f"{section}.{name}" for section, values in to_dict(Config()).items() for name in values}
    assert fields == set(docs) and all(docs.values())
    for command in COMMANDS:
        for flag in ("--help", "-h"):
            try:
                main([command, flag])
            except SystemExit as e:  # argparse's help exits 0
                assert e.code == 0, (command, flag)
    out = capsys.readouterr().out
    assert "usage: vlmr1 train" in out and "usage: vlmr1 sft" in out
    assert 'algo.beta = 0.04\n      KL coefficient; 0 loads no reference model.' in out  # default and doc, as YAML reads it


def test_one_name_for_a_list_of_names_is_that_list():
    # train.report_to=wandb reads as [wandb]; numbers are not wrapped (reward.weights=0.5 is an error).
    assert load_config(None, ["train.report_to=none"]).train.report_to == ["none"]
    assert load_config(None, ["reward.funcs=iou", "reward.weights=null"]).reward.funcs == ["iou"]
