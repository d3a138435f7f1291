"""Converters from the schema of a local copy to the Hugging Face schema of the same dataset.

Prompt formats (``rescore.tasks.multiple_choice``) are written against the Hugging Face schema, the one
lm-evaluation-harness reads, so a converted copy gives the same prompts once converted back here.
``schema: hf`` (the default) means the records already have that schema.

Each converter takes the records read by ``rescore.tasks.sources.read_local`` and the task's prompt
format name and returns dicts. What cannot be recovered exactly is said in the converter's docstring.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from rescore.errors import ConfigError
from rescore.registry import Registry

Converter = Callable[[list[Any], str], list[dict[str, Any]]]
schemas: Registry[Converter] = Registry("source schema")

LETTERS = "ABCDEFGHIJ"


@schemas.register("hf")
def from_hf(records: list[Any], prompt: str) -> list[dict[str, Any]]:
    """Records already in the Hugging Face schema. csv/tsv files need a header row (in every file)."""
    out: list[dict[str, Any]] = []
    header: list[str] | None = None
    current: str | None = None
    for r in records:
        if isinstance(r, dict) and "fields" in r:
            if r["_file"] != current:  # first record of a file: its header
                header, current = r["fields"], r["_file"]
                continue
            out.append(dict(zip(header or [], r["fields"], strict=False)))
        else:
            out.append(dict(r))
    return out


def _strip_prefix(s: str, prefix: str) -> str:
    return s[len(prefix) :] if s.startswith(prefix) else s


@schemas.register("llm_foundry")
def from_llm_foundry(records: list[Any], prompt: str) -> list[dict[str, Any]]:
    """llm-foundry's ICL jsonl (``query``/``choices``/``gold``, or ``context_options``/``continuation``).

    - arc: ``query`` is ``"Question: " + question``; the choices get labels A, B, ... (every converted item
      has 4 choices; upstream's 3- and 5-option items were padded or cut by that conversion).
    - piqa: ``query`` is ``"Question: " + goal + "\\n"``.
    - copa: ``query`` is the premise with its final period replaced by ", therefore" / ", because"; the
      premise gets its period back and the connector becomes ``question`` effect/cause.
    - winogrande: kept as is: ``context_options`` and ``continuation`` are exactly what lm-eval's
      partial scoring builds from ``sentence``/``option1``/``option2``.
    """
    out: list[dict[str, Any]] = []
    for r in records:
        if prompt == "arc":
            labels = list(LETTERS[: len(r["choices"])])
            out.append({
                "question": _strip_prefix(r["query"], "Question: "),
                "choices": {"text": list(r["choices"]), "label": labels},
                "answerKey": labels[int(r["gold"])],
            })
        elif prompt == "piqa":
            goal = _strip_prefix(r["query"], "Question: ")
            goal = goal[:-1] if goal.endswith("\n") else goal
            out.append({"goal": goal, "sol1": r["choices"][0], "sol2": r["choices"][1], "label": int(r["gold"])})
        elif prompt == "copa":
            q = r["query"]
            for suffix, kind in ((", therefore", "effect"), (", because", "cause")):
                if q.endswith(suffix):
                    premise, question = q[: -len(suffix)] + ".", kind
                    break
            else:
                raise ConfigError(f"copa record without ', therefore'/', because': {q!r}")
            out.append({"premise": premise, "question": question, "choice1": r["choices"][0],
                        "choice2": r["choices"][1], "label": int(r["gold"])})
        elif prompt == "winogrande":
            out.append({"context_options": list(r["context_options"]), "continuation": r["continuation"],
                        "gold": int(r["gold"])})
        else:
            raise ConfigError(f"schema llm_foundry has no converter for prompt format {prompt!r}",
                              hint="supported: arc, piqa, copa, winogrande")
    return out


_OBQA_CHOICE = re.compile(r"\(([A-E])\) ")


@schemas.register("obqa_tsv")
def from_obqa_tsv(records: list[Any], prompt: str) -> list[dict[str, Any]]:
    """The OpenBookQA release TSV: ID, Question Stem, Choices ``"(A) … (B) … (C) … (D) …"``, Complete
    Question, Answer Key. Choices are split at the ``(B) ``, ``(C) ``... markers in order."""
    header, *body = [r["fields"] for r in records]
    col = {name: i for i, name in enumerate(header)}
    out = []
    for r in body:
        text = r[col["Choices"]]
        labels, texts, pos = [], [], 0
        starts = []
        for letter in LETTERS[:5]:
            i = text.find(f"({letter}) ", pos)
            if i < 0:
                break
            starts.append((letter, i))
            pos = i + 4
        for k, (letter, i) in enumerate(starts):
            end = starts[k + 1][1] if k + 1 < len(starts) else len(text)
            labels.append(letter)
            texts.append(text[i + 4 : end].strip())
        out.append({"id": r[col["ID"]], "question_stem": r[col["Question Stem"]],
                    "choices": {"text": texts, "label": labels}, "answerKey": r[col["Answer Key"]].strip()})
    return out


@schemas.register("mmlu_csv")
def from_mmlu_csv(records: list[Any], prompt: str) -> list[dict[str, Any]]:
    """hendrycks/test CSVs (no header: question, A, B, C, D, answer letter); the subject comes from the
    file name (``<subject>_test.csv``), as in cais/mmlu."""
    out = []
    for r in records:
        fields, stem = r["fields"], r["_file"]
        if len(fields) != 6:
            raise ConfigError(f"MMLU csv record with {len(fields)} fields (expected 6): {fields[:1]!r}")
        subject = re.sub(r"_(test|dev|val)$", "", stem)
        out.append({"question": fields[0], "subject": subject, "choices": list(fields[1:5]),
                    "answer": LETTERS.index(fields[5].strip())})
    return out


# The WikiHow categories among HellaSwag's activity labels (the rest are ActivityNet activities).
WIKIHOW_LABELS = frozenset({
    "Personal Care and Style", "Family Life", "Food and Entertaining", "Computers and Electronics", "Health",
    "Home and Garden", "Finance and Business", "Pets and Animals", "Education and Communications", "Youth",
    "Sports and Fitness", "Relationships", "Work World", "Cars & Other Vehicles", "Travel",
    "Holidays and Traditions", "Philosophy and Religion", "Uncategorized", "Home,Categories", "Arts and Entertainment",
    "Hobbies and Crafts",
})
_LAST_SENTENCE = re.compile(r"^(.*[.!?][\"']?) (\S.*)$")


@schemas.register("hellaswag_text")
def from_hellaswag_text(records: list[Any], prompt: str) -> list[dict[str, Any]]:
    """The 6-line HellaSwag text form (``activity_label + ": " + ctx``, label, four endings).

    That form keeps ``ctx`` but not its two parts, and lm-eval capitalizes ``ctx_b``. ActivityNet items
    have ``ctx_b`` = the words after the context's last sentence end (e.g. "the lady"); WikiHow items
    (activity label is a WikiHow category) have an empty ``ctx_b``. Its converter also dropped WikiHow's
    ``[header]``/``[step]``/``[title]`` markers, so for WikiHow items whitespace can differ from lm-eval on
    the Hugging Face rows (lm-eval keeps a space where an ending began with a marker).
    """
    out = []
    for lines in records:
        first = lines["fields"]
        label, _, ctx = first[0].partition(": ")
        if label in WIKIHOW_LABELS:
            ctx_a, ctx_b = ctx, ""
        else:
            m = _LAST_SENTENCE.match(ctx)
            ctx_a, ctx_b = (m.group(1), m.group(2)) if m else ("", ctx)
        out.append({"activity_label": label, "ctx_a": ctx_a, "ctx_b": ctx_b, "ctx": ctx,
                    "label": int(first[1]), "endings": list(first[2:6])})
    return out


def convert(schema: str, records: list[Any], prompt: str) -> list[dict[str, Any]]:
    return schemas.get(schema)(records, prompt)
