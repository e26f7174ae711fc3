"""vlmr1: GRPO and relatives for vision-language models with rule-based rewards."""

__version__ = "0.1.0"
