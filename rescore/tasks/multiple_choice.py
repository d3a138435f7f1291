"""Multiple choice (loglikelihood) tasks with lm-evaluation-harness's prompt formats.

A prompt format turns one row of the dataset's Hugging Face schema into an :class:`MCDoc`, following
the task definition of lm-evaluation-harness 0.4.13 (``lm_eval/tasks/<task>/``): the same query text,
the same choice strings and the same gold index. Requests are then built the way lm-eval builds them:

- context = description + few-shot examples + query, where each example is
  ``query + target_delimiter + answer + fewshot_delimiter`` (defaults ``" "`` and ``"\\n\\n"``);
- continuation of choice ``i`` = ``target_delimiter + choices[i]``;
- partial scoring (winogrande): one context per option (``sentence`` up to the blank + option), and the
  same continuation (``target_delimiter`` + the rest of the sentence) for each.

Rows can be subset (``subset_size``/``subset_seed``, see ``rescore.tasks.common.subset_indices``) and
few-shot examples come from ``source.fewshot_split``/``fewshot_path`` (``num_fewshot``, ``fewshot_seed``,
``params.fewshot_sampler``: ``random``, ``first_n`` or ``lm_eval_default``, lm-eval's own shared
``Random(fewshot_seed)``, see ``rescore.tasks.common.FewshotDrawer``; MMLU defaults to ``first_n`` of its
subject's dev rows, as lm-eval does).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rescore.config import TaskConfig
from rescore.core import Request, RequestType, Tokenizer
from rescore.registry import Registry
from rescore.tasks.base import task_family, task_params
from rescore.tasks.common import IDX, FewshotDrawer, SourceParams, check_common, load_records, sample_id


@dataclass(frozen=True)
class MCDoc:
    """One multiple-choice item. ``contexts`` is set for partial scoring (one context per choice, a single
    shared continuation in ``choices[0]``); otherwise ``query`` is the shared context."""

    query: str
    choices: tuple[str, ...]
    gold: int
    category: str | None = None
    contexts: tuple[str, ...] | None = None
    description: str = ""

    @property
    def fewshot_pair(self) -> tuple[str, str]:
        """(question, answer) of this item used as a few-shot example."""
        if self.contexts is not None:
            return self.contexts[self.gold], self.choices[0]
        return self.query, self.choices[self.gold]


Format = Callable[[dict[str, Any]], MCDoc]
formats: Registry[Format] = Registry("multiple-choice prompt format")

LETTERS = "ABCDE"


def _hellaswag_preprocess(text: str) -> str:
    # lm-eval hellaswag/utils.py: brackets are WikiHow markup artifacts.
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


@formats.register("hellaswag")
def hellaswag(row: dict[str, Any]) -> MCDoc:
    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    return MCDoc(
        query=_hellaswag_preprocess(row["activity_label"] + ": " + ctx),
        choices=tuple(_hellaswag_preprocess(e) for e in row["endings"]),
        gold=int(row["label"]),
        category=row["activity_label"],
    )


@formats.register("arc")
def arc(row: dict[str, Any]) -> MCDoc:
    return MCDoc(
        query=f"Question: {row['question']}\nAnswer:",
        choices=tuple(row["choices"]["text"]),
        gold=list(row["choices"]["label"]).index(row["answerKey"]),
    )


@formats.register("qasc")
def qasc(row: dict[str, Any]) -> MCDoc:
    """QASC has no lm-eval 0.4.13 task; it uses ARC's format (question, the choice texts as continuations)."""
    return arc(row)


@formats.register("piqa")
def piqa(row: dict[str, Any]) -> MCDoc:
    return MCDoc(query=f"Question: {row['goal']}\nAnswer:", choices=(row["sol1"], row["sol2"]), gold=int(row["label"]))


