"""GSM8K (generate): lm-evaluation-harness's ``gsm8k`` format and a chat variant.

Plain (lm-eval ``gsm8k.yaml``): ``num_fewshot`` examples from the train split, each
``"Question: {question}\\nAnswer: {answer}\\n\\n"`` (target delimiter " ", few-shot delimiter "\\n\\n"), then
``"Question: {question}\\nAnswer:"``. lm-eval generates greedily until "Question:", "</s>" or "<|im_end|>";
the suites set those stop strings in the task's ``gen``. With ``params.fewshot_sampler: lm_eval_default``
the examples are lm-eval's own draws (its ``Random(fewshot_seed)`` shared across the documents in order).

Chat (``chat: true``): the user message is ``params.instruction + "\\n\\n" + question`` when an
instruction is set, else lm-eval's ``"Question: ...\\nAnswer:"`` text; few-shot examples become earlier
user/assistant turns. The backend renders the model's chat template.

Every request carries ``target`` = the full reference answer and ``meta["answer"]`` = the final number
after ``####`` with commas removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from rescore.config import TaskConfig
from rescore.core import Request, RequestType, Tokenizer
from rescore.tasks.base import task_family, task_params
from rescore.tasks.common import IDX, FewshotDrawer, SourceParams, check_common, load_records, sample_id


class GSM8KParams(SourceParams):
    """Params of ``gsm8k`` tasks."""

    instruction: str | None = None  # chat: text in front of each question
    fewshot_sampler: Literal["random", "first_n", "lm_eval_default"] = "random"
    question_field: str = "question"
    answer_field: str = "answer"


def final_answer(answer: str) -> str:
    """The normalised final answer of a GSM8K reference: the text after the last ``####``, commas removed."""
    return answer.split("####")[-1].strip().replace(",", "")


def question_text(q: str) -> str:
    return f"Question: {q}\nAnswer:"


@task_family("gsm8k", params=GSM8KParams)
class GSM8K:
    def request_type(self, task: TaskConfig) -> RequestType:
        return "generate"

    def check(self, task: TaskConfig) -> list[str]:
        problems, _ = check_common(task, GSM8KParams)
        if task.source is None:
            problems.append(f"task {task.name}: a gsm8k task needs a source")
        elif task.num_fewshot and not (task.source.fewshot_split or task.source.fewshot_path):
            problems.append(f"task {task.name}: num_fewshot={task.num_fewshot} needs source.fewshot_split or fewshot_path")
        return problems

    def load_rows(self, task: TaskConfig, data_root: Path | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        p = task_params(task, GSM8KParams)
        rows = self._norm(p, load_records(task, data_root, fewshot=False, prompt="gsm8k", schema=p.schema_))
        shots = (self._norm(p, load_records(task, data_root, fewshot=True, prompt="gsm8k", schema=p.schema_))
                 if task.num_fewshot else [])
        return rows, shots

    def _norm(self, p: GSM8KParams, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        qf, af = p.question_field, p.answer_field
        return [{"question": r[qf], "answer": r[af], IDX: r[IDX]} for r in rows]

    def build_requests(self, task: TaskConfig, rows: Sequence[dict[str, Any]], fewshot_rows: Sequence[dict[str, Any]],
                       tokenizer: Tokenizer | None) -> list[Request]:
        p = task_params(task, GSM8KParams)
        drawer, instruction = FewshotDrawer(p.fewshot_sampler, task.fewshot_seed), p.instruction
        out = []
        for row in rows:
            sid = sample_id(row)
            shots = drawer.draw(fewshot_rows, task.num_fewshot, key=sid, exclude=None)
            common = dict(sample_id=sid, task=task.name, request_type="generate", target=row["answer"],
                          meta={"answer": final_answer(row["answer"]), "source_idx": int(row[IDX])})
            if task.chat:
                msgs: list[dict[str, str]] = []
                for s in shots:
                    msgs += [{"role": "user", "content": self._user(s["question"], instruction)},
                             {"role": "assistant", "content": s["answer"]}]
                msgs.append({"role": "user", "content": self._user(row["question"], instruction)})
                out.append(Request(**common, messages=tuple(msgs), chat=True))
            else:
                prefix = "".join(question_text(s["question"]) + " " + s["answer"] + "\n\n" for s in shots)
                out.append(Request(**common, prompt=prefix + question_text(row["question"])))
        return out

    @staticmethod
    def _user(question: str, instruction: str | None) -> str:
        return f"{instruction}\n\n{question}" if instruction else question_text(question)

