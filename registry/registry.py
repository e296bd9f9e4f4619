"""Registration: create, replace, change and delete records, and home prefixes.

Each operation checks responsibility, authorises the caller against the
HS_ADMIN values that apply, then makes its change in one transaction (rows,
audit entry, notification). A failure at any step leaves nothing behind.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from registry import handle as hs
from registry import keys, permissions
from registry import values as hv
from registry.auth import Authority, Identity
from registry.errors import (
    HandleAlreadyExists,
    HandleNotFound,
    InsufficientPermissions,
    InvalidValue,
    NotResponsible,
    ValueAlreadyExists,
    ValuesNotFound,
)
from registry.keys import AuditKey, NodeKey, Sealer
from registry.permissions import Perm
from registry.secrets import hash_secret, is_hashed
from registry.store import Record, Store, Transaction
from registry.templates import Templates

Clock = Callable[[], float]

ADMIN_INDEX = 100
SECRET_INDEX = 300


def format_timestamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _is_admin(v: hv.Value) -> bool:
    return v.type.upper() == hv.ADMIN_TYPE


def stored_value(v: hv.Value, sealer: Sealer | None) -> hv.Value:
    """A value as it is stored: secrets hashed (and sealed), public keys readable."""
    if v.type.upper() == keys.PUBKEY_TYPE:
        try:
            keys.check_public_key_value(v)
        except (keys.KeyError_, ValueError) as exc:
            raise InvalidValue(f"value {v.index}: HS_PUBKEY {exc}", index=v.index) from None
    if v.type.upper() != hv.SECKEY_TYPE:
        return v
    if v.format != "string" or not isinstance(v.data, str) or not v.data:
        raise InvalidValue(
            f"value {v.index}: HS_SECKEY data must be a non-empty string secret", index=v.index
        )
    if v.public_read:
        raise InvalidValue(
            f"value {v.index}: HS_SECKEY values cannot be publicly readable"
            " (permissions must have public-read 0, e.g. 1100)",
            index=v.index,
        )
    return v if is_hashed(v.data) else replace(v, data=hash_secret(v.data, sealer=sealer))


def needed_permissions(old: Sequence[hv.Value], new: Sequence[hv.Value]) -> set[Perm]:
    """The permissions needed to turn ``old`` into ``new``."""
    before = {v.index: v for v in old}
    after = {v.index: v for v in new}
    need: set[Perm] = set()
    for index in before.keys() - after.keys():
        need.add(Perm.REMOVE_ADMIN if _is_admin(before[index]) else Perm.REMOVE_VALUE)
    for index in after.keys() - before.keys():
        need.add(Perm.ADD_ADMIN if _is_admin(after[index]) else Perm.ADD_VALUE)
    for index in after.keys() & before.keys():
        if not after[index].same_content(before[index]):
            admin = _is_admin(after[index]) or _is_admin(before[index])
            need.add(Perm.MODIFY_ADMIN if admin else Perm.MODIFY_VALUE)
    return need


def keep_timestamps(old: Sequence[hv.Value], new: Sequence[hv.Value]) -> list[hv.Value]:
    """Unchanged values keep the time they were last written."""
    before = {v.index: v for v in old}
    return [
        replace(v, timestamp=before[v.index].timestamp)
        if v.index in before and v.same_content(before[v.index])
        else v
        for v in new
    ]


@dataclass(frozen=True, slots=True)
class PutResult:
    handle: str
    created: bool


class Registry:
    """The write side of the node."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock = time.time,
        sealer: Sealer | None = None,
        node_key: NodeKey | None = None,
        audit_key: AuditKey | None = None,
    ) -> None:
        self.store = store
        self.authority = Authority(store, sealer, None if node_key is None else node_key.public)
        self.clock = clock
        self.sealer = sealer
        self.node_key = node_key
        self.audit_key = audit_key
        """Signs the audit log's checkpoints; None: checkpoints are not made."""
        self.templates = Templates()
        self.site: Callable[[str], hv.Value] | None = None
        """This node's HS_SITE value (given a timestamp), published in homed prefix records."""

    def timestamp(self) -> str:
        return format_timestamp(self.clock())

    async def check_responsible(self, h: hs.Handle) -> None:
        await self.store.require_homed(h.homing_prefix, h.text)

    def with_default_admin(self, who: Identity, values: list[hv.Value]) -> list[hv.Value]:
        """A new record without HS_ADMIN gets one naming its creator, as Handle.Net does."""
        if any(_is_admin(v) for v in values):
            return values
        used = {v.index for v in values}
        index = next(i for i in range(ADMIN_INDEX, hv.MAX_INDEX) if i not in used)
        admin = {
            "handle": who.handle.text,
            "index": who.index,
            "permissions": permissions.HANDLE_ADMIN_DEFAULT,
        }
        return [*values, hv.Value(index, hv.ADMIN_TYPE, "admin", admin, timestamp=self.timestamp())]

    async def put_record(
        self,
        who: Identity | None,
        h: hs.Handle,
        values: list[hv.Value],
        *,
        overwrite: bool = True,
        mint: bool = False,
    ) -> PutResult:
        """Create a record, or replace it whole when ``overwrite``."""
        await self.check_responsible(h)
        values = [stored_value(v, self.sealer) for v in values]
        if mint:
            h = hs.parse(f"{h.prefix}/{h.suffix}{uuid.uuid4()}")
        async with self.store.writing() as tx:
            old = await tx.lock(h)
            if old is None:
                if h.is_prefix_record:
                    raise NotResponsible("prefix records are created by `idnode prefix add`")
                await self.authority.require(who, h, [Perm.ADD_HANDLE], None, tx)
                assert who is not None
                values = self.with_default_admin(who, values)
                await self._check_template(tx, h, values)
                if not await tx.insert(h, values):
                    raise HandleAlreadyExists(handle=h.text)
                tx.audit(str(who), "create", h, [v.index for v in values])
                return PutResult(h.text, created=True)
            if not overwrite:
                raise HandleAlreadyExists(handle=h.text)
            await self.authority.require(
                who, h, needed_permissions(old.values, values), old.values, tx
            )
            values = keep_timestamps(old.values, values)
            await self._check_template(tx, h, values)
            await tx.update(h, values)
            tx.audit(str(who), "replace", h, [v.index for v in values], before=old)
            return PutResult(h.text, created=False)

    async def put_values(
        self,
        who: Identity | None,
        h: hs.Handle,
        values: list[hv.Value],
        indexes: Sequence[int],
        *,
        overwrite: bool = True,
    ) -> PutResult:
        """Add or change the values at ``indexes`` of an existing record."""
        wanted, sent = set(indexes), {v.index for v in values}
        if wanted != sent:
            missing = sorted(wanted - sent) or sorted(sent - wanted)
            raise InvalidValue(
                "the index= parameters and the indexes of the values sent must be the same "
                f"(they differ at {', '.join(map(str, missing))})",
                handle=h.text,
            )
        await self.check_responsible(h)
        values = [stored_value(v, self.sealer) for v in values]
        async with self.store.writing() as tx:
            old = await self._existing(tx, h)
            await self.authority.require(who, h, [], old.values, tx)  # no probing by outsiders
            present = {v.index for v in old.values}
            if not overwrite and present & wanted:
                first = min(present & wanted)
                raise ValueAlreadyExists(
                    f"value {first} already exists", handle=h.text, index=first
                )
            merged = [v for v in old.values if v.index not in wanted] + values
            hv.check_count(len(merged))
            await self.authority.require(
                who, h, needed_permissions(old.values, merged), old.values, tx
            )
            merged = keep_timestamps(old.values, merged)
            await self._check_template(tx, h, merged)
            await tx.update(h, merged)
            tx.audit(str(who), "put-values", h, sorted(wanted), before=old)
        return PutResult(h.text, created=not overwrite)

    async def delete_record(self, who: Identity | None, h: hs.Handle) -> None:
        await self.check_responsible(h)
        async with self.store.writing() as tx:
            old = await self._existing(tx, h)
            if h.is_prefix_record:
                raise InsufficientPermissions(
                    "a prefix record cannot be deleted through the API", handle=h.text
                )
            await self.authority.require(who, h, [Perm.DELETE_HANDLE], old.values, tx)
            await tx.delete(h)
            tx.audit(str(who), "delete", h, before=old)

    async def delete_values(
        self, who: Identity | None, h: hs.Handle, indexes: Sequence[int]
    ) -> None:
        await self.check_responsible(h)
        wanted = set(indexes)
        async with self.store.writing() as tx:
            old = await self._existing(tx, h)
            await self.authority.require(who, h, [], old.values, tx)  # no probing by outsiders
            absent = wanted - {v.index for v in old.values}
            if absent:
                raise ValuesNotFound(
                    f"no value at index {', '.join(map(str, sorted(absent)))}", handle=h.text
                )
            kept = [v for v in old.values if v.index not in wanted]
            await self.authority.require(
                who, h, needed_permissions(old.values, kept), old.values, tx
            )
            await self._check_template(tx, h, kept)
            await tx.update(h, kept)
            tx.audit(str(who), "delete-values", h, sorted(wanted), before=old)

    async def _check_template(
        self, tx: Transaction, h: hs.Handle, values: Sequence[hv.Value]
    ) -> None:
        """Raise ``TemplateViolation`` unless ``values`` satisfy the prefix's current template."""
        if h.is_prefix_record:
            return
        template = await self.templates.current(tx.conn, h.prefix_key)
        if template is not None:
            template.require(h.text, values)

    async def set_template(
        self, who: Identity | None, prefix: str, schema: Mapping[str, Any] | None
    ) -> int:
        """Store the next version of ``prefix``'s data template (None removes it); answer it.

        The caller must administer ``0.NA/<prefix>`` with ADD_HANDLE and MODIFY_VALUE:
        a template decides which records can be created and changed under the prefix.
        """
        record = hs.prefix_record(hs.check_prefix(prefix))
        await self.store.require_homed(prefix, prefix)
        async with self.store.writing() as tx:
            needs = [Perm.ADD_HANDLE, Perm.MODIFY_VALUE]
            await self.authority.require(who, record, needs, None, tx)
            return await self.templates.put(tx, prefix, schema, str(who))

    async def operator_set_template(
        self, prefix: str, schema: Mapping[str, Any] | None, *, actor: str = "cli"
    ) -> int:
        """As ``set_template``, for the node's operator (``idnode template set``): no identity."""
        await self.store.require_homed(hs.check_prefix(prefix), prefix)
        async with self.store.writing() as tx:
            return await self.templates.put(tx, prefix, schema, actor)

    @staticmethod
    async def _existing(tx: Transaction, h: hs.Handle) -> Record:
        record = await tx.lock(h)
        if record is None:
            raise HandleNotFound(handle=h.text)
        return record

    async def home_prefix(self, prefix: str, secret: str, *, actor: str = "cli") -> bool:
        """Home ``prefix``: record it and create ``0.NA/<prefix>`` with its admin and secret.

        Answers False (and changes nothing) when the prefix is homed already.
        """
        hs.check_prefix(prefix)
        if not secret:
            raise InvalidValue("the admin secret must not be empty")
        record = hs.prefix_record(prefix)
        now = self.timestamp()
        admin = {"handle": record.text, "index": SECRET_INDEX, "permissions": permissions.ALL}
        values = [
            hv.Value(ADMIN_INDEX, hv.ADMIN_TYPE, "admin", admin, timestamp=now),
            hv.Value(
                SECRET_INDEX,
                hv.SECKEY_TYPE,
                "string",
                hash_secret(secret, sealer=self.sealer),
                timestamp=now,
                permissions=hv.SECRET_PERMISSIONS,
            ),
        ]
        if self.node_key is not None:
            values.append(self.node_key.value(now))
        if self.site is not None:
            values.append(self.site(now))
        async with self.store.writing() as tx:
            if not await tx.home_prefix(prefix):
                return False
            old = await tx.lock(record)
            if old is None:
                await tx.insert(record, values)
            else:
                await tx.update(record, values)
            tx.audit(actor, "home-prefix", record, [v.index for v in values], before=old)
        return True

    async def publish_node_key(self) -> int:
        """Put the node's current public key at its index of every homed prefix record.

        Answers how many records changed (0 when all were current already).
        """
        if self.node_key is None:
            return 0
        return await self._publish(self.node_key.value(self.timestamp()), "publish-node-key")

    async def publish_site(self) -> int:
        """Put this node's HS_SITE at its index of every homed prefix record where it differs.

        Answers how many records changed (0 when all were current already).
        """
        if self.site is None:
            return 0
        return await self._publish(self.site(self.timestamp()), "publish-site")

    async def _publish(self, fresh: hv.Value, operation: str) -> int:
        """Put ``fresh`` into every homed prefix record where it differs; answer how many."""
        changed = 0
        for prefix in await self.store.homed_prefixes():
            changed += await self._publish_value(hs.prefix_record(prefix), fresh, operation)
        return changed

    async def _publish_value(self, h: hs.Handle, fresh: hv.Value, operation: str) -> int:
        """Put ``fresh`` at its index of the record ``h`` unless it is there already."""

        def current(record: Record | None) -> bool:
            value = (
                next((v for v in record.values if v.index == fresh.index), None) if record else None
            )
            return record is None or (value is not None and value.same_content(fresh))

        if current(await self.store.get(h)):  # the usual restart: no write, no lock
            return 0
        async with self.store.writing() as tx:
            old = await tx.lock(h)
            if old is None or current(old):
                return 0
            kept = [v for v in old.values if v.index != fresh.index]
            await tx.update(h, [*kept, fresh])
            tx.audit("node", operation, h, [fresh.index], before=old)
        return 1

    async def delegate(self, prefix: str, site: hv.Value, *, actor: str = "cli") -> bool:
        """Hold ``0.NA/<prefix>`` with ``site`` for a prefix derived from one homed here.

        This is how a parent (a top-level node homing ``88``) refers others to the node
        serving ``88.200``. Answers True when the record was created, False when changed.
        """
        hs.check_prefix(prefix)
        if await self.store.is_homed(prefix):
            raise InvalidValue(f"prefix {prefix} is homed on this node: it needs no delegation")
        parents = hs.parent_prefixes(prefix)[1:]
        if not any([await self.store.is_homed(p) for p in parents]):
            raise NotResponsible(f"no prefix that {prefix} derives from is homed on this node")
        h = hs.prefix_record(prefix)
        async with self.store.writing() as tx:
            old = await tx.lock(h)
            kept = [v for v in old.values if v.index != site.index] if old else []
            if old is None:
                await tx.insert(h, [site])
            else:
                await tx.update(h, [*kept, site])
            tx.audit(actor, "delegate", h, [site.index], before=old)
        return old is None
