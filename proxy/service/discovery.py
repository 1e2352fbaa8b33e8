"""Which providers can serve: credentials found in systemd credentials or the environment
(values are never logged), and what to tell a user who has none."""

from __future__ import annotations

from collections.abc import Mapping

from proxy.config import Config, ProviderConfig

from .credentials import read_credential

AWS_ENV_HINTS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)
# systemd credential names for a static AWS key pair (see systemd/model-router.service).
AWS_CREDENTIALS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")


def provider_key(pc: ProviderConfig, environ: Mapping[str, str]) -> str | None:
    """The provider's API key: a systemd credential first, then the environment variable."""
    if pc.api_key_credential and (key := read_credential(pc.api_key_credential)):
        return key
    return environ.get(pc.api_key_env) or None if pc.api_key_env else None


def aws_credential_files() -> dict[str, str] | None:
    """A static AWS key pair handed over as systemd credentials (LoadCredential=)."""
    key_id, secret = read_credential(AWS_CREDENTIALS[0]), read_credential(AWS_CREDENTIALS[1])
    if not (key_id and secret):
        return None
    creds = {"aws_access_key_id": key_id, "aws_secret_access_key": secret}
    if token := read_credential(AWS_CREDENTIALS[2]):
        creds["aws_session_token"] = token
    return creds


def enabled_providers(config: Config, environ: Mapping[str, str]) -> dict[str, ProviderConfig]:
    """Providers that can serve: explicitly enabled, or with their credentials present."""
    enabled = {}
    for name, pc in config.providers.items():
        if pc.enabled is False:
            continue
        if pc.kind == "bedrock":
            has_creds = (
                any(environ.get(v) for v in AWS_ENV_HINTS) or aws_credential_files() is not None
            )
        else:
            has_creds = provider_key(pc, environ) is not None
        if pc.enabled or has_creds:
            enabled[name] = pc
    return enabled


def how_to_enable(config: Config) -> str:
    lines = ["No provider has credentials, so there is nothing to route to. Enable one of:"]
    for name, pc in sorted(config.providers.items()):
        if pc.kind == "bedrock":
            lines.append(
                f"  {name:<11} AWS credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE, or systemd "
                f"credentials {AWS_CREDENTIALS[0]!r} + {AWS_CREDENTIALS[1]!r}), "
                f"or [providers.{name}] enabled = true"
            )
        elif not pc.api_key_env and not pc.api_key_credential:
            lines.append(f"  {name:<11} [providers.{name}] enabled = true (a local server)")
        else:
            where = f"${pc.api_key_env}" + (
                f" or systemd credential {pc.api_key_credential!r}" if pc.api_key_credential else ""
            )
            lines.append(f"  {name:<11} {where}")
    lines.append("or run `model-router serve --demo` to try it against simulated providers.")
    return "\n".join(lines)


def aws_credentials_from(environ: Mapping[str, str], demo: bool) -> dict[str, str] | None:
    """Static AWS keys from systemd credentials or ``environ`` (or the demo's dummies); None
    means the standard AWS credential chain."""
    if demo:
        return {"aws_access_key_id": "sim", "aws_secret_access_key": "sim"}
    if (creds := aws_credential_files()) is not None:
        return creds
    if environ.get("AWS_ACCESS_KEY_ID") and environ.get("AWS_SECRET_ACCESS_KEY"):
        creds = {"aws_access_key_id": environ["AWS_ACCESS_KEY_ID"]}
        creds["aws_secret_access_key"] = environ["AWS_SECRET_ACCESS_KEY"]
        if environ.get("AWS_SESSION_TOKEN"):
            creds["aws_session_token"] = environ["AWS_SESSION_TOKEN"]
        return creds
    return None
