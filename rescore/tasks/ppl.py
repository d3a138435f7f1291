"""Perplexity tasks (rolling): packed token windows and whole documents.

``ppl_packed`` (Tier2 slices). The text of each document (``params.text_field``, or several
``text_fields`` joined by a blank line) is tokenized with the model's tokenizer (a BOS the tokenizer adds
is dropped) and the documents are joined into one stream with one EOS token between documents and one
EOS in front of the first, so every document's first token is predicted after an EOS. The stream is cut
so that exactly ``target_tokens`` tokens are scored, in windows of at most ``seq_len`` tokens:

- window 0 = the leading EOS (context) + the next ``seq_len - 1`` tokens (scored);
- every later window starts ``overlap`` tokens (default 1, at least 1) before the first token it scores;
  those tokens are context only (``Request.score_from = overlap``), so a window scores
  ``seq_len - overlap`` new tokens (the stride) and sees the tokens before them;
- the last window is shorter when ``target_tokens`` is not a multiple of the stride.

Windows are built at request time from the prepared documents and the tokenizer, deterministically; they
are cached next to the prepared rows as ``windows-<tokenizer fingerprint>.parquet``. ``prepare`` stores
documents until ``params.prepare_chars`` characters (default ``8 * target_tokens``) are reached; a
tokenizer that needs more text raises an error saying so. ``n_bytes``/``n_words`` of a window are those
of its scored tokens decoded (EOS removed), so a window that starts or ends inside a multi-byte
character counts it approximately.

``ppl_docs`` (document-level rolling perplexity, lm-eval ``wikitext`` style): one request per document
with ``Request.text`` = the document (after ``params.detokenize: wikitext``, lm-eval's
``wikitext_detokenizer``) and ``n_words``/``n_bytes`` counted on the document before detokenization:
``len(re.split(r"\\s+", page))`` words and its UTF-8 bytes. The backend scores it in rolling windows of
the model's length.

Local text files are split into documents by ``params.documents``: ``whole`` (one document),
``paragraphs`` (blank-line separated) or ``wikitext_pages`` (EleutherAI's wikitext_document_level rule:
a new page at each top-level `` = Title = `` line, lines joined with "\\n").
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from rescore.config import TaskConfig
from rescore.core import Request, RequestType, Tokenizer, content_hash
from rescore.errors import MissingDataError
from rescore.tasks.base import task_family, task_params
from rescore.tasks.common import IDX, SourceParams, check_common
from rescore.tasks.schemas import convert
from rescore.tasks.sources import iter_hf, read_local, require_exists, resolve_path


class PPLParams(SourceParams):
    """Params of both perplexity families: where the documents' text is and how it is split."""

    text_field: str = "text"
    text_fields: list[str] | None = None  # several fields, joined by a blank line (instead of text_field)
    documents: Literal["whole", "paragraphs", "wikitext_pages"] = "whole"  # how a local text file is split
    line_ending: Literal["crlf_doubled"] | None = None  # the shipped WikiText-2 copy's layout
    skip_docs: int = Field(0, ge=0)
    streaming: bool | None = None  # Hugging Face sources: stream (default: ppl_packed yes, ppl_docs no)


class PackedParams(PPLParams):
    """Params of ``ppl_packed`` tasks."""

    target_tokens: int = Field(ge=1)  # tokens scored in all
    seq_len: int = Field(2048, ge=2)
    overlap: int = Field(1, ge=1)  # context tokens at the start of every window after the first
    prepare_chars: int | None = Field(None, ge=1)  # characters prepared (default 8 * target_tokens)

    @model_validator(mode="after")
    def _overlap_below_seq_len(self) -> PackedParams:
        if self.overlap >= self.seq_len:
            raise ValueError(f"params.overlap must be an integer in [1, seq_len), got {self.overlap}")
        return self


class DocParams(PPLParams):
    """Params of ``ppl_docs`` tasks."""

    detokenize: Literal["wikitext"] | None = None

