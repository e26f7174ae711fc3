"""Synthetic tasks generated offline, each with an in-domain and an out-of-domain split."""

from vlmr1.data.synthetic.rec import HELD_OUT, TRAIN_PAIRS, generate_rec

__all__ = ["HELD_OUT", "TRAIN_PAIRS", "generate_rec"]
