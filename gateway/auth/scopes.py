"""Scopes, and which one each public RPC needs: the authorization policy in one table."""

from __future__ import annotations

INFERENCE = "inference"
MODELS_READ = "models:read"
MODELS_WRITE = "models:write"
TRAINING = "training"
DATASETS = "datasets"
AUDIT_READ = "audit:read"
EVENTS_READ = "events:read"
CLUSTER_READ = "cluster:read"
ADMIN = "admin"

#: Every scope the built-in authorization server issues, with what it allows.
SCOPES: dict[str, str] = {
    INFERENCE: "generate, chat, embed, classify, entities, translation and the assistant",
    MODELS_READ: "list models",
    MODELS_WRITE: "register, deploy and delete models",
    TRAINING: "submit and manage training jobs",
    DATASETS: "upload and manage datasets and knowledge bases",
    AUDIT_READ: "query the tenant's audit records",
    EVENTS_READ: "subscribe to the tenant's events",
    CLUSTER_READ: "see system and cluster status",
    ADMIN: "manage clients, users, tenants, quotas and signing keys",
}

#: The tenant whose admins manage every tenant; system events belong to it.
SYSTEM_TENANT = "system"

_GATEWAY = "/llmos.v1.Gateway/"
_APPS = "/llmos.v1.Applications/"
_ADMIN = "/llmos.v1.Admin/"
_STORAGE = "/llmos.v1.Storage/"
_AUDIT = "/llmos.v1.Audit/"

#: Full RPC name -> the scope a token must carry to call it.
RPC_SCOPES: dict[str, str] = {
    _GATEWAY + "GetSystemStatus": CLUSTER_READ,
    _GATEWAY + "GetClusterStatus": CLUSTER_READ,
    _GATEWAY + "SubscribeEvents": EVENTS_READ,
    _GATEWAY + "Generate": INFERENCE,
    _GATEWAY + "Chat": INFERENCE,
    _GATEWAY + "Embed": INFERENCE,
    _GATEWAY + "Classify": INFERENCE,
    _GATEWAY + "ListModels": MODELS_READ,
    **{_APPS + name: INFERENCE for name in ("ExtractEntities", "Translate", "Ask")},
    **{
        _APPS + name: DATASETS
        for name in (
            "CreateKnowledgeBase",
            "GetKnowledgeBase",
            "ListKnowledgeBases",
            "DeleteKnowledgeBase",
            "AddDocuments",
        )
    },
    _GATEWAY + "DeployModel": MODELS_WRITE,
    **{
        _GATEWAY + name: TRAINING
        for name in ("SubmitJob", "GetJob", "ListJobs", "CancelJob", "WatchJob")
    },
    **{
        _STORAGE + name: DATASETS
        for name in (
            "UploadBlob",
            "GetUpload",
            "DownloadBlob",
            "DeleteBlob",
            "CreateDataset",
            "GetDataset",
            "ListDatasets",
            "DeleteDataset",
        )
    },
    **{_STORAGE + name: MODELS_READ for name in ("GetModelVersion", "ListModelVersions")},
    **{
        _STORAGE + name: MODELS_WRITE
        for name in ("CreateModelVersion", "SetAlias", "DeleteModelVersion")
    },
    **{
        _STORAGE + name: ADMIN
        for name in (
            "SetStorageQuota",
            "RotateStorageKey",
            "BackupStorage",
            "RestoreStorage",
            "GetStorageStats",
        )
    },
    _AUDIT + "QueryAudit": AUDIT_READ,
    _AUDIT + "VerifyAudit": AUDIT_READ,
    **{
        _ADMIN + name: ADMIN
        for name in (
            "CreateTenant",
            "ListTenants",
            "SetQuota",
            "SetPriorityGrant",
            "CreateClient",
            "ListClients",
            "DeleteClient",
            "CreateApiKey",
            "ListApiKeys",
            "RevokeApiKey",
            "CreateUser",
            "ListUsers",
            "DeleteUser",
            "SetScopes",
            "RotateSigningKey",
            "ListBlocks",
            "Block",
            "Unblock",
        )
    },
}

#: RPC -> another scope that also allows it: whoever may run models may see which
#: ones it can run (an inference-only API key lists models, as OpenAI tools expect).
ALSO_ALLOWED_BY: dict[str, str] = {_GATEWAY + "ListModels": INFERENCE}

#: RPCs anyone may call: health checks and schema discovery reveal no data.
PUBLIC_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


def required_scope(method: str) -> str | None:
    """The scope `method` needs; None for public RPCs. Unknown methods need `admin`, so a
    new RPC added without a policy entry is closed rather than open."""
    if method.startswith(PUBLIC_PREFIXES):
        return None
    return RPC_SCOPES.get(method, ADMIN)


def allows(scopes: frozenset[str], method: str, scope: str) -> bool:
    """Whether a token carrying `scopes` may call `method`, which needs `scope`."""
    return scope in scopes or ALSO_ALLOWED_BY.get(method, scope) in scopes


def parse_scopes(text: str) -> list[str]:
    """Space-separated scope string -> unique scopes in order."""
    return list(dict.fromkeys(text.split()))


def narrow_scopes(granted: list[str], requested: str | None) -> str:
    """The requested scopes the holder has (all of them when none are requested), as
    one space-separated string: a token never carries a scope its holder lacks."""
    if not requested:
        return " ".join(granted)
    return " ".join(s for s in dict.fromkeys(requested.split()) if s in granted)


def check_known(scopes: list[str], field: str) -> None:
    """Refuse scopes the system does not define."""
    from llmos.errors import InvalidArgument

    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise InvalidArgument(
            field, f"unknown scope {unknown[0]!r}; known scopes: {', '.join(SCOPES)}"
        )
