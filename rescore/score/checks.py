"""The SFT-native check vocabulary: instruction/format checks evaluated on one generated response.

A prompt carries its checks in ``meta["checks"]`` (name -> params); :func:`run_checks` returns
name -> passed. Unknown check names are not evaluated (returned as None, reported by the scorer).

- bullets {count}: exactly N lines starting with "- ", "* " or "• " (after leading spaces)
- numbered {count}: exactly N lines "1." / "1)"-style, numbered 1..N in order
- json {required_keys, kind}: the whole stripped response is strict JSON of that kind (object|array) with
  the keys (for an array: every element that is an object has them); a ```json fence fails
- python_parses: a ```python fenced block (else the whole response) parses with ``ast.parse``
- max_words / min_words: whitespace-split word count bounds; max_sentences: sentence count bound
- contains / not_contains: case-insensitive substrings (all / none of them)
- starts_with / ends_with: stripped response, case-insensitive
- lowercase / uppercase: the response equals its lower/upper-cased self and has a cased letter
- one_line: no newline in the stripped response
- refusal: the response declines (a refusal phrase such as "I can't", "I cannot", "I won't", "sorry")
- no_role_leak: no role markers or special tokens ("User:", "Assistant:", "System:", "<|", "|>", "[INST]",
  "</s>", "<s>")
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rescore.score.extract import _NOT_JSON, code_block, parse_json, python_parses

FORMAT_CHECKS = frozenset({"bullets", "numbered", "json", "python_parses", "one_line", "lowercase", "uppercase"})
ROLE_MARKERS = ("user:", "assistant:", "system:", "<|", "|>", "[inst]", "</s>", "<s>")
REFUSALS = ("i can't", "i can’t", "i cannot", "i won't", "i won’t", "sorry", "i'm unable", "i am unable",
            "i'm not able", "i am not able")

_ROLE_RE = re.compile("|".join(re.escape(m) for m in ROLE_MARKERS))
_REFUSAL_RE = re.compile("|".join(re.escape(m) for m in REFUSALS))
_BULLET = re.compile(r"^[ \t]*(?:- |\* |• )", re.MULTILINE)
_NUMBERED = re.compile(r"^[ \t]*(\d+)[.)](?:\s|$)", re.MULTILINE)
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")


def _count(p: Any) -> int:
    return int(p["count"] if isinstance(p, Mapping) else p)


def bullets(text: str, p: Any) -> bool:
    return len(_BULLET.findall(text)) == _count(p)


def numbered(text: str, p: Any) -> bool:
    nums = [int(m) for m in _NUMBERED.findall(text)]
    n = _count(p)
    return nums == list(range(1, n + 1))


def json_check(text: str, p: Any) -> bool:
    v = parse_json(text.strip())
    if v is _NOT_JSON:
        return False
    p = p if isinstance(p, Mapping) else {}
    kind = p.get("kind", "object")
    if kind == "object" and not isinstance(v, dict):
        return False
    if kind == "array" and not isinstance(v, list):
        return False
    keys = list(p.get("required_keys") or [])
    if keys:
        objs = [v] if isinstance(v, dict) else [x for x in v if isinstance(x, dict)] if isinstance(v, list) else []
        if not objs or any(k not in o for o in objs for k in keys):
            return False
    return True


def json_valid(text: str, p: Any) -> bool:
    """Parses as strict JSON of the requested kind (keys not required): ``json_valid_rate``."""
    kind = p.get("kind", "object") if isinstance(p, Mapping) else "object"
    return json_check(text, {"kind": kind})


def python_check(text: str, p: Any) -> bool:
    code = code_block(text, "python", fallback_whole=True)
    return python_parses(code or "")


def words(text: str) -> int:
    return len(text.split())


def sentences(text: str) -> int:
    parts = [s for s in _SENTENCE_END.split(text.strip()) if s.strip()]
    return len(parts)


def _strs(p: Any) -> list[str]:
    return [str(x) for x in (p if isinstance(p, list | tuple) else [p])]


def contains(text: str, p: Any) -> bool:
    t = text.lower()
    return all(s.lower() in t for s in _strs(p))


def not_contains(text: str, p: Any) -> bool:
    t = text.lower()
    return not any(s.lower() in t for s in _strs(p))


def lowercase(text: str, p: Any) -> bool:
    return text == text.lower() and text != text.upper()


def uppercase(text: str, p: Any) -> bool:
    return text == text.upper() and text != text.lower()


def refusal(text: str, p: Any) -> bool:
    return _REFUSAL_RE.search(text.lower()) is not None


def no_role_leak(text: str, p: Any = True) -> bool:
    return _ROLE_RE.search(text.lower()) is None


CHECKS: dict[str, Callable[[str, Any], bool]] = {
    "bullets": bullets,
    "numbered": numbered,
    "json": json_check,
    "python_parses": python_check,
    "max_words": lambda t, p: words(t) <= int(p),
    "min_words": lambda t, p: words(t) >= int(p),
    "max_sentences": lambda t, p: sentences(t) <= int(p),
    "contains": contains,
    "not_contains": not_contains,
    "starts_with": lambda t, p: t.strip().lower().startswith(str(p).lower()),
    "ends_with": lambda t, p: t.strip().lower().endswith(str(p).lower()),
    "lowercase": lowercase,
    "uppercase": uppercase,
    "one_line": lambda t, p: "\n" not in t.strip(),
    "refusal": refusal,
    "no_role_leak": no_role_leak,
}


def run_checks(checks: Mapping[str, Any], text: str | None) -> dict[str, bool | None]:
    """Evaluate every check of one prompt on one response. A check whose value is ``False``/None is off."""
    t = text or ""
    out: dict[str, bool | None] = {}
    for name, params in checks.items():
        if params is False or params is None:
            continue
        fn = CHECKS.get(name)
        if fn is None:
            out[name] = None
            continue
        try:
            out[name] = bool(fn(t, params))
        except (TypeError, ValueError, KeyError):
            out[name] = None  # malformed parameters: not evaluated
    return out


def chat_clean(text: str | None) -> bool:
    """A clean chat turn: non-empty and free of role markers / special tokens."""
    return bool((text or "").strip()) and no_role_leak(text or "")


# -- many responses at once ---------------------------------------------------------------------------
# Arrow (RE2) versions of the checks above for a whole column of responses, equal to them on every text:
# the patterns use explicit character classes where RE2 and Python differ (whitespace is Python's
# ``str.isspace`` set), lines are split on "\n" exactly as ``^`` with re.MULTILINE sees them, and checks
# that lower-case the text run in Arrow only on ASCII texts (where ``str.lower`` is ASCII lower-casing);
# other texts go through the Python functions.
PY_WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                 "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")  # str.isspace (a test checks it)
_WS_CLASS = "".join(f"\\x{{{ord(c):x}}}" for c in PY_WHITESPACE)
_WORD_RE2 = f"[^{_WS_CLASS}]+"
_NONBLANK_RE2 = f"[^{_WS_CLASS}]"
_BULLET_LINE_RE2 = r"^[ \t]*(?:- |\* |• )"
_ROLE_RE2 = "|".join(re.escape(m) for m in ROLE_MARKERS)
_REFUSAL_RE2 = "|".join(re.escape(m) for m in REFUSALS)


def _np_bool(arr: pa.Array) -> np.ndarray:
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=bool)


def bullet_counts(texts: pa.Array) -> np.ndarray:
    """``len(_BULLET.findall(t))`` for every text of an Arrow string array (no nulls), as int64."""
    if len(texts) == 0:
        return np.zeros(0, dtype=np.int64)
    lines = pc.split_pattern(texts, "\n")
    off = np.asarray(lines.offsets.to_numpy(), dtype=np.int64)
    hit = _np_bool(pc.match_substring_regex(lines.values.slice(off[0], off[-1] - off[0]), _BULLET_LINE_RE2))
    return np.add.reduceat(hit.astype(np.int64), off[:-1] - off[0])  # every text has at least one line


def word_counts(texts: pa.Array) -> np.ndarray:
    """``words(t)`` (``len(t.split())``) for every text of an Arrow string array (no nulls)."""
    return np.asarray(pc.count_substring_regex(texts, _WORD_RE2).to_numpy(zero_copy_only=False), dtype=np.int64)


def nonblank(texts: pa.Array) -> np.ndarray:
    """``bool(t.strip())`` for every text."""
    return _np_bool(pc.match_substring_regex(texts, _NONBLANK_RE2))


def _lowered_search(texts: pa.Array, pattern: str, fallback: Callable[[str], bool]) -> np.ndarray:
    ascii_ = _np_bool(pc.string_is_ascii(texts))
    out = _np_bool(pc.match_substring_regex(pc.ascii_lower(texts), pattern))
    if not ascii_.all():
        rest = np.flatnonzero(~ascii_)
        out[rest] = [fallback(t) for t in texts.take(pa.array(rest)).to_pylist()]
    return out


def role_leaks(texts: pa.Array) -> np.ndarray:
    """``not no_role_leak(t)`` for every text."""
    return _lowered_search(texts, _ROLE_RE2, lambda t: not no_role_leak(t))


def refusals(texts: pa.Array) -> np.ndarray:
    """``refusal(t, True)`` for every text."""
    return _lowered_search(texts, _REFUSAL_RE2, lambda t: refusal(t, True))