@formats.register("winogrande")
def winogrande(row: dict[str, Any]) -> MCDoc:
    if "context_options" in row:  # already resolved (llm-foundry's copy)
        contexts, cont, gold = tuple(row["context_options"]), row["continuation"], int(row["gold"])
    else:
        blank = row["sentence"].index("_")
        contexts = tuple(row["sentence"][:blank] + opt for opt in (row["option1"], row["option2"]))
        cont = row["sentence"][blank + 1 :].strip()
        gold = {"1": 0, "2": 1}[str(row["answer"])]
    return MCDoc(query="", choices=(cont,), gold=gold, contexts=contexts)


@formats.register("openbookqa")
def openbookqa(row: dict[str, Any]) -> MCDoc:
    return MCDoc(
        query=row["question_stem"],
        choices=tuple(row["choices"]["text"]),
        gold=list(row["choices"]["label"]).index(row["answerKey"].lstrip()),
    )


@formats.register("commonsense_qa")
def commonsense_qa(row: dict[str, Any]) -> MCDoc:
    t = row["choices"]["text"]
    query = f"Question: {row['question'].strip()}\n" + "".join(f"{LETTERS[i]}. {t[i]}\n" for i in range(5)) + "Answer:"
    return MCDoc(query=query, choices=tuple(LETTERS), gold=LETTERS.index(row["answerKey"]))


@formats.register("social_iqa")
def social_iqa(row: dict[str, Any]) -> MCDoc:
    return MCDoc(
        query=f"Q: {row['context']} {row['question']}\nA:",
        choices=(row["answerA"], row["answerB"], row["answerC"]),
        gold=int(row["label"]) - 1,
    )


@formats.register("sciq")
def sciq(row: dict[str, Any]) -> MCDoc:
    return MCDoc(
        query=f"{row['support'].lstrip()}\nQuestion: {row['question']}\nAnswer:",
        choices=(row["distractor1"], row["distractor2"], row["distractor3"], row["correct_answer"]),
        gold=3,
    )


def _copa_choice(c: str) -> str:
    return " " + c[0].lower() + c[1:]


@formats.register("copa")
def copa(row: dict[str, Any]) -> MCDoc:
    """lm-eval super_glue/copa: the premise without its final period + " because"/" therefore"; the
    choices already start with a space, so with the target delimiter the continuation starts with two."""
    connector = {"cause": "because", "effect": "therefore"}[row["question"]]
    return MCDoc(
        query=row["premise"].strip()[:-1] + f" {connector}",
        choices=(_copa_choice(row["choice1"]), _copa_choice(row["choice2"])),
        gold=int(row["label"]),
    )


def mmlu_description(subject: str) -> str:
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


@formats.register("mmlu")
def mmlu(row: dict[str, Any]) -> MCDoc:
    c = row["choices"]
    answer = row["answer"]
    gold = LETTERS.index(answer) if isinstance(answer, str) else int(answer)
    subject = row.get("subject") or ""
    return MCDoc(
        query=f"{row['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:",
        choices=("A", "B", "C", "D"),
        gold=gold,
        category=subject or None,
        description=mmlu_description(subject) if subject else "",
    )


class MCParams(SourceParams):
    """Params of ``multiple_choice`` tasks."""

    prompt: str  # a registered prompt format (:data:`formats`)
    subjects: list[str] | None = None  # keep only rows of these subjects (MMLU)
    description: str | None = None  # text in front of the few-shot examples; default: the format's
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    fewshot_sampler: Literal["random", "first_n", "lm_eval_default"] | None = None  # default: first_n for mmlu, else random
    skip_duplicate_choices: bool = False  # drop rows whose choices repeat

    @property
    def sampler(self) -> str:
        return self.fewshot_sampler or ("first_n" if self.prompt == "mmlu" else "random")


