"""The transport policy's pure parts: proxy selection from the environment (NO_PROXY as curl
reads it), the redirect chain, the CA bundle's source, what a failure becomes, and the route
http.client takes.

Pure tier: no network, no files beyond tmp_path.
"""

from __future__ import annotations

import base64
import ipaddress
import random
import ssl
from pathlib import Path

import httpx
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from lazyfs.core.attempts import is_retryable
from lazyfs.errors import (
    OriginCertificateError,
    OriginHTTPError,
    OriginProtocolError,
    OriginUnreachable,
    UsageError,
)
from lazyfs.sources.transport import (
    MAX_REDIRECTS,
    Proxy,
    ProxySettings,
    RedirectChain,
    Route,
    Transport,
    ca_bundle,
    parse_proxy,
    select_proxy,
    status_error,
    tls_context,
    transport_error,
)

PROXY = "http://proxy.corp:3128"
BOTH = {"HTTP_PROXY": PROXY, "HTTPS_PROXY": PROXY}

labels = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
# Host names only: all-digit labels can spell an IPv4 address (`0.0.0.0`), which NO_PROXY, as
# curl reads it, matches by address and prefix, never by name suffix (tested below).
domains = (
    st.lists(labels, min_size=1, max_size=4)
    .map(".".join)
    .filter(lambda name: not name.replace(".", "").isdigit())
)
schemes = st.sampled_from(["http", "https"])
ports = st.integers(1, 65535)


def proxied(url: str, no_proxy: str, **more: str) -> bool:
    return select_proxy(url, {**BOTH, "NO_PROXY": no_proxy, **more}) is not None


# -- which variable ---------------------------------------------------------------------------


def test_no_variables_means_direct() -> None:
    assert select_proxy("https://hub.test/a", {}) is None
    assert select_proxy("http://hub.test/a", {}) is None


def test_each_scheme_has_its_own_variable_and_all_proxy_is_the_fallback() -> None:
    environ = {"HTTP_PROXY": "http://plain:1", "HTTPS_PROXY": "http://secure:2"}
    assert select_proxy("http://hub.test/", environ) == parse_proxy("http://plain:1", "HTTP_PROXY")
    assert select_proxy("https://hub.test/", environ) == parse_proxy(
        "http://secure:2", "HTTPS_PROXY"
    )
    only_http = {"http_proxy": "http://plain:1"}
    assert select_proxy("https://hub.test/", only_http) is None
    everything = {"ALL_PROXY": "http://any:3", "https_proxy": "http://secure:2"}
    assert select_proxy("http://hub.test/", everything) == Proxy("any", 3, "ALL_PROXY")
    assert select_proxy("https://hub.test/", everything) == Proxy("secure", 2, "https_proxy")


def test_lowercase_wins_and_an_empty_one_means_no_proxy() -> None:
    environ = {"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:2"}
    assert select_proxy("https://hub.test/", environ) == Proxy("lower", 1, "https_proxy")
    disabled = {"https_proxy": "", "HTTPS_PROXY": "http://upper:2", "ALL_PROXY": "http://a:3"}
    assert select_proxy("https://hub.test/", disabled) is None


def test_no_proxy_lowercase_wins() -> None:
    environ = {**BOTH, "no_proxy": "hub.test", "NO_PROXY": "other.test"}
    assert select_proxy("https://hub.test/", environ) is None
    assert select_proxy("https://other.test/", environ) is not None


# -- the proxy URL -------------------------------------------------------------------------------


def test_proxy_url_forms() -> None:
    assert parse_proxy("proxy.corp:3128", "HTTPS_PROXY") == Proxy("proxy.corp", 3128, "HTTPS_PROXY")
    assert parse_proxy("http://proxy.corp", "X") == Proxy("proxy.corp", 80, "X")
    assert parse_proxy("HTTP://proxy.corp:8080/ignored", "X").port == 8080
    assert parse_proxy("http://[::1]:3128", "X").url == "http://[::1]:3128"


def test_proxy_credentials_become_proxy_authorization_and_are_never_shown() -> None:
    proxy = parse_proxy("http://alice:p%40ss%3Aword@proxy.corp:3128", "HTTPS_PROXY")
    assert proxy.headers == {
        "Proxy-Authorization": "Basic " + base64.b64encode(b"alice:p@ss:word").decode()
    }
    assert "p%40ss" not in repr(proxy) and "alice" not in str(proxy)
    assert proxy.url == "http://proxy.corp:3128"
    assert parse_proxy("http://proxy.corp:3128", "X").headers == {}


