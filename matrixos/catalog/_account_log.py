"""The accounts part of the object-store catalog's state: accounts, memberships, grants, API
tokens and password verifiers, and their JSON form in the commit log.

Their actions use kinds a catalog log written before accounts existed never holds, and that an
older reader skips; a log without them reads as "no accounts yet".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from matrixos.catalog.base import AccountInfo, GrantInfo, TokenInfo

KINDS = frozenset({"account", "member", "grant", "token", "password"})
GrantKey = tuple[str, str, str, str]


def grant_key(g: GrantInfo) -> GrantKey:
    return (g.grantee, g.privilege, g.kind, g.securable)


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def account_to_json(a: AccountInfo) -> dict[str, Any]:
    return {"name": a.name, "kind": a.kind, "admin": a.admin, "created_at": _ts(a.created_at)}


def account_from_json(d: dict[str, Any]) -> AccountInfo:
    return AccountInfo(
        name=d["name"],
        kind=d["kind"],
        admin=bool(d["admin"]),
        created_at=datetime.fromisoformat(d["created_at"]),
    )


def grant_to_json(g: GrantInfo) -> dict[str, Any]:
    return {
        "grantee": g.grantee,
        "privilege": g.privilege,
        "kind": g.kind,
        "securable": g.securable,
        "granted_by": g.granted_by,
        "created_at": _ts(g.created_at),
    }


def grant_from_json(d: dict[str, Any]) -> GrantInfo:
    return GrantInfo(
        privilege=d["privilege"],
        kind=d["kind"],
        securable=d["securable"],
        grantee=d["grantee"],
        granted_by=d.get("granted_by"),
        created_at=datetime.fromisoformat(d["created_at"]),
    )


def token_to_json(t: TokenInfo) -> dict[str, Any]:
    return {
        "id": t.id,
        "account": t.account,
        "hash": t.hash,
        "created_at": _ts(t.created_at),
        "expires_at": _ts(t.expires_at),
        "revoked_at": _ts(t.revoked_at),
        "last_used_at": _ts(t.last_used_at),
        "last_used_from": t.last_used_from,
    }


def token_from_json(d: dict[str, Any]) -> TokenInfo:
    return TokenInfo(
        id=d["id"],
        account=d["account"],
        hash=d["hash"],
        created_at=datetime.fromisoformat(d["created_at"]),
        expires_at=_dt(d.get("expires_at")),
        revoked_at=_dt(d.get("revoked_at")),
        last_used_at=_dt(d.get("last_used_at")),
        last_used_from=d.get("last_used_from"),
    )


@dataclass
class AccountState:
    """What the log says of accounts; ``apply`` takes one ``account``/``member``/``grant``/
    ``token``/``password`` action."""

    accounts: dict[str, AccountInfo] = field(default_factory=dict)
    members: set[tuple[str, str]] = field(default_factory=set)
    grants: dict[GrantKey, GrantInfo] = field(default_factory=dict)
    tokens: dict[str, TokenInfo] = field(default_factory=dict)
    passwords: dict[str, str] = field(default_factory=dict)

    def apply(self, kind: str, action: dict[str, Any]) -> None:
        if "add" in action:
            e = action["add"]
            if kind == "account":
                self.accounts[e["name"]] = account_from_json(e)
            elif kind == "member":
                self.members.add((e["group"], e["member"]))
            elif kind == "grant":
                g = grant_from_json(e)
                self.grants[grant_key(g)] = g
            elif kind == "token":
                self.tokens[e["id"]] = token_from_json(e)
            elif kind == "password":
                self.passwords[e["account"]] = e["verifier"]
            return
        key = action["remove"]
        if kind == "account":
            self.accounts.pop(key[0], None)
        elif kind == "member":
            self.members.discard((key[0], key[1]))
        elif kind == "grant":
            self.grants.pop((key[0], key[1], key[2], key[3]), None)
        elif kind == "token":
            self.tokens.pop(key[0], None)
        elif kind == "password":
            self.passwords.pop(key[0], None)

    def to_json(self) -> list[dict[str, Any]]:
        """The ``add`` actions that rebuild this state (for a checkpoint)."""
        return [
            *({"kind": "account", "add": account_to_json(a)} for a in self.accounts.values()),
            *({"kind": "member", "add": {"group": g, "member": m}} for g, m in self.members),
            *({"kind": "grant", "add": grant_to_json(g)} for g in self.grants.values()),
            *({"kind": "token", "add": token_to_json(t)} for t in self.tokens.values()),
            *(
                {"kind": "password", "add": {"account": a, "verifier": v}}
                for a, v in self.passwords.items()
            ),
        ]

    def removals_for(self, name: str) -> list[dict[str, Any]]:
        """The ``remove`` actions that drop account ``name`` and everything that names it."""
        actions: list[dict[str, Any]] = [
            {"kind": "member", "remove": [g, m]} for g, m in self.members if name in (g, m)
        ]
        actions += [{"kind": "grant", "remove": list(k)} for k in self.grants if k[0] == name]
        actions += [
            {"kind": "token", "remove": [t.id]} for t in self.tokens.values() if t.account == name
        ]
        if name in self.passwords:
            actions.append({"kind": "password", "remove": [name]})
        return [*actions, {"kind": "account", "remove": [name]}]

    def grant_removals_on(self, securable: str, kind: str) -> list[dict[str, Any]]:
        """The ``remove`` actions of every grant on one securable (when it is dropped)."""
        return [
            {"kind": "grant", "remove": list(k)}
            for k in self.grants
            if (k[3], k[2]) == (securable, kind)
        ]
