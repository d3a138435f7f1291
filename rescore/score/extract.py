"""Extractors (text -> answer) and lm-evaluation-harness's answer normalisation.

The GSM8K extractors reproduce lm-eval's filters exactly (``lm_eval/tasks/gsm8k/gsm8k.yaml`` and
``lm_eval/filters/extraction.py``, RegexFilter):

- strict-match: ``#### (\\-?[0-9\\.\\,]+)``, first match, stripped; ``[invalid]`` when none.
- flexible-extract: ``(-?[$0-9.,]{2,})|(-?[0-9]+)`` with ``group_select: -1``: the *last* match of
  ``re.findall``, first non-empty group, stripped; ``[invalid]`` when none.

``findall`` over a long generation is slow (the flexible pattern tries both branches at every position),
so :func:`flexible_extract` finds the same last match by searching the reversed text (a test checks it
against lm-eval's own RegexFilter on random strings). Why that is equivalent: ``-`` is outside the class
``C = [$0-9.,]``, so every match of the forward scan is either a whole maximal run of C characters of
length >= 2 or a single digit, each with the ``-`` immediately before it if there is one; the reversed
pattern ``[$0-9.,]{2,}-?|[0-9]-?`` picks out exactly those runs, nearest the end first.

:func:`exact_match_norm` is lm-eval's ``exact_match`` with GSM8K's settings (``ignore_case: true``,
``ignore_punctuation: false``, ``regexes_to_ignore: [",", "\\$", "(?s).*#### ", "\\.$"]``), applied to
predictions and references alike; trailing NULs are dropped because lm-eval compares numpy ``<U``
arrays, which drop them.
"""

from __future__ import annotations

import ast
import keyword
import re
import string
from functools import lru_cache

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from rescore.score.columns import register_cache
from rescore.score.spec import Extractor, extractors

INVALID = "[invalid]"

# The one definition of the GSM8K patterns, for Python's re and Arrow's RE2 alike: they involve only ASCII
# classes and literals, where both find the same leftmost-first match.
STRICT_NUMBER = r"\-?[0-9\.\,]+"  # lm-eval strict-match: "#### (\-?[0-9\.\,]+)"
STRICT_RE = re.compile(f"#### ({STRICT_NUMBER})")
FLEXIBLE_RE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")  # lm-eval flexible-extract (group_select -1)
FLEXIBLE_REVERSED = r"[$0-9.,]{2,}-?|[0-9]-?"  # its last match, found first in the reversed text
_FLEXIBLE_REV = re.compile(FLEXIBLE_REVERSED)
GSM8K_IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")


def regex_extract(text: str, pattern: str, group_select: int = 0, fallback: str = INVALID) -> str:
    """lm-eval's RegexFilter for one response (any pattern)."""
    match = re.findall(pattern, text if isinstance(text, str) else "")
    if not match:
        return fallback
    m = match[group_select]
    if isinstance(m, tuple):
        m = [x for x in m if x]
        m = m[0] if m else fallback
    return m.strip()


def strict_extract(text: str) -> str:
    m = STRICT_RE.search(text)
    return m.group(1).strip() if m else INVALID


def flexible_extract(text: str) -> str:
    m = _FLEXIBLE_REV.search(text[::-1])
    return m.group(0)[::-1] if m else INVALID


def strict_extract_arrow(texts: pa.Array) -> pa.Array:
    """:func:`strict_extract` of every text (no nulls) with Arrow's RE2."""
    got = pc.struct_field(pc.extract_regex(texts, f"#### (?P<m>{STRICT_NUMBER})"), "m")
    return got.fill_null(INVALID)


def flexible_extract_arrow(texts: pa.Array) -> pa.Array:
    """:func:`flexible_extract` of every text (no nulls) with Arrow's RE2; Arrow reverses by code point, as
    Python's ``[::-1]``."""
    got = pc.struct_field(pc.extract_regex(reverse_strings(texts), f"(?P<m>{FLEXIBLE_REVERSED})"), "m")
    return reverse_strings(got).fill_null(INVALID)


