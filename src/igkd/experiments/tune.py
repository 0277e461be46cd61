"""Hyperparameter search on Optuna: each trial an ordinary run directory, chosen on validation accuracy.

A search directory holds::

    tune.json       the search (method, space, sampler, seed, the resolved config) and its best trial
    optuna.db       Optuna's storage (SQLite), unless ``--storage`` names an RDB shared by several machines
    teacher/, ig/, gallery.npz    made once and shared by every trial, as for a study
    trials/<number>-<digest>/     one ordinary run directory per trial (named after the trial that began it)
    trials.csv      one row per finished trial, rewritten (atomically) as each finishes
    best.yaml       the complete config with the best values, which ``igkd montecarlo -c`` takes as it is

The space lists values of config keys (``--space distill.alpha=0.005,0.01,0.05``), each checked by the
config's own validation before anything runs. Optuna's grid sampler enumerates their product; its TPE
sampler chooses among them (``suggest_categorical``), seeded. The objective is the run's best-on-validation
accuracy (``val_acc_best`` of its summary), never a test accuracy, and every trial trains with the same
``train.seed``, so trials differ only in the searched values.

Rerunning the command resumes: Optuna's storage keeps the finished trials; a trial that was running when
the search was killed is failed and enqueued again with its values (Optuna's retry callback), and the retry
continues the run directory where it stopped. With the default storage one process drives a search folder
(a lock names it), so every running trial found at the start is stale; with ``--storage`` several drivers
share the study, and a trial counts as stale once its heartbeat stops (Optuna's heartbeat).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import inspect
import io
import itertools
import json
import math
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import METHODS, Config, config_from_dict, dump_config, parse_override
from ..errors import ConfigError, NumericalError
from ..fileio import atomic_write_text, ensure_dir, write_checked_json, write_with_sidecar
from ..locks import FileLock
from ..pipeline import load_datasets
from ..runs import RunDir
from ..tracking import StudyTracker
from .results import read_tune, value_text
from .study import Arm, prepare_shared, ray_result, ray_session, run_job

SAMPLERS = ("grid", "tpe")
OBJECTIVE = "val_acc_best"  # the run summary's best-on-validation accuracy
# What a trial records from its run's summary (user attributes in Optuna's storage).
SUMMARY_KEYS = ("val_acc_best", "test_acc_at_best_val", "test_acc_last", "val_acc_last", "best_epoch", "epochs",
                "train_time_s", "teacher_test_acc")
# Keys a search may not vary, and why.
FIXED = {"train.seed": "every trial trains with the same train.seed so that trials are compared on equal "
                       "terms; set it with --set",
         "distill.method": "the method is -m METHOD"}
# Every trial uses one teacher and one IG store, made from these sections (and compares on one data split).
SHARED_SECTIONS = ("data", "teacher", "teacher_train", "ig")
MAX_CHECKED_COMBINATIONS = 2000  # each combination of the space is validated up front, up to this many
HEARTBEAT_S, GRACE_S = 60, 180  # --storage: a trial without a heartbeat for GRACE_S seconds is stale


# --------------------------------------------------------------------------------------------------
# The search space


def split_values(text: str) -> list[str]:
    """``v1,v2,...`` split at the commas outside brackets, braces and quotes (``[1,1,2,2,1],auto``)."""
    parts, current, depth, quote = [], [], 0, None
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    parts.append("".join(current).strip())
    return parts


def with_values(base: Config, values: dict[str, Any]) -> Config:
    """``base`` with ``{"section.key": value}`` set, through the config's own checks (an unknown key or a
    bad value is a ConfigError naming it)."""
    data = base.to_dict()
    for key, value in values.items():
        *path, last = key.split(".")
        node = data
        for part in path:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[last] = value
    return config_from_dict(data)


def config_value(cfg: Config, key: str) -> Any:
    node: Any = cfg.to_dict()
    for part in key.split("."):
        node = node[part]
    return node


def _primitive(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


@dataclass(frozen=True)
class SearchSpace:
    """The listed values of each searched config key, as the config holds them, in the order given."""

    values: dict[str, list]

    @classmethod
    def parse(cls, texts: list[str], base: Config) -> SearchSpace:
        """``["distill.alpha=0.005,0.01", ...]``: every value parsed like ``--set`` (``yaml.safe_load``) and
        checked by the config's validation on ``base``; the whole product is checked too."""
        if not texts:
            raise ConfigError("a search needs --space KEY=v1,v2,... (e.g. --space distill.alpha=0.005,0.01,0.05)")
        values: dict[str, list] = {}
        for text in texts:
            key, sep, raw = text.partition("=")
            key = key.strip()
            if not sep or not key or not raw.strip():
                raise ConfigError(f"--space {text!r} must look like KEY=v1,v2,... (e.g. distill.alpha=0.005,0.01)")
            if key in values:
                raise ConfigError(f"--space {key} is given twice: list all its values in one --space")
            if key in FIXED:
                raise ConfigError(f"--space {key}: {FIXED[key]}")
            listed: list = []
            for item in split_values(raw):
                if not item:
                    raise ConfigError(f"--space {key}: an empty value in {raw!r}")
                _, value = parse_override(f"{key}={item}")
                if key.split(".")[0] in SHARED_SECTIONS:
                    raise ConfigError(f"--space {key}: every trial shares one teacher, one IG store and one data "
                                      f"split, which {key} would change; set it with --set (a search per value)")
                value = config_value(with_values(base, {key: value}), key)
                if value in listed:
                    raise ConfigError(f"--space {key} lists {value_text(value)} twice")
                listed.append(value)
            values[key] = listed
        space = cls(values)
        if space.size <= MAX_CHECKED_COMBINATIONS:  # values valid alone may clash together
            for combination in space.combinations():
                with_values(base, combination)
        return space

    @property
    def keys(self) -> list[str]:
        return list(self.values)

    @property
    def size(self) -> int:
        return math.prod(len(v) for v in self.values.values())

    def combinations(self) -> list[dict[str, Any]]:
        return [dict(zip(self.keys, combo)) for combo in itertools.product(*self.values.values())]

    def choices(self, key: str) -> list:
        """Optuna's categorical choices for ``key``: the values themselves when all are plain (numbers,
        strings, booleans, null), else their text (a list is not a choice Optuna can store)."""
        listed = self.values[key]
        return list(listed) if all(_primitive(v) for v in listed) else [value_text(v) for v in listed]

    def grid(self) -> dict[str, list]:
        return {key: self.choices(key) for key in self.keys}

    def decode(self, params: dict[str, Any]) -> dict[str, Any]:
        """Config values from a trial's Optuna params."""
        return {key: self.values[key][self.choices(key).index(params[key])] for key in self.keys}

    def point(self, params: dict[str, Any]) -> tuple:
        """A trial's place in the space (None for a value not yet chosen), to compare trials."""
        return tuple(json.dumps(params.get(key), sort_keys=True) for key in self.keys)


