"""A decoder's link to the model process answers every input it submits exactly once (runtime/processes/
model_client.py, model_process.py): the two ways an input went unanswered (issue 69), each made to happen at once.

- `submit` racing the link's loss: the model process ends after an input is packed and before it is recorded; it
  must be refused (503), never recorded into a table `lost` has already answered and emptied.
- A withdrawal after the model process was replaced: it goes on the link its input went on (the new model process
  never saw it), and a model process asked to withdraw an input it does not hold answers it anyway.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from types import SimpleNamespace

import numpy as np

from podserve.errors import NotReady
from podserve.runtime.processes import model_client
from podserve.runtime.processes.model_client import ModelClient
from podserve.runtime.processes.model_process import DecoderPeer
from podserve.runtime.processes.pod_state import PodState
from podserve.runtime.processes.transport.arena import Arena, PeerArena
from podserve.runtime.processes.transport.items import error_from_wire
from podserve.runtime.processes.transport.link import open_link
from podserve.settings import ServingSettings

MIB = 1 << 20


class ModelEnd:
    """The model process's end of a decoder's link (a socketpair's): what it got, and its outputs arena."""

    def __init__(self):
        self.outputs = Arena(MIB, "test-outputs")
        self.messages: list = []
        self.link = None

    def end(self) -> None:
        """The model process ends: its end of the link goes (through its transport, which owns the socket)."""
        self.link.transport.abort()

    def mapped(self) -> PeerArena:
        return PeerArena(os.dup(self.outputs.fd))


async def connect(client: ModelClient, generation: int) -> ModelEnd:
    loop = asyncio.get_running_loop()
    decoder_sock, model_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    end = ModelEnd()
    link = await open_link(loop, decoder_sock, client.on_messages, client.lost, name="model")
    end.link = await open_link(loop, model_sock, end.messages.extend, name="decoder")
    client.connected(link, end.mapped(), generation)
    return end


def a_client() -> tuple[ModelClient, Arena]:
    state = PodState.create()
    slot = SimpleNamespace(state=state, fields=state.slots[0])
    arena = Arena(MIB, "test-inputs")
    return ModelClient(ServingSettings(), slot, handler=None, arena=arena), arena


async def until(check, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        await asyncio.sleep(0.005)


def test_an_input_packed_as_the_model_process_ends_is_refused_not_recorded_after_the_loss(monkeypatch):
    client, arena = a_client()
    packed, go_on = threading.Event(), threading.Event()
    pack = model_client.pack

    def pack_then_wait(value, into):  # the submit stops between its pack and its record, for as long as the test says
        result = pack(value, into)
        packed.set()
        assert go_on.wait(10)
        return result

    answered: list = []

    async def run() -> dict:
        end = await connect(client, generation=1)
        recorded = client.submit(np.ones(2048, np.float32), None, time.monotonic() + 10, on_done=answered.extend)
        monkeypatch.setattr(model_client, "pack", pack_then_wait)
        outcome: dict = {}

        def submit() -> None:
            try:
                outcome["item"] = client.submit(np.ones(2048, np.float32), None, time.monotonic() + 10,
                                                on_done=answered.extend)
            except NotReady as exc:
                outcome["error"] = exc
        thread = threading.Thread(target=submit)
        thread.start()
        await until(packed.is_set, "the second input packed")
        end.end()  # the model process ends
        await until(lambda: client.link is None, "the decoder seeing the link lost")
        assert answered == [recorded] and isinstance(recorded.error, NotReady), "recorded before: answered 503"
        go_on.set()
        await until(lambda: not thread.is_alive(), "the second submit returning")
        return outcome

    outcome = asyncio.run(run())
    assert isinstance(outcome.get("error"), NotReady), outcome  # refused at once: its caller answers 503
    assert client.items == {} and arena.blocks == 0, "an input recorded after the loss, or its block never freed"
    assert len(answered) == 1


def test_a_withdrawal_goes_to_the_model_process_that_got_the_input_never_to_its_successor():
    client, _arena = a_client()
    answered: list = []

    async def run() -> None:
        first = await connect(client, generation=1)
        old = client.submit(np.ones(2048, np.float32), None, time.monotonic() + 10, on_done=answered.extend)
        await until(lambda: [m[0] for m in first.messages] == ["submit"], "the input with the first model process")
        first.end()
        await until(lambda: answered == [old], "the input answered 503 as its model process ended")
        second = await connect(client, generation=2)
        new = client.submit(np.ones(2048, np.float32), None, time.monotonic() + 10, on_done=answered.extend)
        old.worker.withdraw(old)  # its deadline passes after the replacement: nothing goes to the new process
        new.worker.withdraw(new)
        await until(lambda: len(second.messages) == 2, "the second input and its withdrawal")
        assert [(m[0], m[1]) for m in second.messages] == [("submit", new.item_id), ("withdraw", new.item_id)]

    asyncio.run(run())


def test_a_model_process_answers_the_withdrawal_of_an_input_it_does_not_hold():
    sent: list = []
    inputs, outputs = Arena(MIB, "test-inputs"), Arena(MIB, "test-outputs")
    peer = DecoderPeer(SimpleNamespace(), "decoder-0", PeerArena(os.dup(inputs.fd)), outputs)
    peer.link = SimpleNamespace(send=sent.append)
    peer.on_messages([("withdraw", 42, None)])
    [(kind, [(item_id, descriptor, error, *_)])] = sent
    assert (kind, item_id, descriptor) == ("done", 42, None)
    assert error_from_wire(error).status == 504


def test_a_decoders_lost_link_drops_its_outputs_arena_whole():
    """The model process never frees a lost decoder's output blocks for reuse: the decoder may still be reading
    them. Its arena goes whole (the model process's mapping closed; the decoder's keeps the pages until it lets go)."""
    inputs, outputs = Arena(MIB, "test-inputs"), Arena(MIB, "test-outputs")
    decoder_view = PeerArena(os.dup(outputs.fd))
    peer = DecoderPeer(SimpleNamespace(), "decoder-0", PeerArena(os.dup(inputs.fd)), outputs)
    peer.link = SimpleNamespace(send=lambda message: None)
    offset = outputs.allocate(8192)
    generation = outputs.generation(offset)
    outputs.view(offset, (2048,), np.float32)[:] = 7
    peer.output_blocks.add(offset)
    peer.lost()
    assert decoder_view.holds(offset, generation), "the block was freed (or handed out) under its reader"
    assert (np.frombuffer(decoder_view.buffer(offset, 8192, generation), np.float32) == 7).all()
    peer.on_messages([("free", [(offset, generation)])])  # a late free from the decoder changes nothing
    assert decoder_view.holds(offset, generation)
