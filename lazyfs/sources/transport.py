"""The one transport policy every request obeys, whichever HTTP client sends it.

Manifests and hub API calls go through httpx (``fetch``), block bodies through http.client
(``rangeget``, the fast body path). Both take everything that decides how a request travels
from here, so they cannot disagree:

- the route (``ProxySettings``): straight to the origin, or through the http:// proxy that
  HTTPS_PROXY / HTTP_PROXY / ALL_PROXY name, unless NO_PROXY lists the host; read the way
  curl and huggingface_hub read them, once per process, by one pure function
  (``select_proxy``). https goes through a CONNECT tunnel, plain http as an absolute-form
  request; credentials in the proxy URL become Proxy-Authorization;
- TLS (``tls_context``): one ``ssl.SSLContext`` for both clients, trusting the system CAs,
  or the file that ``--ca-file``, SSL_CERT_FILE, REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE names;
  certificate and host name are always verified;
- timeouts (``Timeouts``), redirects (``RedirectChain``) and where credentials may go
  (``same_origin``);
- what a failure means (``transport_error``, ``status_error``): the SourceError tree, with an
  untrusted certificate as one line that names the host and the way out (--ca-file).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import ipaddress
import os
import re
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import httpx

from lazyfs.core.attempts import RetryPolicy
from lazyfs.errors import (
    OriginCertificateError,
    OriginHTTPError,
    OriginProtocolError,
    OriginUnreachable,
    SourceError,
    UsageError,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Where a CA bundle may be named, after --ca-file, in this order: OpenSSL's own variable,
# then the ones requests (huggingface_hub) and curl read.
CA_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
# OpenSSL's verify codes that mean "no CA we trust signed this": a CA file is the way out.
_UNTRUSTED_ISSUER = frozenset({2, 18, 19, 20, 21})
_TUNNEL_REFUSED = re.compile(r"Tunnel connection failed: (\d{3})\s*(.*)")
_PROXY_STATUS = re.compile(r"(\d{3})\s*(.*)")
_PROXY_CREDENTIALS = "credentials go in the proxy URL: http://USER:PASSWORD@HOST:PORT"


# -- timeouts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timeouts:
    """Every request's time limits, for both clients."""

    connect: float = 5.0
    # Between two bytes of an answer.
    read: float = 20.0
    # A body that trickles in under the read timeout must still end some time.
    request: float = 60.0

    @classmethod
    def of(cls, policy: RetryPolicy) -> Timeouts:
        """A mount's limits: its connect and stall timeouts, and its deadline for the whole."""
        return cls(policy.connect_timeout, policy.read_timeout, policy.deadline)

    def for_httpx(self) -> httpx.Timeout:
        return httpx.Timeout(
            connect=self.connect, read=self.read, write=self.read, pool=self.request
        )


# -- proxies -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proxy:
    """An http:// proxy: CONNECT tunnels for https, absolute-form requests for http."""

    host: str
    port: int
    # The environment variable it came from, for messages.
    variable: str
    # The Proxy-Authorization header from the URL's credentials; never shown.
    authorization: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The proxy's URL without its credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Proxy-Authorization": self.authorization} if self.authorization else {}

    def __str__(self) -> str:
        return f"proxy {self.url} (${self.variable})"