def render(doc: MCDoc, shots: Sequence[MCDoc], *, description: str, target_delimiter: str,
           fewshot_delimiter: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(contexts, continuations), one of each per choice, as lm-eval builds them."""
    prefix = description + "".join(q + target_delimiter + a + fewshot_delimiter for q, a in (s.fewshot_pair for s in shots))
    if doc.contexts is not None:
        cont = target_delimiter + doc.choices[0]
        return tuple(prefix + c for c in doc.contexts), (cont,) * len(doc.contexts)
    return (prefix + doc.query,) * len(doc.choices), tuple(target_delimiter + c for c in doc.choices)


@task_family("multiple_choice", params=MCParams)
class MultipleChoice:
    def request_type(self, task: TaskConfig) -> RequestType:
        return "loglikelihood"

    def check(self, task: TaskConfig) -> list[str]:
        problems, p = check_common(task, MCParams)
        if p is not None and p.prompt not in formats:
            problems.append(f"task {task.name}: params.prompt {p.prompt!r} is not a prompt format (choices: {formats.names()})")
        if task.source is None:
            problems.append(f"task {task.name}: a multiple_choice task needs a source")
        elif task.num_fewshot and not (task.source.fewshot_split or task.source.fewshot_path):
            problems.append(f"task {task.name}: num_fewshot={task.num_fewshot} needs source.fewshot_split or fewshot_path")
        return problems

    def load_rows(self, task: TaskConfig, data_root: Path | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        p = task_params(task, MCParams)
        rows = self._filter(p, load_records(task, data_root, fewshot=False, prompt=p.prompt, schema=p.schema_))
        fewshot = []
        if task.num_fewshot:
            fewshot = self._filter(p, load_records(task, data_root, fewshot=True, prompt=p.prompt, schema=p.schema_),
                                   dedupe=False)
        return rows, fewshot

    def _filter(self, p: MCParams, rows: list[dict[str, Any]], dedupe: bool = True) -> list[dict[str, Any]]:
        if p.subjects:
            rows = [r for r in rows if r.get("subject") in set(p.subjects)]
        if dedupe and p.skip_duplicate_choices:
            fmt = formats.get(p.prompt)
            rows = [r for r in rows if len(set(fmt(r).choices)) == len(fmt(r).choices)]
        return rows

    def build_requests(self, task: TaskConfig, rows: Sequence[dict[str, Any]], fewshot_rows: Sequence[dict[str, Any]],
                       tokenizer: Tokenizer | None) -> list[Request]:
        p = task_params(task, MCParams)
        fmt = formats.get(p.prompt)
        drawer = FewshotDrawer(p.sampler, task.fewshot_seed)
        tdel, fdel = p.target_delimiter, p.fewshot_delimiter
        pool_by_cat: dict[str | None, list[dict[str, Any]]] = {}
        for r in fewshot_rows:
            pool_by_cat.setdefault(fmt(r).category if p.prompt == "mmlu" else None, []).append(r)
        out = []
        for row in rows:
            doc = fmt(row)
            sid = sample_id(row)
            pool = pool_by_cat.get(doc.category if p.prompt == "mmlu" else None, [])
            same_split = _same_source(task)
            shots = drawer.draw(pool, task.num_fewshot, key=sid, exclude=row if same_split else None,
                                group=doc.category if p.prompt == "mmlu" else None)
            contexts, conts = render(doc, [fmt(s) for s in shots], description=doc.description if p.description is None else p.description,
                                     target_delimiter=tdel, fewshot_delimiter=fdel)
            meta: dict[str, Any] = {"source_idx": int(row[IDX])}
            if shots:
                meta["fewshot_idx"] = [int(s[IDX]) for s in shots]
                if doc.contexts is not None:
                    # partial scoring: lm-eval's acc_norm divides by the length of the choice string (the
                    # option's context without the few-shot examples in front of it); pin it for the scorer
                    meta["choice_chars"] = [len(c) for c in doc.contexts]
                    meta["choice_bytes"] = [len(c.encode("utf-8")) for c in doc.contexts]
            out.append(Request(
                sample_id=sid, task=task.name, request_type="loglikelihood",
                target=doc.choices[0] if doc.contexts is not None else doc.choices[doc.gold],
                gold=doc.gold, category=doc.category, contexts=contexts, continuations=conts, meta=meta,
            ))
        return out


def _same_source(task: TaskConfig) -> bool:
    s = task.source
    if s is None:
        return False
    return (s.path is not None and s.fewshot_path == s.path) or (s.hf is not None and s.fewshot_split == s.split)

