"""The command line: one clear line and exit status 2 for what a user can fix."""

import subprocess
import sys

import pytest

from igkd.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_missing_dataset_is_one_line(capsys, tmp_path):
    code, _, err = _run(capsys, "train-teacher", "--set", f"data.root={tmp_path / 'nowhere'}", "--out",
                        str(tmp_path / "run"))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("igkd: error: ")
    assert "nowhere" in err and "download" in err.lower()
    assert not (tmp_path / "run").exists()  # nothing half-made


def test_unknown_config_key(capsys, tmp_path):
    code, _, err = _run(capsys, "distill", "--set", "train.epoch=3", "--out", str(tmp_path / "r"))
    assert code == 2 and "unknown config key 'train.epoch'" in err and err.count("\n") == 1


def test_unknown_preset(capsys, tmp_path):
    code, _, err = _run(capsys, "demo", "--config", "no-such-preset", "--out", str(tmp_path))
    assert code == 2 and "no-such-preset" in err and "paper-cifar10" in err


def test_missing_teacher_checkpoint(capsys, tmp_path):
    code, _, err = _run(capsys, "precompute-ig", "--config", "cpu-fashion-mnist", "--set",
                        f"teacher.checkpoint={tmp_path / 'missing.pt'}")
    assert code == 2 and "missing.pt" in err and err.count("\n") == 1


def test_compression_table_command(capsys):
    code, out, _ = _run(capsys, "compression-table")
    assert code == 0
    assert "2,236,682" in out and "543,498" in out and "1121.71" in out


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "igkd.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for sub in ("train-teacher", "precompute-ig", "distill", "demo", "compression-table"):
        assert sub in out.stdout


@pytest.mark.parametrize("argv", [["distill", "--out"], ["no-such-command"]])
def test_argparse_errors_exit_2(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2


def test_unknown_demo_method(capsys, tmp_path):
    code, _, err = _run(capsys, "demo", "--methods", "student,kd_xx", "--out", str(tmp_path))
    assert code == 2 and "kd_xx" in err and err.count("\n") == 1
