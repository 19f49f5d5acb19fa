"""rkstream.client.AsyncClient against servers on the stand-in runtime: typed events,
cancelling, several requests at once, reconnecting, typed errors, uploads."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from rkstream.client import (
    AsyncClient,
    AuthError,
    BusyError,
    ConnectionLostError,
    Created,
    Done,
    ImageError,
    InvalidRequestError,
    TextDelta,
    ToolCall,
    image_part,
)
from rkstream.protocol.events import SUBPROTOCOL_MSGPACK

from client_links import ServerMaker, url
from helpers import MS, call, eventually, jpeg, reply

pytest_plugins = ["client_servers"]  # the fixtures client_server, client_encoder

# A long answer: 20 ms a token, far more tokens than any test waits for.
LONG = reply("w ") + "[[n_tokens=2000]][[token_delay_us=20000]]"


def client_of(server: Any, **options: Any) -> AsyncClient:
    return AsyncClient(url(server), timeout_s=5000 * MS, **options)


def test_the_subprotocol_is_the_servers() -> None:
    from rkstream.client.connection import SUBPROTOCOL

    assert SUBPROTOCOL == SUBPROTOCOL_MSGPACK


async def test_typed_events_and_session_facts(client_server: ServerMaker) -> None:
    async with client_of(await client_server()) as client:
        assert client.session is not None and client.session.protocol == "rkstream.v1"
        assert client.model is not None and client.model.id == "qwen2.5-test"
        assert [m.id for m in client.models] == ["qwen2.5-test"]
        assert client.limits["max_tokens"] > 0
        events = [e async for e in client.stream(reply("one two three"), max_tokens=50)]
        assert isinstance(events[0], Created)
        deltas = [e for e in events if isinstance(e, TextDelta)]
        assert "".join(d.text for d in deltas) == "one two three"
        assert [d.seq for d in deltas] == list(range(len(deltas)))
        done = events[-1]
        assert isinstance(done, Done) and done.status == "completed"
        assert done.usage.output_tokens == 3 and done.usage.input_tokens > 0
        assert done.timings.total_ms is not None and done.timings.ttft_ms is not None
        answer = await client.complete(reply("fine") + "[[n_tokens=0]]")
        assert answer.text == "fine" and answer.status == "completed"
        calls = await client.complete(reply(call("get_weather", '{"city": "Oslo"}')), tools=[{
            "type": "function", "function": {"name": "get_weather", "parameters": {}}}])
        assert calls.done.finish_reason == "tool_calls"
        (tool,) = calls.tool_calls
        assert isinstance(tool, ToolCall) and tool.name == "get_weather"
        assert tool.parsed_arguments() == {"city": "Oslo"}


async def test_leaving_the_iterator_cancels(client_server: ServerMaker, records: Any) -> None:
    async with client_of(await client_server()) as client:
        seen = 0
        async for event in client.stream(LONG):
            if isinstance(event, TextDelta):
                seen += 1
                if seen == 3:
                    left_ns = time.monotonic_ns()
                    break
        await eventually(lambda: records.all("run_end"))
        (abort,) = records.all("abort")
        assert abort["running"] and (abort["t_ns"] - left_ns) / 1e9 < 200 * MS
        assert records.all("run_end")[0]["finish"] == "abort"
        # cancel() on a stream gives its Done with status cancelled
        stream = client.stream(LONG)
        async for event in stream:
            if isinstance(event, TextDelta):
                await stream.cancel()
        assert stream.done is not None and stream.done.status == "cancelled"
        answer = await stream.result()
        assert answer.status == "cancelled" and answer.text.startswith("w")
        # a task cancelled while awaiting complete() cancels its request too
        task = asyncio.ensure_future(client.complete(LONG))
        await eventually(lambda: len(records.all("run")) == 3)
        task.cancel()
        await eventually(lambda: len(records.all("abort")) == 3)
        assert len(records.all("abort")) == 3


async def test_several_streams_at_once_on_one_socket(client_server: ServerMaker) -> None:
    server = await client_server()
    async with client_of(server) as client:
        slow = "[[token_delay_us=30000]]"
        started = time.monotonic()
        answers = await asyncio.gather(*(client.complete(reply(f"answer {n} a b c") + slow)
                                         for n in range(3)))
        assert [a.text for a in answers] == [f"answer {n} a b c" for n in range(3)]
        assert len({a.done.request_id for a in answers}) == 3
        assert time.monotonic() - started < 5000 * MS
        # All three were open on the socket at once: the model runs one at a time, so
        # the later ones waited in its queue behind the first.
        queued = [a.done.timings.queued_ms or 0 for a in answers]
        assert max(queued) > 100


async def test_reconnects_after_a_server_restart(client_server: ServerMaker,
                                                 records: Any) -> None:
    first = await client_server()
    port = first.port
    client = client_of(first, min_delay_s=20 * MS, max_delay_s=200 * MS)
    try:
        session = await client.connect()
        await client.update_session(instructions="Answer in French.")
        open_request = client.stream(LONG)
        async for event in open_request:
            if isinstance(event, TextDelta):
                break_after = event
                break
        assert break_after.text
        other = asyncio.ensure_future(client.complete(LONG))
        await eventually(lambda: len(records.all("run")) >= 1)
        await first.close()  # a clean shutdown: open requests end with shutting_down
        with pytest.raises((BusyError, ConnectionLostError)) as ended:
            await other
        assert ended.value.code in ("shutting_down", "connection_lost")
        assert not client.connected
        second = await client_server(port=port)
        answer = await client.complete(reply("back again"))  # waits for the reconnect
        assert answer.text == "back again"
        assert client.session is not None and client.session.session_id != session.session_id
        assert client.generation == 2
        # the session's instructions were applied again on the new connection
        assert "Answer in French." in records.all("run")[-1]["prompt"]
        await second.close()
    finally:
        await client.close()


async def test_a_dropped_socket_ends_open_requests(client_server: ServerMaker) -> None:
    async with client_of(await client_server(), min_delay_s=20 * MS) as client:
        stream = client.stream(LONG)
        with pytest.raises(ConnectionLostError) as lost:
            async for event in stream:
                if isinstance(event, TextDelta) and client._ws is not None:
                    await client._ws.close()  # as if the network dropped
        assert lost.value.code == "connection_lost"
        assert (await client.complete(reply("fine"))).text == "fine"


async def test_a_bad_key_is_an_auth_error(client_server: ServerMaker) -> None:
    server = await client_server(server={"api_keys": "sesame"})
    with pytest.raises(AuthError) as refused:
        async with client_of(server, api_key="wrong"):
            pass
    assert refused.value.code == "invalid_api_key" and "401" in refused.value.message
    async with client_of(server, api_key="sesame") as client:
        assert await client.ping() >= 0


async def test_a_full_queue_is_a_busy_error(client_server: ServerMaker) -> None:
    server = await client_server(limits={"max_queue": 1})
    async with client_of(server) as client:
        running = client.stream(LONG)
        await running.start()
        queued = client.stream(LONG)
        await queued.start()
        with pytest.raises(BusyError) as busy:
            await client.complete("one too many")
        assert busy.value.code == "queue_full" and busy.value.retry_after_s == 1.0
        assert busy.value.done is not None and busy.value.done.status == "failed"
        await running.cancel()
        await queued.cancel()


async def test_bad_input_is_a_typed_error_with_its_param(client_server: ServerMaker) -> None:
    async with client_of(await client_server()) as client:
        with pytest.raises(InvalidRequestError) as bad:
            await client.complete("hi", temperature=9)
        assert bad.value.code == "invalid_param" and bad.value.param == "params.temperature"
        with pytest.raises(InvalidRequestError) as unknown:
            await client.complete("hi", model="no-such-model")
        assert unknown.value.code == "model_not_found"
        with pytest.raises(InvalidRequestError):
            await client.update_session(model="no-such-model")
        with pytest.raises(ImageError) as no_vision:
            await client.upload_image(jpeg(1))
        assert no_vision.value.code == "vision_unavailable"


async def test_upload_image_and_refer_to_it(client_server: ServerMaker, records: Any) -> None:
    async with client_of(await client_server(vision=True)) as client:
        image_id = await client.upload_image(jpeg(1))
        assert image_id.startswith("img_")
        answer = await client.complete([{"role": "user", "content": [
            image_part(image_id), {"type": "text", "text": "What is it?"}]}])
        assert answer.status == "completed"
        assert records.all("run")[-1]["n_image"] == 1
        with pytest.raises(ImageError) as bad:
            await client.upload_image(b"\xff\xd8 not a jpeg")
        assert bad.value.code in ("invalid_image", "unsupported_image_format")
