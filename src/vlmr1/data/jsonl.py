"""Load VLM-R1 JSONL data into `Sample`s, with row errors that name file, line and field.

Row format (VLM-R1)::

    {"id": "...", "image": "a.png" | ["a.png", "b.png"],
     "conversations": [{"from": "human", "value": "<image>Question"}, {"from": "gpt", "value": "answer"}],
     "accu_reward_method": "rec", ...any other keys...}

- `image` is optional (text-only row) and relative to the paired image folder.
- `<image>` placeholders: if the human turn has any, their count must equal the
  number of images, and they stay in `problem` so that the model adapter puts each
  image where the conversation puts it ("Before: <image> After: <image> ...").
  Without placeholders the images go before the text, as VLM-R1 places them.
- Exactly one human turn and one gpt turn (VLM-R1 reads single-turn rows only);
  further turns are rejected rather than silently dropped.
- All keys other than id, image, conversations and accu_reward_method go to
  `Sample.extra` and reach reward functions as columns.

File pairing follows VLM-R1's ``--data_file_paths a.jsonl:b.jsonl --image_folders
imgs_a:imgs_b``: colon-separated strings (or lists) paired by position, with equal
counts required. With ``image_folders=None`` image paths are relative to the
directory of their JSONL file.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, NamedTuple

from ..errors import DataError

logger = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
"""What a bad row does: "raise" stops with file:line:field, "skip" skips it with a counted warning."""

_KNOWN_KEYS = ("id", "image", "conversations", "accu_reward_method")


@dataclass
class Sample:
    id: str
    images: list[str]  # absolute paths, in prompt order
    problem: str  # human turn, stripped; "<image>" placeholders (if any) mark where the images go
    solution: str  # gpt turn
    reward_method: str | None  # accu_reward_method, None when the row has none
    extra: dict[str, Any] = field(default_factory=dict)  # other row keys, passed to rewards as columns
    source: str = ""  # "file:line"
    image_sizes: list[tuple[int, int]] = field(default_factory=list)  # (w, h) per image, set by the load-time check


class LoadResult(NamedTuple):
    samples: list[Sample]
    skipped: list[str]  # one error message per skipped row (empty unless on_error="skip")
    reasons: dict[str, int]  # skipped rows counted by DataError.reason ("invalid JSON": 2, ...)


def _split(value: str | list[str]) -> list[str]:
    parts = value.split(":") if isinstance(value, str) else list(value)
    if not parts or any(not p for p in parts):
        raise DataError(f"empty path in {value!r}")
    return parts


def _turn(turns: list[dict], role: str, where: str) -> str:
    values = [t["value"] for t in turns if t["from"] == role]
    if len(values) != 1:
        raise DataError(f"{where}: field 'conversations': expected exactly one '{role}' turn, found {len(values)}", "bad conversations")
    return values[0]


def parse_row(line: str, where: str, image_folder: str, check_images: bool = True, default_method: str | None = None) -> Sample:
    """Parse one JSONL line into a Sample; raise DataError naming `where` ("file:line") and the field.

    ``default_method`` is the reward method of a row without ``accu_reward_method`` (its file's)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON: {e.msg} (column {e.colno})", "invalid JSON") from None
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}", "invalid JSON")

    turns = row.get("conversations")
    if not isinstance(turns, list) or not all(
        isinstance(t, dict) and isinstance(t.get("from"), str) and isinstance(t.get("value"), str) for t in turns
    ):
        raise DataError(f"{where}: field 'conversations': expected a list of {{from, value}} turns", "bad conversations")
    human, solution = _turn(turns, "human", where), _turn(turns, "gpt", where)

    image = row.get("image", [])
    rel = [image] if isinstance(image, str) else image
    if not isinstance(rel, list) or not all(isinstance(p, str) and p for p in rel):
        raise DataError(f"{where}: field 'image': expected a path or a list of paths, got {image!r}", "bad image field")
    images = [os.path.abspath(os.path.join(image_folder, p)) for p in rel]
    n_placeholders = human.count("<image>")
    if n_placeholders and n_placeholders != len(images):
        raise DataError(
            f"{where}: field 'conversations': human turn has {n_placeholders} <image> placeholders "
            f"but the row has {len(images)} images",
            "placeholders != images",
        )
    if check_images:
        for p in images:
            if not os.path.isfile(p):
                raise DataError(f"{where}: field 'image': file not found: {p}", "image not found")

    method = row.get("accu_reward_method")
    if method is not None and not isinstance(method, str):
        raise DataError(f"{where}: field 'accu_reward_method': expected a string, got {method!r}", "bad reward method")
    sid = row.get("id", where)
    if not isinstance(sid, (str, int)):
        raise DataError(f"{where}: field 'id': expected a string or integer, got {sid!r}", "bad id")
    extra = {k: v for k, v in row.items() if k not in _KNOWN_KEYS}
    problem = human.strip()
    return Sample(str(sid), images, problem, solution, method if method is not None else default_method, extra, where)


