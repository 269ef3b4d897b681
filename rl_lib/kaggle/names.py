"""Kaggle owner names and slugs: the checks every Kaggle command makes before it talks to Kaggle."""

from __future__ import annotations

import re

from rl_lib.errors import UserError

_SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_OWNER = re.compile(r"^[a-z0-9]+(?:[_-][a-z0-9]+)*$")


def check_owner(owner: str | None) -> None:
    if not owner or not _OWNER.match(owner):
        raise UserError(f"Kaggle owner {owner!r}: expected a Kaggle user name (lowercase letters, digits, "
                        "- or _); pass --owner or set kaggle.owner in the parameter file")  # fmt: skip


def check_slug(slug: str, what: str) -> None:
    if not _SLUG.match(slug or ""):
        raise UserError(f"{what} {slug!r}: lowercase letters and digits separated by single hyphens")
