"""The catalog kept inside an object-store warehouse, as a log of small JSON commits.

Layout under the catalog's root (by default ``<warehouse>/_catalog``)::

    log/00000000000000000000.json          one commit: {"version", "commit", "actions", …}
    log/00000000000000000001.json
    checkpoints/00000000000000000100.json  the whole state after commit 100

A change is made like a Delta commit: read the log up to its last version ``v``, check the change
against that state (``TableExists``, ``SchemaNotFound``…), then write ``log/<v+1>`` with a
conditional put (S3 ``If-None-Match: *``). Of several writers of ``v+1`` exactly one succeeds;
the others read the winner's commit and check their change again, so two creators of one name
end with one table and one clean ``TableExists``. Commits hold the resulting entries (``add`` /
``remove``), not the requests, so replaying them needs no checks.

Each process keeps the state in memory and, before every call, lists the log after its version
(one cheap LIST): new commits are read and applied; a listing that no longer shows the process's
last commit with the same tag means the log was deleted (the bucket emptied or re-created), and
the state is read afresh, so no process keeps entries whose storage is gone. A checkpoint every
``CHECKPOINT_EVERY`` commits bounds what a new process reads.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from matrixos.catalog._account_log import KINDS as ACCOUNT_KINDS
from matrixos.catalog._account_log import (
    AccountState,
    account_to_json,
    grant_key,
    grant_to_json,
    token_to_json,
)
from matrixos.catalog._objects import Objects
from matrixos.catalog.base import (
    AccountInfo,
    Catalog,
    GrantInfo,
    PrincipalRecords,
    TableInfo,
    TokenInfo,
    VolumeInfo,
    account_exists,
    no_account,
    no_schema,
    no_table,
    no_token,
    now,
    resolve_principal,
    schema_not_empty,
)
from matrixos.catalog.names import DEFAULT_CATALOG, DEFAULT_SCHEMA, TableIdent
from matrixos.errors import (
    AccountExists,
    ConcurrentWriteError,
    SchemaNotFound,
    StorageError,
    TableExists,
    VolumeNotFound,
)

log = logging.getLogger(__name__)

# A new process reads the newest checkpoint and up to this many commits after it (one batch of
# concurrent GETs); a checkpoint is one more PUT per this many commits.
CHECKPOINT_EVERY = 10
# A write hit by this many newer commits in a row gives up (each retry re-reads and re-checks).
MAX_ATTEMPTS = 64
# ``touch`` (a table's data changed) is recorded at most this often per table: every append of
# every writer would otherwise be a catalog commit, and concurrent writers would queue on it.
TOUCH_INTERVAL = timedelta(seconds=60)

_COMMIT = re.compile(r"[0-9]{20}\.json")
_EPOCH = datetime.fromisoformat("1970-01-01T00:00:00+00:00")
Action = dict[str, Any]


def _name(version: int) -> str:
    return f"{version:020d}.json"


def _key(folder: str, version: int) -> str:
    return f"{folder}/{_name(version)}"


def _after(version: int) -> str:
    """The ``start_after`` that lists a folder from ``version`` on."""
    return _name(version - 1) if version > 0 else ""


def _version_of(key: str) -> int:
    return int(key.rsplit("/", 1)[-1].split(".", 1)[0])


# -- state and its JSON form ----------------------------------------------------------------
@dataclass
class _State:
    catalogs: dict[str, dict[str, Any]] = field(default_factory=dict)
    schemas: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    tables: dict[TableIdent, TableInfo] = field(default_factory=dict)
    volumes: dict[TableIdent, VolumeInfo] = field(default_factory=dict)
    acl: AccountState = field(default_factory=AccountState)

    @classmethod
    def initial(cls) -> _State:
        """An empty log's state: the default catalog and schema, as a new SQL catalog has."""
        stamp = _EPOCH.isoformat()
        return cls(
            catalogs={DEFAULT_CATALOG: {"name": DEFAULT_CATALOG, "created_at": stamp}},
            schemas={
                (DEFAULT_CATALOG, DEFAULT_SCHEMA): {
                    "catalog": DEFAULT_CATALOG,
                    "name": DEFAULT_SCHEMA,
                    "created_at": stamp,
                }
            },
        )

    def apply(self, action: Action) -> None:
        kind = action["kind"]
        if kind in ACCOUNT_KINDS:
            self.acl.apply(kind, action)
        elif "add" in action:
            entry = action["add"]
            if kind == "catalog":
                self.catalogs[entry["name"]] = entry
            elif kind == "schema":
                self.schemas[(entry["catalog"], entry["name"])] = entry
            elif kind == "table":
                info = _table_from_json(entry)
                self.tables[info.ident] = info
            elif kind == "volume":
                vol = _volume_from_json(entry)
                self.volumes[vol.ident] = vol
        else:
            key = action["remove"]
            if kind == "catalog":
                self.catalogs.pop(key[0], None)
            elif kind == "schema":
                self.schemas.pop((key[0], key[1]), None)
            elif kind == "table":
                self.tables.pop(TableIdent(*key), None)
            elif kind == "volume":
                self.volumes.pop(TableIdent(*key), None)

    def to_json(self) -> list[Action]:
        """The state as the ``add`` actions that rebuild it (a checkpoint)."""
        return [
            *({"kind": "catalog", "add": e} for e in self.catalogs.values()),
            *({"kind": "schema", "add": e} for e in self.schemas.values()),
            *({"kind": "table", "add": _table_to_json(t)} for t in self.tables.values()),
            *({"kind": "volume", "add": _volume_to_json(v)} for v in self.volumes.values()),
            *self.acl.to_json(),
        ]


