"""What the ``igkd`` command's verbs call: the config-driven doors of the same code the Python names use.

The CLI imports nothing below this module (a contract in pyproject.toml): ``igkd distill`` trains through
:func:`igkd.pipeline.run_fit` as :func:`igkd.fit` does, ``igkd precompute-ig`` writes stores through
:func:`igkd.attribution.precompute_ig` as :func:`igkd.compute_maps` does, ``igkd export`` exports and
checks as :func:`igkd.export_onnx` does, ``igkd evaluate`` measures as :func:`igkd.evaluate` does.

Each name is imported from its module on first use, so a verb loads only what it needs (``igkd distill``
does not import the statistics, the report's plotting or the study scheduler): a second or more of start-up
saved in every command and every worker process.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and the layers contract; at run time __getattr__ loads each name
    from ..demo import run_demo
    from ..deploy.bench import BenchSettings, bench_from_config, write_bench
    from ..deploy.export import ExportSettings, export_checkpoint, format_export
    from ..deploy.results import format_bench
    from ..deploy.timing import TimingOptions
    from ..evaluate import compression_table, evaluate_checkpoint, format_evaluation
    from ..experiments.report import write_report
    from ..experiments.results import value_text
    from ..experiments.study import StudyPlan, parse_contrasts, parse_depths, run_study
    from ..experiments.tune import SearchSpace, TunePlan, run_tune
    from ..pipeline import distill, precompute, train_teacher

_WHERE = {
    "igkd.demo": ["run_demo"],
    "igkd.deploy.bench": ["BenchSettings", "bench_from_config", "write_bench"],
    "igkd.deploy.export": ["ExportSettings", "export_checkpoint", "format_export"],
    "igkd.deploy.results": ["format_bench"],
    "igkd.deploy.timing": ["TimingOptions"],
    "igkd.evaluate": ["compression_table", "evaluate_checkpoint", "format_evaluation"],
    "igkd.experiments.report": ["write_report"],
    "igkd.experiments.results": ["value_text"],
    "igkd.experiments.study": ["StudyPlan", "parse_contrasts", "parse_depths", "run_study"],
    "igkd.experiments.tune": ["SearchSpace", "TunePlan", "run_tune"],
    "igkd.pipeline": ["distill", "precompute", "train_teacher"],
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

__all__ = ["BenchSettings", "ExportSettings", "SearchSpace", "StudyPlan", "TimingOptions", "TunePlan",
           "bench_from_config", "compression_table", "distill", "evaluate_checkpoint", "export_checkpoint",
           "format_bench", "format_evaluation", "format_export", "parse_contrasts", "parse_depths", "precompute",
           "run_demo", "run_study", "run_tune", "train_teacher", "value_text", "write_bench", "write_report"]
assert sorted(__all__) == sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value  # once loaded, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
