"""NoisyRollout (rollout.noise_std): the noise by hand, and a run that samples from noised images
while every log-prob sees the clean ones."""

import numpy as np
import pytest
from PIL import Image

import vlmr1.rl.trainer as trainer_module
from vlmr1.config import ConfigError, load_config
from vlmr1.rl.engines import HFEngine
from vlmr1.rl.noisy_rollout import noised

GRAY = Image.new("RGB", (112, 112), (128, 128, 128))
WHITE = Image.new("RGB", (8, 8), (255, 255, 255))


def pixels(im):
    return np.asarray(im, dtype=np.float64)


def test_zero_noise_is_the_image():
    assert np.array_equal(pixels(noised([[GRAY]], 0.0, seed=1)[0][0]), pixels(GRAY))


def test_noise_statistics_on_a_gray_image():
    # 112 x 112 x 3 = 37632 draws of N(0, 10^2), rounded: mean 0 within 0.3 (standard error 10 / 194 = 0.05),
    # std 10 within 3% (rounding adds 1/12 to the variance: sqrt(100 + 0.083) = 10.004); 128 +- 10 never clips
    diff = pixels(noised([[GRAY]], 10.0, seed=1)[0][0]) - 128
    assert abs(diff.mean()) < 0.3
    assert diff.std() == pytest.approx(10.0, rel=0.03)


def test_noise_is_seeded_per_step_and_clipped():
    a, b, c = (noised([[GRAY, WHITE], []], 20.0, seed=s) for s in (5, 5, 6))
    assert np.array_equal(pixels(a[0][0]), pixels(b[0][0])) and np.array_equal(pixels(a[0][1]), pixels(b[0][1]))
    assert not np.array_equal(pixels(a[0][0]), pixels(c[0][0]))
    assert a[1] == []  # a prompt without images stays without
    white = pixels(a[0][1])
    assert white.max() == 255 and white.min() < 255  # noise above 255 clipped, below kept


def test_negative_noise_rejected():
    with pytest.raises(ConfigError, match="rollout.noise_std must be >= 0"):
        load_config(None, ["rollout.noise_std=-1"])


class SeeingEngine(HFEngine):
    """The HF engine, recording the pixels each rollout was sampled from."""

    def __init__(self, seen):
        super().__init__()
        self.seen = seen

    def generate(self, model, adapter, prompts, group_size, sampling, **kw):
        self.seen.append(prompts.mm_inputs["pixel_values"].clone())
        return super().generate(model, adapter, prompts, group_size, sampling, **kw)


def run(tiny_dir, tmp_path, monkeypatch, noise):
    seen, used = [], []
    real = trainer_module.policy_update

    def recording_update(model, adapter, accelerator, batch, *args, **kwargs):
        used.append(batch.rollout.prompts.mm_inputs["pixel_values"].clone())  # what every log-prob pass encodes
        return real(model, adapter, accelerator, batch, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "policy_update", recording_update)
    cfg = load_config(None, [
        f"model.path={tiny_dir}", "data.num_train=8", "data.num_eval=0", "train.prompts_per_step=2", "rollout.group_size=2",
        "rollout.max_completion_length=4", "train.micro_batch_size=4", "train.steps=2", "train.progress=false",
        f"train.output_dir={tmp_path / f'run{noise}'}", f"rollout.noise_std={noise}",
    ])
    trainer_module.train(cfg, engine=SeeingEngine(seen))
    return seen, used


def test_rollouts_see_noise_and_log_probs_the_clean_image(tiny_dir, tmp_path, monkeypatch):
    clean_seen, clean_used = run(tiny_dir, tmp_path, monkeypatch, 0.0)
    seen, used = run(tiny_dir, tmp_path, monkeypatch, 30.0)
    assert len(seen) == len(used) == 2
    for step in range(2):
        assert (seen[step] - used[step]).abs().max() > 0.1  # sampled from another view of the image
        assert used[step].equal(clean_used[step]) and clean_seen[step].equal(clean_used[step])  # log-probs: the clean image