def _table_to_json(info: TableInfo) -> dict[str, Any]:
    return {
        "ident": list(info.ident),
        "format": info.format,
        "location": info.location,
        "external": info.external,
        "comment": info.comment,
        "properties": info.properties,
        "owner": info.owner,
        "created_at": info.created_at.isoformat(),
        "updated_at": info.updated_at.isoformat(),
    }


def _table_from_json(d: dict[str, Any]) -> TableInfo:
    return TableInfo(
        ident=TableIdent(*d["ident"]),
        format=d["format"],
        location=d["location"],
        external=bool(d["external"]),
        comment=d.get("comment"),
        properties=dict(d.get("properties") or {}),
        owner=d.get("owner"),
        created_at=datetime.fromisoformat(d["created_at"]),
        updated_at=datetime.fromisoformat(d["updated_at"]),
    )


def _volume_to_json(info: VolumeInfo) -> dict[str, Any]:
    return {
        "ident": list(info.ident),
        "location": info.location,
        "external": info.external,
        "comment": info.comment,
        "owner": info.owner,
        "created_at": info.created_at.isoformat(),
    }


def _volume_from_json(d: dict[str, Any]) -> VolumeInfo:
    return VolumeInfo(
        ident=TableIdent(*d["ident"]),
        location=d["location"],
        external=bool(d["external"]),
        comment=d.get("comment"),
        owner=d.get("owner"),
        created_at=datetime.fromisoformat(d["created_at"]),
    )


def _add(kind: str, entry: dict[str, Any]) -> Action:
    return {"kind": kind, "add": entry}


def _remove(kind: str, *key: str) -> Action:
    return {"kind": kind, "remove": list(key)}


