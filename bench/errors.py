"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""
from __future__ import annotations

import difflib
from typing import Iterable


class UserError(Exception):
    """Bad input or a missing resource: one line saying what is wrong and what would be right."""

    exit_code = 2


class TrainingDiverged(UserError):
    """The loss became NaN or infinite, or grew past ``bench.heads.DIVERGED_FACTOR`` times its first
    value: the run stops with this one-line reason (recorded by a sweep as a failure of the run).
    Exit code 1: the input was valid, the run failed."""

    exit_code = 1


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean: a, b?)' for close matches, else a list of valid choices."""
    choices = sorted(choices)
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.5)
    if close:
        return f"did you mean: {', '.join(close)}?"
    shown = ", ".join(choices[:15]) + (", ..." if len(choices) > 15 else "")
    return f"choose from: {shown}"
