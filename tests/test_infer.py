"""vlmr1 infer and the model placement vlmr1 eval shares with it: device from accelerate, dtype,
boxes read back to the user's image pixels and drawn."""

import argparse
import json

import pytest
import torch
from PIL import Image

from vlmr1.cli import _check_model_args, main
from vlmr1.embedded import BASE_CHECKPOINT
from vlmr1.infer import inference_device, load_for_inference, read_boxes, resolve_dtype


def test_read_boxes_takes_labelled_lists_then_a_bare_box():
    assert read_boxes('[{"bbox_2d": [1, 2, 3, 4], "label": "Cat"}, {"bbox_2d": [5, 6, 7, 8], "label": "dog"}]') == [
        ([1.0, 2.0, 3.0, 4.0], "cat"),  # labels normalised as the detection rewards read them
        ([5.0, 6.0, 7.0, 8.0], "dog"),
    ]
    assert read_boxes("<answer>[10, 20, 30, 40]</answer>") == [([10.0, 20.0, 30.0, 40.0], None)]
    assert read_boxes("three") == []


def test_auto_dtype_is_bfloat16_on_an_accelerator_and_float32_on_the_cpu():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda", 0)) == torch.bfloat16
    assert resolve_dtype("auto", torch.device("xpu", 0)) == torch.bfloat16
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16


def test_model_goes_to_accelerates_device_in_the_dtype_asked():
    adapter = load_for_inference(BASE_CHECKPOINT, "bfloat16")
    params = list(adapter.model.parameters())
    assert {p.device for p in params} == {inference_device()} and {p.dtype for p in params} == {torch.bfloat16}
    assert not adapter.model.training


@pytest.mark.parametrize("accelerator", [True, False])
def test_trainers_use_any_accelerator_torch_has(monkeypatch, tmp_path, accelerator):
    # Accelerator(cpu=not torch.cuda.is_available()) forced the CPU on NPU, XPU and MPS machines:
    # here a machine with an accelerator that is not CUDA, and one with none.
    import vlmr1.rl.trainer as trainer
    import vlmr1.run as run
    import vlmr1.sft as sft
    from vlmr1.config import load_config

    seen = []

    class Spy:
        def __init__(self, *args, **kwargs):
            seen.append(kwargs)
            raise RuntimeError("stop here")

    monkeypatch.setattr(run, "Accelerator", Spy)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: accelerator)
    for train in (trainer.train, sft.sft):
        with pytest.raises(RuntimeError, match="stop here"):
            train(load_config(None, [f"train.output_dir={tmp_path}"]))
    assert [kwargs["cpu"] for kwargs in seen] == [not accelerator] * 2


def test_answer_budget_defaults_to_the_task():
    a = argparse.Namespace(task="rec_think", max_new_tokens=None, min_pixels=None, max_pixels=None, engine="hf")
    _check_model_args(a)
    assert a.max_new_tokens == 1024  # a <think> answer needs room; rec's 24 would cut it
    a = argparse.Namespace(task="rec", max_new_tokens=None, min_pixels=None, max_pixels=None, engine="hf")
    _check_model_args(a)
    assert a.max_new_tokens == 24


def test_infer_prints_the_answer_and_draws_its_box_in_the_users_pixels(tmp_path, capsys, monkeypatch):
    # A 224 px picture: the base resizes it to 112 px, answers in that frame, and the printed box
    # is mapped back by 224 / 112 = 2 in both axes.
    image = tmp_path / "mine.png"
    canvas = Image.new("RGB", (224, 224), (200, 200, 200))
    canvas.paste((220, 30, 30), (40, 60, 120, 140))
    canvas.save(image)
    monkeypatch.chdir(tmp_path)
    main(["infer", "--image", str(image), "--prompt", "Please provide the bounding box coordinate of the region "
          "this sentence describes: the red square."])
    lines = capsys.readouterr().out.strip().splitlines()
    model_box = json.loads(lines[0])  # the answer as the model wrote it (112 px frame)
    assert lines[1] == f"box {[float(2 * v) for v in model_box]} (pixels of the first image)"
    drawn = tmp_path / "mine.boxes.png"
    assert lines[2] == f"boxes drawn: {drawn.name}" and Image.open(drawn).size[0] >= 224


def test_infer_checks_its_images_as_data_rows(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(SystemExit):
        main(["infer", "--image", str(bad), "--prompt", "the red circle"])
    assert "bad.png: not a readable image" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["infer", "--image", str(bad), "--image", str(bad), "--prompt", "<image> the red circle"])
    assert "1 <image> placeholders for 2 --image files" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["eval", "infer"])
def test_every_option_of_eval_and_infer_is_documented(command, monkeypatch):
    parsers = []

    def capture(self, args=None, namespace=None):
        parsers.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(SystemExit):
        main([command])
    (parser,) = parsers
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 8
    assert all(a.help for a in options), [a.dest for a in options if not a.help]


def test_engine_vllm_needs_vllm_and_no_sampling(monkeypatch):
    import importlib.util

    from vlmr1.cli import ArgumentError

    real_find = importlib.util.find_spec
    args = dict(task="rec", max_new_tokens=None, min_pixels=None, max_pixels=None, engine="vllm")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real_find(name, *a))
    with pytest.raises(ArgumentError, match=r"--engine vllm: vllm is not installed"):
        _check_model_args(argparse.Namespace(**args))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real_find(name, *a))
    _check_model_args(argparse.Namespace(**args, samples=0))  # installed: accepted
    with pytest.raises(ArgumentError, match="--samples draws with transformers' sampler"):
        _check_model_args(argparse.Namespace(**args, samples=8))
