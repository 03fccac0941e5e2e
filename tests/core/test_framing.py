"""NDJSON framing: ``FrameBuffer`` splits a byte stream into frames and bounds what it holds."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parrot_ipc.core import FrameBuffer, FrameTooLarge
from parrot_ipc.core.protocol import DEFAULT_MAX_FRAME_BYTES


def test_default_limit_is_the_documented_64_kib() -> None:
    assert FrameBuffer().max_frame_bytes == DEFAULT_MAX_FRAME_BYTES == 65536


def test_a_frame_split_across_chunks_is_reassembled() -> None:
    buf = FrameBuffer(1024)
    assert buf.feed(b'{"jsonrpc":') == []
    assert buf.buffered_bytes == len(b'{"jsonrpc":')
    assert buf.feed(b'"2.0","id"') == []
    assert buf.feed(b':1}\n') == [b'{"jsonrpc":"2.0","id":1}']
    assert buf.buffered_bytes == 0


def test_byte_by_byte_feeding_yields_each_frame_once() -> None:
    stream = b'{"a":1}\n{"b":2}\n{"c":3}\n'
    buf = FrameBuffer(1024)
    frames = [frame for byte in stream for frame in buf.feed(bytes([byte]))]
    assert frames == [b'{"a":1}', b'{"b":2}', b'{"c":3}']


def test_several_frames_in_one_chunk_keep_their_order_and_the_tail_is_kept() -> None:
    buf = FrameBuffer(1024)
    assert buf.feed(b"one\ntwo\nthree\nfou") == [b"one", b"two", b"three"]
    assert buf.buffered_bytes == 3
    assert buf.feed(b"r\n") == [b"four"]


def test_empty_and_blank_lines_are_dropped() -> None:
    buf = FrameBuffer(1024)
    assert buf.feed(b"\n\n  \nx\n\t\n\ny\n") == [b"x", b"y"]


def test_unterminated_tail_over_the_limit_raises() -> None:
    buf = FrameBuffer(16)
    assert buf.feed(b"x" * 10) == []
    with pytest.raises(FrameTooLarge):
        buf.feed(b"x" * 7)  # 17 bytes with no newline yet


def test_single_chunk_over_the_limit_without_newline_raises() -> None:
    with pytest.raises(FrameTooLarge):
        FrameBuffer(16).feed(b"y" * 17)


def test_tail_after_complete_frames_over_the_limit_raises() -> None:
    with pytest.raises(FrameTooLarge):
        FrameBuffer(16).feed(b"ok\n" + b"z" * 17)


def test_complete_line_over_the_limit_raises() -> None:
    with pytest.raises(FrameTooLarge):
        FrameBuffer(16).feed(b"x" * 17 + b"\n")


def test_complete_line_over_the_limit_assembled_from_chunks_raises() -> None:
    buf = FrameBuffer(16)
    buf.feed(b"x" * 16)  # exactly at the limit, still legal as a partial frame
    with pytest.raises(FrameTooLarge):
        buf.feed(b"x\n")


def test_over_limit_line_between_good_frames_raises() -> None:
    with pytest.raises(FrameTooLarge):
        FrameBuffer(16).feed(b"a\n" + b"x" * 17 + b"\nb\n")


def test_frame_exactly_at_the_limit_is_accepted() -> None:
    frame = b"x" * 16
    assert FrameBuffer(16).feed(frame + b"\n") == [frame]


def test_unterminated_tail_exactly_at_the_limit_is_held_then_completed() -> None:
    buf = FrameBuffer(16)
    assert buf.feed(b"x" * 16) == []
    assert buf.buffered_bytes == 16
    assert buf.feed(b"\n") == [b"x" * 16]
    assert buf.buffered_bytes == 0


def test_the_newline_does_not_count_towards_the_limit() -> None:
    buf = FrameBuffer(4)
    assert buf.feed(b"abcd\nefgh\n") == [b"abcd", b"efgh"]


def test_buffer_is_emptied_after_frame_too_large() -> None:
    buf = FrameBuffer(8)
    buf.feed(b"1234")
    with pytest.raises(FrameTooLarge):
        buf.feed(b"56789")
    assert buf.buffered_bytes == 0


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(min_value=1, max_value=64),
    frames=st.lists(st.binary(min_size=1, max_size=64).filter(lambda b: b"\n" not in b and not b.isspace())),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000)),
)
def test_chunking_never_changes_the_frames_and_never_buffers_over_the_limit(
    limit: int, frames: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(f + b"\n" for f in frames)
    positions = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in itertools.pairwise(positions)]
    buf = FrameBuffer(limit)
    got: list[bytes] = []
    too_large = False
    for chunk in chunks:
        try:
            got += buf.feed(chunk)
        except FrameTooLarge:
            too_large = True
            break
        assert buf.buffered_bytes <= limit
    if any(len(f) > limit for f in frames):
        assert too_large
        # Every frame handed out before the refusal was within the limit.
        assert all(len(f) <= limit for f in got)
    else:
        assert not too_large
        assert got == frames
        assert buf.buffered_bytes == 0


def test_take_tail_hands_over_the_unterminated_last_frame_once() -> None:
    fb = FrameBuffer(100)
    assert fb.feed(b'{"a":1}\n{"b":') == [b'{"a":1}']
    assert fb.feed(b"2}") == []
    assert fb.take_tail() == b'{"b":2}'
    assert fb.buffered_bytes == 0 and fb.take_tail() is None
    fb.feed(b"  \t")
    assert fb.take_tail() is None  # only whitespace: no frame