def load_samples(
    data_files: str | list[str],
    image_folders: str | list[str] | None = None,
    on_error: OnError = "raise",
    check_images: bool = True,
    reward_methods: str | list[str | None] | None = None,
    check: Callable[[Sample], None] | None = None,
) -> LoadResult:
    """Load and validate VLM-R1 JSONL files; returns ``LoadResult(samples, skipped, reasons)``.

    `data_files` / `image_folders`: colon-separated strings or lists, paired by
    position (equal counts); ``image_folders=None`` resolves images against each
    JSONL file's directory. Blank lines are ignored.

    ``reward_methods`` (VLM-R1's ``--reward_method``): one accuracy method per file, paired by
    position, given to the rows of that file that carry no ``accu_reward_method`` (None in a list:
    that file's rows keep none).

    ``check`` (e.g. ``data.checks.RowChecker``) runs on each parsed row and raises DataError for
    a row that parses but cannot be trained on (an unreadable image, a solution its reward
    cannot score); its rows count as bad rows too.

    ``on_error="raise"`` raises the first row's DataError; ``"skip"`` drops bad rows,
    logs each with ``logging.warning``, lists the messages in ``skipped`` and counts them by
    reason in ``reasons``.
    File-level problems (missing file, empty file, mismatched folder count, no valid
    row at all) raise in both modes.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    files = _split(data_files)
    if image_folders is None:
        folders = [os.path.dirname(os.path.abspath(f)) for f in files]
    else:
        folders = _split(image_folders)
        if len(folders) != len(files):
            raise DataError(
                f"{len(files)} data files but {len(folders)} image folders; they pair by position, "
                "so give one folder per file (or none to resolve images next to each file)"
            )
    if reward_methods is None:
        methods: list[str | None] = [None] * len(files)
    else:
        methods = _split(reward_methods) if isinstance(reward_methods, str) else list(reward_methods)
        if len(methods) != len(files):
            raise DataError(
                f"{len(methods)} reward methods for {len(files)} data files; they pair by position, "
                "so give one method per file"
            )
    samples: list[Sample] = []
    skipped: list[str] = []
    reasons: Counter[str] = Counter()
    for path, folder, method in zip(files, folders, methods):
        n_rows = 0
        for lineno, line in _lines(path):
            if isinstance(line, str) and not line.strip():
                continue
            n_rows += 1
            try:
                if isinstance(line, DataError):  # the line's bytes are not UTF-8
                    raise line
                sample = parse_row(line, f"{path}:{lineno}", folder, check_images, method)
                if check is not None:
                    check(sample)
                samples.append(sample)
            except DataError as e:
                if on_error == "raise":
                    raise
                logger.warning("skipping row: %s", e)
                skipped.append(str(e))
                reasons[e.reason] += 1
        if n_rows == 0:
            raise DataError(f"{path}: file has no rows")
    if not samples:
        raise DataError(f"no valid rows in {files} ({len(skipped)} skipped)")
    return LoadResult(samples, skipped, dict(reasons))


_UTF16_32_BOMS = (b"\xff\xfe", b"\xfe\xff")  # also the start of the UTF-32 BOMs


def _lines(path: str):
    """``(line number, text)`` per line; a line that is not UTF-8 comes as its DataError instead.

    Decoding line by line, so that a stray byte is reported with its line (and skipped under
    ``on_error=skip``) rather than failing the whole file; a UTF-8 byte-order mark is accepted.
    """
    if os.path.isdir(path):
        raise DataError(f"{path}: is a folder; data files are JSONL files")
    if not os.path.isfile(path):
        raise DataError(f"{path}: data file not found")
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            if lineno == 1:
                if line.startswith(_UTF16_32_BOMS):
                    raise DataError(f"{path}: the file is UTF-16 or UTF-32 text; save it as UTF-8 (one JSON object per line)")
                line = line.removeprefix(b"\xef\xbb\xbf")
            try:
                yield lineno, line.decode("utf-8")
            except UnicodeDecodeError as e:
                bad = line[e.start : e.start + 4]
                yield lineno, DataError(
                    f"{path}:{lineno}: not UTF-8 text (byte {e.start + 1} of the line: {bad!r}); save the file as UTF-8",
                    "not UTF-8",
                )


_THINK = "First output the thinking process in <think> </think> tags and then output the final answer in <answer> </answer> tags."
QUESTION_TEMPLATES: dict[str, str] = {
    # The tiny embedded model answers with the bare answer (box, JSON, number), so its prompts are
    # the question alone; the generated questions already say what form the answer takes.
    "rec": "{Question}",
    "det": "{Question}",
    "count": "{Question}",
    "gui": "{Question}",
    "rec_think": "{Question} " + _THINK,
    # VLM-R1's fallback template (grpo_jsonl.py, task types other than rec / ic / odLength).
    "default": "{Question} " + _THINK,
}


ANSWER_TOKENS: dict[str, int] = {"rec": 24, "det": 96, "count": 8, "gui": 40, "rec_think": 1024, "default": 1024}
"""Question template -> new tokens an answer needs (``vlmr1 eval``'s default --max-new-tokens): the
bare answers of the tiny model's templates as its recipes (configs/tasks/) allow them; a
``<think>`` template VLM-R1's 1024, as a reasoning answer cut short scores nothing."""
assert set(ANSWER_TOKENS) == set(QUESTION_TEMPLATES)


TASK_METHODS: dict[str, str] = {"rec": "rec", "rec_think": "rec"}
"""Question template -> the accuracy method of rows that name none (and whose file has no
``data.reward_methods`` entry): REC rows are scored by IoU, as VLM-R1's REC script does. Other
tasks leave such rows to ``default`` (math-verify), VLM-R1's fallback."""


def question_template(task: str) -> str:
    """The prompt template for `task`; ``{Question}`` marks where the problem goes."""
    if task not in QUESTION_TEMPLATES:
        raise KeyError(f"unknown question template {task!r}; known: {sorted(QUESTION_TEMPLATES)}")
    return QUESTION_TEMPLATES[task]


def format_question(task: str, problem: str) -> str:
    """Apply `task`'s template to `problem` (by replacement, so braces in the problem are safe)."""
    return question_template(task).replace("{Question}", problem)
