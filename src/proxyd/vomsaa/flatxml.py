"""A strict reader for the flat XML of the VOMS AA protocols (proxyd.vomsaa.wire).

The vocabulary is fixed and flat (`<voms><command>..</command></voms>`,
`<vomsans><error><item>..</item></error><ac>..</ac></vomsans>`), so it is read by
a tokenizer that accepts only elements without attributes, text and the five
predefined entities: no DTD, no processing instructions beyond the XML
declaration, nothing an untrusted peer could make expensive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


class WireError(ValueError):
    """A request or answer that does not follow the protocol; the message says what, where, why."""


_DECL = re.compile(rb"\s*<\?xml[^?>]*\?>\s*")
_TOKEN = re.compile(rb"<(/?)([A-Za-z][A-Za-z0-9_]*)>|([^<]+)")
_ENTITIES = {b"&lt;": b"<", b"&gt;": b">", b"&amp;": b"&", b"&quot;": b'"', b"&apos;": b"'"}
_ENTITY = re.compile(rb"&[^;&<]*;?")
ESCAPE = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
_MAX_DEPTH = 4


@dataclass
class Element:
    tag: str
    text: str = ""
    children: list[Element] = field(default_factory=list)

    def all(self, tag: str) -> list[Element]:
        return [c for c in self.children if c.tag == tag]

    def one(self, tag: str, where: str) -> Element | None:
        found = self.all(tag)
        if len(found) > 1:
            raise WireError(f"{where}: <{tag}> appears {len(found)} times, at most once allowed")
        return found[0] if found else None


def unescape(raw: bytes, where: str) -> str:
    def sub(m: re.Match[bytes]) -> bytes:
        try:
            return _ENTITIES[m.group(0)]
        except KeyError:
            raise WireError(f"{where}: unsupported entity {m.group(0)[:16]!r}") from None

    try:
        return _ENTITY.sub(sub, raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(f"{where}: not UTF-8 at byte {exc.start}") from None


def read_xml(data: bytes, root: str, what: str) -> Element:
    decl = _DECL.match(data)
    pos = decl.end() if decl else 0
    stack: list[Element] = []
    top: Element | None = None
    end = len(data.rstrip())
    while pos < end:
        m = _TOKEN.match(data, pos)
        if m is None:
            snippet = data[pos : pos + 24]
            raise WireError(f"{what}: unexpected markup {snippet!r} at byte {pos}")
        closing, tag_b, text = m.group(1), m.group(2), m.group(3)
        if text is not None:
            if stack:
                stack[-1].text += unescape(text, f"{what}, <{stack[-1].tag}>")
            elif text.strip():
                raise WireError(f"{what}: text outside <{root}> at byte {pos}")
        else:
            tag = tag_b.decode("ascii")
            if closing:
                if not stack or stack[-1].tag != tag:
                    open_tag = stack[-1].tag if stack else "nothing"
                    raise WireError(f"{what}: </{tag}> at byte {pos} closes <{open_tag}>")
                done = stack.pop()
                if not stack:
                    top = done
                    if data[m.end() :].strip():
                        raise WireError(f"{what}: data after </{root}> at byte {m.end()}")
                    break
            else:
                if top is not None or (not stack and tag != root):
                    raise WireError(f"{what}: expected <{root}>, found <{tag}> at byte {pos}")
                if len(stack) >= _MAX_DEPTH:
                    raise WireError(f"{what}: elements nested deeper than {_MAX_DEPTH}")
                element = Element(tag)
                if stack:
                    stack[-1].children.append(element)
                stack.append(element)
        pos = m.end()
    if top is None:
        if stack:
            raise WireError(f"{what}: truncated, <{stack[-1].tag}> is never closed")
        raise WireError(f"{what}: no <{root}> element")
    return top
