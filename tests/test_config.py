"""distil.config: file.py[:arg] configs and --config.KEY=VALUE overrides, with errors that name the key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from conftest import REPO
from distil.config import ConfigError, load_config, resolve_config_spec, shipped_configs, split_overrides

CONFIG = textwrap.dedent('''
    import ml_collections

    def get_config(arg=None):
        config = ml_collections.ConfigDict()
        config.variant = arg or "default"
        config.model = ml_collections.ConfigDict()
        config.model.hidden_size = 64
        config.model.dropout = 0.1
        config.model.layers = (0, 3)
        config.model.name = "tiny"
        config.model.bf16 = False
        return config
''')


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(CONFIG)
    return path


def test_overrides_parse_and_keep_types(config_file):
    config = load_config(f"{config_file}:runlocal", ["--config.model.hidden_size=128", "model.dropout=0",
                                                    "--config.model.layers=[1,2,5]", "--config.model.name=base",
                                                    "--config.model.bf16=true"])
    assert config.variant == "runlocal"
    assert config.model.hidden_size == 128
    assert config.model.dropout == 0.0 and isinstance(config.model.dropout, float)
    assert config.model.layers == (1, 2, 5)
    assert config.model.name == "base"
    assert config.model.bf16 is True
    assert load_config(str(config_file)).variant == "default"


@pytest.mark.parametrize("override, message", [
    ("--config.model.hidden=3", r"tiny\.py: config has no field config\.model\.hidden \(known here: bf16, dropout"),
    ("--config.optim.lr=3", r"tiny\.py: config has no section config\.optim"),
    ("--config.model.hidden_size=0.5", r"config\.model\.hidden_size is int \(64\); cannot set it to 0\.5"),
    ("--config.model.bf16=3", r"config\.model\.bf16 is bool"),
    ("--config.model=3", r"config\.model is a section"),
    ("--config.model.hidden_size", r"must look like --config\.KEY=VALUE"),
])
def test_bad_overrides_name_file_and_key(config_file, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(str(config_file), [override])


def test_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.py: config file not found"):
        load_config(str(tmp_path / "missing.py"))
    (tmp_path / "no_fn.py").write_text("x = 1\n")
    with pytest.raises(ConfigError, match=r"no_fn\.py: defines no get_config"):
        load_config(str(tmp_path / "no_fn.py"))
    (tmp_path / "broken.py").write_text("import nothing_here_at_all\n")
    with pytest.raises(ConfigError, match=r"broken\.py: importing the config failed: ModuleNotFoundError"):
        load_config(str(tmp_path / "broken.py"))


def test_loaded_config_is_locked(config_file):
    config = load_config(str(config_file))
    with pytest.raises(AttributeError):
        config.model.new_field = 1


def test_split_overrides():
    assert split_overrides(["demo", "--config.a=1", "--workdir", "x"]) == (["--config.a=1"], ["demo", "--workdir", "x"])


def test_demo_config_names_the_embedded_data(tmp_path):
    from distil.data.embedded import embedded_dir
    from distil.demo import stage_configs

    demo = load_config("demo")
    stages = stage_configs(demo, tmp_path)
    teacher, student = stages["teacher"], stages["student"]
    corpus = embedded_dir() / "demo-corpus"
    assert teacher.data.corpus == student.data.corpus == str(corpus / "train")
    assert demo.heldout == str(corpus / "heldout")
    assert teacher.teacher.source == "none" and teacher.student.family == "bert"
    # BERT's own uniform masking (configs/demo.py says why), a larger share of targets than the recipe's 15%
    assert teacher.masking.mlm_mask_prop == 0.5 and teacher.masking.mlm_smoothing == 0.0
    assert student.teacher.source == "checkpoint" and tuple(student.student.teacher_layers) == (0, 3)
    assert student.teacher.checkpoint == str(tmp_path / "teacher" / "student")
    # Each ablation differs from the distilled student in its own fields alone.
    flat = {name: _flatten(stages[name].to_dict()) for name in ("teacher", "student", "student-mlm", "student-random",
                                                                "student-scratch")}
    assert {key for key in flat["student"] if flat["student-mlm"][key] != flat["student"][key]} == {
        "loss.alpha_ce", "loss.alpha_cos", "loss.alpha_mlm"}
    assert (stages["student-mlm"].loss.alpha_ce, stages["student-mlm"].loss.alpha_mlm) == (0.0, 1.0)
    assert {key for key in flat["student"] if flat["student-random"][key] != flat["student"][key]} == {
        "student.init", "student.hidden_size", "student.intermediate_size"}
    # No teacher: the teacher stage in the students' shape and updates.
    shape = {f"student.{field}" for field in ("family", "num_hidden_layers")}
    assert {key for key in flat["teacher"] if flat["student-scratch"][key] != flat["teacher"][key]} == {
        "num_steps", *shape}
    assert all(flat["student-scratch"][key] == flat["student-random"][key] for key in shape) and \
        stages["student-scratch"].num_steps == student.num_steps
    random_student = stages["student-random"].student
    assert (random_student.family, random_student.num_hidden_layers, random_student.hidden_size) == ("distilbert", 2,
                                                                                                   128)
    # An override of config.student reaches every student; one of an ablation the students that take it.
    changed = stage_configs(load_config("demo", ["--config.student.num_steps=7",
                                                 "--config.student_mlm.loss.alpha_mlm=3"]), tmp_path)
    students = ("student", "student-mlm", "student-random", "student-scratch")
    assert [changed[name].num_steps for name in students] == [7, 7, 7, 7]
    assert [changed[name].loss.alpha_mlm for name in students] == [2.0, 3.0, 2.0, 1.0]
    assert changed["xnli-student"].init == str(tmp_path / "student") and changed["xnli-teacher"].name == "teacher"


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def test_with_changes_names_a_field_the_base_lacks():
    import ml_collections

    from distil.config import with_changes

    base = ml_collections.ConfigDict({"loss": {"alpha_ce": 5.0}, "steps": 3})
    changed = with_changes(base, ml_collections.ConfigDict({"loss": {"alpha_ce": 1}}), "config.ablation")
    assert changed.loss.alpha_ce == 1.0 and isinstance(changed.loss.alpha_ce, float) and base.loss.alpha_ce == 5.0
    with pytest.raises(ConfigError, match=r"config.ablation.loss.alfa_ce: no such field .*known here: alpha_ce"):
        with_changes(base, ml_collections.ConfigDict({"loss": {"alfa_ce": 0.0}}), "config.ablation")
    with pytest.raises(ConfigError, match=r"config.ablation.steps: a section and a field"):
        with_changes(base, ml_collections.ConfigDict({"steps": {"a": 1}}), "config.ablation")
    with pytest.raises(ConfigError, match=r"cannot set it to 'many'"):
        with_changes(base, ml_collections.ConfigDict({"steps": "many"}), "config.ablation")


def test_shipped_configs_live_at_the_top_of_the_checkout():
    assert shipped_configs()["demo"] == REPO / "configs" / "demo.py"  # an installed wheel: tests/test_wheel.py


@pytest.mark.parametrize("spec, arg", [("demo", None), ("demo.py", None), ("demo:runlocal", "runlocal"),
                                       ("demo.py:a=1,b", "a=1,b")])
def test_shipped_config_by_name(spec, arg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # names resolve wherever the command runs
    assert resolve_config_spec(spec) == (REPO / "configs" / "demo.py", arg)


def test_a_file_wins_over_a_shipped_name(config_file, tmp_path, monkeypatch):
    assert resolve_config_spec(f"{config_file}:x") == (config_file, "x")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo.py").write_text(CONFIG)
    assert resolve_config_spec("demo.py") == (Path("demo.py"), None)
    assert load_config("demo.py").variant == "default"


@pytest.mark.parametrize("spec, message", [
    ("nonesuch", r"nonesuch: no such config file and no shipped config 'nonesuch'; shipped configs: demo"),
    ("nonesuch.py:x", r"nonesuch\.py: config file not found \(shipped configs, usable by name: demo"),
    ("some/dir/demo.py", r"some/dir/demo\.py: config file not found \(shipped configs, usable by name: demo"),
])
def test_unknown_config_lists_the_shipped_ones(spec, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=message):
        load_config(spec)


def test_parse_arg_reads_every_configs_variants():
    """One variant parser for every config (`name:ARG`): bare words for bools, typed `key=value`, tuples that
    take the items after them, unknown items named with the known ones."""
    from distil.config import parse_arg

    variants = parse_arg("languages=en,fr,runlocal,tpu=v4-32", runlocal=False, languages=(), tpu="", steps=10)
    assert (variants.runlocal, variants.languages, variants.tpu, variants.steps) == (True, ("en", "fr"), "v4-32", 10)
    assert parse_arg("steps=3", steps=10).steps == 3 and parse_arg(None, runlocal=False).runlocal is False
    with pytest.raises(ValueError, match=r"unknown variant 'fast'; known: runlocal, languages=\.\.\."):
        parse_arg("fast", runlocal=False, languages=())
    with pytest.raises(ValueError, match="unknown variant 'runlocal'; known: none"):
        parse_arg("runlocal")
    with pytest.raises(ValueError, match=r"invalid literal for int\(\)"):
        parse_arg("steps=many", steps=10)
