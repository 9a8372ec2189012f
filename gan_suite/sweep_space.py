"""W&B's sweep parameter specs, sampled here: the offline dry run and checks of
:mod:`gan_suite.sweep` (the online sweep is sampled by the W&B server).

A spec is one of W&B's forms (``parameters.<key>`` of a sweep file)::

    {value: 0.5}                                       # constant
    {values: [5.0, 10.0, 20.0], probabilities: [...]}  # categorical (probabilities optional)
    {distribution: int_uniform, min: 1, max: 3}        # integers, both bounds included
    {distribution: uniform, min: 0.1, max: 0.9}
    {distribution: log_uniform_values, min: 1e-5, max: 1e-3}   # log X uniform, bounds of X
    {distribution: log_uniform, min: -11.5, max: -6.9}          # bounds of log X
    {distribution: q_uniform | q_log_uniform | q_log_uniform_values, ..., q: 0.5}
    {distribution: normal | log_normal | q_normal | q_log_normal, mu: 0, sigma: 1}

Without ``distribution`` W&B infers it: ``value`` constant, ``values`` categorical, integer
bounds int_uniform, other bounds uniform. Quantised forms return ``round(X / q) * q``, a float:
integer options take ``int_uniform`` or ``values``.
"""

from __future__ import annotations

import math
import random
from typing import Any


class SweepError(ValueError):
    """A sweep file, parameter or run that cannot work; the message says which and why."""


CONTINUOUS = {
    "uniform",
    "q_uniform",
    "log_uniform",
    "q_log_uniform",
    "log_uniform_values",
    "q_log_uniform_values",
}
GAUSSIAN = {"normal", "q_normal", "log_normal", "q_log_normal"}
DISTRIBUTIONS = {"constant", "categorical", "int_uniform"} | CONTINUOUS | GAUSSIAN


def distribution(key: str, spec: dict, where: str = "sweep") -> str:
    """The distribution of a spec, inferred as W&B does when not given.

    Raises:
        SweepError: not a mapping, an unknown distribution, or its fields missing."""
    if not isinstance(spec, dict):
        raise SweepError(f"{where}: parameters.{key} must be a mapping (value/values/distribution)")
    kind = spec.get("distribution")
    if kind is None:
        if "value" in spec:
            kind = "constant"
        elif "values" in spec:
            kind = "categorical"
        elif "min" in spec and "max" in spec:
            both_int = all(isinstance(spec[b], int) for b in ("min", "max"))
            kind = "int_uniform" if both_int else "uniform"
        else:
            raise SweepError(f"{where}: parameters.{key} needs value, values or min/max")
    if kind not in DISTRIBUTIONS:
        raise SweepError(
            f"{where}: parameters.{key}: distribution {kind!r} (known: {sorted(DISTRIBUTIONS)})"
        )
    needs = {"constant": ("value",), "categorical": ("values",)}.get(
        kind, ("mu", "sigma") if kind in GAUSSIAN else ("min", "max")
    )
    if kind in GAUSSIAN:
        return kind  # mu and sigma default to 0 and 1
    missing = [n for n in needs if n not in spec]
    if missing:
        raise SweepError(f"{where}: parameters.{key} ({kind}) needs {missing}")
    if kind == "categorical" and (not isinstance(spec["values"], list) or not spec["values"]):
        raise SweepError(f"{where}: parameters.{key}.values must be a non-empty list")
    if "min" in needs and not spec["min"] <= spec["max"]:
        raise SweepError(f"{where}: parameters.{key}: min {spec['min']} > max {spec['max']}")
    if kind.endswith("log_uniform_values") and spec["min"] <= 0:
        raise SweepError(f"{where}: parameters.{key} ({kind}): min must be > 0")
    return kind


def _quantize(kind: str, spec: dict, x: float) -> float:
    if kind.startswith("q_"):
        q = spec.get("q", 1)
        return round(x / q) * q
    return x


def sample_value(key: str, spec: dict, rng: random.Random, where: str = "sweep") -> Any:
    """One value of ``spec``, as W&B's random search draws it."""
    kind = distribution(key, spec, where)
    if kind == "constant":
        return spec["value"]
    if kind == "categorical":
        return rng.choices(spec["values"], weights=spec.get("probabilities"))[0]
    if kind == "int_uniform":
        return rng.randint(spec["min"], spec["max"])
    if kind in GAUSSIAN:
        x = rng.gauss(spec.get("mu", 0.0), spec.get("sigma", 1.0))
        return _quantize(kind, spec, math.exp(x) if "log" in kind else x)
    lo, hi = spec["min"], spec["max"]
    if kind.endswith("log_uniform_values"):
        x = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    elif kind.endswith("log_uniform"):
        x = math.exp(rng.uniform(lo, hi))
    else:
        x = rng.uniform(lo, hi)
    return _quantize(kind, spec, x)


def sample_parameters(parameters: dict, rng: random.Random, where: str = "sweep") -> dict:
    """One configuration: a value for every parameter, in the file's order."""
    return {k: sample_value(k, s, rng, where) for k, s in parameters.items()}


def candidate_values(
    key: str,
    spec: dict,
    method: str = "random",
    where: str = "sweep",
    rng: random.Random | None = None,
) -> list:
    """The values an offline check parses for ``spec``: every listed value, else a
    distribution's two ends and (with ``rng``) a sample.

    Raises:
        SweepError: a bad spec, or a distribution W&B's grid search cannot enumerate."""
    kind = distribution(key, spec, where)
    if method == "grid" and kind not in ("constant", "categorical", "int_uniform"):
        raise SweepError(f"{where}: parameters.{key}: grid search needs values, not {kind}")
    if kind == "constant":
        return [spec["value"]]
    if kind == "categorical":
        return list(spec["values"])
    if kind in GAUSSIAN:
        mu, sigma = spec.get("mu", 0.0), spec.get("sigma", 1.0)
        ends = [mu - 2 * sigma, mu + 2 * sigma]
        ends = [_quantize(kind, spec, math.exp(x) if "log" in kind else x) for x in ends]
    elif kind.endswith("log_uniform") and not kind.endswith("values"):
        ends = [_quantize(kind, spec, math.exp(spec[b])) for b in ("min", "max")]
    else:
        ends = [_quantize(kind, spec, spec[b]) for b in ("min", "max")]
    samples = [sample_value(key, spec, rng, where)] if rng else []
    return ends + samples


def format_args(values: dict) -> list[str]:
    """The values as W&B's ``${args}`` passes them: ``--<key>=<str(value)>``."""
    return [f"--{key}={value}" for key, value in values.items()]
