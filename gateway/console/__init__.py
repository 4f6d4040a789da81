"""The web console at /console: sign-in through the gateway's own authorization server,
sessions held by the gateway, and pages over the public API."""
