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
