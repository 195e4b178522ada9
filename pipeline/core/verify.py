"""Identity verification (R9, R17): a signup or login must prove its user_id with the secret.

Either `user_hash` = hex HMAC-SHA256(secret, user_id), or `identity_token` = a JWT signed
HS256 with claims `user_id`, `exp` (required), `email` (then verified), `iat` and `jti`. Time
claims are checked against the event's timestamp and the Kafka record's timestamp, never the
wall clock, so a replay reaches the same verdicts. During a secret rotation a workspace has two
secrets; either proves. A workspace's `TokenPolicy` may demand tokens and bound their lifetime.
An event's proof is verified once, at the edge (`events.check`).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import warnings
from dataclasses import dataclass

import jwt
from jwt.warnings import InsecureKeyLengthWarning

from pipeline.core.identifiers import Refused, check_email, check_identifier

TOKEN_LEEWAY_MS = 60_000  # clock skew tolerated between the token issuer and the event clock

# The worker refuses secrets shorter than 32 bytes at start (`pipeline.ops.settings`); pure tests
# may use any, and PyJWT would warn on every decode.
warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning)


@dataclass(frozen=True, slots=True)
class TokenPolicy:
    """A workspace's identity-token policy (R17): tokens required, and their longest life."""

    require_token: bool = False
    max_token_lifetime_s: int | None = None


DEFAULT_POLICY = TokenPolicy()


@dataclass(frozen=True, slots=True)
class Verified:
    """The claim is proven; `email` is set when the token signed one, `jti` when it has one."""

    email: str | None = None
    jti: str | None = None


def verify(
    *,
    user_id: str,
    user_hash: str | None,
    identity_token: str | None,
    secrets: tuple[bytes, ...],
    event_ms: int,
    record_ms: int | None,
    policy: TokenPolicy = DEFAULT_POLICY,
) -> Verified | Refused:
    """Check the proof of `user_id`; a token, when present, must be valid on its own."""
    if identity_token is not None:
        return _verify_token(identity_token, user_id, secrets, event_ms, record_ms, policy)
    assert user_hash is not None  # the schema requires one of the two
    if policy.require_token:
        return Refused("token_required", "this workspace requires an identity_token")
    given = user_hash.strip().lower().encode()
    for secret in secrets:
        expected = hmac.new(secret, user_id.encode(), hashlib.sha256).hexdigest().encode()
        if hmac.compare_digest(expected, given):
            return Verified()
    return Refused("unverified_identity", "user_hash does not match the workspace secret")


def _verify_token(
    token: str,
    user_id: str,
    secrets: tuple[bytes, ...],
    event_ms: int,
    record_ms: int | None,
    policy: TokenPolicy,
) -> Verified | Refused:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        return Refused("invalid_token", f"malformed token: {exc}")
    if header.get("alg") != "HS256":
        return Refused("invalid_token", f"alg {header.get('alg')!r} refused; only HS256")
    claims: dict | None = None
    for secret in secrets:
        try:
            claims = jwt.decode(
                token,
                secret,
                algorithms=["HS256"],
                # Time claims are checked below against event time, not the wall clock.
                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False,
                         "verify_aud": False, "verify_iss": False},
            )  # fmt: skip
            break
        except jwt.InvalidSignatureError:
            continue
        except jwt.PyJWTError as exc:
            return Refused("invalid_token", f"token rejected: {exc}")
    if claims is None:
        return Refused("unverified_identity", "token signature does not match the workspace secret")
    if claims.get("user_id") != user_id:
        return Refused("unverified_identity", "the token was issued for another user_id")
    exp = _seconds(claims.get("exp"))
    if exp is None:
        return Refused("invalid_token", "the token's exp claim is not a finite number")
    iat = _seconds(claims.get("iat"))
    if iat is None and "iat" in claims:
        return Refused("invalid_token", "the token's iat claim is not a finite number")
    if iat is not None and int(iat * 1000) > event_ms + TOKEN_LEEWAY_MS:
        # A token cannot prove a login stamped before it was issued: that is a backdated event.
        return Refused("invalid_token", "the token was issued after the event's time")
    limit = policy.max_token_lifetime_s
    if limit is not None:
        if iat is None:
            return Refused("invalid_token", "this workspace requires tokens with an iat claim")
        if exp - iat > limit:
            return Refused("invalid_token", f"the token lives {exp - iat:.0f} s; at most {limit}")
    deadline = int(exp * 1000) + TOKEN_LEEWAY_MS
    if event_ms > deadline or (record_ms is not None and record_ms > deadline):
        return Refused("expired_token", "the token had expired at the event's time")
    jti = claims.get("jti")
    if jti is not None:
        checked_jti = check_identifier(jti) if isinstance(jti, str) else None
        if not isinstance(checked_jti, str):
            return Refused("invalid_token", "the token's jti claim is not a usable identifier")
        jti = checked_jti
    email = claims.get("email")
    checked = check_email(email) if isinstance(email, str) else None
    return Verified(email=checked if isinstance(checked, str) else None, jti=jti)


# Seconds since the epoch that `int(seconds * 1000)` turns into a millisecond time of this era.
_MAX_SECONDS = 1e13


def _seconds(value: object) -> float | None:
    """A time claim as a finite number of seconds; None for anything else (NaN, inf, "x")."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    if not math.isfinite(value) or abs(value) > _MAX_SECONDS:
        return None
    return value
