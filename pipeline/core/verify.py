"""Identity verification (R9): a signup or login must prove its user_id with the secret.

Either `user_hash` = hex HMAC-SHA256(secret, user_id), or `identity_token` = a JWT signed
HS256 with claims `user_id`, `exp` (required), `email` (then verified) and `iat`. `exp` is
checked against the event's timestamp and the Kafka record's timestamp, never the wall clock,
so a replay reaches the same verdicts. During a secret rotation a workspace has two secrets;
either proves.
"""

from __future__ import annotations

import hashlib
import hmac
import warnings
from dataclasses import dataclass

import jwt
from jwt.warnings import InsecureKeyLengthWarning

from pipeline.core.identifiers import Refused, check_email

TOKEN_LEEWAY_MS = 60_000  # clock skew tolerated between the token issuer and the event clock
MIN_SECRET_BYTES = 32  # shorter secrets work but are reported once when the worker starts

# PyJWT would warn on every decode with a short key; the worker reports it once at start-up.
warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning)


@dataclass(frozen=True, slots=True)
class Verified:
    """The claim is proven; `email` is set when the token signed one."""

    email: str | None = None


def verify(
    *,
    user_id: str,
    user_hash: str | None,
    identity_token: str | None,
    secrets: tuple[bytes, ...],
    event_ms: int,
    record_ms: int | None,
) -> Verified | Refused:
    """Check the proof of `user_id`; a token, when present, must be valid on its own."""
    if identity_token is not None:
        return _verify_token(identity_token, user_id, secrets, event_ms, record_ms)
    assert user_hash is not None  # the schema requires one of the two
    given = user_hash.strip().lower().encode()
    for secret in secrets:
        expected = hmac.new(secret, user_id.encode(), hashlib.sha256).hexdigest().encode()
        if hmac.compare_digest(expected, given):
            return Verified()
    return Refused("unverified_identity", "user_hash does not match the workspace secret")


def _verify_token(
    token: str, user_id: str, secrets: tuple[bytes, ...], event_ms: int, record_ms: int | None
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
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        return Refused("invalid_token", "the token has no numeric exp claim")
    deadline = int(exp * 1000) + TOKEN_LEEWAY_MS
    if event_ms > deadline or (record_ms is not None and record_ms > deadline):
        return Refused("expired_token", "the token had expired at the event's time")
    email = claims.get("email")
    checked = check_email(email) if isinstance(email, str) else None
    return Verified(email=checked if isinstance(checked, str) else None)
