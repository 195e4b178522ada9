"""Where the identity state lives: a versioned-record store, in Redis or (for pure tests) memory."""

from pipeline.state.base import Commit, Keys, Record, Store

__all__ = ["Commit", "Keys", "Record", "Store"]
