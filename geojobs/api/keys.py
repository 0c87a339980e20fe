"""API users and their keys: a key is shown once at creation; only its sha256 is stored.

Keys carry 256 random bits, so a plain sha256 is enough (no slow hash is needed against
guessing); the stored and computed digests are compared in constant time.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Any

import psycopg
from psycopg.rows import dict_row

from geojobs.api.store import api_queries
from geojobs.errors import GeojobsError

__all__ = ["KEY_PREFIX", "hash_key", "new_key", "create_key", "list_keys", "revoke_key"]

KEY_PREFIX = "gj_"
NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,63}$")


def hash_key(key: str) -> bytes:
    """The digest stored for ``key``."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def new_key() -> str:
    """A fresh random key."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def create_key(conn: psycopg.Connection[Any], name: str, *, admin: bool = False) -> str:
    """Create user ``name`` and return its key (the only time the key is seen)."""
    if not NAME.match(name):
        raise GeojobsError("NAME: 1 to 63 characters among letters, digits and _ . @ -", field="NAME")
    if conn.execute(api_queries()["role_exists"], {"name": name}).fetchone()[0]:  # type: ignore[index]
        raise GeojobsError(f"NAME: {name!r} is a database role; choose another name", field="NAME")
    key = new_key()
    try:
        conn.execute(api_queries()["create_key"], {"name": name, "key_hash": hash_key(key),
                                                   "admin": admin})
    except psycopg.errors.UniqueViolation:
        raise GeojobsError(f"NAME: user {name!r} exists (revoked names are not reused)",
                           field="NAME") from None
    return key


def list_keys(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Every user: name, admin, created_at, revoked_at."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(api_queries()["list_keys"]).fetchall()


def revoke_key(conn: psycopg.Connection[Any], name: str) -> bool:
    """Revoke ``name``'s key at once; False if there was no active key of that name."""
    return conn.execute(api_queries()["revoke_key"], {"name": name}).fetchone() is not None
