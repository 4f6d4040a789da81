"""The gateway vouches for each internal call it makes for a caller: a tenant assertion
(`llmos.assertions`) naming the tenant the call acts on, who asked, and the one service
it is for. Internal services act on that tenant only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf.message import Message

from gateway.auth.principal import call_record
from llmos.assertions import METADATA_KEY, AssertionSigner
from llmos.callers import request_tenants
from llmos.links import Vouch
from llmos.log import request_id_var
from llmos.rpc import REQUEST_ID_KEY


def vouch_with(signer: AssertionSigner) -> Vouch:
    """Metadata for a call to `service`: the request id, and an assertion when the call
    acts for an authenticated principal: for the tenant the relay rule put in the
    request (where the receiver reads it: `llmos.callers.request_tenants`), or the
    principal's own for a request stream, which the relay stamps the same way."""

    def metadata(service: str, request: Any) -> Sequence[tuple[str, str]]:
        rid = request_id_var.get() or ""
        sent = [(REQUEST_ID_KEY, rid)] if rid else []
        principal = call_record().principal
        if principal is None:  # the gateway's own business: in its own name
            return sent
        named = request_tenants(request) if isinstance(request, Message) else []
        token = signer.sign(
            tenant=named[0] if named else principal.tenant,
            principal=principal.subject,
            principal_tenant=principal.tenant,
            scopes=principal.scopes,
            request_id=rid,
            audience=service,
        )
        return [*sent, (METADATA_KEY, token)]

    return metadata
