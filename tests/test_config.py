import pytest

from igkd.cli import resolve_config_path
from igkd.config import load_config
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