@dataclass(frozen=True)
class NoProxyEntry:
    """One NO_PROXY entry: ``*``, a host or domain, an IP address or CIDR network, each with
    an optional ``:port``."""

    everything: bool = False
    domain: str | None = None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    port: int | None = None

    def matches(self, host: str, address: IPAddress | None, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.everything:
            return True
        if address is not None:
            # As curl: an address is compared as an address, never as a name.
            return self.network is not None and address in self.network
        if self.domain is None:
            return False
        return host == self.domain or host.endswith("." + self.domain)


def parse_no_proxy(value: str) -> tuple[NoProxyEntry, ...]:
    """NO_PROXY as curl reads it: entries separated by commas or blanks; ``*`` is every host;
    ``example.com`` (or ``.example.com``) is that host and every host under it, not
    ``notexample.com``; ``10.0.0.0/8`` and ``::1`` match addresses only. An entry may end in
    ``:PORT`` (``[::1]:8080`` for IPv6), as huggingface_hub allows; then it holds for that
    port alone. An entry that is none of these matches nothing."""
    entries = []
    for token in re.split(r"[\s,]+", value):
        entry = _no_proxy_entry(token)
        if entry is not None:
            entries.append(entry)
    return tuple(entries)


def _no_proxy_entry(token: str) -> NoProxyEntry | None:
    if not token:
        return None
    if token == "*":
        return NoProxyEntry(everything=True)
    host, port_text = token, ""
    if token.startswith("["):
        host, _, rest = token[1:].partition("]")
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:]
    elif token.count(":") == 1:
        host, _, port_text = token.partition(":")
    port = None
    if port_text:
        if not (port_text.isascii() and port_text.isdigit()):
            return None
        port = int(port_text)
    try:
        return NoProxyEntry(network=ipaddress.ip_network(host, strict=False), port=port)
    except ValueError:
        pass
    domain = host.strip(".").lower()
    return NoProxyEntry(domain=domain, port=port) if domain else None


def parse_proxy(value: str, variable: str) -> Proxy:
    """A proxy URL as curl takes it: ``http://[USER[:PASSWORD]@]HOST[:PORT]``, the scheme
    optional; the port defaults to 80 (as huggingface_hub's clients do)."""
    text = value.strip()
    if "://" not in text:
        text = "http://" + text
    shown = f"${variable}={_without_credentials(text)}"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise UsageError(f"{shown} is not a proxy URL (http://HOST:PORT)") from None
    if parts.scheme.lower() != "http":
        raise UsageError(
            f"{shown}: only http:// proxies are supported (https:// URLs go through them "
            f"with CONNECT), not {parts.scheme}://"
        )
    if not parts.hostname:
        raise UsageError(f"{shown} names no proxy host (http://HOST:PORT)")
    authorization = None
    if parts.username or parts.password:
        credentials = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(credentials.encode()).decode("ascii")
    return Proxy(parts.hostname, port or DEFAULT_PORTS["http"], variable, authorization)