def trial_config(base: Config, method: str, values: dict[str, Any]) -> Config:
    """The config of a trial: ``base`` with the method and the trial's values."""
    return with_values(base, {"distill.method": method, **values})


@dataclass
class TunePlan:
    method: str
    space: SearchSpace
    sampler: str = "grid"
    trials: int | None = None  # finished trials to reach; grid: default (and at most) the grid's size
    seed: int = 0  # the sampler's seed (TPE's draws, the grid's order beyond its first pass)
    storage: str | None = None  # an RDB URL shared by several machines; None: SQLite in the search folder

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; known: {', '.join(METHODS)}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.sampler!r}; known: {', '.join(SAMPLERS)}")
        if self.trials is None and self.sampler == "tpe":
            raise ConfigError("--sampler tpe needs --trials N (how many trials to run)")
        if self.trials is not None and self.trials < 1:
            raise ConfigError(f"--trials must be >= 1, got {self.trials}")

    @property
    def target(self) -> int:
        if self.sampler == "grid":
            return min(self.trials or self.space.size, self.space.size)
        return int(self.trials)

    def overlay_maps(self, cfg: Config) -> list[str]:
        return list(self.space.values.get("augment.maps", [cfg.augment.maps]))


@dataclass
class TuneResult:
    out: Path
    rows: list[dict]  # the rows of trials.csv
    best: dict | None  # number, values, val_acc, test_acc, run_dir of the best trial
    finished: int
    target: int


