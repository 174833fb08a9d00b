"""Model factory: any segmentation-models-pytorch architecture with any smp or ``tu-`` encoder.

One output logit per pixel; ``sigmoid(logit)`` is the kelp probability that is both trained
and thresholded. Inputs are padded to the multiple the encoder needs (its output stride).
"""

from __future__ import annotations

import inspect
import socket
from typing import Any

from kelpseg.compat import ensure_torchvision

ensure_torchvision()

import segmentation_models_pytorch as smp  # noqa: E402
from torch import nn  # noqa: E402

from kelpseg.config import ModelConfig  # noqa: E402

# smp encoders downsample 5 times by default: 350 px tiles are padded to 352.
INPUT_MULTIPLE = 32


class WeightsUnavailableError(RuntimeError):
    """Pretrained encoder weights were asked for but could not be loaded."""


def architectures() -> list[str]:
    """The smp architecture names ``model.arch`` accepts (case-insensitive)."""
    return [cls.__name__ for cls in smp.MODEL_ARCHITECTURES_MAPPING.values()]


def model_kwargs(cfg: ModelConfig, in_channels: int) -> dict[str, Any]:
    """Keyword arguments of ``smp.create_model``, checked against the architecture's signature."""
    key = cfg.arch.lower()
    if key not in smp.MODEL_ARCHITECTURES_MAPPING:
        raise ValueError(
            f"unknown model.arch {cfg.arch!r}; choose from {', '.join(architectures())}"
        )
    kwargs: dict[str, Any] = dict(
        encoder_name=cfg.encoder,
        encoder_weights=cfg.encoder_weights,
        in_channels=in_channels,
        classes=1,
    )
    typed = {
        "encoder_depth": cfg.encoder_depth,
        "decoder_channels": cfg.decoder_channels,
        "decoder_attention_type": cfg.decoder_attention_type,
    }
    kwargs.update({k: v for k, v in typed.items() if v is not None})
    kwargs.update(cfg.kwargs)
    accepted = set(inspect.signature(smp.MODEL_ARCHITECTURES_MAPPING[key].__init__).parameters)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(
            f"model.arch {cfg.arch} does not take {unknown}; it takes "
            f"{sorted(accepted - {'self', 'kwargs'})}"
        )
    if isinstance(kwargs.get("decoder_channels"), list):
        kwargs["decoder_channels"] = tuple(kwargs["decoder_channels"])
    return kwargs


def input_divisor(net: nn.Module) -> int:
    """The multiple input sides must have: the encoder's output stride (32 if unknown)."""
    stride = getattr(getattr(net, "encoder", None), "output_stride", None)
    return int(stride) if stride else INPUT_MULTIPLE


def build_model(cfg: ModelConfig, in_channels: int) -> nn.Module:
    """Create the network; asking for pretrained weights offline fails fast and clearly."""
    kwargs = model_kwargs(cfg, in_channels)
    if cfg.encoder_weights is None:
        try:
            return smp.create_model(cfg.arch, **kwargs)
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"model {cfg.arch}/{cfg.encoder}: {err}") from err
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)
    try:
        return smp.create_model(cfg.arch, **kwargs)
    except (KeyError, ValueError, TypeError) as err:
        raise ValueError(f"model {cfg.arch}/{cfg.encoder}: {err}") from err
    except Exception as err:
        raise WeightsUnavailableError(
            f"could not load {cfg.encoder_weights!r} weights for encoder {cfg.encoder!r}: "
            f"{type(err).__name__}: {err}. kelpseg trains offline from random weights by "
            "default: set model.encoder_weights=null, or place the weights in the torch hub / "
            "Hugging Face cache on this machine first."
        ) from err
    finally:
        socket.setdefaulttimeout(previous)
