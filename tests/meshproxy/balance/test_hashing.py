"""The consistent-hash key of a request: header, cookie or client address."""

from __future__ import annotations

from meshproxy.balance import HashOn, request_hash_key
from meshproxy.balance.hashing import hash64

HEADERS = [(b"Host", b"shop"), (b"X-User", b" alice "),
           (b"Cookie", b"theme=dark; session=\"s-123\""), (b"cookie", b"cart=77")]


def test_header_key_is_the_first_value_case_insensitively_trimmed() -> None:
    assert request_hash_key(HashOn(source="header", name="x-user"),
                            headers=HEADERS, client_host="10.1.1.1") == b"alice"


def test_cookie_key_is_found_in_any_cookie_header_and_unquoted() -> None:
    on_session = HashOn(source="cookie", name="session")
    assert request_hash_key(on_session, headers=HEADERS, client_host="") == b"s-123"
    on_cart = HashOn(source="cookie", name="cart")
    assert request_hash_key(on_cart, headers=HEADERS, client_host="") == b"77"


def test_client_address_key_is_the_ip_without_port() -> None:
    key = request_hash_key(HashOn(source="client_address"), headers=[], client_host="10.1.1.1")
    assert key == b"10.1.1.1"


def test_missing_header_or_cookie_gives_no_key() -> None:
    """No key means the balancer picks at random: the request is served, not sticky."""
    assert request_hash_key(HashOn(source="header", name="x-tenant"),
                            headers=HEADERS, client_host="h") is None
    assert request_hash_key(HashOn(source="cookie", name="themes"),
                            headers=HEADERS, client_host="h") is None


def test_hash64_is_stable_and_salts_are_independent() -> None:
    """Pinned values: a change of hash function would remap every sticky session."""
    assert hash64(b"user-1") == hash64(b"user-1")
    assert hash64(b"user-1") != hash64(b"user-1", salt=b"skip")
    assert 0 <= hash64(b"") < 2**64
    assert hash64(b"user-1") == int.from_bytes(
        __import__("hashlib").blake2b(b"user-1", digest_size=8).digest(), "big")
