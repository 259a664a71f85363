"""The one registry of selection variants (RDS and the paper's ablations): name -> SelectionVariant.

A variant decides which training rows get SaRFT's KL term; selection.py computes the flags. This module
imports nothing heavy, so that the command line can build its help text and `safetune list` from it
without loading torch (selection.py's scoring does).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SelectionVariant:
    name: str
    summary: str
    needs_scores: bool = False  # flags come from the reference model's RDS scores (cached per model + data)
    uses_flags_file: bool = False  # flags come from selection.flags_file (else the data's is_harmful)


VARIANTS: dict[str, SelectionVariant] = {
    spec.name: spec
    for spec in (
        SelectionVariant(
            "rds", "KL on the rows the reference finds likelier under the unsafe prompt", needs_scores=True
        ),
        SelectionVariant("none", "KL on no row"),
        SelectionVariant("all", "KL on every row"),
        SelectionVariant(
            "random", "KL on as many rows as rds flags, drawn at random (selection.seed)", needs_scores=True
        ),
        SelectionVariant("flip", "KL on the rows rds leaves out", needs_scores=True),
        SelectionVariant(
            "external",
            "KL on the rows flagged in selection.flags_file, else by is_harmful",
            uses_flags_file=True,
        ),
    )
}
