"""The fetch policy: gather while keeping up, ask at once when behind or after a quiet spell."""

from __future__ import annotations

import inspect

from aiokafka.consumer import consumer as aiokafka_consumer
from aiokafka.consumer.fetcher import Fetcher

from pipeline.worker import fetching
from pipeline.worker.fetching import GATHER_BYTES, WAITING_WAIT_MS, GatheringFetcher, request_limits

PATIENT = (1, 1500)  # what Faust configures: answer at the first byte, wait up to 1.5 s


def test_a_consumer_that_took_everything_the_last_fetch_brought_gathers() -> None:
    limits = request_limits(brought_records=True, records_waiting=False, gather_wait_ms=5,
                            patient=PATIENT)  # fmt: skip
    assert limits == (GATHER_BYTES, 5)


def test_records_still_waiting_to_be_taken_mean_behind_so_the_next_fetch_asks_at_once() -> None:
    limits = request_limits(brought_records=True, records_waiting=True, gather_wait_ms=5,
                            patient=PATIENT)  # fmt: skip
    # At the first byte, and not for Faust's 1.5 s: the partitions whose records are waiting
    # are left out of this request, and none can be asked again until it returns.
    assert limits == (1, WAITING_WAIT_MS)
    assert WAITING_WAIT_MS < PATIENT[1]
    quiet = request_limits(brought_records=False, records_waiting=True, gather_wait_ms=5,
                           patient=(1, 20))  # fmt: skip
    assert quiet == (1, 20)  # never longer than the consumer's own wait


def test_after_an_empty_fetch_the_consumer_waits_patiently_instead_of_polling() -> None:
    limits = request_limits(brought_records=False, records_waiting=False, gather_wait_ms=5,
                            patient=PATIENT)  # fmt: skip
    assert limits == PATIENT


def test_zero_gather_time_keeps_the_library_behaviour() -> None:
    limits = request_limits(brought_records=True, records_waiting=False, gather_wait_ms=0,
                            patient=PATIENT)  # fmt: skip
    assert limits == PATIENT


async def test_the_gathering_consumer_builds_its_fetcher_and_changes_no_other() -> None:
    consumer = fetching.GatheringConsumer(bootstrap_servers="127.0.0.1:1", request_timeout_ms=200,
                                          api_version="2.0.0")  # fmt: skip
    try:
        await consumer.start()  # nothing listens there: start fails after building nothing
    except Exception:  # only the restored name matters here
        pass
    finally:
        await consumer.stop()
    assert aiokafka_consumer.Fetcher is Fetcher  # restored: other consumers keep aiokafka's


def test_the_gather_time_is_configured_on_the_worker_s_fetcher_only() -> None:
    before = GatheringFetcher.gather_wait_ms
    try:
        fetching.configure(7)
        assert GatheringFetcher.gather_wait_ms == 7
        assert aiokafka_consumer.Fetcher is Fetcher
    finally:
        fetching.configure(before)


def test_the_private_aiokafka_methods_it_overrides_still_have_their_shape() -> None:
    # A new aiokafka release that renames or reshapes these would silently bypass the policy;
    # the worker then falls back to aiokafka's own fetcher (`fetching.compatible`).
    assert fetching.compatible() is None
    assert list(inspect.signature(Fetcher._get_actions_per_node).parameters) == [
        "self", "assignment"]  # fmt: skip
    assert list(inspect.signature(Fetcher._proc_fetch_request).parameters) == [
        "self", "assignment", "node_id", "request"]  # fmt: skip
    assert "Fetcher(" in inspect.getsource(aiokafka_consumer.AIOKafkaConsumer.start)
    for attribute in ("_fetch_min_bytes", "_fetch_max_wait_ms", "_records"):
        assert attribute in inspect.getsource(Fetcher.__init__)


def test_the_app_factory_selects_uvloop_unless_told_otherwise() -> None:
    import asyncio

    import uvloop

    from pipeline.ops.settings import Settings
    from pipeline.worker.app import faust_app

    before = asyncio.get_event_loop_policy()
    try:
        faust_app(Settings(IDP_EVENT_LOOP="asyncio"), app_id="t-loop-a")
        assert not isinstance(asyncio.get_event_loop_policy(), uvloop.EventLoopPolicy)
        faust_app(Settings(), app_id="t-loop-b")
        assert isinstance(asyncio.get_event_loop_policy(), uvloop.EventLoopPolicy)
    finally:
        asyncio.set_event_loop_policy(before)