@pytest.mark.parametrize(
    "value",
    ["socks5://u:secret@proxy:1080", "https://u:secret@proxy:443", "http://u:secret@proxy:99999",
     "http://u:secret@:3128"],
)  # fmt: skip
def test_unusable_proxy_urls_are_one_line_without_the_password(value: str) -> None:
    with pytest.raises(UsageError) as info:
        select_proxy("https://hub.test/", {"HTTPS_PROXY": value})
    message = str(info.value)
    assert "HTTPS_PROXY" in message and "secret" not in message and "\n" not in message


def test_a_malformed_variable_that_is_never_used_is_no_error() -> None:
    environ = {"ALL_PROXY": "socks5://proxy:1080", **BOTH}
    assert select_proxy("https://hub.test/", environ) is not None


# -- NO_PROXY ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "no_proxy", "bypass"),
    [
        ("https://hub.test/", "*", True),
        ("https://hub.test/", "hub.test", True),
        ("https://cdn.hub.test/", "hub.test", True),
        ("https://cdn.hub.test/", ".hub.test", True),
        ("https://hub.test/", ".hub.test", True),
        ("https://HUB.Test./", "hub.test.", True),
        ("https://nothub.test/", "hub.test", False),
        ("https://hub.test.evil/", "hub.test", False),
        ("https://hub.test/", "other.test,  hub.test", True),
        ("https://hub.test/", "other.test hub.test", True),
        ("https://hub.test/", "", False),
        ("https://hub.test:8443/", "hub.test:8443", True),
        ("https://hub.test/", "hub.test:443", True),
        ("https://hub.test:8443/", "hub.test:443", False),
        ("http://127.0.0.1:8000/", "127.0.0.1", True),
        ("http://127.0.0.1:8000/", "127.0.0.0/8", True),
        ("http://127.0.0.1:8000/", "127.0.0.1:8000", True),
        ("http://127.0.0.1:8000/", "127.0.0.1:9000", False),
        ("http://10.1.2.3/", "10.0.0.0/16", False),
        ("http://127.0.0.1/", "localhost", False),  # as curl: no name look-ups
        ("http://[::1]:8000/", "::1", True),
        ("http://[::1]:8000/", "[::1]:8000", True),
        ("http://[::1]:8000/", "[::1]:9000", False),
        ("http://[fd00::5]/", "fd00::/8", True),
        ("http://[::1]/", "127.0.0.1", False),
        ("http://127.0.0.1/", "1.2.3.4/99,bad:port:x,[oops", False),
    ],
)
def test_no_proxy_as_curl_reads_it(url: str, no_proxy: str, bypass: bool) -> None:
    assert proxied(url, no_proxy) is not bypass


@given(schemes, domains, domains, st.booleans())
def test_a_listed_domain_covers_itself_and_every_host_under_it(
    scheme: str, domain: str, sub: str, leading_dot: bool
) -> None:
    listed = ("." if leading_dot else "") + domain
    assert not proxied(f"{scheme}://{domain}/x", listed)
    assert not proxied(f"{scheme}://{sub}.{domain}/x", f"other.invalid,{listed}")


@given(schemes, domains, labels)
def test_a_listed_domain_never_covers_a_name_that_only_ends_like_it(
    scheme: str, domain: str, prefix: str
) -> None:
    assert proxied(f"{scheme}://{prefix}{domain}/x", domain)


@given(schemes, domains, ports, ports)
def test_a_port_in_an_entry_limits_it_to_that_port(
    scheme: str, host: str, port: int, listed: int
) -> None:
    assert proxied(f"{scheme}://{host}:{port}/x", f"{host}:{listed}") is (port != listed)


@given(st.ip_addresses(v=4), st.ip_addresses(v=4), st.integers(0, 32))
def test_cidr_entries_match_exactly_the_addresses_in_the_network(
    address: ipaddress.IPv4Address, base: ipaddress.IPv4Address, bits: int
) -> None:
    network = ipaddress.ip_network(f"{base}/{bits}", strict=False)
    assert proxied(f"http://{address}:81/", f"{base}/{bits}") is (address not in network)


@given(st.lists(domains, min_size=1, max_size=6), domains, st.randoms(), st.sampled_from(", "))
def test_order_and_separators_of_no_proxy_do_not_matter(
    entries: list[str], host: str, shuffle: random.Random, separator: str
) -> None:
    decision = proxied(f"https://{host}/", ",".join(entries))
    shuffle.shuffle(entries)
    assert proxied(f"https://{host}/", separator.join(entries)) is decision