@lru_cache(maxsize=1 << 16)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def lm_eval_exact_match_norm(
    s: str, *, regexes_to_ignore: tuple[str, ...] = (), ignore_case: bool = False, ignore_punctuation: bool = False
) -> str:
    """lm-eval's ``exact_match_hf_evaluate`` normalisation of one string (same order of steps)."""
    for r in regexes_to_ignore:
        s = _compiled(r).sub("", s)
    if ignore_case:
        s = s.lower()
    if ignore_punctuation:
        s = s.translate(str.maketrans("", "", string.punctuation))
    return s.rstrip("\x00")


@lru_cache(maxsize=1 << 18)
def exact_match_norm(s: str) -> str:
    """GSM8K's exact_match normalisation (cached: answers repeat a lot)."""
    return lm_eval_exact_match_norm(s, regexes_to_ignore=GSM8K_IGNORE, ignore_case=True)


def exact_match_norm_arrow(arr: pa.Array) -> pa.Array:
    """:func:`exact_match_norm` of every string of an Arrow array (nulls stay null), with Arrow's RE2.

    Equal string by string: the patterns are literals, ``(?s).*#### `` (greedy, so up to the last
    marker, in RE2 as in re) and ``\\.$``, which in Python also matches before a final newline, hence
    ``\\.(\\n?)$`` here. Lower-casing runs in Arrow only for ASCII strings (where ``str.lower`` is ASCII
    lower-casing); the others go through :func:`exact_match_norm`."""
    arr = arr.cast(pa.string())
    s = pc.replace_substring(pc.replace_substring(arr, ",", ""), "$", "")
    s = pc.replace_substring_regex(after_last(s, "#### "), r"\.(\n?)$", r"\1")
    s = pc.utf8_rtrim(pc.ascii_lower(s), characters="\x00")
    other = pc.invert(pc.string_is_ascii(arr)).fill_null(False)
    if pc.any(other).as_py():
        s = pc.replace_with_mask(s, other, pa.array([exact_match_norm(x) for x in arr.filter(other).to_pylist()],
                                                    pa.string()))
    return s


def after_last(arr: pa.Array, sep: str) -> pa.Array:
    """Every string from just after the last ``sep`` on (the whole string when it has none; nulls stay
    null): ``re.sub("(?s).*" + re.escape(sep), "", s)``, by one split from the right instead of a regex."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    parts = pc.split_pattern(arr, sep, max_splits=1, reverse=True)
    last = np.asarray(parts.offsets.to_numpy(), dtype=np.int64)[1:] - 1
    null = np.asarray(parts.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    return parts.values.take(pa.array(last, mask=null if null.any() else None))


def reverse_strings(arr: pa.Array) -> pa.Array:
    """Every string reversed by code point (Python's ``[::-1]``); ASCII strings byte-wise (much faster)."""
    ascii_ = pc.string_is_ascii(arr).fill_null(True)
    rev = pc.binary_reverse(arr.view(pa.binary())).view(pa.string())
    if not pc.all(ascii_).as_py():
        other = pc.invert(ascii_)
        rev = pc.replace_with_mask(rev, other, pc.utf8_reverse(arr.filter(other)))
    return rev


# -- other extractors ---------------------------------------------------------------------------------
_LETTER_PATTERNS = (
    r"(?i:answer)\s*(?:is|:)?\s*[:\-]?\s*\(?\b([{L}])\b\)?",
    r"^\s*(?:\(([{L}])\)|([{L}])(?:[.):]|$))",
    r"\(([{L}])\)",
)


def choice_letter(text: str, letters: str = "ABCDEFGHIJ") -> str | None:
    """A multiple-choice letter: "The answer is (B)", "Answer: B", a leading "B." / "(B)", else the last "(B)"."""
    cls = re.escape(letters)
    for i, pat in enumerate(_LETTER_PATTERNS):
        found = re.findall(pat.replace("{L}", cls), text, flags=re.MULTILINE)
        if found:
            hit = found[-1] if i == 2 else found[0]
            hit = "".join(hit) if isinstance(hit, tuple) else hit
            return hit.upper()
    return None


_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def code_block(text: str, language: str | None = "python", fallback_whole: bool = True) -> str | None:
    """The first fenced block in ``language`` (any block when None; ``py``/``python3`` count as python);
    without one, the whole text when ``fallback_whole``."""
    for lang, body in _FENCE_RE.findall(text):
        tag = lang.lower()
        if language is None or tag == language or (language == "python" and tag in ("py", "python3")):
            return body
    if language == "python":
        # an untagged fence still holds code
        for lang, body in _FENCE_RE.findall(text):
            if not lang:
                return body
    return text if fallback_whole else None


_NAMES_ONLY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?: [A-Za-z_][A-Za-z0-9_]*)+")
_KEYWORDS = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist)
_PARSES: dict[str, bool] = {}
_PARSES_CHARS = [0]


