"""HS_ADMIN permission bits, numbered as CNRI's HANDLE.NET software numbers them.

RFC 3651 section 3.2.2 lists Read_Value as bit 7 and the three admin permissions as
bits 8 to 10; CNRI's implementation (``net.handle.hdllib.AdminRecord``), which every
deployed Handle server and client follows on the wire and in JSON, has the admin
permissions at bits 7 to 9 and READ_VALUE at bit 10. This node follows the
implementation, so a permission string means here what it means to those clients.

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
    MODIFY_ADMIN = 7
    REMOVE_ADMIN = 8
    ADD_ADMIN = 9
    READ_VALUE = 10
    LIST_HANDLES = 11


ALL = "111111111111"
HANDLE_ADMIN_DEFAULT = "011111110011"
"""What an admin is given on a handle it creates without naming admins (as Handle.Net)."""


def has(permissions: str, perm: Perm) -> bool:
    """True when the twelve-character permission string grants ``perm``."""
    return len(permissions) == 12 and permissions[11 - perm] == "1"