# Text for the tokenizer fingerprint: words, digits, code, whitespace runs and non-ASCII.
PROBE_TEXT = (
    "The quick brown fox jumps over the lazy dog. 0123456789 3.14159 -42\n"
    "def f(x):\n    return {'a': [1, 2]}  # comment\n\n\tTabs  and   spaces\r\n"
    "Ünïcödé ñ 日本語 中文 한국어 Ελληνικά русский emoji 🙂 <s></s> <|im_end|>"
)


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """A content fingerprint of a tokenizer: its own ``fingerprint``/``tokenizer_hash`` attribute when it
    has one, else a hash of its special token ids, vocabulary size and the ids of a probe text."""
    for attr in ("fingerprint", "tokenizer_hash"):
        v = getattr(tokenizer, attr, None)
        if isinstance(v, str) and v:
            return v
    return content_hash({
        "eos": tokenizer.eos_token_id,
        "bos": getattr(tokenizer, "bos_token_id", None),
        "vocab": getattr(tokenizer, "vocab_size", None),
        "probe": list(tokenizer.encode(PROBE_TEXT)),
    })


# -- documents ---------------------------------------------------------------------------------------


def undouble_crlf(text: str) -> str:
    """Undo the layout of the shipped WikiText-2 copy (``crlf_doubled``).

    In that copy every line of the raw file ends with an extra "\r\n", every "\n" became "\r\n\r\n" and
    the raw file's blank lines (a single space) became empty. So ``c`` CRLFs between two text lines
    stand for ``(c - 1) / 2`` newlines, i.e. ``(c - 1) / 2 - 1`` blank " " lines, and ``c`` CRLFs before
    the first text line for ``c / 2`` blank lines. This restores the raw file's lines joined by "\n".
    """
    out: list[str] = []
    empties, seen = 0, False
    for line in text.split("\r\n"):
        if line == "":
            empties += 1
            continue
        blanks = (empties // 2 - 1) if seen else empties // 2
        out.extend([" "] * max(blanks, 0))
        out.append(line)
        empties, seen = 0, True
    tail = (empties - 1) // 2 if empties else 0
    return "\n".join(out) + ("\n" + " \n" * (tail - 1) if tail >= 1 else "")


def wikitext_pages(text: str) -> list[str]:
    pages: list[str] = []
    cur: list[str] = []
    for line in text.split("\n"):
        rline = line.replace("= = =", "===").replace("= =", "==").strip()
        if rline.startswith("= ") and rline.strip().endswith(" ="):
            page = "\n".join(cur)
            if page.strip():
                pages.append(page)
            cur = []
        cur.append(line)
    page = "\n".join(cur)
    if page.strip():
        pages.append(page)
    return pages


def split_documents(text: str, how: str) -> list[str]:
    if how == "wikitext_pages":
        return wikitext_pages(text)
    if how == "paragraphs":
        return [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    return [text]


def wikitext_detokenize(s: str) -> str:
    """lm-eval ``wikitext_detokenizer`` (wikitext/preprocess_wikitext.py), rule for rule."""
    s = s.replace("s '", "s'")
    s = re.sub(r"/' [0-9]/", r"/'[0-9]/", s)
    for a, b in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" : ", ": "), (" ; ", "; "), (" . ", ". "),
                 (" ! ", "! "), (" ? ", "? "), (" , ", ", ")):
        s = s.replace(a, b)
    s = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", s)
    s = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", s)
    s = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", s)
    s = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', s)
    s = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", s)
    for a, b in (("= = = =", "===="), ("= = =", "==="), ("= =", "=="), (" " + chr(176) + " ", chr(176)),
                 (" \n", "\n"), ("\n ", "\n"), (" N ", " 1 "), (" 's", "'s")):
        s = s.replace(a, b)
    return s


def _doc_text(p: PPLParams, rec: dict[str, Any]) -> str:
    fields = p.text_fields or [p.text_field]
    return "\n\n".join(str(rec[f]) for f in fields if rec.get(f) is not None)