# --------------------------------------------------------------------------------------------------
# Running a search


def run_tune(cfg: Config, plan: TunePlan, out: str | Path, workers: int | None = None,
             threads_per_run: int | None = None, address: str | None = None,
             progress: bool | None = None) -> TuneResult:
    """Run (or resume) the search in ``out``; write ``trials.csv``, ``best.yaml`` and ``tune.json``.

    ``workers=1`` runs the trials one after another in this process; otherwise each trial is a Ray task
    (as a study's runs are) and ``workers`` of them (default: as many as Ray's CPUs allow) run at once.
    """
    if cfg.data.val_fraction <= 0:
        raise ConfigError("igkd tune chooses on validation accuracy, and data.val_fraction is 0: set a "
                          "validation split (e.g. --set data.val_fraction=0.1)")
    load_datasets(cfg)  # bad data is an error before anything is written
    out = Path(out).resolve()
    optuna = _optuna()
    storage = _open_storage(optuna, out, plan) if plan.storage else None  # a bad URL before anything is written
    with StudyTracker(cfg, out, ("tune.json", "trials.csv", "best.yaml")) as tracker:  # MLflow: a parent run
        with FileLock(out, "search folder"):
            record = _claim(out, cfg, plan)
            tracker.start("tune", {"search": {k: record[k] for k in ("method", "space", "sampler", "seed",
                                                                      "trials")}})
            cfg = tracker.nest(copy.deepcopy(cfg))
            arms = [Arm(plan.method, plan.method, maps) for maps in dict.fromkeys(plan.overlay_maps(cfg))]
            shared = prepare_shared(cfg, out, arms, progress)
            study = _open_study(optuna, storage or _open_storage(optuna, out, plan), plan, record["study_name"])
            again = _recover(optuna, study, plan.space, all_running_are_stale=plan.storage is None)
            if again:
                print(f"continuing interrupted trials {', '.join(map(str, again))} from their run directories",
                      flush=True)
            search = _Search(shared, plan, out, study)
            if plan.storage is None:  # the only driver: hold the folder to the end
                return search.run(workers, threads_per_run, address)
        return search.run(workers, threads_per_run, address)  # several drivers share the study


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("igkd tune runs on Optuna: pip install 'optuna>=4'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # igkd prints one line per trial itself
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def _retry_callback(optuna):
    """Optuna's callback that enqueues a stale trial again with its values and attributes (the name
    changed in Optuna 4.9)."""
    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    return cls(max_retry=None)


def _storage_label(url: str | None) -> str:
    if url is None:
        return "optuna.db"
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy reads: opening it will say so
        return url


def _claim(out: Path, cfg: Config, plan: TunePlan) -> dict:
    """Write tune.json, or check that the search already in ``out`` is this one (``--trials`` may grow)."""
    identity = {"kind": "tune", "method": plan.method, "space": plan.space.values, "sampler": plan.sampler,
                "seed": plan.seed, "config": cfg.identity()}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    record = {**identity, "storage": _storage_label(plan.storage), "trials": plan.target,
              "objective": OBJECTIVE, "train_seed": cfg.train.seed, "dataset": cfg.data.name,
              "study_name": f"igkd-tune-{digest}"}
    if (out / "tune.json").is_file():
        old, _ = read_tune(out)
        try:  # a config saved by an older igkd gains the defaults of keys added since
            same_config = config_from_dict(old.get("config") or {}).identity() == record["config"]
        except ConfigError:
            same_config = False
        if not same_config or any(old.get(k) != record[k] for k in ("kind", "method", "space", "sampler", "seed",
                                                                    "storage")):
            raise ConfigError(f"{out} holds another search (other method, space, sampler, seed, storage or "
                              "config): choose another --out")
        record = {**old, **record, "study_name": old.get("study_name", record["study_name"])}
    elif (out / "study.json").is_file():
        raise ConfigError(f"{out} holds a study (study.json): choose another --out")
    ensure_dir(out)
    write_checked_json(out / "tune.json", record)
    return record


def _grid_sampler(optuna, search_space: dict[str, list], seed: int):
    class LockedGridSampler(optuna.samplers.GridSampler):
        """Optuna's grid sampler, choosing each trial's grid point under a lock (parallel trials in one
        process never take the same point) and leaving the end to ``n_trials`` (counted from the points
        left), so that a retried trial still waiting in the queue is not cut off by the grid's own stop."""

        _lock = threading.Lock()

        def before_trial(self, study, trial) -> None:
            with self._lock:
                super().before_trial(study, trial)

        def after_trial(self, study, trial, state, values) -> None:
            pass

    return LockedGridSampler(search_space, seed=seed)


def _open_storage(optuna, out: Path, plan: TunePlan):
    """Optuna's RDB storage: SQLite in ``out``, or ``--storage`` with heartbeats (several drivers)."""
    url = plan.storage or f"sqlite:///{out / 'optuna.db'}"
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    heartbeat = {}
    if plan.storage is not None:
        params = inspect.signature(optuna.storages.RDBStorage).parameters  # the callback's name changed in 4.9
        callback = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params \
            else "failed_trial_callback"
        heartbeat = {"heartbeat_interval": HEARTBEAT_S, "grace_period": GRACE_S, callback: _retry_callback(optuna)}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, **heartbeat)
    except Exception as e:  # a bad URL, a missing database driver, an unreachable server
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"--storage {_storage_label(url)}: cannot open it ({type(e).__name__}: {detail})") from None


