"""The search-space file of ``kelpseg tune``: dotted config keys with Optuna distributions.

A YAML file with two sections::

    study:                      # optional: sampler and pruner settings
      seed: 42
      pruner: median            # median, hyperband or none
    params:
      train.lr: {type: float, low: 1.0e-5, high: 1.0e-1, log: true}
      train.max_epochs: {type: int, low: 5, high: 50, step: 5}
      model.arch: {type: categorical, choices: [Unet, UnetPlusPlus, FPN]}
      train.loss: [{dice: 1.0}, {dice: 0.5, bce: 0.5}]   # a list: categorical

It is validated like a config (pydantic, unknown keys rejected), and each key is checked
against :class:`kelpseg.config.Config` before any trial: every choice (and both ends of every
range) is applied to the base config and validated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import optuna
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kelpseg.config import Config, ConfigError, apply_values

PREPARED_SECTIONS = ("data", "groups", "split", "tracking")
"""Config sections a space may not vary: the data tables are prepared once per worker."""

_PRIMITIVE = (str, int, float, bool, type(None))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FloatDist(_Strict):
    """``{type: float, low: 1.0e-5, high: 0.1, log: true}`` (or a ``step``)."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0.0)

    @model_validator(mode="after")
    def _range(self) -> FloatDist:
        if not self.low < self.high:
            raise ValueError(f"needs low < high, got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("takes log or step, not both")
        return self

    def suggest(self, trial: optuna.Trial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)

    def examples(self) -> list[Any]:
        return [self.low, self.high]


class IntDist(_Strict):
    """``{type: int, low: 5, high: 50, step: 5}``."""

    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> IntDist:
        if not self.low < self.high:
            raise ValueError(f"needs low < high, got low={self.low}, high={self.high}")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError("log needs low >= 1 and step 1")
        return self

    def suggest(self, trial: optuna.Trial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)

    def examples(self) -> list[Any]:
        return [self.low, self.high]


class CategoricalDist(_Strict):
    """``{type: categorical, choices: [...]}``: any YAML values (strings, lists, mappings)."""

    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)

    def labels(self) -> list[Any]:
        """Optuna's choices: the values themselves when primitive, else their JSON text."""
        return [c if isinstance(c, _PRIMITIVE) else label(c) for c in self.choices]

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return self.decode(trial.suggest_categorical(name, self.labels()))

    def decode(self, chosen: Any) -> Any:
        return self.choices[self.labels().index(chosen)]

    def examples(self) -> list[Any]:
        return list(self.choices)


def label(value: Any) -> str:
    """Compact JSON text of a non-primitive choice (``{"dice": 1.0}``, ``["NDVI"]``)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


Distribution = FloatDist | IntDist | CategoricalDist
_KINDS = {"float": FloatDist, "int": IntDist, "categorical": CategoricalDist}


class StudySettings(_Strict):
    """Sampler and pruner of the study."""

    seed: int | None = Field(42, description="TPE seed; give each worker its own.")
    startup_trials: int = Field(5, ge=0, description="Random trials before TPE models.")
    pruner: Literal["median", "hyperband", "none"] = "median"
    prune_startup_trials: int = Field(
        3, ge=0, description="median: complete trials before any pruning."
    )
    prune_warmup_epochs: int = Field(1, ge=0, description="median: epochs never pruned.")
    monitor: str = Field("val/dice", description="Metric reported each epoch (maximized).")
    keep_checkpoints: Literal["best", "all", "none"] = Field(
        "best",
        description="Trial checkpoints kept once trials end: the best trial's, all, or none.",
    )


class SearchSpace(_Strict):
    """A validated search space: ``study`` settings and ``params`` by dotted config key."""

    study: StudySettings = Field(default_factory=StudySettings)
    params: dict[str, Distribution] = Field(min_length=1)

    @field_validator("params", mode="before")
    @classmethod
    def _params(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        out = {}
        for key, dist in v.items():
            if isinstance(dist, list):  # shorthand: a list of choices
                dist = {"type": "categorical", "choices": dist}
            model = _KINDS.get(dist.get("type")) if isinstance(dist, dict) else None
            if model is None:
                raise ValueError(
                    f"{key}: needs type: float, int or categorical (or a list of choices), "
                    f"got {dist!r}"
                )
            try:
                out[key] = model.model_validate(dist)
            except ValidationError as err:
                raise ValueError(f"{key}: {_messages(err)}") from None
        return out

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """The config values of one trial, by dotted key."""
        return {key: dist.suggest(trial, key) for key, dist in self.params.items()}

    def decode(self, params: dict[str, Any]) -> dict[str, Any]:
        """Config values from an Optuna trial's ``params`` (categorical labels decoded)."""
        out = {}
        for key, value in params.items():
            dist = self.params.get(key)
            out[key] = dist.decode(value) if isinstance(dist, CategoricalDist) else value
        return out

    def check(self, base: Config) -> None:
        """Every key names a config field outside the prepared sections, and every choice and
        range end validates on ``base``: :class:`ConfigError` naming the key otherwise."""
        for key, dist in self.params.items():
            _check_key(key)
            for value in dist.examples():
                try:
                    apply_values(base, {key: value})
                except ConfigError as err:
                    raise ConfigError(
                        f"space key {key}: value {value!r} does not validate: {_pydantic_reason(err)}"
                    ) from err


def _pydantic_reason(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return " ".join(lines[1:3]) if len(lines) > 1 else (lines[0] if lines else "")


def _check_key(key: str) -> None:
    """``section.field`` or ``section.dict_field.name`` of :class:`Config`."""
    parts = key.split(".")
    sections = Config.model_fields
    if len(parts) < 2 or parts[0] not in sections:
        raise ConfigError(f"space key {key!r}: not section.key; sections are {', '.join(sections)}")
    if parts[0] in PREPARED_SECTIONS:
        raise ConfigError(
            f"space key {key!r}: {parts[0]}.* cannot be searched (the data tables are prepared "
            f"once per worker); set it in the base config"
        )
    fields = sections[parts[0]].annotation.model_fields  # type: ignore[union-attr]
    if parts[1] not in fields:
        raise ConfigError(
            f"space key {key!r}: {parts[0]} has no key {parts[1]!r}; it has {', '.join(fields)}"
        )
    if len(parts) > 2 and "dict" not in str(fields[parts[1]].annotation):
        raise ConfigError(f"space key {key!r}: {parts[0]}.{parts[1]} is not a mapping")
    if len(parts) > 3:
        raise ConfigError(f"space key {key!r}: too deep (at most section.key.name)")


def load_space(path: str | Path, base: Config | None = None) -> SearchSpace:
    """Read and validate a search-space file (checked against ``base`` when given)."""
    p = Path(path)
    if not p.is_file() and p.suffix == "":
        from importlib import resources

        p = Path(str(resources.files("kelpseg") / "configs" / f"{path}.yaml"))
    try:
        tree = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{p}: {err}") from err
    if not isinstance(tree, dict):
        raise ConfigError(f"{p}: top level must be a mapping with params (and study)")
    try:
        space = SearchSpace.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(f"{p}: {_messages(err)}") from err
    if base is not None:
        space.check(base)
    return space


def _messages(err: ValidationError) -> str:
    out = []
    for e in err.errors():
        where = ".".join(str(x) for x in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = f"unknown key {e['loc'][-1]!r}"
        out.append(f"{where}: {msg}" if where else msg)
    return "; ".join(out)
