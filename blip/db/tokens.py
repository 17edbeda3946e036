"""
The device tokens of the write API: made, listed and revoked by the
``blip`` command (blocking, see :class:`blip.db.sync_store.SyncStore`),
checked by the daemon for every write.

A token is ``<id>.<secret>``: ``id`` names its row (and is shown by
``blip token list``), ``secret`` is 32 random bytes in URL-safe base64.
Only the SHA-256 of the secret is stored: the secret is random, so a fast
hash is as strong as a slow one (there is no password to guess), and a
stolen table gives no token. The hash presented is compared with the one
stored in constant time.
"""

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from blip.db.pool import Pool

#: Bytes of randomness in a token's secret.
SECRET_BYTES = 32
#: Characters of a token's id.
ID_CHARS = 12
#: What a token looks like (the id's and the secret's alphabets).
TOKEN = re.compile(r"([a-z0-9]{%d})\.([A-Za-z0-9_-]{43})" % ID_CHARS)

#: Make a token: id, name, meters, hash of the secret, unix ms.
CREATE = (
    "INSERT INTO device_tokens (id, name, meters, hash, created)"
    " VALUES (%s, %s, %s::integer[], %s, %s::bigint)"
)
#: Every token, newest first.
LIST = "SELECT id, name, meters, created, revoked FROM device_tokens ORDER BY created DESC, id"
#: Revoke a token by id (once: a revoked token keeps its first date).
REVOKE = (
    "UPDATE device_tokens SET revoked = coalesce(revoked, %s::bigint) WHERE id = %s"
    " RETURNING revoked"
)
_FIND = "SELECT name, meters, hash, revoked FROM device_tokens WHERE id = %s"


@dataclass(frozen=True, slots=True)
class TokenRow:
    """
    A device token as ``blip token list`` shows it.

    :param id: its public part.
    :param name: what it is for.
    :param meters: the meters it may write.
    :param created: unix ms it was made.
    :param revoked: unix ms it was revoked, or None.
    """

    id: str
    name: str
    meters: tuple[int, ...]
    created: int
    revoked: Optional[int]


@dataclass(frozen=True, slots=True)
class Grant:
    """
    What a valid token may do.

    :param id: the token's id.
    :param name: its name.
    :param meters: the meters it may write.
    """

    id: str
    name: str
    meters: frozenset[int]


@dataclass(frozen=True, slots=True)
class NewToken:
    """
    A token just made: the whole token (shown once) and its row.

    :param token: ``<id>.<secret>``, to give to the device.
    :param row: the values to store (see :data:`CREATE`).
    """

    token: str
    row: tuple[Any, ...]


def new_token(name: str, meters: Sequence[int], now: int) -> NewToken:
    """
    :return: a new random token for ``meters`` and the row that stores it.
    """
    ident = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(ID_CHARS))
    secret = base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).rstrip(b"=").decode()
    digest = hashlib.sha256(secret.encode()).digest()
    return NewToken(f"{ident}.{secret}", (ident, name, sorted(set(meters)), digest, now))


def token_row(row: Sequence[Any]) -> TokenRow:
    """
    :return: a row of :data:`LIST`.
    """
    ident, name, meters, created, revoked = row
    return TokenRow(ident, name, tuple(meters), int(created), None if revoked is None else int(revoked))


class BadToken(Exception):
    """
    A token that does not authorise anything; the message says why (for
    the answer: it never repeats the token).
    """


class Tokens:
    """
    Checks the tokens presented to the write API.

    :param pool: the connections to run statements on.
    """

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def check(self, token: str) -> Grant:
        """
        :return: what ``token`` may do.
        :raise BadToken: for a malformed, unknown or revoked token, or a
            wrong secret.
        """
        match = TOKEN.fullmatch(token)
        if match is None:
            raise BadToken("malformed token")
        ident, secret = match.groups()
        presented = hashlib.sha256(secret.encode()).digest()
        rows = await self.pool.runQuery(_FIND, (ident,))
        if not rows:
            # The same work as for a known id, so that timing says nothing.
            hmac.compare_digest(presented, bytes(len(presented)))
            raise BadToken("unknown token")
        name, meters, stored, revoked = rows[0]
        if not hmac.compare_digest(presented, bytes(stored)):
            raise BadToken("unknown token")
        if revoked is not None:
            raise BadToken("revoked token")
        return Grant(ident, name, frozenset(meters))
