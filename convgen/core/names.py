"""Names that end up in generated C: made safe from whatever a model file says.

A layer name from an ONNX node or a JSON model becomes part of a C identifier in the
ahead-of-time build. Such a name is data from a file, so nothing of it may reach C except
``[A-Za-z_][A-Za-z0-9_]{0,62}``: no quote, newline, comment or macro can get through.
"""
from __future__ import annotations

import hashlib
import re

MAX_LENGTH = 63   # the significant length C99/C11 guarantee for internal identifiers
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
# Reserved for the implementation: __anything, _Uppercase (C11 7.1.3).
_RESERVED = re.compile(r"_[A-Z_]")

C_KEYWORDS = frozenset("""
    auto break case char const continue default do double else enum extern float for goto if
    inline int long register restrict return short signed sizeof static struct switch typedef
    union unsigned void volatile while _Alignas _Alignof _Atomic _Bool _Complex _Generic
    _Imaginary _Noreturn _Static_assert _Thread_local alignas alignof bool constexpr false
    nullptr static_assert thread_local true typeof typeof_unqual _BitInt _Decimal32 _Decimal64
    _Decimal128
""".split())


def check_c_identifier(name: str) -> str:
    """``name`` itself if it is a safe C identifier; ValueError/TypeError saying why not."""
    if not isinstance(name, str):
        raise TypeError(f"a C identifier must be a str, got {type(name).__name__}")
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"{name!r} is not a safe C identifier: it must match "
                         f"[A-Za-z_][A-Za-z0-9_]{{0,62}} (ASCII letters, digits, '_'; "
                         f"at most {MAX_LENGTH} characters; not starting with a digit)")
    if name in C_KEYWORDS:
        raise ValueError(f"{name!r} is not a safe C identifier: it is a C keyword")
    if _RESERVED.match(name):
        raise ValueError(f"{name!r} is not a safe C identifier: names starting with '__' or "
                         f"'_' and a capital letter are reserved for the C implementation")
    return name


def c_identifier(name: str) -> str:
    """A C-safe identifier for a layer name from a model: 'conv1/3x3.b' -> 'conv1_3x3_b'.

    Other characters become '_'; a name starting with a digit, a reserved name or a
    keyword gets the prefix 'layer_'; a name too long is cut and ends with a hash of the
    whole name, so long names that differ only at the end stay different.
    """
    if not isinstance(name, str):
        raise TypeError(f"a layer name must be a str, got {type(name).__name__}")
    if not name:
        raise ValueError("a layer name must not be empty")
    safe = _UNSAFE.sub("_", name)
    if safe[0] in "0123456789" or safe in C_KEYWORDS or _RESERVED.match(safe):
        safe = f"layer_{safe}"
    if len(safe) > MAX_LENGTH:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        safe = f"{safe[:MAX_LENGTH - 9]}_{digest}"
    return check_c_identifier(safe)


def unique_c_identifiers(names) -> list[str]:
    """``c_identifier`` of each name, with '_2', '_3' ... added where two would collide
    ('a.b' and 'a-b' both map to 'a_b')."""
    taken: set[str] = set()
    result = []
    for name in names:
        base = candidate = c_identifier(name)
        count = 1
        while candidate in taken:
            count += 1
            suffix = f"_{count}"
            candidate = c_identifier(base[:MAX_LENGTH - len(suffix)] + suffix)
        taken.add(candidate)
        result.append(candidate)
    return result
