"""The topic names of SPEC §3 (logical: without the deployment's prefix), in one place."""

PAGE_VIEW = "telemetry.page_view"
CHAT_START = "telemetry.chat_start"
SIGNUP = "telemetry.signup"
LOGIN = "telemetry.login"
LOGOUT = "telemetry.logout"
ERASE = "privacy.erase"  # erasure requests (R16), compacted by subject and kept forever
INPUT_TOPICS = (PAGE_VIEW, CHAT_START, SIGNUP, LOGIN, LOGOUT, ERASE)

MERGED = "identity.merged"
SHUTDOWN = "identity.shutdown"
PROFILES = "identity.profiles"
REJECTED = "identity.rejected"
ERASED = "identity.erased"
OUTPUT_TOPICS = (MERGED, SHUTDOWN, PROFILES, REJECTED, ERASED)

# Internal: every record of the worker's state, compacted by Redis key (SPEC §3, "Internal
# state and its durability"; pipeline/state/changelog.py). Not part of the wire contract.
STATE_CHANGELOG = "state.changelog"