def iter_documents(task: TaskConfig, p: PPLParams, data_root: Path | None, *, streaming: bool = True) -> Iterator[str]:
    """Documents of the task's source, in source order, after ``skip_docs``."""
    src = task.source
    assert src is not None
    skip = p.skip_docs
    if src.path is not None:
        path = require_exists(resolve_path(src.path, data_root), f"data file of task {task.name!r}")
        records = convert(p.schema_, read_local(path, src.format), "ppl")
        docs: Iterator[str] = (
            d
            for rec in records
            for d in split_documents(
                undouble_crlf(_doc_text(p, rec)) if p.line_ending == "crlf_doubled" else _doc_text(p, rec),
                p.documents,
            )
        )
    else:
        stream = streaming if p.streaming is None else p.streaming
        docs = (_doc_text(p, rec) for rec in iter_hf(src, src.split, streaming=stream))
    for i, d in enumerate(docs):
        if i >= skip and d.strip():
            yield d


def _check_source(task: TaskConfig, model: type[PPLParams]) -> list[str]:
    problems, _ = check_common(task, model)
    if task.source is None:
        problems.append(f"task {task.name}: a perplexity task needs a source")
    if task.num_fewshot:
        problems.append(f"task {task.name}: perplexity tasks take no few-shot examples")
    return problems


# -- packed windows ----------------------------------------------------------------------------------


def _encode_doc(tokenizer: Tokenizer, text: str) -> list[int]:
    ids = list(tokenizer.encode(text))
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and ids and ids[0] == bos:
        ids = ids[1:]
    if tokenizer.eos_token_id is not None and ids and ids[-1] == tokenizer.eos_token_id:
        ids = ids[:-1]
    return ids


