"""What the ``igkd`` command's verbs call: the config-driven doors of the same code the Python names use.

The CLI imports nothing below this module (a contract in pyproject.toml): ``igkd distill`` trains through
:func:`igkd.pipeline.run_fit` as :func:`igkd.fit` does, ``igkd precompute-ig`` writes stores through
:func:`igkd.attribution.precompute_ig` as :func:`igkd.compute_maps` does, ``igkd export`` exports and
checks as :func:`igkd.export_onnx` does, ``igkd evaluate`` measures as :func:`igkd.evaluate` does.
"""

from __future__ import annotations

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

__all__ = ["BenchSettings", "ExportSettings", "SearchSpace", "StudyPlan", "TimingOptions", "TunePlan",
           "bench_from_config", "compression_table", "distill", "evaluate_checkpoint", "export_checkpoint",
           "format_bench", "format_evaluation", "format_export", "parse_contrasts", "parse_depths", "precompute",
           "run_demo", "run_study", "run_tune", "train_teacher", "value_text", "write_bench", "write_report"]
