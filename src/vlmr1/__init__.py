"""vlmr1: GRPO and relatives for vision-language models with rule-based rewards."""

import importlib.util
import sys

__version__ = "0.1.0"


def _hide_broken_torchvision() -> None:
    """Make an installed torchvision that fails to import look absent, before transformers looks.

    transformers decides that torchvision is available when its package is found, not when it
    imports; a torchvision built for another torch (PyPI's CUDA wheels beside the CPU torch fail
    with ``libc10_cuda.so``) then breaks ``from transformers import AutoProcessor``. Hidden, it
    leaves transformers and vlmr1 on their torchvision-free paths (vlmr1's image-only processors).
    This runs when vlmr1 is imported, so it works where vlmr1 is imported before transformers.
    """
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is None:
        return
    try:
        import torchvision  # noqa: F401
    except Exception as e:  # noqa: BLE001 - whatever the failure, the package is unusable
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision"] = None  # import fails and find_spec finds nothing
        first = str(e).splitlines()[0] if str(e) else ""
        print(
            f"vlmr1: warning: torchvision is installed but does not import ({type(e).__name__}: {first}); "
            "continuing without it (image-only processors, no video)",
            file=sys.stderr,
        )


_hide_broken_torchvision()