def python_parses(code: str) -> bool:
    """``ast.parse`` succeeds. Cached per distinct code string (responses recur across seeds and
    checkpoints, and parsing is most of the SFT checks' time); the cache holds at most ~16M characters."""
    ok = _PARSES.get(code)
    if ok is None and _NAMES_ONLY.fullmatch(code) and _KEYWORDS.isdisjoint(code.split(" ")):
        # two or more plain names side by side (prose such as "the answer follows"): no rule
        # of Python's grammar puts a name right after a name unless one of them is a (soft) keyword
        return False
    if ok is None:
        try:
            ast.parse(code)
            ok = True
        except MemoryError:
            return False
        except (SyntaxError, ValueError, RecursionError, OverflowError):
            ok = False
        if _PARSES_CHARS[0] + len(code) > 16_000_000:
            _clear_parses()
        _PARSES[code] = ok
        _PARSES_CHARS[0] += len(code)
    return ok


def _clear_parses() -> None:
    _PARSES.clear()
    _PARSES_CHARS[0] = 0


def json_block(text: str, strict: bool = False) -> str | None:
    """JSON text in a response: with ``strict`` the whole stripped response (no fence allowed); otherwise a
    ```json fence, else the first ``{``/``[`` through the matching last ``}``/``]``. Returns the JSON text if
    it parses, else None."""
    s = text.strip()
    cands: list[str] = [s]
    if not strict:
        for lang, body in _FENCE_RE.findall(text):
            if lang.lower() in ("json", ""):
                cands.append(body.strip())
        for o, c in (("{", "}"), ("[", "]")):
            i, j = s.find(o), s.rfind(c)
            if 0 <= i < j:
                cands.append(s[i : j + 1])
    for cand in cands:
        if parse_json(cand) is not _NOT_JSON:
            return cand
    return None


_NOT_JSON = object()
_JSON_START = frozenset('{["-0123456789tfn \t\n\r')  # the characters a JSON text can start with


def parse_json(s: str) -> object:
    """Strict JSON (RFC 8259: no NaN/Infinity, no trailing commas); ``_NOT_JSON`` when it does not parse."""
    if not s or s[0] not in _JSON_START:  # cheap rejection of prose (no exception raised and caught)
        return _NOT_JSON
    try:
        return orjson.loads(s)
    except orjson.JSONDecodeError:
        return _NOT_JSON


register_cache(exact_match_norm.cache_clear)
register_cache(_clear_parses)

for _ex in (
    Extractor("gsm8k_strict", lambda t: strict_extract(t), "lm-eval GSM8K strict-match: first '#### N'",
              arrow=strict_extract_arrow),
    Extractor("gsm8k_flexible", lambda t: flexible_extract(t), "lm-eval GSM8K flexible-extract: last number",
              arrow=flexible_extract_arrow),
    Extractor("regex", regex_extract, "lm-eval RegexFilter (params pattern, group_select, fallback)",
              params=(("pattern", f"#### ({STRICT_NUMBER})"),)),
    Extractor("choice_letter", choice_letter, "multiple-choice letter (param letters)"),
    Extractor("code_block", code_block, "first fenced code block (param language, fallback_whole)"),
    Extractor("json_block", json_block, "a JSON object/array that parses (param strict)"),
):
    extractors.register(_ex.name, _ex)
