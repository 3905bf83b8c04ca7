"""Layer specs: which student block is aligned with which teacher block.

Grammar: parts joined by '+'. A part is `FirstK` (the first K blocks of each model, in order),
`LastK` (the last K blocks of each), or explicit pairs `s<i>:t<j>` joined by ',' (0-based block
indices). `none` (or an empty spec) aligns nothing: plain SoftKD.
`auto` (alone) aligns the teacher's compression phase, its blocks up to and including its entropy
bottleneck (from its phases.csv), with the student blocks at the same relative depths, one pair per
student block in that range; `autoK` takes K evenly spaced pairs of those.
Examples: `First1+Last1`, `Last8`, `s0:t0,s11:t23`, `auto`, `auto2`.
"""
from __future__ import annotations

import re

from ..errors import UserError

_RELATIVE = re.compile(r"^(First|Last)([1-9][0-9]*)$")
_PAIR = re.compile(r"^s([0-9]+):t([0-9]+)$")
_AUTO = re.compile(r"^auto([1-9][0-9]*)?$")
VALID = ("FirstK, LastK, '+'-joined parts like First1+Last1, explicit pairs like s0:t0,s11:t23, auto or autoK "
         "(alone), or none")


def _parts(spec: str) -> list[str]:
    spec = (spec or "").strip()
    if spec.lower() in ("", "none"):
        return []
    return [part.strip() for part in spec.split("+")]


def is_auto(spec: str) -> bool:
    """Whether `spec` is `auto` or `autoK`: its pairs come from the teacher's phases."""
    return bool(_AUTO.match((spec or "").strip()))


def check_syntax(spec: str) -> None:
    """Fail with one line if `spec` is not a layer spec at all (depths are checked by `parse`)."""
    if is_auto(spec):
        return
    for part in _parts(spec):
        if _RELATIVE.match(part):
            continue
        if part and all(_PAIR.match(pair.strip()) for pair in part.split(",")):
            continue
        raise UserError(f"bad layer spec '{spec}': part '{part}' is not valid; use {VALID}")


def parse(spec: str, student_depth: int, teacher_depth: int,
          teacher_bottleneck: int | None = None) -> list[tuple[int, int]]:
    """(student block, teacher block) pairs of `spec` for models of these depths, sorted, no repeats.
    `auto` specs need the teacher's bottleneck block (0-based)."""
    check_syntax(spec)
    if is_auto(spec):
        return auto_pairs(spec, student_depth, teacher_depth, teacher_bottleneck)
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


def auto_pairs(spec: str, student_depth: int, teacher_depth: int, teacher_bottleneck: int | None) -> list[tuple[int, int]]:
    """`auto`: each student block s whose relative depth s / (S - 1) is within the teacher's compression
    phase (relative depth <= bottleneck / (T - 1)), paired with the teacher block at the nearest relative
    depth; `autoK`: K of those pairs, evenly spaced."""
    if teacher_bottleneck is None:
        raise UserError(f"layer spec '{spec}' needs the teacher's phases (its bottleneck block): "
                        "give the teacher's phases.csv")
    if not 0 <= teacher_bottleneck < teacher_depth:
        raise UserError(f"layer spec '{spec}': the teacher's bottleneck block {teacher_bottleneck} is not one of its "
                        f"{teacher_depth} blocks (a phases.csv of another model?)")
    end = teacher_bottleneck / max(teacher_depth - 1, 1)
    pairs = [(s, round(s / max(student_depth - 1, 1) * (teacher_depth - 1))) for s in range(student_depth)
             if s / max(student_depth - 1, 1) <= end + 1e-9]
    k = _AUTO.match(spec.strip()).group(1)
    if k is None:
        return pairs
    if int(k) > len(pairs):
        raise UserError(f"layer spec '{spec}' asks for {k} pairs but the teacher's compression phase (blocks 0.."
                        f"{teacher_bottleneck}) spans {len(pairs)} student block(s); use auto{len(pairs)} or fewer")
    chosen = sorted({int(round(i)) for i in [j * (len(pairs) - 1) / max(int(k) - 1, 1) for j in range(int(k))]})
    return [pairs[i] for i in chosen]
