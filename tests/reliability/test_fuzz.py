"""Fuzzing the two doors user input comes through: the config and the .npz reader.

Random keys, values, files and arrays end in a valid result or igkd's one-line error, never a traceback.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from igkd.config import Config, load_config
from igkd.data import load_dataset
from igkd.data.loaders import compute_convention
from igkd.errors import ConfigError, IgkdError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def config_keys() -> list[str]:
    keys = []
    for name, section in Config.model_fields.items():
        keys.append(name)
        keys += [f"{name}.{key}" for key in section.annotation.model_fields]
    return keys


KEYS = config_keys()
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["auto", "cpu", "cuda:1", "float16", "kd_ig", "npz",
                                                           "riemann_trapezoid", "[1,2]", "{}", "nan", "1e9"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                        st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=8)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=15),
                 st.sampled_from(KEYS).map(lambda k: k + ".extra"), st.sampled_from(KEYS).map(str.upper))


def check_config(outcome) -> None:
    try:
        cfg = outcome()
    except ConfigError as e:
        assert "\n" not in str(e) and str(e)
        return
    assert isinstance(cfg, Config)
    load_config(None, [])  # and the defaults still load: nothing global was changed


@FUZZ
@given(st.lists(st.tuples(keys, values), max_size=4))
def test_random_overrides(pairs):
    overrides = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                 for k, v in pairs]
    check_config(lambda: load_config(None, overrides))


@FUZZ
@given(st.lists(st.text(max_size=30), max_size=3))
def test_random_override_text(texts):
    check_config(lambda: load_config(None, texts))


counter = itertools.count()


@FUZZ
@given(st.one_of(st.dictionaries(st.sampled_from(KEYS + ["x", "train"]), values, max_size=4), values,
                 st.text(max_size=60)))
def test_random_config_files(tmp_path, content):
    path = tmp_path / f"cfg{next(counter)}.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    check_config(lambda: load_config(path))


# --------------------------------------------------------------------------------------------------
# the .npz reader

DTYPES = [np.uint8, np.int8, np.int64, np.uint16, np.float32, np.float64, np.bool_, np.complex64]
NAMES = ["x_train", "y_train", "x_test", "y_test", "classes", "extra"]


@st.composite
def arrays(draw):
    dtype = draw(st.sampled_from(DTYPES + ["str"]))
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=4)))
    n = int(np.prod(shape)) if shape else 1
    if dtype == "str":
        return np.array(draw(st.lists(st.text(max_size=4), min_size=n, max_size=n)), dtype=str).reshape(shape)
    raw = draw(st.lists(st.integers(-3, 300), min_size=n, max_size=n))
    with np.errstate(all="ignore"):
        return np.array(raw).astype(dtype).reshape(shape)


def check_npz(path: Path) -> None:
    for split in ("train", "test"):
        try:
            ds = load_dataset("npz", split, root=path)
            if len(ds):
                compute_convention(ds)
        except IgkdError as e:
            assert "\n" not in str(e) and str(e)
            continue
        assert ds.x.dtype.is_floating_point is False and ds.x.ndim == 4 and len(ds.x) == len(ds.y)
        if len(ds.y):
            assert 0 <= int(ds.y.min()) and int(ds.y.max()) < ds.num_classes


@FUZZ
@given(st.dictionaries(st.sampled_from(NAMES), arrays(), max_size=6))
def test_random_npz_arrays(tmp_path, members):
    path = tmp_path / f"d{next(counter)}.npz"
    np.savez(path, **members)
    check_npz(path)


@FUZZ
@given(st.binary(max_size=400), st.integers(0, 2000))
def test_random_npz_bytes(tmp_path, junk, cut):
    """Random bytes, and a valid archive cut short at a random place or with junk appended."""
    rng = np.random.default_rng(cut)
    valid = tmp_path / f"v{next(counter)}.npz"
    np.savez(valid, x_train=rng.integers(0, 255, (4, 3, 3), dtype=np.uint8), y_train=np.arange(4) % 2,
             x_test=rng.integers(0, 255, (2, 3, 3), dtype=np.uint8), y_test=np.arange(2) % 2)
    raw = valid.read_bytes()
    for content in (junk, raw[: cut % len(raw)], raw[: cut % len(raw)] + junk):
        path = tmp_path / f"b{next(counter)}.npz"
        path.write_bytes(content)
        check_npz(path)
