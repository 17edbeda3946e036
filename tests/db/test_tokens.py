"""
Tests of the device tokens against a real database: a token is random,
stored only as a hash, and checked for every way of being wrong.
"""

import hashlib

import pytest
import pytest_twisted

from blip.db.tokens import (
    CREATE,
    LIST,
    REVOKE,
    TOKEN,
    BadToken,
    Tokens,
    new_token,
    token_row,
)

T0 = 1_700_000_000_000


def test_new_tokens_are_random_and_stored_as_a_hash() -> None:
    """
    A new token is ``<id>.<secret>`` with 32 random bytes of secret; its
    row holds the SHA-256 of the secret, never the secret.
    """
    first, second = new_token("pi", [2, 1, 2], T0), new_token("pi", [1], T0)
    assert first.token != second.token
    ident, secret = TOKEN.fullmatch(first.token).groups()
    assert first.row == (ident, "pi", [1, 2], hashlib.sha256(secret.encode()).digest(), T0)
    assert secret not in repr(first.row)


@pytest_twisted.ensureDeferred
async def test_a_token_is_checked_for_every_way_of_being_wrong(store, database) -> None:
    """
    A valid token grants its meters; a malformed one, an unknown id, a
    wrong secret and a revoked token are refused, each saying why without
    repeating the token.
    """
    made = new_token("pi", [1, 3], T0)
    database.sql(CREATE, made.row)
    tokens = Tokens(store.pool)
    grant = await tokens.check(made.token)
    assert (grant.name, grant.meters) == ("pi", frozenset({1, 3}))
    ident, _, secret = made.token.partition(".")
    wrong = ("A" if secret[0] != "A" else "B") + secret[1:]
    for token, why in (
        ("", "malformed"),
        ("x" * 60, "malformed"),
        (ident + "." + secret[:-1], "malformed"),
        (made.token + " ", "malformed"),
        ("000000000000." + secret, "unknown"),
        (ident + "." + wrong, "unknown"),
    ):
        with pytest.raises(BadToken) as refused:
            await tokens.check(token)
        assert str(refused.value) == f"{why} token" and secret not in str(refused.value)
    assert database.sql(REVOKE, (T0 + 5, ident)) == [(T0 + 5,)]
    assert database.sql(REVOKE, (T0 + 9, ident)) == [(T0 + 5,)]
    with pytest.raises(BadToken, match="revoked token"):
        await tokens.check(made.token)
    assert [token_row(r) for r in database.sql(LIST)][0].revoked == T0 + 5
