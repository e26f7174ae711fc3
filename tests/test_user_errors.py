"""The user-error corpus: each bad input, run through ``vlmr1``'s real entry point (``cli.main``),
ends with exit status 1 and a one- or two-line message naming the file and line, field or
setting at fault: never a traceback, never silent acceptance.

Each case builds its broken input in a fresh folder and returns the command line and the
fragments its message must contain. Add a case whenever a new one turns up.
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlmr1.cli import main
from vlmr1.embedded import BASE_CHECKPOINT

GOOD_BOX = "[10, 20, 50, 60]"  # inside the 112 x 112 image


def human(text="<image>the red circle"):
    return {"from": "human", "value": text}


def gpt(text=GOOD_BOX):
    return {"from": "gpt", "value": text}


def row(i=1, **changes):
    r = {"id": f"s{i}", "image": "img.png", "conversations": [human(), gpt()], "accu_reward_method": "rec"}
    r.update(changes)
    return {k: v for k, v in r.items() if v is not None}


class World:
    """A folder with a good image and helpers that write good and broken inputs into it."""

    def __init__(self, root: Path):
        self.root = root
        Image.new("RGB", (112, 112), (200, 30, 30)).save(root / "img.png")
        Image.new("RGB", (112, 112), (30, 200, 30)).save(root / "b.png")

    def jsonl(self, *rows, name="train.jsonl") -> Path:
        """A JSONL file: dict rows dumped, str rows as written, bytes rows raw."""
        path = self.root / name
        with open(path, "wb") as f:
            for r in rows:
                data = r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode()
                f.write(data + b"\n")
        return path

    def bad_second_row(self, bad, name="train.jsonl") -> Path:
        return self.jsonl(row(1), bad, row(3), name=name)

    def train(self, data: Path | str, *overrides: str) -> list[str]:
        return ["train", f"data.train_files={data}", f"train.output_dir={self.root / 'run'}", "train.progress=false",
                "train.steps=1", "train.prompts_per_step=2", "rollout.group_size=2", "train.micro_batch_size=4",
                "rollout.max_completion_length=4", *overrides]

    def good_train(self, *overrides: str) -> list[str]:
        return self.train(self.jsonl(row(1), row(2)), *overrides)

    def eval(self, data: Path | str, *extra: str, model=None) -> list[str]:
        return ["eval", "--model", str(model or BASE_CHECKPOINT), "--data", str(data), "--max-new-tokens", "4", *extra]

    def model_copy(self, name="model") -> Path:
        out = self.root / name
        shutil.copytree(BASE_CHECKPOINT, out)
        return out

    def reward_file(self, body: str) -> str:
        path = self.root / "my_reward.py"
        path.write_text(body)
        return f"{path}:score"

    def checkpoint(self) -> Path:
        """A checkpoint-1 folder shaped as vlmr1 writes it (weights, processor, optimizer, state)."""
        ckpt = self.model_copy("run/checkpoint-1")
        (ckpt / "trainer_state.json").write_text(json.dumps({"step": 1}))
        torch.save({"optimizer": {"state": {}, "param_groups": []}, "scheduler": {}, "rng": torch.get_rng_state()},
                   ckpt / "optimizer.pt")
        return ckpt


def image(world: World, name: str, make) -> str:
    path = world.root / name
    make(path)
    return name


# ------------------------------------------------------------------ the cases
# Each: (id, build(world) -> (argv, [fragments the message must contain]))

def jsonl_case(bad, *fragments, overrides=()):
    """Row 2 of a training file is ``bad``: the message names file:2 and the fragments."""

    def build(w: World):
        path = w.bad_second_row(bad)
        return w.train(path, *overrides), [f"{path}:2: ", *fragments]

    return build


def solution_case(solution, method, *fragments, image_name="img.png"):
    def build(w: World):
        bad = row(2, conversations=[human(), gpt(solution) if isinstance(solution, str) else gpt(json.dumps(solution))],
                  accu_reward_method=method, image=image_name)
        path = w.bad_second_row(bad)
        return w.train(path, "reward.funcs=[accuracy]", "reward.weights=null"), [f"{path}:2: ", *fragments]

    return build


def image_case(make, *fragments, overrides=()):
    def build(w: World):
        name = image(w, "bad.png", make)
        path = w.bad_second_row(row(2, image=name))
        return w.train(path, *overrides), [f"{path}:2: field 'image'", "bad.png", *fragments]

    return build


def config_case(*overrides_and_fragments):
    *overrides, fragments = overrides_and_fragments

    def build(w: World):
        return w.good_train(*overrides), list(fragments)

    return build


def yaml_case(text: str | bytes, *fragments):
    def build(w: World):
        path = w.root / "run.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return ["train", str(path)], [str(path), *fragments]

    return build


def reward_case(body: str, *fragments):
    def build(w: World):
        spec = w.reward_file(body)
        return w.good_train(f"reward.funcs=[{spec}]", "reward.weights=null"), ["reward", *fragments]

    return build


def model_case(break_it, *fragments):
    """``vlmr1 eval`` on a copy of the base checkpoint that ``break_it(folder)`` damaged."""

    def build(w: World):
        model = w.model_copy()
        where = break_it(model) or model
        return w.eval(w.jsonl(row(1)), model=model), [str(where), *fragments]

    return build


def resume_case(break_it, *fragments):
    def build(w: World):
        ckpt = w.checkpoint()
        where = break_it(ckpt) or ckpt
        return w.good_train(f"train.resume={ckpt}"), [str(where), *fragments]

    return build


def eval_case(*extra_and_fragments):
    *extra, fragments = extra_and_fragments

    def build(w: World):
        return w.eval(w.jsonl(row(1)), *extra), list(fragments)

    return build


def argv_case(argv, fragments):
    def build(w: World):
        return [a.format(root=w.root) for a in argv], fragments

    return build


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def write(path: Path, text: str) -> None:
    path.write_text(text)


def utf16(w: World):
    path = w.root / "train.jsonl"
    path.write_bytes((json.dumps(row(1)) + "\n").encode("utf-16"))
    return w.train(path), [str(path), "UTF-16", "UTF-8"]


def empty_file(w: World):
    path = w.jsonl(name="empty.jsonl")
    path.write_text("")
    return w.train(path), [str(path), "no rows"]


def blank_lines(w: World):
    path = w.jsonl("", "  ", name="blank.jsonl")
    return w.train(path), [str(path), "no rows"]


def missing_file(w: World):
    return w.train(w.root / "nope.jsonl"), [str(w.root / "nope.jsonl"), "not found"]


def folder_as_file(w: World):
    return w.train(w.root), [str(w.root), "folder"]


def all_rows_bad_skip(w: World):
    path = w.jsonl("nope", "[]")
    return w.train(path, "data.on_error=skip"), [str(path), "no valid rows", "2 skipped"]


def eval_missing_data(w: World):
    return w.eval(w.root / "none.jsonl"), [str(w.root / "none.jsonl"), "not found"]


def eval_bad_row(w: World):
    path = w.jsonl(row(1), row(2, conversations=[human(), gpt("[50, 50, 10, 10]")]), name="val.jsonl")
    return w.eval(path), [f"{path}:2: ", "x1 < x2"]


def eval_bad_image(w: World):
    name = image(w, "bad.png", lambda p: p.write_bytes(b"not a png"))
    path = w.jsonl(row(1, image=name), name="val.jsonl")
    return w.eval(path), [f"{path}:1: field 'image'", "bad.png", "not a readable image"]


def image_folders_mismatch(w: World):
    data = w.jsonl(row(1))
    return w.train(data, f"data.image_folders={w.root}:{w.root}"), ["data.image_folders has 2 entries for 1 data.train_files"]


def eval_every_without_eval_data(w: World):
    return w.good_train("train.eval_every=5"), ["train.eval_every=5", "held-out data"]


def lora_without_base(w: World):
    lora = w.root / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/nowhere/base"}))
    (lora / "adapter_model.safetensors").write_bytes(b"")
    return w.good_train(f"model.path={lora}"), [str(lora), "adapter_model.safetensors"]


def lora_missing_weights(w: World):
    lora = w.root / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(BASE_CHECKPOINT)}))
    return w.good_train(f"model.path={lora}"), [str(lora / "adapter_model.safetensors"), "not found"]


def prompt_too_long(w: World):
    path = w.jsonl(row(1), row(2))
    return w.train(path, "data.max_prompt_length=10"), [f"{path}:1: ", "tokens", "data.max_prompt_length=10"]


def eval_prompt_too_long(w: World):
    path = w.jsonl(row(1, conversations=[human("<image>" + "the red circle " * 1500), gpt()]), name="val.jsonl")
    return w.eval(path), [f"{path}:1: ", "context"]


def pickled_optimizer(ckpt: Path):
    # A pickle of an object that is not a tensor or a plain container: weights_only refuses it.
    torch.save({"optimizer": Path("x"), "scheduler": {}, "rng": None}, ckpt / "optimizer.pt")
    return ckpt / "optimizer.pt"


def safetensors_header_only(model: Path):
    file = model / "model.safetensors"
    data = file.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    file.write_bytes(data[: 8 + n + 100])
    return file


def only_pickled_weights(model: Path):
    (model / "model.safetensors").rename(model / "pytorch_model.bin")


CASES = [
    # --- JSONL rows (line 2 of the training file)
    ("row invalid json", jsonl_case('{"id": "s2", ', "invalid JSON")),
    ("row is an array", jsonl_case("[1, 2]", "expected a JSON object")),
    ("row is a string", jsonl_case('"text"', "expected a JSON object")),
    ("row without conversations", jsonl_case(row(2, conversations=None), "field 'conversations'")),
    ("conversations not a list", jsonl_case(row(2, conversations="hi"), "field 'conversations'")),
    ("turn without from", jsonl_case(row(2, conversations=[{"value": "q"}, gpt()]), "field 'conversations'")),
    ("turn value not text", jsonl_case(row(2, conversations=[human(), {"from": "gpt", "value": 5}]), "field 'conversations'")),
    ("two human turns", jsonl_case(row(2, conversations=[human(), human(), gpt()]), "exactly one 'human' turn")),
    ("no gpt turn", jsonl_case(row(2, conversations=[human()]), "exactly one 'gpt' turn")),
    ("image is a number", jsonl_case(row(2, image=7), "field 'image'")),
    ("image list holds a number", jsonl_case(row(2, image=["img.png", 3]), "field 'image'")),
    ("image empty path", jsonl_case(row(2, image=""), "field 'image'")),
    ("image not found", jsonl_case(row(2, image="nope.png"), "field 'image'", "nope.png")),
    ("second image not found", jsonl_case(row(2, image=["img.png", "gone.png"], conversations=[human("<image><image>q"), gpt()]), "gone.png")),
    ("more placeholders than images", jsonl_case(row(2, conversations=[human("<image><image>q"), gpt()]), "2 <image> placeholders")),
    ("placeholder without image", jsonl_case(row(2, image=None), "1 <image> placeholders but the row has 0 images")),
    ("method not a string", jsonl_case(row(2, accu_reward_method=["rec"]), "field 'accu_reward_method'")),
    ("method unknown", jsonl_case(row(2, accu_reward_method="recc"), "field 'accu_reward_method'", "recc")),
    ("method calls itself", jsonl_case(row(2, accu_reward_method="accuracy"), "field 'accu_reward_method'", "itself")),
    ("id a mapping", jsonl_case(row(2, id={"a": 1}), "field 'id'")),
    ("line not utf-8", jsonl_case(b'{"id": "s2\xff\xfe"}', "not UTF-8", "byte")),
    ("latin-1 line", jsonl_case('{"id": "caf\u00e9"}'.encode("latin-1"), "not UTF-8")),
    # --- files
    ("utf-16 file", utf16),
    ("empty file", empty_file),
    ("only blank lines", blank_lines),
    ("data file missing", missing_file),
    ("data file is a folder", folder_as_file),
    ("every row bad under skip", all_rows_bad_skip),
    # --- images (row 2 names bad.png)
    ("image truncated", image_case(lambda p: (Image.new("RGB", (112, 112), (1, 2, 3)).save(p), truncate(p)), "not a readable image")),
    ("image random bytes", image_case(lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40), "not a readable image")),
    ("image is text", image_case(lambda p: p.write_text("hello"), "not a readable image")),
    ("image zero bytes", image_case(lambda p: p.write_bytes(b""), "not a readable image")),
    ("image a jpeg cut short", image_case(lambda p: (Image.new("RGB", (64, 64)).save(p, format="JPEG"), truncate(p, 0.3)), "not a readable image")),
    ("image above the pixel limit", image_case(lambda p: Image.new("RGB", (200, 200)).save(p), "data.max_image_pixels=20,000", overrides=("data.max_image_pixels=20000",))),
    ("image aspect ratio", image_case(lambda p: Image.new("RGB", (1, 300)).save(p), "aspect ratio")),
    ("image a folder", image_case(lambda p: p.mkdir(), "")),
    # --- solutions against the row's method
    ("rec solution holds no box", solution_case("the left one", "rec", "holds no [x1, y1, x2, y2] box")),
    ("rec solution NaN box", solution_case("[NaN, 1, 2, 3]", "rec", "holds no")),
    ("rec solution inverted box", solution_case("[50, 50, 10, 10]", "rec", "x1 < x2")),
    ("rec solution zero-area box", solution_case("[10, 10, 10, 40]", "rec", "x1 < x2")),
    ("rec solution negative box", solution_case("[-30, 0, 10, 10]", "rec", "outside the 112x112 image")),
    ("rec solution outside the image", solution_case("[0, 0, 500, 500]", "rec", "outside the 112x112 image")),
    ("rec solution three numbers", solution_case("[1, 2, 3]", "rec", "holds no")),
    ("detection solution not JSON", solution_case("a red circle", "map", "not a JSON list")),
    ("detection solution without label", solution_case([{"bbox_2d": [1, 2, 30, 40]}], "map", "not a JSON list")),
    ("detection solution inverted box", solution_case([{"bbox_2d": [30, 40, 1, 2], "label": "x"}], "od_ap", "not a JSON list")),
    ("detection box outside the image", solution_case([{"bbox_2d": [1, 2, 300, 40], "label": "x"}], "odLength", "outside")),
    ("math solution empty", solution_case("", "default", "holds no answer")),
    ("math solution empty answer tags", solution_case("<answer> </answer>", "default", "holds no answer")),
    ("mcq solution without a letter", solution_case("the second one", "mcq", "names no choice letter")),
    ("yes/no solution maybe", solution_case("maybe", "yes_no", "yes / no")),
    ("all_match solution only punctuation", solution_case(".", "all_match", "empty after normalisation")),
    ("gui solution not a defect", solution_case("broken", "gui_defect", "not a defect answer")),
    ("gui defect box outside", solution_case('{"defect": "overlap", "bbox_2d": [0, 0, 900, 10]}', "gui_defect", "outside")),
    ("box reward on a math row", jsonl_case(row(2, conversations=[human(), gpt("5")], accu_reward_method="default"), "for reward 'acc50_tight'", "holds no")),
    # --- settings
    ("temperature inf", config_case("rollout.temperature=inf", ["rollout.temperature=inf", "finite"])),
    ("temperature nan", config_case("rollout.temperature=nan", ["rollout.temperature=nan", "finite"])),
    ("beta yaml inf", config_case("algo.beta=.inf", ["algo.beta=inf", "finite"])),
    ("lr negative", config_case("train.lr=-1", ["train.lr must be > 0"])),
    ("lora_vision without lora", config_case("model.lora_vision=true", ["model.lora_vision=True", "model.lora_rank > 0"])),
    ("lora_alpha without lora", config_case("model.lora_alpha=16", ["model.lora_alpha=16.0", "LoRA"])),
    ("lora targets without lora", config_case("model.lora_target_modules=[q_proj]", ["model.lora_target_modules"])),
    ("eval_every without eval data", eval_every_without_eval_data),
    ("eval batch size without eval data", config_case("train.eval_batch_size=8", ["train.eval_batch_size=8"])),
    ("trailing colon in train files", argv_case(["train", "data.train_files={root}/a.jsonl:"], ["data.train_files=", "entry 2 of 2 is empty"])),
    ("leading colon in train files", argv_case(["train", "data.train_files=:a.jsonl"], ["entry 1 of 2 is empty"])),
    ("doubled colon in eval files", config_case("data.eval_files=a.jsonl::b.jsonl", ["data.eval_files=", "entry 2 of 3 is empty"])),
    ("image folders count", image_folders_mismatch),
    ("image folders with embedded data", argv_case(["train", "data.image_folders=imgs"], ["data.image_folders='imgs'", "your own data.train_files"])),
    ("num_train with own data", config_case("data.num_train=10", ["data.num_train=10", "embedded data"])),
    ("synthetic with own data", config_case("data.synthetic=det", ["data.synthetic='det'", "embedded data"])),
    ("kl estimator without kl", config_case("algo.beta=0", "algo.kl_estimator=k2", ["algo.kl_estimator='k2'", "algo.beta > 0"])),
    ("keep_last without save_every", config_case("train.keep_last=2", ["train.keep_last=2", "train.save_every > 0"])),
    ("log groups without logging", config_case("train.log_completions=0", "train.log_completions_groups=2", ["train.log_completions_groups=2"])),
    ("min pixels above max", config_case("model.min_pixels=5000", "model.max_pixels=1000", ["model.min_pixels=5000", "model.max_pixels=1000"])),
    ("resume auto without output dir", argv_case(["train", "train.resume=auto"], ["train.resume=auto", "train.output_dir"])),
    ("resume folder missing", config_case("train.resume=/no/such/ckpt", ["train.resume=/no/such/ckpt", "no such folder"])),
    ("resume folder incomplete", argv_case(["train", "train.resume={root}", "train.output_dir={root}/run"], ["train.resume=", "trainer_state.json"])),
    ("unknown section", config_case("foo.bar=1", ["foo.bar: unknown section 'foo'"])),
    ("unknown field", config_case("algo.betta=0.1", ["algo.betta: unknown field"])),
    ("override without section", config_case("beta=0.1", ["beta: overrides are section.field"])),
    ("override not yaml", config_case("reward.funcs=[iou", ["reward.funcs=[iou", "not a YAML value"])),
    ("two config files", argv_case(["train", "a.yaml", "b.yaml"], ["unexpected argument 'b.yaml'"])),
    ("group size 1", config_case("rollout.group_size=1", ["rollout.group_size must be >= 2"])),
    ("group size text", config_case("rollout.group_size=eight", ["rollout.group_size: expected int"])),
    ("no rewards", config_case("reward.funcs=[]", "reward.weights=null", ["reward.funcs is empty"])),
    ("unknown reward", config_case("reward.funcs=[ioux]", "reward.weights=null", ["unknown reward 'ioux'"])),
    ("reward weights count", config_case("reward.weights=[1.0]", ["reward.weights has 1 entries for 3 reward.funcs"])),
    ("unknown task template", config_case("data.task=grounding", ["data.task='grounding'"])),
    ("unknown file reward method", config_case("data.reward_methods=recc", ["data.reward_methods", "recc"])),
    ("reward methods count", config_case("data.reward_methods=rec:rec", ["data.reward_methods has 2 entries for 1"])),
    ("pixel limit zero", config_case("data.max_image_pixels=0", ["data.max_image_pixels must be >= 1"])),
    ("prompt limit zero", config_case("data.max_prompt_length=0", ["data.max_prompt_length must be >= 1"])),
    ("unknown aggregation", config_case("algo.loss_aggregation=mean", ["algo.loss_aggregation='mean'", "expected one of"])),
    ("unknown dtype", config_case("model.dtype=float64", ["model.dtype='float64'"])),
    ("too many objects", argv_case(["train", "data.max_objects=7"], ["data.max_objects must be <= 6"])),
    ("distinct kinds on counting", argv_case(["train", "data.synthetic=count", "data.distinct_kinds=false"], ["data.distinct_kinds applies to data.synthetic=rec, not count"])),
    ("micro batch does not divide", config_case("train.micro_batch_size=3", ["train.micro_batch_size=3 must divide"])),
    ("max_patches on a Qwen model", argv_case(["train", "model.max_patches=4", "train.output_dir={root}/run", "data.num_train=4", "data.num_eval=0"], ["model.max_patches", "InternVL"])),
    # --- YAML files
    ("yaml missing", argv_case(["train", "{root}/none.yaml"], ["none.yaml: config file not found"])),
    ("yaml is a folder", argv_case(["train", "{root}"], ["config file not found (it is a folder)"])),
    ("yaml syntax error", yaml_case("train:\n  steps: 3\n lr: 1\n", ":3:", "YAML syntax error")),
    ("yaml bad indentation of a list", yaml_case("reward:\n  funcs: [iou,\n", "YAML syntax error")),
    ("yaml tab indentation", yaml_case("train:\n\tsteps: 3\n", ":2:", "YAML syntax error")),
    ("yaml not a mapping", yaml_case("- train\n- steps\n", "expected a mapping of sections")),
    ("yaml section not a mapping", yaml_case("train: 5\n", ":1:", "section 'train' must be a mapping")),
    ("yaml accelerate config", yaml_case("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\n", ":1:", "unknown section 'compute_environment'")),
    ("yaml wrong type", yaml_case("rollout:\n  group_size: eight\n", ":2:", "rollout.group_size: expected int")),
    ("yaml unknown field", yaml_case("train:\n  steps: 3\n  stpes: 4\n", ":3:", "train.stpes: unknown field")),
    ("yaml trailing colon path", yaml_case("data:\n  train_files: a.jsonl:\n", ":2:", "YAML syntax error")),
    ("yaml not utf-8", yaml_case(b"train:\n  output_dir: caf\xe9\n", "not UTF-8")),
    # --- reward files
    ("reward file missing", config_case("reward.funcs=[/no/where.py:score]", "reward.weights=null", ["/no/where.py", "not found"])),
    ("reward function missing", reward_case("def other(completions, **kw):\n    return [0.0] * len(completions)\n", "has no function 'score'")),
    ("reward file syntax error", reward_case("def score(:\n", "invalid syntax", "line 1")),
    ("reward not callable", reward_case("score = 3\n", "not a function")),
    ("reward raises", reward_case("def score(completions, **kw):\n    raise KeyError('solutionx')\n", "score'", "raised KeyError", "sample 's1'")),
    ("reward wrong length", reward_case("def score(completions, **kw):\n    return [1.0]\n", "returned 1 values for 4 completions")),
    ("reward strings", reward_case("def score(completions, **kw):\n    return ['1'] * len(completions)\n", "returned '1' at index 0", "sample 's")),
    ("reward nan", reward_case("def score(completions, **kw):\n    return [float('nan')] * len(completions)\n", "returned nan", "finite")),
    ("reward not a list", reward_case("def score(completions, **kw):\n    return 1.0\n", "returned float")),
    # --- model folders (vlmr1 eval --model)
    ("model folder missing", model_case(lambda m: shutil.rmtree(m), "no such folder")),
    ("model config missing", model_case(lambda m: (m / "config.json").unlink() or m / "config.json", "not found")),
    ("model config corrupt", model_case(lambda m: write(m / "config.json", '{"model_type": ') or m / "config.json", "not valid JSON")),
    ("model config a list", model_case(lambda m: write(m / "config.json", "[]") or m / "config.json", "expected a JSON object")),
    ("model config without model_type", model_case(lambda m: write(m / "config.json", "{}") or m / "config.json", "no model_type")),
    ("model type unsupported", model_case(lambda m: write(m / "config.json", '{"model_type": "llava"}') or m / "config.json", "'llava' has no adapter")),
    ("model weights missing", model_case(lambda m: (m / "model.safetensors").unlink(), "no weights")),
    ("model weights pickled", model_case(only_pickled_weights, "pickles", "safetensors")),
    ("model weights truncated", model_case(lambda m: truncate(m / "model.safetensors") or m / "model.safetensors", "truncated")),
    ("model weights header only", model_case(safetensors_header_only, "truncated")),
    ("model weights garbage", model_case(lambda m: write(m / "model.safetensors", "x") or m / "model.safetensors", "not a safetensors file")),
    ("model shard missing", model_case(lambda m: ((m / "model.safetensors").unlink(), write(m / "model.safetensors.index.json", json.dumps({"weight_map": {"a": "model-1.safetensors"}})))[-1] or m / "model-1.safetensors", "not found")),
    ("model tokenizer missing", model_case(lambda m: (m / "tokenizer.json").unlink(), "no tokenizer")),
    ("model processor config missing", model_case(lambda m: (m / "preprocessor_config.json").unlink(), "no image processor config")),
    ("model tokenizer config corrupt", model_case(lambda m: write(m / "tokenizer_config.json", "{") or m / "tokenizer_config.json", "not valid JSON")),
    ("lora base missing", lora_without_base),
    ("lora weights missing", lora_missing_weights),
    # --- resume folders
    ("resume optimizer pickled", resume_case(pickled_optimizer, "does not unpickle")),
    ("resume optimizer truncated", resume_case(lambda c: truncate(c / "optimizer.pt") or c / "optimizer.pt", "unreadable")),
    ("resume optimizer missing", resume_case(lambda c: (c / "optimizer.pt").unlink() or c / "optimizer.pt", "not found")),
    ("resume state corrupt", resume_case(lambda c: write(c / "trainer_state.json", "{step") or c / "trainer_state.json", "not valid JSON")),
    ("resume state without step", resume_case(lambda c: write(c / "trainer_state.json", "{}") or c / "trainer_state.json", "no integer 'step'")),
    ("resume weights truncated", resume_case(lambda c: truncate(c / "model.safetensors") or c / "model.safetensors", "truncated")),
    # --- prompts
    ("prompt above max_prompt_length", prompt_too_long),
    ("eval prompt above the context", eval_prompt_too_long),
    # --- vlmr1 eval arguments
    ("eval batch size 0", eval_case("--batch-size", "0", ["--batch-size 0", ">= 1"])),
    ("eval limit negative", eval_case("--limit", "-1", ["--limit -1", ">= 1"])),
    ("eval max new tokens 0", eval_case("--max-new-tokens", "0", ["--max-new-tokens 0"])),
    ("eval unknown task", eval_case("--task", "nope", ["--task nope"])),
    ("eval image folders count", eval_case("--image-folders", "a:b", ["--image-folders has 2 entries for 1"])),
    ("eval unknown reward method", eval_case("--reward-methods", "recc", ["--reward-methods", "recc"])),
    ("eval unknown format reward", eval_case("--format-reward", "fmt", ["--format-reward", "fmt"])),
    ("eval data trailing colon", argv_case(["eval", "--data", "{root}/a.jsonl:"], ["--data", "an entry is empty"])),
    ("eval samples negative", eval_case("--samples", "-1", ["--samples -1"])),
    ("eval temperature without samples", eval_case("--temperature", "0.7", ["--temperature 0.7", "only with --samples"])),
    ("eval temperature inf", eval_case("--samples", "4", "--temperature", "inf", ["--temperature inf", "finite"])),
    ("eval data missing", eval_missing_data),
    ("eval bad solution", eval_bad_row),
    ("eval bad image", eval_bad_image),
    # --- vlmr1 data / compare / export / report arguments
    ("data n zero", argv_case(["data", "rec", "--out", "{root}/d", "--n", "0"], ["--n 0"])),
    ("data too many objects", argv_case(["data", "rec", "--out", "{root}/d", "--max-objects", "400"], ["--max-objects 400", "at most 8"])),
    ("data too many ood objects", argv_case(["data", "det", "--out", "{root}/d", "--split", "ood", "--max-objects", "7"], ["at most 6 for --split ood"])),
    ("data min above max", argv_case(["data", "rec", "--out", "{root}/d", "--min-objects", "5", "--max-objects", "2"], ["need 1 <= min <= max"])),
    ("data objects for counting", argv_case(["data", "count", "--out", "{root}/d", "--max-objects", "3"], ["apply to rec and det"])),
    ("data distinct kinds for detection", argv_case(["data", "det", "--out", "{root}/d", "--distinct-kinds"], ["--distinct-kinds applies to rec, not det"])),
    ("compare seeds not numbers", argv_case(["compare", "--seeds", "a,b"], ["--seeds 'a,b'"])),
    ("compare narrow samples 0", argv_case(["compare", "--narrow-samples", "0"], ["--narrow-samples 0"])),
    ("export not a LoRA checkpoint", argv_case(["export", str(BASE_CHECKPOINT), "--out", "{root}/x", "--merge-lora"], ["not a LoRA checkpoint"])),
    ("report folder missing", argv_case(["report", "{root}/norun"], ["norun"])),
]


@pytest.mark.parametrize("build", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_message(tmp_path, capsys, build):
    argv, fragments = build(World(tmp_path))
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 1, err
    assert "Traceback" not in err, err
    # The message is the last thing written (progress bars of model loading may come before it).
    lines = err.strip().splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith(f"vlmr1 {argv[0]}: error: "))
    message = "\n".join(lines[start:])
    assert len(lines) - start <= 2, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_the_corpus_has_at_least_100_cases():
    assert len(CASES) >= 100 and len({c[0] for c in CASES}) == len(CASES)


def test_skipped_rows_are_counted_by_reason_in_the_summary(tmp_path, capsys):
    # Under data.on_error=skip every kind of bad row is dropped, counted by its reason, printed
    # and written to summary.json: 6 good rows, 5 bad of 4 kinds.
    w = World(tmp_path)
    Image.new("RGB", (112, 112)).save(tmp_path / "cut.png")
    truncate(tmp_path / "cut.png")
    rows = [row(i) for i in range(1, 7)] + [
        "{broken",  # invalid JSON
        "[1]",  # invalid JSON (not an object)
        row(9, image="cut.png"),  # unreadable image
        row(10, conversations=[human(), gpt("[50, 50, 10, 10]")]),  # bad solution
        row(11, accu_reward_method="nope"),  # unknown reward method
    ]
    main(w.train(w.jsonl(*rows), "data.on_error=skip"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["skipped_rows"] == {
        "train": {"invalid JSON": 2, "unreadable image": 1, "bad solution": 1, "unknown reward method": 1}
    }
    assert "skipped 5 bad rows" in capsys.readouterr().out


def test_prompts_too_long_are_a_counted_skip(tmp_path):
    # The embedded base's prompt for "the red circle" with one 112 px image is 45 tokens (16 of
    # them the image's); a longer question pushes rows 2 and 3 over data.max_prompt_length=50.
    w = World(tmp_path)
    long_question = human("<image>the red circle " + "and the blue square " * 5)
    data = w.jsonl(row(1), row(2, conversations=[long_question, gpt()]), row(3, conversations=[long_question, gpt()]), row(4))
    main(w.train(data, "data.on_error=skip", "data.max_prompt_length=50"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["skipped_rows"] == {"train": {"prompt too long": 2}}


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    from vlmr1.data import load_samples

    w = World(tmp_path)
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(row(1)).encode() + b"\n" + json.dumps(row(2)).encode() + b"\n")
    assert [s.id for s in load_samples(str(path)).samples] == ["s1", "s2"]
    assert w  # the world wrote the images the rows name


def test_our_own_bugs_keep_their_traceback(monkeypatch, tmp_path):
    import vlmr1.rl.trainer as trainer_module

    def bug(*args, **kwargs):
        raise KeyError("an internal bug")

    monkeypatch.setattr(trainer_module, "train", bug)
    with pytest.raises(KeyError, match="an internal bug"):  # not turned into a one-line message
        main(["train", f"train.output_dir={tmp_path}"])


def test_traceback_flag_shows_where_a_user_error_was_raised():
    from vlmr1.errors import ConfigError

    with pytest.raises(ConfigError, match="rollout.group_size must be >= 2"):
        main(["--traceback", "train", "rollout.group_size=1"])


def test_help_piped_into_head_ends_quietly():
    # `vlmr1 train --help | head` closes the pipe early. `true` has exited long before Python has
    # started, so every write meets a closed pipe: no BrokenPipeError traceback.
    import subprocess

    run = subprocess.run(f"{sys.executable} -m vlmr1.cli train --help | true", shell=True, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in run.stderr and "BrokenPipeError" not in run.stderr, run.stderr


def test_eval_limit_checks_only_the_rows_it_evaluates(tmp_path, capsys):
    # `vlmr1 eval --limit 1` is a quick look: row 2's broken image is never read, so no error.
    w = World(tmp_path)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    data = w.jsonl(row(1), row(2, image="bad.png"), name="val.jsonl")
    main(w.eval(data, "--limit", "1", "--no-progress"))
    assert "n                       1" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(w.eval(data, "--no-progress"))  # without the limit, row 2 is checked and named
    assert f"{data}:2: field 'image'" in capsys.readouterr().err
