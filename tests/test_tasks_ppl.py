"""Perplexity tasks: packed windows (exact token count, EOS between documents, overlap as context only),
tokenizer-keyed window cache, WikiText-2 documents the lm-eval way."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pytest

import rescore.tasks
from rescore.config import TaskConfig
from rescore.errors import MissingDataError
from rescore.tasks.data import get_task_data, prepare_task
from rescore.tasks.ppl import pack_windows, tokenizer_fingerprint, undouble_crlf, wikitext_detokenize, wikitext_pages


class ByteTok:
    """UTF-8 bytes as ids; 256 = EOS, 257 = BOS (added in front, like Llama tokenizers)."""

    eos_token_id = 256
    bos_token_id = 257
    vocab_size = 258

    def __init__(self, add_bos: bool = True, offset: int = 0) -> None:
        self.add_bos, self.offset = add_bos, offset

    def encode(self, text: str) -> list[int]:
        ids = [(b + self.offset) % 256 for b in text.encode("utf-8")]
        return ([self.bos_token_id] if self.add_bos else []) + ids

    def decode(self, ids: Sequence[int]) -> str:
        return bytes((i - self.offset) % 256 for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


DOCS = ["aaaa", "bbbbbb", "cc", "dddddddddd", "eeeeeeeeeeeeeeeeeeee"]


@pytest.mark.parametrize("target,seq_len,overlap", [(20, 8, 1), (21, 8, 1), (30, 8, 3), (7, 8, 1), (42, 5, 4)])
def test_packing_scores_exactly_target_tokens(target: int, seq_len: int, overlap: int):
    tok = ByteTok()
    windows = pack_windows(DOCS, tok, target_tokens=target, seq_len=seq_len, overlap=overlap)
    scored = [ids[sf:] for ids, sf in windows]
    assert sum(len(s) for s in scored) == target
    assert all(len(ids) <= seq_len for ids, _ in windows)
    assert windows[0][1] == 1 and windows[0][0][0] == tok.eos_token_id  # leading EOS is context
    assert all(sf == overlap for _, sf in windows[1:])
    stream = [tok.eos_token_id]
    for i, d in enumerate(DOCS):
        stream += ([tok.eos_token_id] if i else []) + list(d.encode())
    # scored tokens tile the stream after the leading EOS, in order, with no gap or repeat
    assert [t for s in scored for t in s] == stream[1 : target + 1]
    # each window's context is the tokens right before what it scores
    pos = 1
    for ids, sf in windows:
        assert ids == stream[pos - sf : pos - sf + len(ids)]
        pos += len(ids) - sf


def test_documents_are_separated_by_one_eos_and_bos_is_dropped():
    windows = pack_windows(["ab", "cd", "ef"], ByteTok(), target_tokens=8, seq_len=100)
    assert windows == [([256, 97, 98, 256, 99, 100, 256, 101, 102], 1)]


def test_too_little_text_is_a_clear_error():
    with pytest.raises(MissingDataError, match="prepare_chars"):
        pack_windows(["abc"], ByteTok(), target_tokens=100, seq_len=16)


def wiki_task(**params) -> TaskConfig:
    p = {"documents": "wikitext_pages", "line_ending": "crlf_doubled", "target_tokens": 508, "seq_len": 128, "overlap": 1}
    p.update(params)
    return TaskConfig(name="wt2", family="ppl_packed", source={"path": "wikitext2/wiki.test.raw", "format": "txt"}, params=p)


def test_packed_requests_from_real_data(shared_data: Path, tmp_path: Path):
    data = prepare_task(tmp_path, wiki_task(), data_root=shared_data)
    reqs = rescore.tasks.build_requests(wiki_task(), data, ByteTok())
    assert [r.sample_id for r in reqs] == ["w000000", "w000001", "w000002", "w000003"]
    assert all(len(r.token_ids) == 128 and r.score_from == 1 and r.request_type == "rolling" for r in reqs)
    assert sum(len(r.token_ids) - r.score_from for r in reqs) == 508
    first_page = wikitext_pages(undouble_crlf((shared_data / "wikitext2" / "wiki.test.raw").read_bytes().decode("utf-8")))[0]
    assert bytes(reqs[0].token_ids[1:]).decode() == first_page[:127]
    assert reqs[0].n_bytes == 127 and reqs[0].n_words == len(first_page[:127].split())


def test_window_cache_is_keyed_by_tokenizer(shared_data: Path, tmp_path: Path):
    data = prepare_task(tmp_path, wiki_task(), data_root=shared_data)
    a, b = ByteTok(), ByteTok(offset=1)
    assert tokenizer_fingerprint(a) != tokenizer_fingerprint(b)
    assert tokenizer_fingerprint(a) == tokenizer_fingerprint(ByteTok())
    ra = rescore.tasks.build_requests(wiki_task(), data, a)
    rb = rescore.tasks.build_requests(wiki_task(), data, b)
    caches = sorted(data.path.glob("windows-*.parquet"))
    assert len(caches) == 2
    assert [r.token_ids for r in ra] != [r.token_ids for r in rb]
    # the cache is read back (same requests) and depends on seq_len too
    assert rescore.tasks.build_requests(wiki_task(), data, a) == ra
    other = wiki_task(seq_len=64, target_tokens=126)
    data2 = get_task_data(tmp_path, other, data_root=shared_data)
    assert data2.data_fp != data.data_fp


def test_prepared_text_budget(shared_data: Path, tmp_path: Path):
    small = prepare_task(tmp_path, wiki_task(prepare_chars=100), data_root=shared_data)
    assert len(small.rows) == 1
    with pytest.raises(MissingDataError, match="prepare_chars"):
        rescore.tasks.build_requests(wiki_task(prepare_chars=100, target_tokens=50000), small, ByteTok())


def test_shipped_wikitext_copy_restores_the_raw_layout(shared_data: Path):
    raw = undouble_crlf((shared_data / "wikitext2" / "wiki.test.raw").read_bytes().decode("utf-8"))
    lines = raw.split("\n")
    assert len(lines) == 4358  # rows of wikitext-2-raw-v1 test
    assert lines[:4] == [" ", " = Robert Boulter = ", " ", lines[3]] and lines[3].startswith(" Robert Boulter is")
    assert all("\r" not in line for line in lines)
    pages = wikitext_pages(raw)
    assert len(pages) == 62  # documents of EleutherAI/wikitext_document_level wikitext-2-raw-v1 test
    assert pages[0].startswith(" = Robert Boulter = \n \n Robert Boulter is")
    assert pages[1].startswith(" = Du Fu = \n")
    assert "".join(p + "\n" for p in pages)  # no page is empty


def test_document_rolling_counts_like_lm_eval(shared_data: Path):
    task = TaskConfig(name="wt2docs", family="ppl_docs", source={"path": "wikitext2/wiki.test.raw"}, subset_size=2,
                      params={"documents": "wikitext_pages", "line_ending": "crlf_doubled", "detokenize": "wikitext"})
    data = get_task_data(Path("/nonexistent-store"), task, data_root=shared_data)
    reqs = rescore.tasks.build_requests(task, data, None)
    assert len(reqs) == 2
    for r, row in zip(reqs, data.rows, strict=True):
        page = row["text"]
        assert r.text == wikitext_detokenize(page)
        assert r.n_words == len(re.split(r"\s+", page)) and r.n_bytes == len(page.encode("utf-8"))
        assert r.token_ids is None and r.sample_id == f"{row['_idx']:08d}"


def test_detokenizer_rules():
    s = " = = Career = = \n The film @-@ maker 's cat , 1 @,@ 000 ( big ) . \n"
    assert wikitext_detokenize(s) == " == Career ==\nThe film-maker's cat, 1,000 (big).\n"
