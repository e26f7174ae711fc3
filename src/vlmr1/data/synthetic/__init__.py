"""Synthetic tasks generated offline, each with an in-domain and an out-of-domain split.

Every generator has the signature ``generate_X(out_dir, n, split, seed, ..., name=None) -> Path``
and writes ``out_dir/{name or split}.jsonl`` plus its images, deterministically by seed.
"""

from typing import Literal, get_args

from vlmr1.data.synthetic.count import generate_count
from vlmr1.data.synthetic.det import generate_det
from vlmr1.data.synthetic.gui import generate_gui
from vlmr1.data.synthetic.rec import HELD_OUT, TRAIN_PAIRS, generate_rec

SyntheticTask = Literal["rec", "det", "count", "gui"]
GENERATORS = {"rec": generate_rec, "det": generate_det, "count": generate_count, "gui": generate_gui}
assert set(GENERATORS) == set(get_args(SyntheticTask))  # data.synthetic accepts exactly the generated tasks

__all__ = ["GENERATORS", "SyntheticTask", "HELD_OUT", "TRAIN_PAIRS", "generate_count", "generate_det", "generate_gui", "generate_rec"]