def pack_windows(docs: Sequence[str], tokenizer: Tokenizer, *, target_tokens: int, seq_len: int,
                 overlap: int = 1) -> list[tuple[list[int], int]]:
    """``(token_ids, score_from)`` windows that score exactly ``target_tokens`` tokens (module docstring)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise MissingDataError("packing perplexity windows needs a tokenizer with an EOS token")
    if not 1 <= overlap < seq_len:
        raise ValueError("overlap must be in [1, seq_len)")
    need = target_tokens + 1
    stream = [eos]
    for i, doc in enumerate(docs):
        if i:
            stream.append(eos)
        stream.extend(_encode_doc(tokenizer, doc))
        if len(stream) >= need:
            break
    if len(stream) < need:
        raise MissingDataError(
            f"the prepared text gives {len(stream) - 1} tokens with this tokenizer, fewer than target_tokens={target_tokens}",
            hint="raise params.prepare_chars (or lower target_tokens) and run `rescore prepare` again",
        )
    stream = stream[:need]
    windows, pos, ctx = [], 1, 1
    while pos < need:
        start = pos - ctx
        end = min(start + seq_len, need)
        windows.append((stream[start:end], ctx))
        pos, ctx = end, overlap
    return windows


def _scored_text_stats(tokenizer: Tokenizer, ids: Sequence[int]) -> tuple[int, int]:
    eos = tokenizer.eos_token_id
    pieces: list[list[int]] = []
    cur: list[int] = []
    for t in ids:
        if t == eos:
            pieces.append(cur)
            cur = []
        else:
            cur.append(t)
    pieces.append(cur)
    texts = [tokenizer.decode(p) for p in pieces if p]
    return sum(len(t.encode("utf-8")) for t in texts), sum(len(t.split()) for t in texts)


@task_family("ppl_packed", params=PackedParams)
class PackedPPL:
    def request_type(self, task: TaskConfig) -> RequestType:
        return "rolling"

    def check(self, task: TaskConfig) -> list[str]:
        problems = _check_source(task, PackedParams)
        if task.subset_size is not None:
            problems.append(f"task {task.name}: ppl_packed takes target_tokens, not subset_size")
        return problems

    def prepare_chars(self, task: TaskConfig) -> int:
        p = task_params(task, PackedParams)
        return p.prepare_chars or 8 * p.target_tokens

    def load_rows(self, task: TaskConfig, data_root: Path | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        budget, total, rows = self.prepare_chars(task), 0, []
        for i, doc in enumerate(iter_documents(task, task_params(task, PackedParams), data_root)):
            rows.append({"text": doc, IDX: i})
            total += len(doc) + 1
            if total >= budget:
                break
        return rows, []

    def build_requests(self, task: TaskConfig, rows: Sequence[dict[str, Any]], fewshot_rows: Sequence[dict[str, Any]],
                       tokenizer: Tokenizer | None, cache_dir: Path | None = None) -> list[Request]:
        if tokenizer is None:
            raise MissingDataError(f"task {task.name}: packed perplexity windows need the model's tokenizer")
        windows = self.windows(task, rows, tokenizer, cache_dir)
        return [
            Request(sample_id=f"w{i:06d}", task=task.name, request_type="rolling", token_ids=tuple(ids),
                    score_from=sf, n_bytes=nb, n_words=nw, category=task.name, meta={"window": i})
            for i, (ids, sf, nb, nw) in enumerate(windows)
        ]

    def windows(self, task: TaskConfig, rows: Sequence[dict[str, Any]], tokenizer: Tokenizer,
                cache_dir: Path | None) -> list[tuple[list[int], int, int, int]]:
        p = task_params(task, PackedParams)
        spec = {"target_tokens": p.target_tokens, "seq_len": p.seq_len, "overlap": p.overlap}
        cache = None
        if cache_dir is not None:
            cache = cache_dir / f"windows-{content_hash({'tok': tokenizer_fingerprint(tokenizer), **spec})}.parquet"
            if cache.is_file():
                from rescore.artifacts.integrity import read_sealed_parquet
                from rescore.errors import CorruptArtifactError

                try:  # a cache: a damaged file (checksum, columns) is rebuilt below, never used
                    t = read_sealed_parquet(cache, "it is rebuilt").to_pydict()
                    return list(zip(t["token_ids"], t["score_from"], t["n_bytes"], t["n_words"], strict=True))
                except (CorruptArtifactError, KeyError, TypeError, ValueError):
                    pass
        packed = pack_windows([r["text"] for r in rows], tokenizer, **spec)
        out = [(ids, sf, *_scored_text_stats(tokenizer, ids[sf:])) for ids, sf in packed]
        if cache is not None:
            self._write_cache(cache, out)
        return out

    @staticmethod
    def _write_cache(path: Path, windows: list[tuple[list[int], int, int, int]]) -> None:
        import pyarrow as pa

        from rescore.artifacts.integrity import write_sealed_parquet
        from rescore.errors import StoreError

        table = pa.table({
            "token_ids": pa.array([w[0] for w in windows], pa.list_(pa.int32())),
            "score_from": pa.array([w[1] for w in windows], pa.int32()),
            "n_bytes": pa.array([w[2] for w in windows], pa.int64()),
            "n_words": pa.array([w[3] for w in windows], pa.int64()),
        })
        try:
            write_sealed_parquet(path, table)
        except (OSError, StoreError):
            pass  # a read-only or full store still works (the windows are rebuilt next time); never through a link


@task_family("ppl_docs", params=DocParams)
class DocPPL:
    def request_type(self, task: TaskConfig) -> RequestType:
        return "rolling"

    def check(self, task: TaskConfig) -> list[str]:
        return _check_source(task, DocParams)

    def load_rows(self, task: TaskConfig, data_root: Path | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        docs = iter_documents(task, task_params(task, DocParams), data_root, streaming=False)
        return [{"text": d, IDX: i} for i, d in enumerate(docs)], []

    def build_requests(self, task: TaskConfig, rows: Sequence[dict[str, Any]], fewshot_rows: Sequence[dict[str, Any]],
                       tokenizer: Tokenizer | None) -> list[Request]:
        detok = task_params(task, DocParams).detokenize == "wikitext"
        out = []
        for row in rows:
            page = row["text"]
            out.append(Request(
                sample_id=f"{int(row[IDX]):08d}", task=task.name, request_type="rolling",
                text=wikitext_detokenize(page) if detok else page,
                n_bytes=len(page.encode("utf-8")), n_words=len(re.split(r"\s+", page)), category=task.name,
                meta={"source_idx": int(row[IDX])},
            ))
        return out


def accepts_cache_dir(family: Any) -> bool:
    return "cache_dir" in inspect.signature(family.build_requests).parameters
