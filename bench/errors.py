"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""
from __future__ import annotations

import difflib
from typing import Iterable


class UserError(Exception):
    """Bad input or a missing resource: one line saying what is wrong and what would be right."""

    exit_code = 2


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean: a, b?)' for close matches, else a list of valid choices."""
    choices = sorted(choices)
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.5)
    if close:
        return f"did you mean: {', '.join(close)}?"
    shown = ", ".join(choices[:15]) + (", ..." if len(choices) > 15 else "")
    return f"choose from: {shown}"
