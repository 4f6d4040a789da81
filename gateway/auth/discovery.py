"""What the built-in issuer supports, published as RFC 8414 authorization server
metadata (also served as /.well-known/openid-configuration) so clients configure
themselves from the issuer URL alone."""

from __future__ import annotations

from typing import Any

from gateway.auth.keys import ALGORITHM
from gateway.auth.scopes import SCOPES

#: How clients may authenticate at the token, revocation and introspection endpoints
#: ("none": public clients, which hold no secret).
CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]


def server_metadata(issuer: str) -> dict[str, Any]:
    """RFC 8414 metadata of the issuer at `issuer`."""
    auth_methods = CLIENT_AUTH_METHODS
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "jwks_uri": f"{issuer}/jwks",
        "revocation_endpoint": f"{issuer}/revoke",
        "introspection_endpoint": f"{issuer}/introspect",
        "grant_types_supported": [
            "client_credentials",
            "password",
            "refresh_token",
            "authorization_code",
        ],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "introspection_endpoint_auth_methods_supported": auth_methods,
        "scopes_supported": list(SCOPES),
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [ALGORITHM],
        "access_token_signing_alg_values_supported": [ALGORITHM],
        # the password grant here is multi-factor: it also needs `totp`
        "password_grant_requires": ["totp"],
    }
