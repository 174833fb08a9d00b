"""Make torchvision importable next to a CPU-only torch.

The registry's ``torchvision`` wheel for torch 2.13 is a CUDA build. Next to the CPU torch its
import fails with ``operator torchvision::nms does not exist`` because its C++ ops library does
not load, and timm, segmentation-models-pytorch and Lightning all import torchvision.
:func:`ensure_torchvision` defines the two op schemas torchvision's Python code looks up at
import time, then imports it again. Where torchvision imports normally it does nothing.
Only the pure-Python parts of torchvision work after the fix (kelpseg needs nothing else).
"""

from __future__ import annotations

import sys

_LIBRARY = None  # keeps the op definitions alive


def ensure_torchvision() -> bool:
    """Import torchvision, defining its missing op schemas first if needed.

    Returns:
        True when the schemas had to be defined, False when torchvision imported normally.
    """
    global _LIBRARY
    if _LIBRARY is not None:
        return True
    try:
        import torchvision

        return False
    except RuntimeError as err:
        if "torchvision::nms" not in str(err):
            raise
    import torch

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY = lib
    import torchvision  # noqa: F401

    return True
