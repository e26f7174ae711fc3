"""The real Qwen path, offline: a Qwen2.5-VL-3B-shaped folder with the real tokenizer, chat
template and Hub config files (tests/real_qwen.py), through the 3B REC recipe, evaluation,
inference and reload."""

import json

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from real_qwen import IMAGE_PAD, build_real_qwen
from vlmr1.cli import main
from vlmr1.data.synthetic import generate_rec
from vlmr1.models.loading import load_adapter


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return build_real_qwen(tmp_path_factory.mktemp("qwen2_5_vl_3b_shape"))


@pytest.fixture(scope="module")
def rec_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("rec")
    return generate_rec(root, 4, "in", seed=0), root


def test_prompts_are_qwens_own_format_and_ids(qwen):
    a = load_adapter(qwen)
    assert a.prompt_text("<image>the red cup", 1) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>the red cup<|im_end|>\n<|im_start|>assistant\n"
    )
    enc = a.encode_prompts(["the red cup"], [[Image.new("RGB", (300, 200))]])
    ids = enc.input_ids[0].tolist()
    # Qwen2.5's ids: <|im_start|> 151644, "system" 8948, "\n" 198, <|im_end|> 151645, "user" 872,
    # <|vision_start|> 151652, <|vision_end|> 151653, "assistant" 77091.
    assert ids[:3] == [151644, 8948, 198] and ids[-3:] == [151644, 77091, 198]
    assert 872 in ids and ids.index(151653) > ids.index(151652)
    # 300 x 200 resizes to 308 x 196 (multiples of 28): a 22 x 14 patch grid, 2 x 2 merged -> 77 tokens.
    assert enc.mm_inputs["image_grid_thw"].tolist() == [[1, 14, 22]]
    assert ids.count(IMAGE_PAD) == 77 and enc.input_sizes == [[(308, 196)]]
    assert a.eos_token_ids == [151643, 151645]


def test_the_3b_rec_recipe_trains_evaluates_infers_and_reloads(qwen, rec_data, tmp_path, capsys):
    data, images = rec_data
    out = tmp_path / "run"
    main(["train", "configs/qwen2_5vl_3b/rec.yaml", f"model.path={qwen}", "model.dtype=float32", "model.max_pixels=12544",
          f"data.train_files={data}", f"data.image_folders={images}", "rollout.group_size=2",
          "rollout.max_completion_length=8", "train.steps=1", "train.prompts_per_step=2", "train.micro_batch_size=4",
          "train.save_every=0", "train.log_completions=1", f"train.output_dir={out}", "train.progress=false"])
    # Rollouts sample at temperature 1.0: the checkpoint's near-greedy generation config
    # (top_k 1, top_p 0.001) must not leak in, so a group's completions differ.
    logged = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    groups = {}
    for row in logged:
        groups.setdefault(row["group"], []).append(row["completion"])
    assert groups and all(len(set(texts)) == len(texts) == 2 for texts in groups.values())
    assert not any("<|image_pad|>" in t for texts in groups.values() for t in texts)

    final = out / "final"  # the Hub's layout, readable by plain transformers
    assert (final / "preprocessor_config.json").exists() and not (final / "processor_config.json").exists()
    assert not {"is_local", "local_files_only"} & set(json.loads((final / "tokenizer_config.json").read_text()))
    plain = AutoModelForImageTextToText.from_pretrained(final)
    reloaded = load_adapter(final)
    for (name, p), q in zip(plain.state_dict().items(), reloaded.model.state_dict().values()):
        assert torch.equal(p, q), name

    capsys.readouterr()
    main(["eval", "--model", str(final), "--data", str(data), "--image-folders", str(images), "--task", "rec_think",
          "--max-new-tokens", "8", "--out", str(tmp_path / "eval"), "--no-progress"])
    assert "acc50" in capsys.readouterr().out
    assert len((tmp_path / "eval" / "in.predictions.jsonl").read_text().splitlines()) == 4

    picture = images / json.loads(data.read_text().splitlines()[0])["image"]
    main(["infer", "--model", str(final), "--image", str(picture), "--prompt", "the red circle", "--task", "rec_think",
          "--max-new-tokens", "8", "--out", str(tmp_path / "boxes.png")])
    assert capsys.readouterr().out.endswith("\n")  # the (random) model's answer, here whitespace, printed
