"""The gateway's own configuration: OAuth, limits, cache, request size, TLS."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.auth.verifier import ASYMMETRIC_ALGORITHMS
from gateway.intrusion import IntrusionPolicy, read_intrusion_policy
from llmos.config import EnvReader, HostPort
from llmos.redaction import RedactionPolicy, read_redaction_policy

DEFAULT_HTTP_PORT = 50050


@dataclass(frozen=True)
class GatewayOptions:
    """What the gateway reads beyond the common settings (all `LLMOS_*`)."""

    http_listen: HostPort  # AUTH_HTTP_ADDR: the OAuth endpoints
    issuer: str  # AUTH_ISSUER: empty -> this gateway's own URL
    builtin_issuer: bool  # AUTH_BUILTIN: host the authorization server here
    #: AUTH_ISSUER_MAY_GRANT_SYSTEM: an external issuer's tokens may name the system tenant
    external_system_tenant: bool
    #: AUTH_TOKEN_TYPES: access-token `typ` headers accepted besides `at+jwt`
    extra_token_types: tuple[str, ...]
    jwks_url: str  # AUTH_JWKS_URL: empty -> from the issuer's metadata
    audience: str
    algorithms: tuple[str, ...]
    leeway_s: float
    tenant_claim: str
    access_ttl_s: int
    refresh_ttl_s: int
    max_login_failures: int
    failure_window_s: int
    lockout_s: int
    default_rpm: int  # limits of a new tenant, and of principals with no record
    default_tpm: int
    cache_ttl_s: int
    max_request_bytes: int
    #: models one tenant may have deployed (each holds a worker's memory)
    max_deployments: int
    tls_cert: Path | None
    tls_key: Path | None
    tls_ca: Path | None  # trusted to verify a TLS issuer (JWKS); empty: system CAs
    #: whether prompts and outputs go into audit records (redacted), as the audit service
    #: is told too: content the policy drops never leaves the gateway
    audit_policy: RedactionPolicy
    #: intrusion detection, the firewall at the door and the sign-in throttle
    intrusion: IntrusionPolicy

    @property
    def trust_system_tenant(self) -> bool:
        """Whether tokens naming the `system` tenant are believed: the built-in issuer
        grants it only to the operators' own identities; an external IdP's tenant claim
        may be user-editable, so only if the operator said so."""
        return self.builtin_issuer or self.external_system_tenant

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def http_url(self, advertise_host: str, http_port: int) -> str:
        """This gateway's own HTTP(S) address: the OAuth endpoints, `/v1`."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{advertise_host}:{http_port}"

    def issuer_url(self, advertise_host: str, http_port: int) -> str:
        """The `iss` of tokens: configured, or this gateway's own HTTP address."""
        if self.issuer:
            return self.issuer.rstrip("/")
        return self.http_url(advertise_host, http_port)


