"""What an IG map store is *of*: one object that names its folder, fills its metadata and checks it.

A store is valid for a run exactly when the run's :class:`StoreIdentity` equals the one recorded in
the store: same dataset (by fingerprint), same teacher weights (by hash), same attribution source
(integrated gradients, or a Captum source with its settings: :mod:`igkd.attribution.saliency`), same
IG settings (steps, quadrature, baseline; integrated gradients only) and same input convention. Built
once per run, never re-assembled elsewhere.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..convention import InputConvention
from ..data.image_dataset import ImageDataset
from ..errors import ConfigError, StaleStoreError
from .ig import SUPPORTED_METHODS, quadrature
from .saliency import AttributionSource

BASELINES: dict[str, dict[str, str]] = {
    "zeros-normalized": {
        "name": "zeros-normalized", "kind": "zeros", "space": "normalized",
        "description": "zero in network-input space, i.e. the mean-colour image (the paper's choice)",
    },
    "black": {
        "name": "black", "kind": "zeros", "space": "pixel",
        "description": "pixel value 0 (black), i.e. -mean/std in network-input space",
    },
}
FIX = "rerun `igkd precompute-ig` with the same config"


def baseline_spec(name: str) -> dict[str, str]:
    """The recorded description of a baseline given by name."""
    if name not in BASELINES:
        raise ConfigError(f"unknown IG baseline {name!r}; choose one of {', '.join(BASELINES)}")
    return dict(BASELINES[name])


@dataclass(frozen=True)
class StoreIdentity:
    dataset: str
    fingerprint: str
    teacher_hash: str
    convention: InputConvention
    n_steps: int = 50
    method: str = "gausslegendre"
    baseline: str = "zeros-normalized"
    attribution: AttributionSource = AttributionSource()  # integrated gradients (n_steps, method, baseline)

    def __post_init__(self) -> None:
        if self.method not in SUPPORTED_METHODS:
            raise ConfigError(f"unknown IG method {self.method!r}; choose one of {', '.join(SUPPORTED_METHODS)}")
        try:
            quadrature(self.method, self.n_steps)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        baseline_spec(self.baseline)

    @classmethod
    def of(cls, dataset: ImageDataset, teacher_hash: str, convention: InputConvention, *, n_steps: int = 50,
           method: str = "gausslegendre", baseline: str = "zeros-normalized",
           attribution: AttributionSource | None = None) -> StoreIdentity:
        return cls(dataset.name, dataset.fingerprint(), teacher_hash, convention, n_steps, method, baseline,
                   attribution or AttributionSource())

    def folder_name(self) -> str:
        """A folder name that says which dataset, teacher, source and settings made the store."""
        head = f"{self.dataset}-{self.fingerprint[:10]}-t{self.teacher_hash[:10]}-"
        if not self.attribution.is_ig:
            return head + self.attribution.tag()
        return head + f"{self.method}{self.n_steps}-{self.baseline}"

    def to_meta(self) -> dict[str, Any]:
        """The identity as it is recorded in a store's ``meta.json``: steps, quadrature and baseline only
        for integrated gradients (the other sources have none)."""
        meta: dict[str, Any] = {"attribution": self.attribution.to_meta(self.convention), "dataset": self.dataset,
                                "fingerprint": self.fingerprint, "teacher_hash": self.teacher_hash}
        if self.attribution.is_ig:
            meta.update(n_steps=self.n_steps, method=self.method, baseline=baseline_spec(self.baseline))
        meta["convention"] = self.convention.to_dict()
        return meta

    def mismatches(self, meta: Mapping[str, Any]) -> list[str]:
        """Human-readable differences between a store's recorded identity and this one."""
        out: list[str] = []
        other_source = False
        for key, want in self.to_meta().items():  # the attribution first
            have = meta.get(key)
            if key == "attribution":  # a store made before other sources existed holds IG maps
                have = dict(have) if isinstance(have, Mapping) else AttributionSource().to_meta(self.convention)
                have.pop("definition", None)  # words, not settings
                want = {k: v for k, v in want.items() if k != "definition"}
                if have.get("name") != want["name"]:  # another source: its settings are beside the point
                    out.append(f"attribution {_short(have.get('name'))} != expected {want['name']}")
                    other_source = True
                    continue
            if other_source and key in ("n_steps", "method", "baseline"):
                continue
            if key == "baseline":
                have, want = (have or {}).get("name") if isinstance(have, Mapping) else have, want["name"]
            if _canonical(have) == _canonical(want):
                continue
            if isinstance(have, Mapping) and isinstance(want, Mapping):
                have, want = _canonical(have), _canonical(want)
                out += [f"{key}.{k} {_short(have.get(k))} != expected {_short(want.get(k))}"
                        for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)]
            else:
                out.append(f"{key} {_short(have)} != expected {_short(want)}")
        return out

    def check(self, meta: Mapping[str, Any], path: object) -> None:
        diff = self.mismatches(meta)
        if diff:
            what = "IG" if self.attribution.is_ig else self.attribution.name
            raise StaleStoreError(f"{what} map store {path} is stale ({'; '.join(diff)}): {FIX}")


def _canonical(value: Any) -> Any:
    """JSON round trip, so tuples and lists (and int/float spellings) compare as stored."""
    return json.loads(json.dumps(value))


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= 40 else text[:16] + "..." + text[-8:]
