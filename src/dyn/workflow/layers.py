"""Layer specs: which student block is aligned with which teacher block.

Grammar: parts joined by '+'. A part is `FirstK` (the first K blocks of each model, in order),
`LastK` (the last K blocks of each), or explicit pairs `s<i>:t<j>` joined by ',' (0-based block
indices). `none` (or an empty spec) aligns nothing: plain SoftKD.
Examples: `First1+Last1`, `Last8`, `s0:t0,s11:t23`.
"""
from __future__ import annotations

import re

from ..errors import UserError

_RELATIVE = re.compile(r"^(First|Last)([1-9][0-9]*)$")
_PAIR = re.compile(r"^s([0-9]+):t([0-9]+)$")
VALID = "FirstK, LastK, '+'-joined parts like First1+Last1, explicit pairs like s0:t0,s11:t23, or none"


def _parts(spec: str) -> list[str]:
    spec = (spec or "").strip()
    if spec.lower() in ("", "none"):
        return []
    return [part.strip() for part in spec.split("+")]


def check_syntax(spec: str) -> None:
    """Fail with one line if `spec` is not a layer spec at all (depths are checked by `parse`)."""
    for part in _parts(spec):
        if _RELATIVE.match(part):
            continue
        if part and all(_PAIR.match(pair.strip()) for pair in part.split(",")):
            continue
        raise UserError(f"bad layer spec '{spec}': part '{part}' is not valid; use {VALID}")


def parse(spec: str, student_depth: int, teacher_depth: int) -> list[tuple[int, int]]:
    """(student block, teacher block) pairs of `spec` for models of these depths, sorted, no repeats."""
    check_syntax(spec)
    depths = f"student has {student_depth} blocks, teacher has {teacher_depth}"
    pairs: list[tuple[int, int]] = []
    for part in _parts(spec):
        relative = _RELATIVE.match(part)
        if relative:
            k = int(relative.group(2))
            if k > min(student_depth, teacher_depth):
                raise UserError(f"layer spec '{spec}' does not fit: {part} needs {k} blocks but the {depths}")
            if relative.group(1) == "First":
                pairs += [(i, i) for i in range(k)]
            else:
                pairs += [(student_depth - k + i, teacher_depth - k + i) for i in range(k)]
            continue
        for pair in part.split(","):
            s, t = (int(x) for x in _PAIR.match(pair.strip()).groups())
            if s >= student_depth or t >= teacher_depth:
                raise UserError(f"layer spec '{spec}' does not fit: {pair.strip()} is out of range; the {depths}")
            pairs.append((s, t))
    return sorted(set(pairs))


def slug(spec: str) -> str:
    """A file-name-safe form of a spec for run ids: `s0:t0,s11:t23` -> `s0t0.s11t23`."""
    parts = _parts(spec)
    if not parts:
        return "none"
    return "+".join(part.replace(":", "").replace(",", ".").replace(" ", "") for part in parts)