@given(schemes, domains, st.one_of(st.none(), ports))
def test_without_no_proxy_every_url_takes_its_schemes_proxy(
    scheme: str, host: str, port: int | None
) -> None:
    environ = {"HTTP_PROXY": "http://plain:1", "HTTPS_PROXY": "http://secure:2"}
    url = f"{scheme}://{host}{'' if port is None else f':{port}'}/x"
    chosen = select_proxy(url, environ)
    assert chosen is not None and chosen.host == ("secure" if scheme == "https" else "plain")


def test_httpx_and_http_client_ask_the_same_question() -> None:
    """Both clients go through proxy_for_host; proxy_for is the same for a URL."""
    settings = ProxySettings.from_environ({**BOTH, "NO_PROXY": "cdn.test"})
    for url in ("https://hub.test/a", "https://x.cdn.test:444/b", "http://cdn.test/c"):
        parsed = httpx.URL(url)
        assert settings.proxy_for(url) == settings.proxy_for_host(
            parsed.scheme, parsed.host, parsed.port
        )


# -- routes for http.client ------------------------------------------------------------------


def test_routes_use_origin_form_absolute_form_or_a_tunnel() -> None:
    proxy = parse_proxy("http://u:p@proxy.corp:3128", "HTTP_PROXY")
    direct = Route("http", "hub.test", None, None)
    forwarded = Route("http", "hub.test", 8080, proxy)
    tunnelled = Route("https", "hub.test", None, proxy)
    url = "http://hub.test:8080/a/b?c=d"
    assert direct.target(url) == "/a/b?c=d" and direct.headers == {}
    assert forwarded.target(url) == url and forwarded.headers == proxy.headers
    assert tunnelled.target("https://hub.test/a") == "/a" and tunnelled.headers == {}
    tls = ssl.create_default_context()
    connection = tunnelled.connection(tls, 1.0)
    assert (connection.host, connection.port) == ("proxy.corp", 3128)
    assert connection._tunnel_host == "hub.test"  # type: ignore[attr-defined]
    assert connection._tunnel_headers == proxy.headers  # type: ignore[attr-defined]
    assert forwarded.connection(tls, 1.0).host == "proxy.corp"
    assert direct.connection(tls, 1.0).host == "hub.test"


# -- redirects -------------------------------------------------------------------------------


def test_a_redirect_chain_follows_up_to_max_redirects_then_refuses() -> None:
    chain = RedirectChain("https://hub.test/a")
    for hop in range(MAX_REDIRECTS):
        assert chain.follow(302, f"/hop{hop}")
    assert chain.url == f"https://hub.test/hop{MAX_REDIRECTS - 1}"
    with pytest.raises(OriginProtocolError, match=f"more than {MAX_REDIRECTS} redirects"):
        chain.follow(302, "/again")


@given(st.integers(100, 599), st.one_of(st.none(), st.just(""), st.just("/elsewhere")))
def test_only_a_redirect_status_with_a_location_is_followed(
    status: int, location: str | None
) -> None:
    chain = RedirectChain("http://hub.test/a")
    followed = chain.follow(status, location)
    assert followed is (status in (301, 302, 303, 307, 308) and bool(location))
    assert chain.url == ("http://hub.test/elsewhere" if followed else "http://hub.test/a")


@pytest.mark.parametrize(
    ("location", "words"),
    [
        ("ftp://hub.test/a", "unsupported URL scheme"),
        ("http://hub.test:99999/a", "unusable URL"),
        ("http://hub.test:abc/a", "unusable URL"),
        ("https:///nohost", "unusable URL"),
    ],
)
def test_redirects_to_unusable_urls_are_protocol_errors(location: str, words: str) -> None:
    with pytest.raises(OriginProtocolError, match=words):
        RedirectChain("http://hub.test/a").follow(302, location)


@given(st.lists(st.sampled_from(["/same", "https://cdn.test/x", "http://hub.test/y",
                                 "https://hub.test:444/z", "https://HUB.test:443/w"]),
                max_size=MAX_REDIRECTS))  # fmt: skip
def test_credentials_go_only_to_the_first_urls_origin(hops: list[str]) -> None:
    chain = RedirectChain("https://hub.test/start")
    secret = {"Authorization": "Bearer s3cret"}
    for hop in hops:
        chain.follow(307, hop)
        sent = chain.credentials(secret)
        home = chain.url.startswith(("https://hub.test/", "https://HUB.test:443/"))
        assert sent == (secret if home else {})


# -- CA bundles and the TLS context -------------------------------------------------------------