def _open_study(optuna, storage, plan: TunePlan, name: str):
    if plan.sampler == "grid":
        sampler = _grid_sampler(optuna, plan.space.grid(), plan.seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=plan.seed, constant_liar=True)
    return optuna.create_study(storage=storage, study_name=name, sampler=sampler, direction="maximize",
                               load_if_exists=True)


def _failed_for_good(trial) -> bool:
    """A trial whose run failed in a way that running it again would repeat (a non-finite loss)."""
    return trial.state.name == "FAIL" and "error" in trial.user_attrs


def _recover(optuna, study, space: SearchSpace, all_running_are_stale: bool) -> list[int]:
    """Enqueue again, with its values, every trial that stopped without a result (killed, interrupted,
    stopped by an error) and has not been retried; its retry continues its run directory. Without a shared
    storage no other process runs trials here, so every running trial is stale; with one, a trial is stale
    when its heartbeat has stopped (Optuna fails it and its callback enqueues it). Returns the numbers of
    the trials that wait to run again."""
    state = optuna.trial.TrialState
    retry = _retry_callback(optuna)
    if all_running_are_stale:
        for t in study.get_trials(deepcopy=False, states=(state.RUNNING,)):
            study.tell(t.number, state=state.FAIL)
    else:
        optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in retry.retry_history(t)}
    settled = {space.point(t.params) for t in trials
               if t.state in (state.COMPLETE, state.WAITING, state.RUNNING) or _failed_for_good(t)}
    for t in trials:
        if t.state == state.FAIL and not _failed_for_good(t) and t.number not in retried \
                and space.point(t.params) not in settled:
            retry(study, t)
            settled.add(space.point(t.params))
    return sorted(retry.retried_trial_number(t) for t in study.get_trials(deepcopy=False, states=(state.WAITING,))
                  if retry.retried_trial_number(t) is not None)