def _without_credentials(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    return f"{scheme}{sep}{netloc.rpartition('@')[2]}{slash}{path}"


def _variable(environ: Mapping[str, str], name: str) -> tuple[str, str] | None:
    """The lowercase variable if set (even empty, which means "none"), else the uppercase."""
    for candidate in (name.lower(), name.upper()):
        if candidate in environ:
            return candidate, environ[candidate]
    return None


@dataclass(frozen=True)
class ProxySettings:
    """Which proxy, if any, each URL goes through: decided from the environment once."""

    http: Proxy | None = None
    https: Proxy | None = None
    no_proxy: tuple[NoProxyEntry, ...] = ()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> ProxySettings:
        """Read the proxy variables; a malformed one that would be used is a UsageError."""
        chosen: dict[str, Proxy | None] = {}
        for scheme in ("http", "https"):
            found = _variable(environ, f"{scheme}_proxy") or _variable(environ, "all_proxy")
            chosen[scheme] = parse_proxy(found[1], found[0]) if found and found[1] else None
        bypass = _variable(environ, "no_proxy")
        return cls(chosen["http"], chosen["https"], parse_no_proxy(bypass[1] if bypass else ""))

    def proxy_for(self, url: str) -> Proxy | None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        return self.proxy_for_host(scheme, parts.hostname or "", parts.port)

    def proxy_for_host(self, scheme: str, host: str, port: int | None) -> Proxy | None:
        proxy = self.https if scheme == "https" else self.http if scheme == "http" else None
        if proxy is None:
            return None
        name = host.lower().rstrip(".")
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            address = None
        effective_port = port or DEFAULT_PORTS[scheme]
        if any(entry.matches(name, address, effective_port) for entry in self.no_proxy):
            return None
        return proxy


def select_proxy(url: str, environ: Mapping[str, str]) -> Proxy | None:
    """The proxy ``url`` goes through under ``environ``, or None for a direct connection."""
    return ProxySettings.from_environ(environ).proxy_for(url)


# -- TLS ---------------------------------------------------------------------------------------


def ca_bundle(ca_file: Path | None, environ: Mapping[str, str]) -> tuple[str, str] | None:
    """(where it was named, path) of the CA bundle to trust instead of the system's, if any."""
    if ca_file is not None:
        return "--ca-file", str(ca_file)
    for variable in CA_VARIABLES:
        if environ.get(variable):
            return f"${variable}", environ[variable]
    return None


def tls_context(bundle: tuple[str, str] | None) -> ssl.SSLContext:
    """The one SSLContext for every https connection: certificates and host names verified
    against the system CAs, or against ``bundle`` alone (as curl's --cacert)."""
    try:
        if bundle is None:
            context = ssl.create_default_context()
        elif os.path.isdir(bundle[1]):
            context = ssl.create_default_context(capath=bundle[1])
        else:
            context = ssl.create_default_context(cafile=bundle[1])
    except OSError as exc:
        assert bundle is not None
        where, path = bundle
        if isinstance(exc, ssl.SSLError):
            raise UsageError(f"{where} {path}: no CA certificate in it (PEM expected)") from None
        raise UsageError(f"{where} {path}: {exc.strerror or exc}") from None
    # What http.client itself offers; httpx sets the same on a context it is given.
    context.set_alpn_protocols(["http/1.1"])
    return context


# -- redirects and credentials ---------------------------------------------------------------


def same_origin(url: str, other: str) -> bool:
    """Whether two URLs share scheme, host and port: where credentials may go along."""
    try:
        first, second = urlsplit(url), urlsplit(other)
        return (first.scheme, first.hostname, first.port or DEFAULT_PORTS.get(first.scheme)) == (
            second.scheme,
            second.hostname,
            second.port or DEFAULT_PORTS.get(second.scheme),
        )
    except ValueError:  # a bad port: no credentials for it
        return False


class RedirectChain:
    """One request's way through redirects: at most MAX_REDIRECTS of them, only to http(s)
    URLs, and the caller's credentials only while on the first URL's origin."""

    def __init__(self, url: str) -> None:
        self.first = url
        self.url = url
        self.hops = 0

    def follow(self, status: int, location: str | None) -> bool:
        """Whether an answer is a redirect; if so ``url`` is where the request goes next."""
        if status not in REDIRECT_STATUSES or not location:
            return False
        if self.hops == MAX_REDIRECTS:
            raise OriginProtocolError(f"{self.first}: more than {MAX_REDIRECTS} redirects")
        target = urljoin(self.url, location.strip())
        try:
            parts = urlsplit(target)
            parts.port  # noqa: B018 - a bad port raises here, not in the client
        except ValueError as exc:
            raise OriginProtocolError(f"{target}: unusable URL ({exc})") from None
        if parts.scheme.lower() not in DEFAULT_PORTS:
            raise OriginProtocolError(f"{target}: unsupported URL scheme")
        if not parts.hostname:
            raise OriginProtocolError(f"{target}: unusable URL (no host)")
        self.url = target
        self.hops += 1
        return True

    def credentials(self, headers: Mapping[str, str] | None) -> dict[str, str]:
        """``headers`` if the current URL is on the first one's origin, else nothing."""
        return dict(headers or {}) if same_origin(self.url, self.first) else {}


# -- errors ------------------------------------------------------------------------------------


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP-date."""
    value = (value or "").strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def status_error(url: str, status: int, retry_after: str | None = None) -> OriginHTTPError:
    """An answer with a status that is not the one asked for."""
    message = f"{url}: HTTP {status}"
    if status == 407:
        message += f" from the proxy ({_PROXY_CREDENTIALS})"
    return OriginHTTPError(message, status, parse_retry_after(retry_after))


def transport_error(
    url: str, exc: BaseException, via: Proxy | None = None, trusted: str = "the system CAs"
) -> SourceError:
    """What a failure of either client to get an answer from ``url`` means. ``via`` is the
    proxy the request went through, ``trusted`` the CAs its certificate was checked against."""
    certificate = _certificate_failure(exc)
    if certificate is not None:
        return _certificate_error(url, certificate, trusted)
    refused = _proxy_refusal(exc)
    if refused is not None:
        status, reason = refused
        message = f"{url}: {via or 'the proxy'} refused to connect to it: HTTP {status} {reason}"
        if status == 407:
            message = f"{message.rstrip()} ({_PROXY_CREDENTIALS})"
        return OriginHTTPError(message.rstrip(), status)
    through = f" (through {via})" if via is not None else ""
    if isinstance(exc, httpx.TimeoutException):
        return OriginUnreachable(f"{url}: timed out ({type(exc).__name__}){through}")
    if isinstance(exc, TimeoutError):
        return OriginUnreachable(f"{url}: timed out{through}")
    if isinstance(exc, ssl.SSLError):
        return OriginUnreachable(f"{url}: TLS failed ({exc.reason or exc}){through}")
    if isinstance(exc, httpx.TransportError | OSError):
        reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
        return OriginUnreachable(f"{url}: {reason or type(exc).__name__}{through}")
    if isinstance(exc, httpx.InvalidURL | ValueError | UnicodeError):
        return OriginProtocolError(f"{url}: unusable URL ({exc})")
    return OriginProtocolError(f"{url}: {type(exc).__name__}: {exc}")


def _certificate_failure(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure ``exc`` was raised from or while handling: httpx,
    httpcore and trio each re-raise the ssl error as their own, httpcore ``from None`` (so it
    is only the context there)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _certificate_error(
    url: str, exc: ssl.SSLCertVerificationError, trusted: str
) -> OriginCertificateError:
    parts = urlsplit(url)
    host = parts.hostname or url
    where = f"{host}:{parts.port or DEFAULT_PORTS.get(parts.scheme, 443)}"
    reason = exc.verify_message or exc.reason or str(exc)
    if exc.verify_code in _UNTRUSTED_ISSUER:
        return OriginCertificateError(
            f"the TLS certificate of {where} is not signed by a CA in {trusted} ({reason}); "
            "if a private CA signed it, pass its certificate with --ca-file FILE"
        )
    return OriginCertificateError(f"the TLS certificate of {where} failed verification ({reason})")


def _proxy_refusal(exc: BaseException) -> tuple[int, str] | None:
    """(status, reason) when a proxy refused a CONNECT tunnel."""
    if isinstance(exc, httpx.ProxyError):
        match = _PROXY_STATUS.fullmatch(str(exc).strip())
    elif isinstance(exc, OSError) and not isinstance(exc, http.client.HTTPException):
        match = _TUNNEL_REFUSED.fullmatch(str(exc).strip())
    else:
        return None
    return (int(match[1]), match[2]) if match else None


# -- the policy, once per process ------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """How http.client reaches one (scheme, host, port): directly, through a CONNECT tunnel,
    or by handing absolute-form requests to a proxy."""

    scheme: str
    host: str
    port: int | None
    proxy: Proxy | None

    @property
    def forwarded(self) -> bool:
        """Plain http through a proxy: the proxy gets each request itself, whole URL and all."""
        return self.proxy is not None and self.scheme == "http"

    @property
    def headers(self) -> dict[str, str]:
        """What every request on this route carries: the proxy's credentials when the proxy
        gets the request itself (a tunnel sends them once, with its CONNECT)."""
        return self.proxy.headers if self.proxy is not None and self.forwarded else {}

    def connection(self, tls: ssl.SSLContext, timeout: float) -> http.client.HTTPConnection:
        if self.proxy is None:
            if self.scheme == "https":
                return http.client.HTTPSConnection(
                    self.host, self.port, timeout=timeout, context=tls
                )
            return http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        if self.scheme == "https":
            tunnel = http.client.HTTPSConnection(
                self.proxy.host, self.proxy.port, timeout=timeout, context=tls
            )
            tunnel.set_tunnel(self.host, self.port, headers=self.proxy.headers)
            return tunnel
        return http.client.HTTPConnection(self.proxy.host, self.proxy.port, timeout=timeout)

    def target(self, url: str) -> str:
        """The request target for ``url`` on this route."""
        parts = urlsplit(url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if self.forwarded:
            return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{path}"
        return path


class Transport:
    """TLS and proxies for every request of this process; build it once and hand it to both
    clients (``open_client`` for httpx, ``route``/``tls`` for http.client)."""

    def __init__(self, proxies: ProxySettings, tls: ssl.SSLContext, trusted: str) -> None:
        self.proxies = proxies
        self.tls = tls
        # Which CAs certificates are checked against, for messages.
        self.trusted = trusted

    @classmethod
    def from_environment(
        cls, ca_file: Path | None = None, environ: Mapping[str, str] | None = None
    ) -> Transport:
        environ = os.environ if environ is None else environ
        bundle = ca_bundle(ca_file, environ)
        trusted = "the system CAs" if bundle is None else f"{bundle[0]} {bundle[1]}"
        return cls(ProxySettings.from_environ(environ), tls_context(bundle), trusted)

    def proxy_for(self, url: str) -> Proxy | None:
        return self.proxies.proxy_for(url)

    def route(self, scheme: str, host: str, port: int | None) -> Route:
        return Route(scheme, host, port, self.proxies.proxy_for_host(scheme, host, port))

    def error(self, url: str, exc: BaseException) -> SourceError:
        """``transport_error`` for a failure of httpx, which knows the URL that failed (a
        redirect's target, perhaps) better than the caller."""
        failed = url
        if isinstance(exc, httpx.RequestError):
            with contextlib.suppress(RuntimeError):  # raised without a request
                failed = str(exc.request.url)
        try:
            via = self.proxy_for(failed)
        except ValueError:
            via = None
        return transport_error(failed, exc, via, self.trusted)

    def open_client(self, timeouts: Timeouts, max_connections: int = 32) -> httpx.AsyncClient:
        """An httpx client on this policy: its own environment handling (trust_env) and
        redirects are off, the callers follow RedirectChain."""
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=16)
        return httpx.AsyncClient(
            transport=_RoutedTransport(self, limits),
            timeout=timeouts.for_httpx(),
            trust_env=False,
            follow_redirects=False,
        )


class _RoutedTransport(httpx.AsyncBaseTransport):
    """httpx's transport, one per route: ``ProxySettings`` picks it for each request."""

    def __init__(self, policy: Transport, limits: httpx.Limits) -> None:
        self._policy = policy
        self._limits = limits
        self._routes: dict[Proxy | None, httpx.AsyncHTTPTransport] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        proxy = self._policy.proxies.proxy_for_host(url.scheme, url.host, url.port)
        transport = self._routes.get(proxy)
        if transport is None:
            transport = httpx.AsyncHTTPTransport(
                verify=self._policy.tls,
                limits=self._limits,
                trust_env=False,
                proxy=None if proxy is None else httpx.Proxy(proxy.url, headers=proxy.headers),
            )
            self._routes[proxy] = transport
        return await transport.handle_async_request(request)

    async def aclose(self) -> None:
        routes, self._routes = list(self._routes.values()), {}
        for transport in routes:
            await transport.aclose()
