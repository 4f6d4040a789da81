"""The `llmos` command line: a client of the gateway. It imports client-side code only
(stubs, the OAuth client, channels), never `gateway`, `services` or `tools`."""
