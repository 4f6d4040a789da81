"""OAuth 2.0 for the gateway: the built-in authorization server and the resource server."""
