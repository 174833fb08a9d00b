"""Model factory: any segmentation-models-pytorch architecture with any smp or ``tu-`` encoder.

One output logit per pixel; ``sigmoid(logit)`` is the kelp probability that is both trained
and thresholded.
"""

from __future__ import annotations

import socket

from kelpseg.compat import ensure_torchvision

ensure_torchvision()

import segmentation_models_pytorch as smp  # noqa: E402
from torch import nn  # noqa: E402

from kelpseg.config import ModelConfig  # noqa: E402

# smp encoders downsample 5 times: inputs are padded to a multiple of 32 (350 -> 352).
INPUT_MULTIPLE = 32


class WeightsUnavailableError(RuntimeError):
    """Pretrained encoder weights were asked for but could not be loaded."""


def build_model(cfg: ModelConfig, in_channels: int) -> nn.Module:
    """Create the network; asking for pretrained weights offline fails fast and clearly."""
    kwargs = dict(
        encoder_name=cfg.encoder,
        encoder_weights=cfg.encoder_weights,
        in_channels=in_channels,
        classes=1,
    )
    if cfg.encoder_weights is None:
        return smp.create_model(cfg.arch, **kwargs)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)
    try:
        return smp.create_model(cfg.arch, **kwargs)
    except (KeyError, ValueError) as err:
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