def read_gateway_options(env: EnvReader) -> GatewayOptions:
    """Read and check the gateway's variables (errors are collected in `env`)."""
    issuer = env.url(
        "AUTH_ISSUER",
        "",
        ("https", "http"),
        doc="the trusted token issuer (another IdP's URL)",
        default_shown="the gateway's own URL",
    )
    builtin = (
        env.choice(
            "AUTH_BUILTIN",
            "off" if issuer else "on",
            ("on", "off"),
            doc="host the built-in authorization server",
            default_shown="`on` unless an issuer is set",
        )
        == "on"
    )
    algorithms = tuple(
        a.strip()
        for a in env.text(
            "AUTH_ALGORITHMS",
            "RS256,ES256,EdDSA",
            doc="accepted token signing algorithms (asymmetric only)",
        ).split(",")
        if a.strip()
    )
    refused = [a for a in algorithms if a not in ASYMMETRIC_ALGORITHMS]
    if refused or not algorithms:
        env.errors.append(
            f"LLMOS_AUTH_ALGORITHMS: {', '.join(refused) or 'empty'} not allowed; choose from "
            f"{', '.join(ASYMMETRIC_ALGORITHMS)} (asymmetric only)"
        )
    cert = env.text("TLS_CERT", "", doc="serve TLS with this certificate (PEM file)")
    key = env.text("TLS_KEY", "", doc="the certificate's private key (PEM file)")
    if bool(cert) != bool(key):
        env.errors.append("LLMOS_TLS_CERT and LLMOS_TLS_KEY must be given together")
    ca = env.text(
        "TLS_CA",
        "",
        doc="a CA to trust for an https issuer",
        default_shown="the system's CAs",
    )
    return GatewayOptions(
        http_listen=env.address(
            "AUTH_HTTP_ADDR",
            HostPort("127.0.0.1", DEFAULT_HTTP_PORT),
            doc="where the HTTP(S) endpoints listen: OAuth and the OpenAI-compatible API",
        ),
        issuer=issuer,
        builtin_issuer=builtin,
        external_system_tenant=env.choice(
            "AUTH_ISSUER_MAY_GRANT_SYSTEM",
            "off",
            ("on", "off"),
            doc="an external issuer's tokens may name the `system` tenant (system admins)",
        )
        == "on",
        extra_token_types=tuple(
            word.strip().lower()
            for word in env.text(
                "AUTH_TOKEN_TYPES",
                "",
                doc="access-token `typ` headers accepted besides RFC 9068's `at+jwt`, e.g. "
                "`JWT` for Keycloak or Entra ID, `none` for no header (Okta); ID tokens "
                "(with `nonce`, `at_hash` or `c_hash`) are refused whatever their type",
                default_shown="only `at+jwt`",
            ).split(",")
            if word.strip()
        ),
        jwks_url=env.url(
            "AUTH_JWKS_URL",
            "",
            ("https", "http"),
            doc="where the issuer's signing keys are",
            default_shown="from the issuer's metadata",
        ),
        audience=env.text("AUTH_AUDIENCE", "llmos", doc="the `aud` tokens must carry"),
        algorithms=algorithms,
        leeway_s=env.number(
            "AUTH_LEEWAY_S",
            30.0,
            minimum=0.0,
            maximum=300.0,
            doc="clock leeway for `exp` and `nbf`, seconds",
        ),
        tenant_claim=env.text("AUTH_TENANT_CLAIM", "tenant", doc="the claim naming the tenant"),
        access_ttl_s=env.integer(
            "AUTH_ACCESS_TTL_S",
            900,
            minimum=30,
            maximum=86_400,
            doc="lifetime of an access token, seconds",
        ),
        refresh_ttl_s=env.integer(
            "AUTH_REFRESH_TTL_S",
            30 * 86_400,
            minimum=60,
            maximum=365 * 86_400,
            doc="lifetime of a refresh token, seconds",
            default_shown="30 days",
        ),
        max_login_failures=env.integer(
            "LOGIN_MAX_FAILURES",
            5,
            minimum=1,
            maximum=1000,
            doc="failed sign-ins that lock an account ...",
        ),
        failure_window_s=env.integer(
            "LOGIN_FAILURE_WINDOW_S",
            900,
            minimum=1,
            maximum=86_400,
            doc="... within this many seconds",
        ),
        lockout_s=env.integer(
            "LOGIN_LOCKOUT_S",
            300,
            minimum=1,
            maximum=86_400,
            doc="seconds a locked account stays locked",
        ),
        default_rpm=env.integer(
            "DEFAULT_TENANT_RPM",
            600,
            minimum=0,
            maximum=10**9,
            doc="requests per minute of a new tenant (0: unlimited)",
        ),
        default_tpm=env.integer(
            "DEFAULT_TENANT_TPM",
            200_000,
            minimum=0,
            maximum=10**12,
            doc="model tokens per minute of a new tenant (0: unlimited)",
        ),
        cache_ttl_s=env.integer(
            "CACHE_TTL_S",
            600,
            minimum=0,
            maximum=7 * 86_400,
            doc="lifetime of a cached response, seconds (0: no cache)",
        ),
        max_deployments=env.integer(
            "TENANT_MAX_DEPLOYMENTS",
            10,
            minimum=1,
            maximum=100_000,
            doc="models one tenant may have deployed before DeployModel is RESOURCE_EXHAUSTED",
        ),
        max_request_bytes=env.integer(
            "MAX_REQUEST_BYTES",
            4 * 1024 * 1024,
            minimum=1024,
            maximum=64 * 1024 * 1024,
            doc="larger requests are refused (RESOURCE_EXHAUSTED)",
            default_shown="4 MiB",
        ),
        tls_cert=Path(cert).resolve() if cert else None,
        tls_key=Path(key).resolve() if key else None,
        tls_ca=Path(ca).resolve() if ca else None,
        audit_policy=read_redaction_policy(env),
        intrusion=read_intrusion_policy(env),
    )