class _Search:
    """One driver of a search: the objective Optuna calls, and the files written as trials finish."""

    def __init__(self, cfg: Config, plan: TunePlan, out: Path, study):
        self.cfg, self.plan, self.out, self.study = cfg, plan, out, study
        self.optuna = _optuna()
        self.execute: Callable[[Config, str], dict] | None = None
        self._write_lock = threading.Lock()

    def remaining(self) -> tuple[int, int, int]:
        """(finished trials, trials running in other drivers, trials this driver still runs)."""
        state = self.optuna.trial.TrialState
        trials = self.study.get_trials(deepcopy=False)
        final = [t for t in trials if t.state == state.COMPLETE or _failed_for_good(t)]
        running = [t for t in trials if t.state == state.RUNNING]  # other drivers' (a shared storage)
        todo = self.plan.target - len(final) - len(running)
        if self.plan.sampler == "grid":
            points = {self.plan.space.point(t.params) for t in final + running}
            todo = min(todo, self.plan.space.size - len(points))
        return len(final), len(running), max(0, todo)

    def run(self, workers: int | None, threads_per_run: int | None, address: str | None) -> TuneResult:
        space, plan = self.plan.space, self.plan
        done, elsewhere, todo = self.remaining()
        running = (f", {elsewhere} running in other drivers (or stale, until {GRACE_S} s without a heartbeat)"
                   if elsewhere else "")
        print(f"search {self.out}: {plan.method}, {plan.sampler} sampler over {space.size} combinations of "
              f"{', '.join(space.keys)}; {plan.target} trials, {done} finished{running}, {todo} to run", flush=True)
        if todo:
            options = {"n_trials": todo, "catch": (NumericalError,), "callbacks": [self.finished]}
            if workers == 1:
                def in_process(cfg: Config, run_dir: str) -> dict:
                    return run_job(cfg.to_dict(), str(self.out / run_dir), threads_per_run)

                self.execute = in_process
                self.study.optimize(self.objective, n_jobs=1, **options)
            else:
                with ray_session(workers, threads_per_run, address) as (task, threads, slots):
                    def on_ray(cfg: Config, run_dir: str) -> dict:
                        return ray_result(task.remote(cfg.to_dict(), str(self.out / run_dir), threads), run_dir)

                    self.execute = on_ray
                    self.study.optimize(self.objective, n_jobs=min(workers or slots, todo), **options)
        with self._write_lock:
            return self.write_outputs()

    def objective(self, trial) -> float:
        space = self.plan.space
        params = {key: trial.suggest_categorical(key, space.choices(key)) for key in space.keys}
        twin = self._twin(trial.number, params)
        if twin is not None:  # these values ran already (TPE may ask again), or run now elsewhere
            if twin.state.name == "COMPLETE":
                for key, value in twin.user_attrs.items():
                    trial.set_user_attr(key, value)
                trial.set_user_attr("duplicate_of", twin.number)
                return twin.value
            raise self.optuna.TrialPruned(f"trial {twin.number} runs the same values")
        cfg = trial_config(self.cfg, self.plan.method, space.decode(params))
        run_dir = trial.user_attrs.get("run_dir") or f"trials/{trial.number:04d}-{cfg.digest()[:8]}"
        trial.set_user_attr("run_dir", run_dir)
        try:
            summary = self.execute(cfg, run_dir)
        except NumericalError as e:  # a result of these values: recorded, and the search goes on
            trial.set_user_attr("error", str(e))
            raise
        value = summary.get(OBJECTIVE)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{run_dir}: the run has no validation accuracy (its validation split is empty): "
                              "raise data.val_fraction")
        for key in SUMMARY_KEYS:
            trial.set_user_attr(key, summary.get(key))
        return float(value)

    def _twin(self, number: int, params: dict):
        state = self.optuna.trial.TrialState
        for t in self.study.get_trials(deepcopy=False, states=(state.COMPLETE, state.RUNNING)):
            if t.number != number and t.params == params and "duplicate_of" not in t.user_attrs:
                return t
        return None

    def finished(self, study, trial) -> None:
        """Optuna's callback after each trial: one line, and the result files rewritten."""
        with self._write_lock:
            result = self.write_outputs()
        values = ", ".join(f"{k}={value_text(v)}" for k, v in self.plan.space.decode(trial.params).items()) \
            if len(trial.params) == len(self.plan.space.keys) else "values not chosen"
        if trial.state.name == "COMPLETE":
            what = (f"validation accuracy {trial.value:.2f} %"
                    + (f" (same values as trial {trial.user_attrs['duplicate_of']})"
                       if "duplicate_of" in trial.user_attrs else ""))
        elif _failed_for_good(trial):
            what = f"failed: {trial.user_attrs['error']}"
        else:
            what = trial.state.name.lower()
        print(f"  trial {trial.number} ({values}): {what} ({result.finished}/{result.target} finished)", flush=True)

    def write_outputs(self) -> TuneResult:
        """``trials.csv``, ``best.yaml`` and the best trial in ``tune.json``, from Optuna's storage."""
        state = self.optuna.trial.TrialState
        space = self.plan.space
        trials = [t for t in self.study.get_trials(deepcopy=False)
                  if t.state == state.COMPLETE or _failed_for_good(t)]
        rows = [self._row(t) for t in trials]
        columns = ["number", "state", *space.keys, "val_acc", "test_acc", "test_acc_last", "best_epoch", "epochs",
                   "train_time_s", "run_dir", "duplicate_of", "note"]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
        write_with_sidecar(self.out / "trials.csv", buf.getvalue().encode())

        complete = [t for t in trials if t.state == state.COMPLETE]
        best = max(complete, key=lambda t: (t.value, -t.number)) if complete else None  # ties: the first
        meta, _ = read_tune(self.out)
        meta["finished"] = len(trials)
        teacher = RunDir(self.out / "teacher")
        if teacher.complete:
            meta["teacher"] = {"test_acc": teacher.summary().get("test_acc_last")}
        elif complete and complete[0].user_attrs.get("teacher_test_acc") is not None:
            meta["teacher"] = {"test_acc": complete[0].user_attrs["teacher_test_acc"]}
        summary = None
        if best is not None:
            values = space.decode(best.params)
            summary = {"number": best.number, "values": values, "val_acc": best.value,
                       "test_acc": best.user_attrs.get("test_acc_at_best_val"),
                       "run_dir": best.user_attrs.get("run_dir")}
            meta["best"] = summary
            self._write_best_yaml(best, values, len(complete))
        write_checked_json(self.out / "tune.json", meta)
        return TuneResult(self.out, rows, summary, len(trials), self.plan.target)

    def _row(self, t) -> dict:
        a = t.user_attrs
        values = self.plan.space.decode(t.params) if len(t.params) == len(self.plan.space.keys) else {}
        row = {"number": t.number, "state": "complete" if t.state.name == "COMPLETE" else "failed",
               **{k: value_text(v) for k, v in values.items()}, "val_acc": t.value,
               "test_acc": a.get("test_acc_at_best_val"), "test_acc_last": a.get("test_acc_last"),
               "best_epoch": a.get("best_epoch"), "epochs": a.get("epochs"), "train_time_s": a.get("train_time_s"),
               "run_dir": a.get("run_dir"), "duplicate_of": a.get("duplicate_of"), "note": a.get("error")}
        return row

    def _write_best_yaml(self, best, values: dict, finished: int) -> None:
        cfg = trial_config(self.cfg, self.plan.method, values)
        shown = ", ".join(f"{k}={value_text(v)}" for k, v in values.items())
        test = best.user_attrs.get("test_acc_at_best_val")
        header = [
            f"# igkd tune: the best of {finished} finished trials of {self.plan.method} ({self.plan.sampler} "
            "sampler), chosen on validation accuracy",
            f"# trial {best.number}: {shown}; validation accuracy {best.value:.2f} %"
            + (f" (test {test:.2f} %, for information)" if isinstance(test, (int, float)) else ""),
            f"# igkd montecarlo -c {self.out / 'best.yaml'} --methods "
            f"{','.join(dict.fromkeys(['student', 'kd', self.plan.method]))} --runs 10 --out runs/mc",
        ]
        atomic_write_text(self.out / "best.yaml", "\n".join(header) + "\n" + dump_config(cfg))


__all__ = ["SAMPLERS", "SearchSpace", "TunePlan", "TuneResult", "run_tune", "split_values", "trial_config",
           "with_values"]
