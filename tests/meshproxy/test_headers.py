"""Message heads as written on the wire (``meshproxy.http.headers.serialize``): every
field in its received order, case and duplicates, the preformatted extra lines after
them, one blank line at the end."""

from __future__ import annotations

from meshproxy.http.headers import serialize


def test_a_head_is_the_first_line_the_fields_in_order_the_extras_and_a_blank_line() -> None:
    head = serialize(b"HTTP/1.1 200 OK",
                     [(b"Server", b"nginx"), (b"set-cookie", b"a=1"), (b"Set-Cookie", b"b=2"),
                      (b"X-Empty", b"")],
                     [b"content-length: 5", b"x-request-id: r1"])
    assert head == (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nset-cookie: a=1\r\n"
                    b"Set-Cookie: b=2\r\nX-Empty: \r\ncontent-length: 5\r\n"
                    b"x-request-id: r1\r\n\r\n")


def test_a_head_without_fields_still_ends_with_one_blank_line() -> None:
    assert serialize(b"GET / HTTP/1.1", [], ()) == b"GET / HTTP/1.1\r\n\r\n"
    assert serialize(b"GET / HTTP/1.1", [], [b"host: a"]) == b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"
