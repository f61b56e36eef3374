"""The base of every config object, and the one parse step that validates them.

Config objects are ``msgspec`` Structs deriving from :class:`Frozen`: frozen (a loaded
config is an immutable value that a reload swaps as a whole, compared by value),
unknown keys refused (a typo is an error, not a silently ignored option), keyword-only.
Field limits are ``Meta`` constraints; checks that span fields, or that need code, run
in ``__post_init__`` and raise ``ValueError`` (:func:`field_error` to name the field).
msgspec was chosen over pydantic for memory: a worker's resident set is the budget
(see ``loadtests/README.md``), and the schema plus its library cost a few MB less.

:func:`parse` is the only way raw data (YAML, a TrafficPolicy spec) becomes a config
object. Beyond ``msgspec.convert`` it

- runs each class's ``_prepare`` hook first (a shorthand such as ``lb_policy: NAME``,
  which pydantic did in a ``mode="before"`` validator);
- reports *every* bad part, not only the first error msgspec stops at: on failure it
  validates each field, list item and union member on its own and keeps the innermost
  errors (:class:`Problem`: path, message, the offending value);
- records which fields the input actually set (:func:`fields_set`), which the merge of
  a control-plane policy under a file needs (:mod:`meshproxy.discovery.policy`).

Used by :mod:`meshproxy.config` (files), the feature modules' config classes
(:mod:`meshproxy.retry`, :mod:`meshproxy.resilience`, ...) and the control plane's
TrafficPolicy validation. Never imports pydantic.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Any, NamedTuple, TypeVar, get_args, get_origin

import msgspec

T = TypeVar("T")
Path = tuple[str | int, ...]

_FIELDS_SET = "_fields_set"
_FIELD_ERROR = re.compile(r"^`([A-Za-z_][A-Za-z0-9_]*)`: (.*)$", re.S)
_AT = re.compile(r"^(.*) - at `\$(.*)`$", re.S)
_PATTERN = re.compile(r"^Expected `str` matching regex '(.*)'$", re.S)
_PART = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\[([^\]]*)\]")


class Frozen(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True,
             dict=True):
    """Base of every config object: frozen, strict about unknown keys, keyword-only.

    ``dict=True`` only lets :func:`parse` note which fields the input set (see
    :func:`fields_set`); equality, hashing and encoding see the declared fields alone.
    """


class Problem(NamedTuple):
    """One thing wrong with the input: where (field names and list indexes from the
    validated object's root), why, and the value found there (None if absent)."""

    path: Path
    message: str
    value: Any


class SchemaError(ValueError):
    """Input that does not validate; ``problems`` lists every bad part found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{format_path(p.path)}: {p.message}" for p in problems))


#: What a ``Meta(pattern=...)`` means, in words, by pattern: msgspec's own message only
#: quotes the regular expression.
PATTERN_HINTS: dict[str, str] = {}


def field_error(field: str, message: str) -> ValueError:
    """The error for ``__post_init__`` to raise about one field: :func:`parse` reports it
    at that field's path (msgspec alone would name the object holding it)."""
    return ValueError(f"`{field}`: {message}")


def format_path(path: Path, *, dotted: bool = False) -> str:
    """``("listeners", 0, "port")`` as ``listeners[0].port`` (``(root)`` when empty), or
    with ``dotted`` as ``.listeners[0].port`` (a suffix to another path; empty)."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out or dotted else str(part)
    return out if out or dotted else "(root)"


def parse(data: Any, tp: type[T]) -> T:
    """``data`` (YAML-loaded builtins) validated as ``tp``; :class:`SchemaError` naming
    every bad part otherwise."""
    data = _prepare(data, tp, ())
    try:
        obj = msgspec.convert(data, tp, strict=False)
    except msgspec.ValidationError as e:
        raise SchemaError(collect(data, tp, (), e)) from None
    _mark(obj, data)
    return obj


def fields_set(obj: msgspec.Struct) -> frozenset[str]:
    """The fields of ``obj`` its input set: the keys :func:`parse` saw (a field written
    at its default value counts), or, for an object built in code, the fields that differ
    from their defaults."""
    noted = getattr(obj, "__dict__", {}).get(_FIELDS_SET)
    if noted is not None:
        return noted
    out = set()
    for f in msgspec.structs.fields(obj):
        value = getattr(obj, f.name)
        if f.required:
            out.add(f.name)
        elif f.default is not msgspec.NODEFAULT:
            if value != f.default:
                out.add(f.name)
        elif value != f.default_factory():
            out.add(f.name)
    return frozenset(out)


def replace(obj: T, **changes: Any) -> T:
    """``obj`` with ``changes`` (re-checked by ``__post_init__``); the changed fields
    count as set, like pydantic's ``model_copy(update=...)``."""
    new = msgspec.structs.replace(obj, **changes)  # type: ignore[type-var]
    new.__dict__[_FIELDS_SET] = fields_set(obj) | changes.keys()  # type: ignore[union-attr]
    return new


def to_builtins(obj: Any) -> Any:
    """A config object as JSON-ready builtins (lists, not tuples or sets)."""
    return msgspec.json.decode(msgspec.json.encode(obj))


# -- the pieces of parse -----------------------------------------------------------------


def _strip(tp: Any) -> Any:
    while get_origin(tp) is typing.Annotated:
        tp = get_args(tp)[0]
    return tp


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _union_members(tp: Any) -> tuple[Any, ...] | None:
    if get_origin(tp) in (typing.Union, types.UnionType):
        return tuple(_strip(a) for a in get_args(tp) if a is not type(None))
    return None


_FIELD_TYPES: dict[type, dict[str, Any]] = {}


def _field_types(cls: type) -> dict[str, Any]:
    types_ = _FIELD_TYPES.get(cls)
    if types_ is None:
        types_ = _FIELD_TYPES[cls] = {f.encode_name: f.type
                                      for f in msgspec.structs.fields(cls)}
    return types_


def _member_for(members: tuple[Any, ...], data: Any) -> Any | None:
    """The union member ``data`` is meant for: the only Struct, or the tagged one whose
    tag ``data`` carries."""
    structs = [m for m in members if _is_struct(m)]
    if len(structs) == 1 and len(members) == 1:
        return structs[0]
    if not isinstance(data, dict):
        return None
    for m in structs:
        cfg = m.__struct_config__
        if cfg.tag_field is not None and data.get(cfg.tag_field) == cfg.tag:
            return m
    return None


def _item_type(tp: Any) -> Any | None:
    if get_origin(tp) in (tuple, list, frozenset, set):
        args = get_args(tp)
        if args and (get_origin(tp) is not tuple or (len(args) == 2 and args[1] is ...)):
            return args[0]
    return None


def _prepare(data: Any, tp: Any, path: Path) -> Any:
    """``data`` with every ``_prepare`` hook of the classes it is meant for applied,
    outermost first (so a hook may produce the input of a nested one)."""
    tp = _strip(tp)
    members = _union_members(tp)
    if members is not None:
        member = _member_for(members, data)
        return data if member is None else _prepare(data, member, path)
    item = _item_type(tp)
    if item is not None:
        if isinstance(data, list):
            return [_prepare(x, item, (*path, i)) for i, x in enumerate(data)]
        return data
    if not _is_struct(tp) or not isinstance(data, dict):
        return data
    hook = getattr(tp, "_prepare", None)
    if hook is not None:
        try:
            data = hook(data)
        except ValueError as e:
            raise SchemaError([Problem(path, str(e), data)]) from None
    fields = _field_types(tp)
    return {k: _prepare(v, fields[k], (*path, k)) if k in fields else v
            for k, v in data.items()}


def collect(data: Any, tp: Any, path: Path,
            error: msgspec.ValidationError | None = None) -> list[Problem]:
    """Every problem of ``data`` as ``tp``: each field, item and tagged-union member is
    validated on its own, and the innermost failures are kept; an object whose parts are
    all fine reports its own error (a missing field, a cross-field check)."""
    if error is None:
        try:
            msgspec.convert(data, tp, strict=False)
            return []
        except msgspec.ValidationError as e:
            error = e
    base = _strip(tp)
    inner: list[Problem] = []
    members = _union_members(base)
    if members is not None:
        member = _member_for(members, data)
        if member is not None:
            inner = collect(data, member, path)
    elif _item_type(base) is not None and isinstance(data, list):
        item = _item_type(base)
        for i, x in enumerate(data):
            inner += collect(x, item, (*path, i))
    elif _is_struct(base) and isinstance(data, dict):
        fields = _field_types(base)
        tag_field = base.__struct_config__.tag_field
        for k, v in data.items():
            if k in fields:
                inner += collect(v, fields[k], (*path, k))
            elif k != tag_field:
                inner.append(Problem((*path, k), "unknown field (not in the schema; a typo?)",
                                     v))
        if inner:  # a missing field beside bad ones: report it too (pydantic did)
            inner += [Problem((*path, f.encode_name), "required field is missing", None)
                      for f in msgspec.structs.fields(base)
                      if f.required and f.encode_name not in data]
    return inner or [_translate(error, path, data, base)]


def _choices(tp: Any, parts: list[str | int]) -> list[Any]:
    """The values a Literal (or a tagged union's tag, when ``parts`` ends at it) allows."""
    members = _union_members(tp) or (tp,)
    out: list[Any] = []
    for m in members:
        if get_origin(m) is typing.Literal:
            out += get_args(m)
        elif _is_struct(m) and parts and parts[-1] == m.__struct_config__.tag_field:
            out.append(m.__struct_config__.tag)
    return out


def _translate(error: msgspec.ValidationError, path: Path, data: Any, tp: Any) -> Problem:
    """A msgspec error (``Expected `int` >= 1 - at `$.port```) as a Problem; an invalid
    choice also lists the valid ones (msgspec names only the bad value)."""
    text = str(error)
    m = _AT.match(text)
    message, where = (m.group(1), m.group(2)) if m else (text, "")
    parts: list[str | int] = []
    for name, index, key in _PART.findall(where):
        parts.append(name if name else int(index) if index else key)
    missing = re.match(r"^Object missing required field `(.+)`$", message)
    own = _FIELD_ERROR.match(message)
    if missing:
        parts.append(missing.group(1))
        message = "required field is missing"
    elif own:
        parts.append(own.group(1))
        message = own.group(2)
    value = _value_at(data, parts)
    if message.startswith(("Invalid enum value", "Invalid value")):
        choices = _choices(tp, parts)
        if choices:
            message += f" (expected one of {', '.join(map(repr, choices))})"
    pattern = _PATTERN.match(message)
    if pattern and pattern.group(1) in PATTERN_HINTS:
        message = f"{value!r} is {PATTERN_HINTS[pattern.group(1)]}"
    return Problem((*path, *parts), message, value)


def _value_at(data: Any, parts: list[str | int]) -> Any:
    for part in parts:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return None
    return data


def _mark(obj: Any, data: Any) -> None:
    """Note on each object which keys its input held (see :func:`fields_set`)."""
    if isinstance(obj, msgspec.Struct) and isinstance(data, dict):
        names = obj.__struct_fields__
        obj.__dict__[_FIELDS_SET] = frozenset(k for k in data if k in names)
        for k in names:
            if k in data:
                _mark(getattr(obj, k), data[k])
    elif isinstance(obj, tuple) and isinstance(data, list) and len(obj) == len(data):
        for o, d in zip(obj, data, strict=True):
            _mark(o, d)
