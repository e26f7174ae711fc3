"""A checkpoint on the machine's accelerator, for ``vlmr1 eval`` and ``vlmr1 infer``.

``load_for_inference`` places the model where accelerate's state says this process runs (CUDA,
Ascend NPU, XPU, MPS or the CPU), in the dtype asked for ("auto": bfloat16 on an accelerator,
float32 on the CPU). ``answer`` runs one greedy question on one's own images and reads any
boxes in the answer back to the images' pixels; ``draw_answer`` draws them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
from accelerate import PartialState

from .data.batch import load_images
from .data.checks import RowChecker
from .data.jsonl import Sample, format_question
from .errors import ArgumentError
from .models.adapter import box_frames
from .models.loading import DTYPES, load_adapter
from .rewards.detection import parse_detections
from .rewards.grounding import parse_box, scale_box
from .rl.rollout import Sampling, generate

DTYPE_CHOICES = ["auto", *DTYPES]


def inference_device() -> torch.device:
    """The device accelerate assigns this process: torch's accelerator where there is one, else the CPU."""
    from .run import has_accelerator

    return PartialState(cpu=not has_accelerator()).device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    return DTYPES[name]


def load_for_inference(path, dtype: str = "auto", min_pixels: int | None = None, max_pixels: int | None = None):
    """The adapter for checkpoint ``path``, in eval mode on ``inference_device()``."""
    device = inference_device()
    adapter = load_adapter(path, dtype=resolve_dtype(dtype, device), min_pixels=min_pixels, max_pixels=max_pixels)
    adapter.model.to(device).eval()
    return adapter


@dataclass
class Answer:
    text: str
    boxes: list[tuple[list[float], str | None]] = field(default_factory=list)  # in pixels of the first image


def read_boxes(text: str) -> list[tuple[list[float], str | None]]:
    """Boxes in an answer: every labelled ``{"bbox_2d": ..., "label": ...}``, else the first bare box."""
    detections = parse_detections(text)
    if detections:
        return [(d.box, d.label) for d in detections]
    box = parse_box(text)
    return [(box, None)] if box is not None else []


@torch.no_grad()
def answer(adapter, images: list[str], prompt: str, task: str, max_new_tokens: int, decode=None) -> Answer:
    """Greedy answer to ``prompt`` about ``images`` (files; checked as data rows are), boxes mapped
    from the model's frame to the first image's pixels. ``decode``: as ``evaluate``'s (None: HF generate)."""
    sample = Sample("infer", [str(Path(p).resolve()) for p in images], prompt, "", None, source="--image")
    checker = RowChecker()
    for p in sample.images:  # the same checks a data row's images get
        if not Path(p).is_file():
            raise ArgumentError(f"--image {p}: file not found")
        checker.image_size(p, "--image")
    pil = load_images(sample)
    problem = format_question(task, prompt)
    prompts = adapter.encode_prompts([problem], [pil]).to(adapter.model.device)
    if decode is None:
        text = generate(adapter.model, adapter, prompts, Sampling(max_new_tokens=max_new_tokens, do_sample=False)).texts[0]
    else:
        text = decode(adapter.model, adapter, prompts, SimpleNamespace(problems=[problem], images=[pil]), max_new_tokens)[0]
    (frame,) = box_frames(adapter, prompts)
    boxes = read_boxes(text)
    if pil and frame is not None and tuple(frame) != pil[0].size:
        boxes = [(scale_box(b, frame, pil[0].size), label) for b, label in boxes]
    return Answer(text, boxes)


def draw_answer(images: list[str], boxes: list[tuple[list[float], str | None]], out: Path) -> Path:
    """The images side by side with the answer's boxes drawn (as in ``vlmr1 report``'s gallery)."""
    from .report_plots import PRED, render_sample

    canvas = render_sample([Path(p) for p in images], [(b, PRED, label) for b, label in boxes])
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out
