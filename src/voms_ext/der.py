"""A minimal DER reader for the places where the exact bytes matter.

pyasn1 decodes into values and re-encodes; signature checks and OpenSSL's
name canonicalisation need the original bytes, and VOMS's own structures
vary between producers. This walks tag-length-value triples, strictly.
"""

from __future__ import annotations

from collections.abc import Iterator

from .errors import DecodeError


def read_tlv(data: bytes, pos: int = 0) -> tuple[int, int, int]:
    """(tag, content_start, end) of the DER element that starts at `pos`."""
    if pos + 2 > len(data):
        raise DecodeError(f"DER truncated at offset {pos}")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise DecodeError(f"DER: multi-byte tags are not supported (offset {pos})")
    length = data[pos + 1]
    start = pos + 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or start + count > len(data):
            raise DecodeError(f"DER: invalid length encoding at offset {pos}")
        length = int.from_bytes(data[start : start + count], "big")
        if length < 0x80 or data[start] == 0:
            raise DecodeError(f"DER: non-minimal length encoding at offset {pos}")
        start += count
    end = start + length
    if end > len(data):
        raise DecodeError(f"DER: element at offset {pos} runs past the end of the data")
    return tag, start, end


def children(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(tag, element_start, content_start, end) of each element in data[start:end]."""
    pos = start
    while pos < end:
        tag, cstart, cend = read_tlv(data, pos)
        if cend > end:
            raise DecodeError(f"DER: element at offset {pos} overruns its container")
        yield tag, pos, cstart, cend
        pos = cend


def encode_tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content
