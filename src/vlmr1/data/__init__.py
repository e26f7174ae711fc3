"""Data: VLM-R1 JSONL loading (`jsonl`) and the embedded synthetic tasks (`synthetic`)."""

from vlmr1.data.jsonl import (
    QUESTION_TEMPLATES,
    DataError,
    LoadResult,
    Sample,
    format_question,
    load_samples,
    question_template,
)

__all__ = [
    "QUESTION_TEMPLATES",
    "DataError",
    "LoadResult",
    "Sample",
    "format_question",
    "load_samples",
    "question_template",
]
