"""The topic names of SPEC §3 (logical: without the deployment's prefix), in one place."""

PAGE_VIEW = "telemetry.page_view"
CHAT_START = "telemetry.chat_start"
SIGNUP = "telemetry.signup"
LOGIN = "telemetry.login"
LOGOUT = "telemetry.logout"
INPUT_TOPICS = (PAGE_VIEW, CHAT_START, SIGNUP, LOGIN, LOGOUT)

MERGED = "identity.merged"
SHUTDOWN = "identity.shutdown"
PROFILES = "identity.profiles"
REJECTED = "identity.rejected"
OUTPUT_TOPICS = (MERGED, SHUTDOWN, PROFILES, REJECTED)
