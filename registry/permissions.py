"""HS_ADMIN permission bits (RFC 3651 section 3.2.2).

The JSON form is a twelve-character string with bit 11 first and bit 0 last,
as CNRI's server writes it: ``011111111111`` grants everything but listing.
"""

from __future__ import annotations

import enum


class Perm(enum.IntEnum):
    ADD_HANDLE = 0
    DELETE_HANDLE = 1
    ADD_NA = 2
    DELETE_NA = 3
    MODIFY_VALUE = 4
    REMOVE_VALUE = 5
    ADD_VALUE = 6
    READ_VALUE = 7
    MODIFY_ADMIN = 8
    REMOVE_ADMIN = 9
    ADD_ADMIN = 10
    LIST_HANDLES = 11


ALL = "111111111111"
HANDLE_ADMIN_DEFAULT = "011111110011"
"""What an admin is given on a handle it creates without naming admins (as Handle.Net)."""


def has(permissions: str, perm: Perm) -> bool:
    """True when the twelve-character permission string grants ``perm``."""
    return len(permissions) == 12 and permissions[11 - perm] == "1"
