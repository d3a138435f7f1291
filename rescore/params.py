"""Parameter models of pluggable components: task families (``params``), backends and checkpoint loaders
(``options``).

A component declares what it accepts as a pydantic model deriving from :class:`Params` (``extra="forbid"``,
strict types, defaults in the model, never ``.get(key, default)``). :func:`parse_params` validates a
config's mapping against it and reports every problem as one line that names the component, the key and,
for an unknown key, the valid keys::

    model 'tiny' (hf backend): unknown option 'share_prefx' (valid: attn_implementation, online, revision, share_prefix)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from rescore.errors import ConfigError

P = TypeVar("P", bound="Params")


class Params(BaseModel):
    """Base of every component's params/options model: unknown keys and values of another type are errors
    (a YAML ``"2"`` is not the integer 2; a bool is not a number)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class NoParams(Params):
    """For a component that takes no parameters."""


_TYPES = {"int_type": "int", "float_type": "float", "bool_type": "bool", "string_type": "str", "dict_type": "dict",
          "list_type": "list", "tuple_type": "list"}
_BOUNDS = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"), "less_than_equal": ("<=", "le"),
           "less_than": ("<", "lt")}


def keys(model: type[Params]) -> list[str]:
    """The keys a config gives ``model`` (a field's alias where it has one, e.g. ``schema``)."""
    return sorted(f.alias or name for name, f in model.model_fields.items())


def problem_lines(err: ValidationError, model: type[Params], *, component: str, what: str) -> list[str]:
    """One line per problem of ``err``: ``{component}: {what} {key} must be int, got '2'`` and the like."""
    valid = ", ".join(keys(model)) or "none"
    out = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(all)"
        kind = e["type"]
        if kind == "extra_forbidden":
            out.append(f"{component}: unknown {what} {key!r} (valid: {valid})")
        elif kind == "missing":
            out.append(f"{component}: {what} {key} is required")
        elif kind in _TYPES:
            out.append(f"{component}: {what} {key} must be {_TYPES[kind]}, got {e['input']!r}")
        elif kind in _BOUNDS:
            op, bound = _BOUNDS[kind]
            out.append(f"{component}: {what} {key} must be {op} {e['ctx'][bound]}, got {e['input']!r}")
        elif kind == "literal_error":
            out.append(f"{component}: {what} {key} must be {e['ctx']['expected']}, got {e['input']!r}")
        else:
            msg = str(e["msg"]).removeprefix("Value error, ")
            msg = msg[:1].lower() + msg[1:]
            out.append(f"{component}: {what} {key}: {msg}" if e["loc"] else f"{component}: {msg}")
    return out


def params_problems(model: type[Params], values: Mapping[str, Any], *, component: str, what: str = "param") -> list[str]:
    """Every problem of ``values`` against ``model``, one line each (empty when they are valid)."""
    try:
        model.model_validate(dict(values))
    except ValidationError as e:
        return problem_lines(e, model, component=component, what=what)
    return []


def parse_params(model: type[P], values: Mapping[str, Any], *, component: str, what: str = "param") -> P:
    """``values`` as an instance of ``model``; a :class:`ConfigError` (exit 2) with every problem otherwise."""
    try:
        return model.model_validate(dict(values))
    except ValidationError as e:
        lines = problem_lines(e, model, component=component, what=what)
        raise ConfigError("; ".join(lines)) from None


def known_params(model: type[P], values: Mapping[str, Any]) -> P | None:
    """``values`` without the unknown keys as an instance of ``model``, or None when that is not valid
    either: lets a check report an unknown key and the meaning of the known ones at once."""
    try:
        known = set(keys(model))
        return model.model_validate({k: v for k, v in values.items() if k in known})
    except ValidationError:
        return None


def split_options(values: Mapping[str, Any], models: Sequence[type[Params]], *, component: str,
                  what: str = "option") -> list[dict[str, Any]]:
    """``values`` divided between ``models`` (a key goes to the first model that has it: a backend's own
    options, then its loader's). A key none of them has is a :class:`ConfigError` naming every valid key."""
    parts: list[dict[str, Any]] = [{} for _ in models]
    accepted = [set(keys(m)) for m in models]
    unknown = []
    for k, v in values.items():
        for part, ks in zip(parts, accepted, strict=True):
            if k in ks:
                part[k] = v
                break
        else:
            unknown.append(k)
    if unknown:
        valid = ", ".join(sorted({k for ks in accepted for k in ks})) or "none"
        names = ", ".join(repr(k) for k in unknown)
        raise ConfigError(f"{component}: unknown {what}{'s' if len(unknown) > 1 else ''} {names} (valid: {valid})")
    return parts


__all__ = ["NoParams", "Params", "keys", "known_params", "params_problems", "parse_params", "problem_lines", "split_options"]