def test_the_ca_bundle_comes_from_the_option_then_the_variables_in_order(tmp_path: Path) -> None:
    given_file = tmp_path / "ca.pem"
    environ = {"CURL_CA_BUNDLE": "/c", "REQUESTS_CA_BUNDLE": "/r", "SSL_CERT_FILE": "/s"}
    assert ca_bundle(given_file, environ) == ("--ca-file", str(given_file))
    assert ca_bundle(None, environ) == ("$SSL_CERT_FILE", "/s")
    assert ca_bundle(None, {**environ, "SSL_CERT_FILE": ""}) == ("$REQUESTS_CA_BUNDLE", "/r")
    assert ca_bundle(None, {"CURL_CA_BUNDLE": "/c"}) == ("$CURL_CA_BUNDLE", "/c")
    assert ca_bundle(None, {}) is None


def test_an_unusable_ca_file_is_one_line(tmp_path: Path) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    for path, words in ((tmp_path / "missing.pem", "No such file"), (not_pem, "PEM expected")):
        with pytest.raises(UsageError, match=words) as info:
            Transport.from_environment(path, environ={})
        assert str(info.value).startswith(f"--ca-file {path}:")
        assert "\n" not in str(info.value)
    with pytest.raises(UsageError, match=r"^\$SSL_CERT_FILE /nowhere"):
        Transport.from_environment(None, environ={"SSL_CERT_FILE": "/nowhere"})


def test_verification_is_always_on() -> None:
    context = tls_context(None)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


# -- what failures become ------------------------------------------------------------------------


def verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
    error.verify_code = code
    error.verify_message = message
    return error


def test_an_untrusted_certificate_names_the_host_and_the_way_out() -> None:
    error = transport_error(
        "https://hub.test:8443/m.json", verify_error(19, "self-signed certificate in chain")
    )
    assert isinstance(error, OriginCertificateError) and not is_retryable(error)
    message = str(error)
    assert "hub.test:8443" in message and "--ca-file" in message and "\n" not in message
    assert "self-signed certificate in chain" in message


def test_a_certificate_error_wrapped_by_httpx_is_found() -> None:
    """As httpx raises it: from httpcore's error, which httpcore raised ``from None`` while
    handling trio's, which trio raised from the ssl error."""
    request = httpx.Request("GET", "https://hub.test/m.json")
    try:
        try:
            try:
                raise verify_error(20, "unable to get local issuer certificate")
            except ssl.SSLError as inner:
                raise ConnectionError("broken resource") from inner
        except ConnectionError:
            try:
                raise RuntimeError("httpcore's ConnectError") from None
            except RuntimeError as middle:
                raise httpx.ConnectError("wrapped", request=request) from middle
    except httpx.ConnectError as outer:
        error = Transport.from_environment(environ={}).error("https://hub.test/", outer)
    assert isinstance(error, OriginCertificateError)
    assert "hub.test:443" in str(error) and "the system CAs" in str(error)


def test_a_host_name_mismatch_is_not_blamed_on_the_ca() -> None:
    error = transport_error("https://hub.test/", verify_error(62, "Hostname mismatch"))
    assert isinstance(error, OriginCertificateError) and "--ca-file" not in str(error)


@pytest.mark.parametrize(
    "exc",
    [
        OSError("Tunnel connection failed: 407 Proxy Authentication Required"),
        httpx.ProxyError("407 Proxy Authentication Required"),
    ],
)
def test_a_refused_tunnel_is_the_proxys_http_status(exc: Exception) -> None:
    via = parse_proxy("http://proxy.corp:3128", "HTTPS_PROXY")
    error = transport_error("https://hub.test/a", exc, via)
    assert isinstance(error, OriginHTTPError) and error.status == 407
    assert "proxy http://proxy.corp:3128 ($HTTPS_PROXY)" in str(error)
    assert "USER:PASSWORD" in str(error) and not is_retryable(error)


def test_connection_failures_name_the_proxy_they_went_through() -> None:
    via = parse_proxy("http://proxy.corp:3128", "HTTP_PROXY")
    refusal = ConnectionRefusedError(111, "Connection refused")
    refused = transport_error("http://hub.test/a", refusal, via)
    assert isinstance(refused, OriginUnreachable)
    assert "Connection refused" in str(refused) and "proxy.corp:3128" in str(refused)
    assert isinstance(transport_error("http://hub.test/", TimeoutError()), OriginUnreachable)


def test_a_407_answer_says_where_proxy_credentials_go() -> None:
    assert "USER:PASSWORD" in str(status_error("http://hub.test/a", 407))
    assert str(status_error("http://hub.test/a", 404)) == "http://hub.test/a: HTTP 404"


@given(st.text(max_size=30))
def test_any_exception_text_maps_to_a_source_error_of_one_line(text: str) -> None:
    assume("\n" not in text and "\r" not in text)
    for exc in (OSError(text), ValueError(text), httpx.ProxyError(text), RuntimeError(text)):
        error = transport_error("http://hub.test/", exc)
        assert "\n" not in str(error)
