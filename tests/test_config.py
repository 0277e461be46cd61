import json

import pytest
import yaml

from igkd.cli import PRESETS, main, resolve_config_path
from igkd.config import Config, config_from_dict, load_config
from igkd.errors import ConfigError


def test_paper_preset_is_method_md():
    cfg = load_config(resolve_config_path("paper-cifar10"))
    assert (cfg.distill.alpha, cfg.distill.temperature, cfg.distill.gamma) == (0.01, 2.5, 0.8)
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.epochs, cfg.train.batch_size) == ("adam", 1e-3, 100, 64)
    assert cfg.train.weight_decay == 0.0 and cfg.train.schedule == "constant"
    assert (cfg.augment.overlay_p, cfg.augment.power_range, cfg.augment.mix) == (0.1, [1.0, 2.0], 0.5)
    assert (cfg.ig.n_steps, cfg.ig.method, cfg.ig.baseline) == (50, "gausslegendre", "zeros-normalized")
    assert cfg.student.remove_blocks == 5 and cfg.teacher.strides == [1, 1, 2, 2, 2]


def test_overrides_are_typed():
    cfg = load_config(None, ["train.epochs=3", "augment.power_range=[1, 3]", "data.train_size=null",
                             "distill.alpha=0.5"])
    assert cfg.train.epochs == 3 and cfg.augment.power_range == [1.0, 3.0]
    assert cfg.data.train_size is None and cfg.distill.alpha == 0.5


@pytest.mark.parametrize("override,match", [
    ("train.epoch=5", "unknown config key 'train.epoch'"),
    ("trian.epochs=5", "unknown config key 'trian'"),
    ("train.epochs=five", "train.epochs"),
    ("train.epochs=true", "train.epochs"),
    ("distill.method=kd_xx", "distill.method"),
    ("augment.overlay_p=1.5", "augment.overlay_p"),
    ("train", "section.key=value"),
])
def test_bad_overrides_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_unknown_key_in_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochs: 2\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="train.learning_rate"):
        load_config(p)


def test_yaml_tags_are_not_executed(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


# Digests of the presets (all sections, and the data and teacher sections'), computed by the dataclass config
# that preceded the pydantic declaration (the presets as they are now): run directories, stores and studies are
# keyed by them, so the declaration must not move them.
PRESET_DIGESTS = {
    "cpu-converged-fashion-mnist": ("df9cfe339a05", "538a651f8798"),
    "cpu-fashion-mnist": ("9ca438e3bfeb", "8997ff2b6c77"),
    "cpu-study-fashion-mnist": ("c92272c37c32", "0859387a282e"),
    "demo-fashion-mnist": ("d0ee1658b2c8", "49af8e7dc660"),
    "paper-cifar10": ("4fdb4ab3c619", "f3af2eafb907"),
    "paper-recipe-fashion-mnist": ("1a331c132f60", "538a651f8798"),  # added later; the converged preset's data and teacher
}


@pytest.mark.parametrize("preset", sorted(PRESET_DIGESTS))
def test_preset_digests_are_unchanged(preset):
    cfg = load_config(resolve_config_path(preset))
    assert (cfg.digest(), cfg.digest("data", "teacher")) == PRESET_DIGESTS[preset]


def test_override_digests_are_unchanged():
    # ints given for floats are stored as floats, [H, W] and strides stay lists: the digest is the old one
    cfg = load_config(resolve_config_path("cpu-fashion-mnist"), [
        "train.lr=1", "data.image_size=[32,48]", "teacher.strides=[1,1,2,2,2]", "student.kind=scaled",
        "student.width_mult=1", "augment.power_range=[1,3]", "distill.alpha=0", "train.sync_bn=true"])
    assert (cfg.digest(), cfg.digest("train")) == ("915a640fc65d", "a259041cf66f")
    assert isinstance(cfg.train.lr, float) and isinstance(cfg.student.width_mult, float)
    assert Config().digest() == "2ebbc42eedc7"
    assert config_from_dict(cfg.to_dict()).digest() == cfg.digest()


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_schema_validates_every_preset_and_refuses_bad_files(capsys):
    jsonschema = pytest.importorskip("jsonschema")
    code, out, _ = _cli(capsys, "config", "--schema")
    schema = json.loads(out)
    assert code == 0
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    presets = sorted(PRESETS.glob("*.yaml"))
    assert len(presets) >= 5
    for path in presets:
        data = yaml.safe_load(path.read_text())
        assert not list(validator.iter_errors(data)), path.name
        # and what `igkd config` resolves from it (every key present) too
        assert not list(validator.iter_errors(load_config(path).to_dict())), path.name
    paper = yaml.safe_load((PRESETS / "paper-cifar10.yaml").read_text())
    for section, key, bad in [("train", "epochs", 0), ("train", "epoch", 5), ("distill", "method", "kd_xx"),
                              ("teacher", "strides", [1, 1, 3, 2, 2]), ("train", "device", "gpu"),
                              ("augment", "overlay_p", 1.5), ("train", "epochs", True)]:
        broken = {**paper, section: {**paper.get(section, {}), key: bad}}
        assert list(validator.iter_errors(broken)), (section, key, bad)
        with pytest.raises(ConfigError, match=f"{section}.{key}"):
            config_from_dict(broken)


def test_config_command_prints_the_resolved_config(capsys):
    code, out, _ = _cli(capsys, "config", "-c", "paper-cifar10", "--set", "train.epochs=3")
    resolved = yaml.safe_load(out)
    assert code == 0 and resolved["train"]["epochs"] == 3 and resolved["teacher"]["strides"] == [1, 1, 2, 2, 2]
    assert set(resolved) == set(Config.model_fields) and resolved["teacher_train"]["epochs"] == 200  # from the file
    assert config_from_dict(resolved).to_dict() == resolved
    code, _, err = _cli(capsys, "config", "-c", "paper-cifar10", "--set", "train.epochs=0")
    assert code == 2 and err.count("\n") == 1 and "bad value for train.epochs: 0 (allowed: >= 1)" in err


def test_each_key_says_what_it_allows():
    # the error line's "allowed" comes from the declaration: bounds, choices, null
    for override, line in [
        ("ig.smoothgrad_noise=0", "bad value for ig.smoothgrad_noise: 0 (allowed: in (0, 1] (the noise sd"),
        ("data.val_fraction=1", "bad value for data.val_fraction: 1 (allowed: in [0, 1))"),
        ("ig.batch_size=0", "bad value for ig.batch_size: 0 (allowed: >= 1 or null)"),
        ("train.schedule=step", "bad value for train.schedule: 'step' (allowed: one of constant, cosine)"),
        ("train.epochs=1.5", "bad value for train.epochs: 1.5 (expected int)"),
        ("train.batch_size=1", "bad value for train.batch_size: 1 (allowed: >= 2 (batch norm))"),
        ("train=5", "section train must be a mapping, got 5"),
    ]:
        with pytest.raises(ConfigError) as e:
            load_config(None, [override])
        assert str(e.value).startswith(line), (override, str(e.value))