# -- the catalog ----------------------------------------------------------------------------
class ObjectStoreCatalog(Catalog):
    """A catalog kept as a commit log in an object store (``s3://bucket/wh/_catalog``).

    Any process that reaches the bucket sees the same catalog; nothing is kept on local disk.

    Example:
        >>> from matrixos.catalog import open_catalog
        >>> cat = open_catalog("memory://doc/_catalog")
        >>> cat.create_schema("main", "sales")
        >>> cat.list_schemas()
        [('main', 'default'), ('main', 'sales')]
    """

    def __init__(self, objects: Objects) -> None:
        self.url = objects.uri
        self._objects = objects
        self._lock = threading.RLock()
        self._state = _State.initial()
        self._version = -1  # the last commit applied to ``_state``
        self._tag: str | None = None  # its tag, to notice a log that was deleted
        self._loaded = False
        self._checked_at = 0.0  # when the last look at the log began (time.monotonic())
        self._loads = 0  # full reads of the log: a log started afresh repeats versions

    def __repr__(self) -> str:
        return f"ObjectStoreCatalog({self.url!r})"

    def close(self) -> None:
        pass  # nothing held open: every call is a few object-store requests

    @property
    def version(self) -> int:
        """The last commit this process has seen (-1: none yet)."""
        return self._version

    def changes(self) -> int | None:
        # The log's newest version (one LIST), told apart from the same version of a log that
        # was deleted and started again.
        self._fresh()
        return (self._loads << 40) + self._version + 1

    # -- reading the log --------------------------------------------------------------------
    def _fresh(self) -> _State:
        """The current state: this process's copy, brought up to date."""
        asked = time.monotonic()
        with self._lock:
            if self._checked_at > asked:
                # A look at the log that began after this call did is as fresh as our own: the
                # threads of a busy server share one LIST instead of queueing for one each.
                return self._state
            started = time.monotonic()
            self._catch_up()
            self._checked_at = started
            return self._state

    def _catch_up(self) -> None:
        if not self._loaded:
            self._load()
            return
        listing = self._list("log", _after(self._version))
        if self._version >= 0:
            if not listing or listing[0] != (_key("log", self._version), self._tag):
                self._load()  # the log was deleted, and maybe started afresh
                return
            listing = listing[1:]
        if not self._replay(listing):
            self._load()

    def _load(self) -> None:
        """Read the state from the newest checkpoint and the commits after it."""
        self._loaded = False  # until it is complete: a failed load is retried by the next call
        self._loads += 1
        state, version = _State.initial(), -1
        for key, _ in reversed(self._list("checkpoints")):
            raw = self._objects.read(key)
            if raw is None:
                continue
            cp = json.loads(raw)
            state, version = _State(), int(cp["version"])
            for action in cp["actions"]:
                state.apply(action)
            break
        listing = self._list("log", _after(version))
        self._state, self._version, self._tag = state, version, None
        if version >= 0:
            if not listing or listing[0][0] != _key("log", version):
                # a checkpoint outliving its log: start from the first commit instead
                self._state, self._version = _State.initial(), -1
                listing = self._list("log")
            else:
                self._tag = listing[0][1]
                listing = listing[1:]
        if not self._replay(listing):
            raise StorageError(
                f"the catalog log at {self.url} has a gap after version {self._version}",
                hint="a commit object was deleted by hand; restore it from the bucket's versions",
            )
        self._loaded = True

    def _list(self, folder: str, start_after: str = "") -> list[tuple[str, str]]:
        # Only commit objects: a user catalog named "_catalog" would put table files here too.
        return [
            (k, t)
            for k, t in self._objects.list(folder, start_after)
            if k.startswith(folder + "/") and _COMMIT.fullmatch(k[len(folder) + 1 :])
        ]

    def _replay(self, listing: list[tuple[str, str]]) -> bool:
        """Apply the listed commits in order; False if they do not follow this state."""
        if not listing:
            return True
        bodies = self._objects.read_many([k for k, _ in listing])
        for key, tag in listing:
            version = _version_of(key)
            raw = bodies.get(key)
            if version != self._version + 1 or raw is None:
                return False
            for action in json.loads(raw)["actions"]:
                self._state.apply(action)
            self._version, self._tag = version, tag
        return True

    # -- writing the log --------------------------------------------------------------------
    def _commit(self, operation: str, plan: Callable[[_State], list[Action]]) -> None:
        """Append the actions ``plan`` makes of the current state (nothing when it makes none);
        ``plan`` raises when the change is not valid, and is asked again after a lost race."""
        commit_id = uuid.uuid4().hex
        with self._lock:
            for attempt in range(MAX_ATTEMPTS):
                actions = plan(self._fresh())
                if not actions:
                    return
                version = self._version + 1
                body = {
                    "version": version,
                    "commit": commit_id,
                    "timestamp": now().isoformat(),
                    "operation": operation,
                    "actions": actions,
                }
                key = _key("log", version)
                tag = self._objects.create(key, json.dumps(body).encode())
                if tag is not None or self._is_ours(key, commit_id):
                    self._after_commit(version, tag, actions)
                    return
                # Another process wrote this version first: read it and try again.
                time.sleep(random.uniform(0, 0.005 * min(attempt + 1, 20)))
        raise ConcurrentWriteError(
            f"catalog change {operation!r} lost {MAX_ATTEMPTS} races to other writers of "
            f"{self.url}",
            hint="retry; many processes are changing the catalog at once",
        )

    def _is_ours(self, key: str, commit_id: str) -> bool:
        # A write retried after a lost response finds its own first attempt there.
        raw = self._objects.read(key)
        return raw is not None and json.loads(raw).get("commit") == commit_id

    def _after_commit(self, version: int, tag: str | None, actions: list[Action]) -> None:
        for action in actions:
            self._state.apply(action)
        # A commit found as ours after a retried write has no tag: the next call reloads.
        self._version, self._tag = version, tag
        if version > 0 and version % CHECKPOINT_EVERY == 0:
            cp = {"version": version, "actions": self._state.to_json()}
            try:
                self._objects.write(_key("checkpoints", version), json.dumps(cp).encode())
            except StorageError as e:
                # The change is committed; a missing checkpoint only makes new readers replay
                # a few more commits.
                log.warning("catalog %s: checkpoint %d not written: %s", self.url, version, e)

    # -- catalogs and schemas ---------------------------------------------------------------
    def create_catalog(
        self, name: str, *, comment: str | None = None, if_not_exists: bool = False
    ) -> None:
        def plan(state: _State) -> list[Action]:
            if name in state.catalogs:
                if if_not_exists:
                    return []
                raise TableExists(f"catalog {name!r} already exists")
            entry = {"name": name, "comment": comment, "created_at": now().isoformat()}
            return [_add("catalog", entry)]

        self._commit(f"CREATE CATALOG {name}", plan)

    def create_schema(
        self,
        catalog: str,
        schema: str,
        *,
        comment: str | None = None,
        owner: str | None = None,
        if_not_exists: bool = False,
    ) -> None:
        def plan(state: _State) -> list[Action]:
            if (catalog, schema) in state.schemas:
                if if_not_exists:
                    return []
                raise TableExists(f"schema {catalog}.{schema} already exists")
            stamp = now().isoformat()
            actions = []
            if catalog not in state.catalogs:
                actions.append(_add("catalog", {"name": catalog, "created_at": stamp}))
            entry = {"catalog": catalog, "name": schema, "comment": comment, "owner": owner}
            return [*actions, _add("schema", {**entry, "created_at": stamp})]

        self._commit(f"CREATE SCHEMA {catalog}.{schema}", plan)

    def schema_exists(self, catalog: str, schema: str) -> bool:
        return (catalog, schema) in self._fresh().schemas

    def list_schemas(self, catalog: str | None = None) -> list[tuple[str, str]]:
        return sorted(k for k in self._fresh().schemas if not catalog or k[0] == catalog)

    def drop_schema(self, catalog: str, schema: str, *, if_exists: bool = False) -> None:
        def plan(state: _State) -> list[Action]:
            for what, entries in (("table", state.tables), ("volume", state.volumes)):
                left = sum(1 for i in entries if (i.catalog, i.schema) == (catalog, schema))
                if left:
                    raise schema_not_empty(catalog, schema, left, what)
            if (catalog, schema) not in state.schemas:
                if if_exists:
                    return []
                raise SchemaNotFound(f"schema {catalog}.{schema} does not exist")
            grants = state.acl.grant_removals_on(f"{catalog}.{schema}", "schema")
            return [_remove("schema", catalog, schema), *grants]

        self._commit(f"DROP SCHEMA {catalog}.{schema}", plan)

    # -- tables -----------------------------------------------------------------------------
    def create_table(self, info: TableInfo) -> None:
        ident = info.ident

        def plan(state: _State) -> list[Action]:
            if (ident.catalog, ident.schema) not in state.schemas:
                raise no_schema(ident.catalog, ident.schema)
            if ident in state.tables:
                raise TableExists(f"table {ident} already exists")
            return [_add("table", _table_to_json(info))]

        self._commit(f"CREATE TABLE {ident}", plan)

    def get_table(self, ident: TableIdent) -> TableInfo:
        info = self._fresh().tables.get(ident)
        if info is None:
            raise no_table(ident)
        return info

    def list_tables(self, catalog: str | None = None, schema: str | None = None) -> list[TableInfo]:
        return _select(self._fresh().tables.values(), catalog, schema)

    def update_table(self, info: TableInfo) -> TableInfo:
        new = replace(info, updated_at=now())

        def plan(state: _State) -> list[Action]:
            if info.ident not in state.tables:
                raise no_table(info.ident)
            return [_add("table", _table_to_json(new))]

        self._commit(f"ALTER TABLE {info.ident}", plan)
        return new

    def touch(self, ident: TableIdent) -> None:
        def plan(state: _State) -> list[Action]:
            info = state.tables.get(ident)
            if info is None or now() - info.updated_at < TOUCH_INTERVAL:
                return []
            return [_add("table", _table_to_json(replace(info, updated_at=now())))]

        self._commit(f"TOUCH {ident}", plan)

    def drop_table(self, ident: TableIdent, *, location: str | None = None) -> TableInfo:
        dropped: list[TableInfo] = []

        def plan(state: _State) -> list[Action]:
            info = state.tables.get(ident)
            if info is None or (location is not None and info.location != location):
                raise no_table(ident, location)
            dropped[:] = [info]
            return [_remove("table", *ident), *state.acl.grant_removals_on(str(ident), "table")]

        self._commit(f"DROP TABLE {ident}", plan)
        return dropped[0]

    # -- volumes ----------------------------------------------------------------------------
    def create_volume(self, info: VolumeInfo) -> None:
        ident = info.ident

        def plan(state: _State) -> list[Action]:
            if (ident.catalog, ident.schema) not in state.schemas:
                raise no_schema(ident.catalog, ident.schema)
            if ident in state.volumes:
                raise TableExists(f"volume {ident} already exists")
            return [_add("volume", _volume_to_json(info))]

        self._commit(f"CREATE VOLUME {ident}", plan)

    def get_volume(self, ident: TableIdent) -> VolumeInfo:
        info = self._fresh().volumes.get(ident)
        if info is None:
            raise VolumeNotFound(f"volume {ident} does not exist")
        return info

    def list_volumes(
        self, catalog: str | None = None, schema: str | None = None
    ) -> list[VolumeInfo]:
        return _select(self._fresh().volumes.values(), catalog, schema)

    def drop_volume(self, ident: TableIdent) -> VolumeInfo:
        dropped: list[VolumeInfo] = []

        def plan(state: _State) -> list[Action]:
            info = state.volumes.get(ident)
            if info is None:
                raise VolumeNotFound(f"volume {ident} does not exist")
            dropped[:] = [info]
            return [_remove("volume", *ident), *state.acl.grant_removals_on(str(ident), "volume")]

        self._commit(f"DROP VOLUME {ident}", plan)
        return dropped[0]

    # -- accounts, groups, grants, tokens, passwords ------------------------------------------
    def create_account(self, info: AccountInfo) -> None:
        def plan(state: _State) -> list[Action]:
            if info.name in state.acl.accounts:
                raise account_exists(info.name)
            return [_add("account", account_to_json(info))]

        self._commit(f"CREATE ACCOUNT {info.name}", plan)

    def get_account(self, name: str) -> AccountInfo:
        info = self._fresh().acl.accounts.get(name)
        if info is None:
            raise no_account(name)
        return info

    def list_accounts(self) -> list[AccountInfo]:
        return sorted(self._fresh().acl.accounts.values(), key=lambda a: a.name)

    def update_account(self, info: AccountInfo) -> None:
        def plan(state: _State) -> list[Action]:
            _need(state, info.name)
            return [_add("account", account_to_json(info))]

        self._commit(f"ALTER ACCOUNT {info.name}", plan)

    def drop_account(self, name: str) -> AccountInfo:
        dropped: list[AccountInfo] = []

        def plan(state: _State) -> list[Action]:
            dropped[:] = [_need(state, name)]
            return state.acl.removals_for(name)

        self._commit(f"DROP ACCOUNT {name}", plan)
        return dropped[0]

    def add_member(self, group: str, member: str) -> None:
        def plan(state: _State) -> list[Action]:
            _need(state, group, member)
            if (group, member) in state.acl.members:
                return []
            return [_add("member", {"group": group, "member": member})]

        self._commit(f"ADD MEMBER {member} TO {group}", plan)

    def remove_member(self, group: str, member: str) -> bool:
        def plan(state: _State) -> list[Action]:
            return (
                [_remove("member", group, member)] if (group, member) in state.acl.members else []
            )

        return self._commit_some(f"REMOVE MEMBER {member} FROM {group}", plan)

    def list_members(self) -> list[tuple[str, str]]:
        return sorted(self._fresh().acl.members)

    def add_grant(self, grant: GrantInfo) -> bool:
        def plan(state: _State) -> list[Action]:
            _need(state, grant.grantee)
            if grant_key(grant) in state.acl.grants:
                return []
            return [_add("grant", grant_to_json(grant))]

        return self._commit_some(f"GRANT {grant.privilege} ON {grant.securable}", plan)

    def remove_grant(self, grant: GrantInfo) -> bool:
        def plan(state: _State) -> list[Action]:
            if grant_key(grant) not in state.acl.grants:
                return []
            return [_remove("grant", *grant_key(grant))]

        return self._commit_some(f"REVOKE {grant.privilege} ON {grant.securable}", plan)

    def token_records(self, token_id: str) -> tuple[TokenInfo, PrincipalRecords | None] | None:
        acl = self._fresh().acl  # one look at the log for the token and its principal
        token = acl.tokens.get(token_id)
        if token is None:
            return None
        return token, (_records(acl, token.account) if token.account in acl.accounts else None)

    def principal_records(self, name: str) -> PrincipalRecords:
        # one look at the log (a LIST) instead of one per lookup
        return _records(self._fresh().acl, name)

    def list_grants(
        self, grantee: str | None = None, securable: str | None = None
    ) -> list[GrantInfo]:
        return sorted(
            (
                g
                for g in self._fresh().acl.grants.values()
                if (grantee is None or g.grantee == grantee)
                and (securable is None or g.securable == securable)
            ),
            key=lambda g: (g.securable, g.grantee, g.privilege, g.kind),
        )

    def create_token(self, info: TokenInfo) -> None:
        def plan(state: _State) -> list[Action]:
            _need(state, info.account)
            if info.id in state.acl.tokens:
                raise AccountExists(f"token {info.id!r} already exists")
            return [_add("token", token_to_json(info))]

        self._commit(f"CREATE TOKEN {info.id}", plan)

    def find_token(self, token_id: str) -> TokenInfo | None:
        return self._fresh().acl.tokens.get(token_id)

    def list_tokens(self, account: str | None = None) -> list[TokenInfo]:
        tokens = self._fresh().acl.tokens.values()
        return sorted(
            (t for t in tokens if account is None or t.account == account),
            key=lambda t: (t.created_at, t.id),
        )

    def update_token(self, info: TokenInfo) -> None:
        def plan(state: _State) -> list[Action]:
            if info.id not in state.acl.tokens:
                raise no_token(info.id)
            return [_add("token", token_to_json(info))]

        self._commit(f"UPDATE TOKEN {info.id}", plan)

    def set_password(self, account: str, verifier: str | None) -> None:
        def plan(state: _State) -> list[Action]:
            _need(state, account)
            if verifier is None:
                return [_remove("password", account)] if account in state.acl.passwords else []
            return [_add("password", {"account": account, "verifier": verifier})]

        self._commit(f"SET PASSWORD {account}", plan)

    def get_password(self, account: str) -> str | None:
        return self._fresh().acl.passwords.get(account)

    def _commit_some(self, operation: str, plan: Callable[[_State], list[Action]]) -> bool:
        """``_commit``, and whether ``plan`` made any action (the change was not a no-op)."""
        made = [False]

        def planned(state: _State) -> list[Action]:
            actions = plan(state)
            made[0] = bool(actions)
            return actions

        self._commit(operation, planned)
        return made[0]

    # -- bulk -------------------------------------------------------------------------------
    def import_entries(
        self,
        schemas: Iterable[tuple[str, str]],
        tables: Iterable[TableInfo],
        volumes: Iterable[VolumeInfo],
    ) -> int:
        """Add schemas, tables and volumes in one commit, skipping names already taken;
        returns how many tables and volumes were added."""
        added = [0]
        schemas, tables, volumes = list(schemas), list(tables), list(volumes)

        def plan(state: _State) -> list[Action]:
            actions: list[Action] = []
            catalogs, have = set(state.catalogs), set(state.schemas)
            for catalog, schema in schemas:
                stamp = now().isoformat()
                if catalog not in catalogs:
                    catalogs.add(catalog)
                    actions.append(_add("catalog", {"name": catalog, "created_at": stamp}))
                if (catalog, schema) not in have:
                    have.add((catalog, schema))
                    entry = {"catalog": catalog, "name": schema, "created_at": stamp}
                    actions.append(_add("schema", entry))
            new_tables = [t for t in tables if t.ident not in state.tables]
            new_volumes = [v for v in volumes if v.ident not in state.volumes]
            actions += [_add("table", _table_to_json(t)) for t in new_tables]
            actions += [_add("volume", _volume_to_json(v)) for v in new_volumes]
            added[0] = len(new_tables) + len(new_volumes)
            return actions

        self._commit("IMPORT", plan)
        return added[0]


def _records(acl: AccountState, name: str) -> PrincipalRecords:
    def get(who: str) -> AccountInfo:
        info = acl.accounts.get(who)
        if info is None:
            raise no_account(who)
        return info

    def grants_of(who: str) -> list[GrantInfo]:
        return [g for g in acl.grants.values() if g.grantee == who]

    return resolve_principal(name, get, acl.members, grants_of)


def _need(state: _State, *names: str) -> AccountInfo:
    """The first named account; ``AccountNotFound`` unless all exist."""
    for name in names:
        if name not in state.acl.accounts:
            raise no_account(name)
    return state.acl.accounts[names[0]]


_Entry = TypeVar("_Entry", TableInfo, VolumeInfo)


def _select(entries: Iterable[_Entry], catalog: str | None, schema: str | None) -> list[_Entry]:
    return sorted(
        (
            e
            for e in entries
            if (not catalog or e.ident.catalog == catalog)
            and (not schema or e.ident.schema == schema)
        ),
        key=lambda e: tuple(e.ident),
    )
