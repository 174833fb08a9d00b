"""Typed configuration for every stage: YAML files plus ``section.key=value`` overrides.

Unknown keys are rejected, so a typo in a config fails loudly instead of being ignored.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Where tiles come from and how strictly they are checked."""

    tile_size: int | None = Field(350, description="Expected tile side in px; null accepts any.")
    strict: bool = Field(False, description="Fail on the first bad file instead of skipping it.")


class GroupsConfig(_Section):
    """AOI de-duplication: tiles whose DEM embeddings are this similar share an AOI."""

    threshold: float = Field(0.97, ge=-1.0, le=1.0)
    embedding: Literal["dem-pool"] = "dem-pool"
    grid: int = Field(16, ge=4, description="Side of the pooled DEM grid the embedding uses.")


class SplitConfig(_Section):
    """Stratified grouped K-fold over AOIs."""

    folds: int = Field(5, ge=2)
    seed: int = 42


class FeaturesConfig(_Section):
    """Input channels: bands, spectral indices and their normalization."""

    indices: list[str] = Field(default_factory=lambda: ["NDVI", "DEMWM"])
    units: Literal["dn", "reflectance"] = "dn"
    mask_land: bool = Field(False, description="Mask indices where QA != 0 or DEMWM != 0.")
    quantiles: tuple[float, float] = (0.01, 0.99)
    stats_tiles: int = Field(256, ge=1, description="Training tiles sampled for the stats.")


class ModelConfig(_Section):
    """segmentation-models-pytorch architecture and encoder (smp name or ``tu-`` timm name)."""

    arch: str = "Unet"
    encoder: str = "tu-efficientnet_b5"
    encoder_weights: str | None = Field(None, description="null = random init (offline).")


class TrainConfig(_Section):
    """Optimisation, sampling and the Lightning trainer."""

    folds: list[int] | Literal["all"] = Field(default_factory=lambda: [0])
    max_epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    samples_per_epoch: int | None = Field(10240, ge=1)
    crop_size: int | None = Field(None, description="Random training crop (px); null = full tile.")
    lr: float = 3e-4
    weight_decay: float = 1e-4
    pct_start: float = 0.1
    div_factor: float = 2.0
    final_div_factor: float = 100.0
    precision: str = "32-true"
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_workers: int = 0
    seed: int = 42
    sampler_weights: dict[str, float] = Field(
        default_factory=lambda: {
            "has_kelp": 3.0,
            "kelp_pixels_pct": 0.2,
            "qa_ok": 0.0,
            "qa_corrupted_pixels_pct": -1.0,
            "almost_all_water": 0.5,
            "dem_nan_pixels_pct": 0.25,
            "dem_zero_pixels_pct": -1.0,
        }
    )
    progress: bool = True

    @field_validator("folds", mode="before")
    @classmethod
    def _folds(cls, v: Any) -> Any:
        if isinstance(v, int):
            return [v]
        if isinstance(v, str) and v != "all":
            return [int(x) for x in v.split(",")]
        return v


class PredictConfig(_Section):
    """Prediction: decision threshold on the kelp probability, batch size, extra outputs."""

    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    batch_size: int = Field(8, ge=1)
    probabilities: bool = Field(False, description="Also write {id}_proba.tif (float32).")


class TrackingConfig(_Section):
    """MLflow tracking: null uri = ``sqlite:///<out>/mlflow.db``."""

    uri: str | None = None
    experiment: str = "kelpseg"


class Config(_Section):
    """The whole pipeline's configuration."""

    data: DataConfig = Field(default_factory=DataConfig)
    groups: GroupsConfig = Field(default_factory=GroupsConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)


class ConfigError(ValueError):
    """A config file or override that does not validate."""


def builtin_config(name: str) -> Path:
    """Path of a config shipped with kelpseg (``default``, ``demo``, ``tiny``)."""
    path = Path(str(resources.files("kelpseg") / "configs" / f"{name}.yaml"))
    if not path.is_file():
        raise ConfigError(f"no built-in config {name!r}; have: {', '.join(builtin_names())}")
    return path


def builtin_names() -> list[str]:
    """Names of the configs shipped with kelpseg."""
    folder = resources.files("kelpseg") / "configs"
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a section")
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a config: a YAML path or built-in name (or defaults), then ``key=value`` overrides.

    Override values are parsed as YAML, so ``train.max_epochs=3``, ``model.encoder_weights=null``
    and ``features.indices=[NDVI,DEMWM]`` all work.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file() and p.suffix == "":
            p = builtin_config(str(path))
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{p}: {err}") from err
        if not isinstance(tree, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(str(err)) from err


def dump_config(cfg: Config) -> str:
    """The config as YAML, every key spelled out."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def flatten(cfg: Config) -> dict[str, Any]:
    """``{"train.lr": 3e-4, ...}``: the config as flat parameters (for MLflow)."""
    out: dict[str, Any] = {}
    for section, values in cfg.model_dump(mode="json").items():
        for key, value in values.items():
            if isinstance(value, dict):
                for k2, v2 in value.items():
                    out[f"{section}.{key}.{k2}"] = v2
            else:
                out[f"{section}.{key}"] = value
    return out
