"""Everything the gateway builds before it serves: identities and API keys, the built-in
issuer, the HTTP listener (bound here, so the issuer knows its URL; served once the
gRPC API it shares code with exists), the token verifier, rate limits, audit, the
response cache."""

from __future__ import annotations

import logging
import socket
import ssl
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from gateway.auth.api_keys import ApiKeyStore, ApiKeyVerifier
from gateway.auth.bootstrap import bootstrap
from gateway.auth.http import OAuthHttp, bind_listener
from gateway.auth.identities import IdentityStore, Limits
from gateway.auth.keys import Keyring
from gateway.auth.server import LLMOSAuthorizationServer, ServerPolicy
from gateway.auth.verifier import TokenVerifier, VerifierSettings
from gateway.cache import ResponseCache
from gateway.firewall import Firewall
from gateway.guard import GatewayGuard
from gateway.intrusion import IntrusionDetector
from gateway.limits import Admission
from gateway.options import GatewayOptions
from gateway.vouching import vouch_with
from llmos.assertions import AssertionSigner
from llmos.hotstate import sync_redis_client
from llmos.runner import ServiceContext

log = logging.getLogger("llmos.gateway")

#: Retired signing keys stay published this much longer than the longest access token.
KEY_RETENTION_MARGIN_S = 300


@dataclass
class GatewayRuntime:
    options: GatewayOptions
    store: IdentityStore
    keyring: Keyring | None
    guard: GatewayGuard
    firewall: Firewall
    cache: ResponseCache
    issuer: str
    credentials_path: Path | None
    api_keys: ApiKeyStore
    detector: IntrusionDetector
    #: the HTTP endpoints' socket, bound; `oauth`: the built-in issuer's routes, if hosted
    http_listener: socket.socket
    http_url: str
    oauth: OAuthHttp | None


def server_tls(options: GatewayOptions) -> ssl.SSLContext | None:
    """TLS for the HTTP endpoints, from the configured certificate."""
    if options.tls_cert is None or options.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(options.tls_cert, options.tls_key)
    return context


def client_tls(options: GatewayOptions) -> ssl.SSLContext | None:
    """How to verify an https issuer: the configured CA, else the system's."""
    if options.tls_ca is None:
        return None
    return ssl.create_default_context(cafile=str(options.tls_ca))


async def prepare(ctx: ServiceContext, stack: AsyncExitStack) -> GatewayRuntime:
    """Build the gateway's runtime; cleanup goes on `stack`."""
    options: GatewayOptions = ctx.options
    settings = ctx.settings
    default_limits = Limits(options.default_rpm, options.default_tpm)
    sync_redis = sync_redis_client(
        settings.redis_url, settings.redis_sentinels, settings.redis_master
    )
    stack.callback(sync_redis.close)
    store = IdentityStore(
        sync_redis, settings.data_dir, default_limits, options.access_ttl_s + options.leeway_s
    )

    audit = ctx.audit
    firewall = Firewall(ctx.redis, options.intrusion.allowlist, options.intrusion.proxies)
    detector = IntrusionDetector(
        ctx.redis,
        firewall,
        options.intrusion,
        ctx.events,
        audit,
        gateway=ctx.instance.instance_id,
    )
    signer = AssertionSigner(settings.secrets_dir, issuer=str(ctx.identity.peer))
    ctx.links.vouch = vouch_with(signer)

    listener = bind_listener(options.http_listen.host, options.http_listen.port)
    stack.callback(listener.close)
    port = int(listener.getsockname()[1])
    http_url = options.http_url(settings.advertise_host, port)
    issuer = options.issuer_url(settings.advertise_host, port)
    keyring: Keyring | None = None
    oauth: OAuthHttp | None = None
    credentials: Path | None = None
    if options.builtin_issuer:
        keyring = Keyring(
            settings.data_dir / "gateway" / "keys",
            retention_s=options.access_ttl_s + options.leeway_s + KEY_RETENTION_MARGIN_S,
        )
        policy = ServerPolicy(
            issuer=issuer,
            audience=options.audience,
            access_ttl_s=options.access_ttl_s,
            refresh_ttl_s=options.refresh_ttl_s,
            max_login_failures=options.max_login_failures,
            failure_window_s=options.failure_window_s,
            lockout_s=options.lockout_s,
        )
        oauth = OAuthHttp(LLMOSAuthorizationServer(store, keyring, policy), audit, detector)
        credentials = bootstrap(store, settings.data_dir, issuer)
        log.info("OAuth issuer ready", extra={"issuer": issuer, "credentials": str(credentials)})

    verifier = TokenVerifier(
        VerifierSettings(
            issuer=issuer,
            audience=options.audience,
            algorithms=options.algorithms,
            leeway_s=options.leeway_s,
            tenant_claim=options.tenant_claim,
            trust_system_tenant=options.trust_system_tenant,
            extra_token_types=options.extra_token_types,
            jwks_url=options.jwks_url,
        ),
        client_tls(options),
    )
    stack.push_async_callback(verifier.close)
    guard = GatewayGuard(
        verifier,
        Admission(ctx.redis, default_limits, firewall),
        audit,
        f"{issuer}/token",
        options.audit_policy,
        detector,
        ApiKeyVerifier(ctx.redis),
    )
    return GatewayRuntime(
        options=options,
        store=store,
        keyring=keyring,
        guard=guard,
        firewall=firewall,
        cache=ResponseCache(ctx.redis, options.cache_ttl_s),
        issuer=issuer,
        credentials_path=credentials,
        api_keys=ApiKeyStore(sync_redis),
        detector=detector,
        http_listener=listener,
        http_url=http_url,
        oauth=oauth,
    )
