"""POSIX extended regular expressions as glibc reads them, matched in linear time.

`parse` reads an ERE into a small tree, refusing (`EreError`, with the index
of the offending character) what glibc's regcomp refuses and what proxyd
will not guess at (see proxyd.patterns for the list and the reasons).
`Matcher` runs a tree against a whole string by simulating its automaton,
one step per character, with the steps it has taken cached (a lazy DFA), so
no pattern, however written, costs more than linear time: patterns come
from requests (per-credential policies), and a backtracking engine would
let `*?*?*?*?*?x` stall a server on any DN. `to_python` writes the same tree
as a Python expression, for people and tests.

POSIX classes are ASCII, as in the C locale.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "MAX_DEPTH",
    "MAX_REPEAT",
    "MAX_STATES",
    "EreError",
    "Matcher",
    "Node",
    "parse",
    "to_python",
]

MAX_REPEAT = 255  # POSIX allows 32767; nothing in a DN needs more
MAX_STATES = 20000  # automaton size: intervals multiply it
MAX_DEPTH = 16  # nested groups, or repeats of a repeat: the tree is walked recursively
_CACHE_LIMIT = 4096  # state sets kept per pattern, then the cache starts over

# POSIX classes as the C locale defines them.
_CLASSES = {
    "alpha": "A-Za-z",
    "digit": "0-9",
    "alnum": "0-9A-Za-z",
    "upper": "A-Z",
    "lower": "a-z",
    "space": " \\t\\n\\r\\f\\v",
    "blank": " \\t",
    "punct": "!-/:-@\\[-`{-~",
    "print": " -~",
    "graph": "!-~",
    "cntrl": "\\x00-\\x1f\\x7f",
    "xdigit": "0-9A-Fa-f",
}
_QUANTIFIERS = "*+?"
_SIMPLE: dict[str, tuple[int, int | None]] = {"*": (0, None), "+": (1, None), "?": (0, 1)}


class EreError(ValueError):
    """An ERE refused: `index` of the offending character in the ERE, and `why`."""

    def __init__(self, index: int, why: str) -> None:
        self.index = index
        self.why = why
        super().__init__(f"character {index + 1}: {why}")


@dataclass(frozen=True)
class Atom:
    """One character: a Python expression that matches exactly one (literal, `.`, class)."""

    text: str


@dataclass(frozen=True)
class Anchor:
    kind: str  # "^" or "$"


@dataclass(frozen=True)
class Cat:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Alt:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Group:
    inner: Node


@dataclass(frozen=True)
class Rep:
    inner: Node
    low: int
    high: int | None


Node = Atom | Anchor | Cat | Alt | Group | Rep


def _depth(node: Node) -> int:
    """How many repeats are stacked on this atom or group (`a**` has two)."""
    depth = 0
    while isinstance(node, Rep):
        node, depth = node.inner, depth + 1
    return depth


def _alternatives(alts: list[Node], seq: list[Node]) -> Node:
    last = Cat(tuple(seq))
    return Alt((*alts, last)) if alts else last


def _class_char(ch: str) -> str:
    return "\\" + ch if ch.isascii() and not ch.isalnum() else ch


class _Parser:
    """One ERE body (what MyProxy puts between its `^(` and `)$`) into a tree."""

    def __init__(self, chars: str) -> None:
        self.chars = chars
        self.i = 0

    def fail(self, why: str, at: int | None = None) -> EreError:
        return EreError(self.i if at is None else at, why)

    def peek(self, ahead: int = 0) -> str | None:
        j = self.i + ahead
        return self.chars[j] if j < len(self.chars) else None

    def run(self) -> Node:
        stack: list[tuple[list[Node], list[Node], int]] = []
        alts: list[Node] = []
        seq: list[Node] = []
        last = "none"  # none (start, after `(` or `|`), anchor, atom, quantified
        while self.i < len(self.chars):
            ch = self.chars[self.i]
            start = self.i
            self.i += 1
            if ch in _QUANTIFIERS or ch == "{":
                if last in ("none", "anchor"):
                    raise self.fail(f"{ch!r} has nothing to repeat", start)
                low, high = _SIMPLE[ch] if ch != "{" else self.interval(start)
                if _depth(seq[-1]) >= MAX_DEPTH:
                    raise self.fail(f"more than {MAX_DEPTH} repetitions of a repetition", start)
                seq[-1] = Rep(seq[-1], low, high)  # POSIX allows `a**`: a repeat repeated
                last = "quantified"
            elif ch == "(":
                if len(stack) >= MAX_DEPTH:
                    raise self.fail(f"parentheses nested more than {MAX_DEPTH} deep", start)
                stack.append((alts, seq, start))
                alts, seq, last = [], [], "none"
            elif ch == ")":
                if not stack:
                    raise self.fail(
                        "this ')' has no '(' and would close the '^(' that MyProxy wraps "
                        "every pattern in, so the pattern would match DNs that merely start "
                        "or end with part of it; write '\\)' for a literal parenthesis",
                        start,
                    )
                group = _alternatives(alts, seq)
                alts, seq, _ = stack.pop()
                seq.append(Group(group))
                last = "atom"
            elif ch == "|":
                alts.append(Cat(tuple(seq)))
                seq, last = [], "none"
            elif ch in "^$":
                seq.append(Anchor(ch))
                last = "anchor"
            else:
                if ch == ".":
                    seq.append(Atom("."))
                elif ch == "[":
                    seq.append(Atom(self.bracket(start)))
                elif ch == "\\":
                    seq.append(Atom(self.escape(start)))
                else:
                    seq.append(Atom(re.escape(ch)))
                last = "atom"
        if stack:
            raise self.fail(
                "this '(' is never closed; for a literal parenthesis write '\\('", stack[-1][2]
            )
        return _alternatives(alts, seq)

    def escape(self, start: int) -> str:
        nxt = self.peek()
        if nxt is None:
            raise self.fail(
                "an escaped backslash at the end escapes MyProxy's closing ')', and "
                "myproxy-server cannot compile the result (it matches no one)",
                start,
            )
        self.i += 1
        if nxt.isascii() and nxt.isalnum():
            what = (
                "a back-reference"
                if nxt.isdigit()
                else "a GNU or Perl escape (POSIX gives it no meaning)"
            )
            raise self.fail(f"'\\{nxt}' is {what}; proxyd refuses it rather than guess", start)
        if nxt in "<>`'":
            raise self.fail(f"'\\{nxt}' is a GNU word or buffer anchor, not POSIX", start)
        return re.escape(nxt)

    def interval(self, start: int) -> tuple[int, int | None]:
        text = ""
        while (ch := self.peek()) is not None and ch != "}":
            text += ch
            self.i += 1
        if self.peek() != "}":
            raise self.fail(
                "'{' starts an interval such as {2} or {1,3}; for a literal brace write '\\{'",
                start,
            )
        self.i += 1
        match = re.fullmatch(r"([0-9]*)(,?)([0-9]*)", text)
        if match is None or not (match.group(1) or match.group(2)):
            raise self.fail(f"'{{{text}}}' is not an interval such as {{2}} or {{1,3}}", start)
        low_text, comma, high_text = match.groups()
        low = int(low_text) if low_text else 0
        high = int(high_text) if high_text else None
        if max(low, high or 0) > MAX_REPEAT:
            raise self.fail(f"an interval over {MAX_REPEAT} repetitions", start)
        if high is not None and high < low:
            raise self.fail(f"the interval '{{{text}}}' runs backwards", start)
        return low, (high if comma else low)

    def bracket(self, start: int) -> str:
        members: list[str] = []
        negate = self.peek() == "^"
        if negate:
            self.i += 1
        first = True
        raw = ""  # the text of the expression, for the `[:alpha:]` trap
        while True:
            ch = self.peek()
            if ch is None:
                raise self.fail("this '[' is never closed", start)
            if ch == "]" and not first:
                self.i += 1
                break
            first = False
            if ch == "[" and self.peek(1) in (":", ".", "="):
                kind = self.peek(1)
                item = self.bracket_item(start)
                if kind == ":":
                    members.append(item)
                    raw += "\0"
                    if self.peek() == "-" and self.peek(1) not in ("]", None):
                        raise self.fail("a class cannot start a range", self.i)
                    continue
                low = item
            else:
                self.i += 1
                raw += ch
                low = ch
            if self.peek() == "-" and self.peek(1) not in ("]", None):
                self.i += 1
                if self.peek() == "[" and self.peek(1) in (":", ".", "="):
                    if self.peek(1) == ":":
                        raise self.fail("a class cannot end a range", self.i)
                    high = self.bracket_item(start)
                else:
                    high = self.peek() or ""
                    self.i += 1
                if ord(high) < ord(low):
                    raise self.fail(f"the range '{low}-{high}' runs backwards", start)
                members.append(f"{_class_char(low)}-{_class_char(high)}")
                raw += "-" + high
            else:
                members.append(_class_char(low))
        if not negate and len(raw) > 2 and raw[0] == ":" and raw[-1] == ":":
            raise self.fail(
                f"'[{raw}]' is the set of the characters {raw!r}, not the class it looks "
                f"like; write '[[{raw}]]' for the class",
                start,
            )
        return "[" + ("^" if negate else "") + "".join(members) + "]"

    def bracket_item(self, start: int) -> str:
        """`[:name:]` (a class, as Python class text) or `[.c.]` / `[=c=]` (the one character)."""
        kind = self.peek(1) or ""
        self.i += 2
        text = ""
        while not (self.peek() == kind and self.peek(1) == "]"):
            ch = self.peek()
            if ch is None:
                raise self.fail(f"'[{kind}' is never closed by '{kind}]'", start)
            text += ch
            self.i += 1
        self.i += 2
        if kind == ":":
            if text not in _CLASSES:
                raise self.fail(
                    f"'[:{text}:]' is no POSIX class (known: {', '.join(sorted(_CLASSES))})",
                    start,
                )
            return _CLASSES[text]
        if len(text) != 1:
            raise self.fail(
                f"'[{kind}{text}{kind}]': only one-character collating elements and "
                "equivalence classes are supported",
                start,
            )
        return text


def parse(ere: str) -> Node:
    """The tree of an ERE body; EreError for what is refused."""
    tree = _Parser(ere).run()
    if _size(tree) > MAX_STATES:
        raise EreError(0, "too complex: its intervals make too large an automaton")
    return tree


def _size(node: Node) -> int:
    if isinstance(node, Atom | Anchor):
        return 1
    if isinstance(node, Cat | Alt):
        return 1 + sum(_size(n) for n in node.items)
    if isinstance(node, Group):
        return _size(node.inner)
    copies = node.low if node.high is None else node.high
    return 1 + max(copies, 1) * _size(node.inner)


def to_python(node: Node) -> str:
    """The tree as a Python expression with the same meaning (use it with fullmatch,
    re.DOTALL)."""
    if isinstance(node, Atom):
        return node.text
    if isinstance(node, Anchor):
        return "^" if node.kind == "^" else "\\Z"
    if isinstance(node, Cat):
        return "".join(to_python(n) for n in node.items)
    if isinstance(node, Alt):
        return "|".join(to_python(n) for n in node.items)
    if isinstance(node, Group):
        return f"(?:{to_python(node.inner)})"
    inner = to_python(node.inner)
    if not isinstance(node.inner, Atom | Group):
        inner = f"(?:{inner})"  # a repeat of a repeat: Python would read `a*+` otherwise
    high = "" if node.high is None else str(node.high)
    if (node.low, node.high) in ((0, None), (1, None), (0, 1)):
        quantifier = {(0, None): "*", (1, None): "+", (0, 1): "?"}[(node.low, node.high)]
    elif node.low == node.high:
        quantifier = f"{{{node.low}}}"
    else:
        quantifier = f"{{{node.low},{high}}}"
    return inner + quantifier


# --- the automaton -------------------------------------------------------------------------------

_CHAR, _SPLIT, _BOL, _EOL, _MATCH = range(5)


class Matcher:
    """A tree compiled to an automaton (Thompson's construction); `fullmatch` in linear time."""

    def __init__(self, tree: Node, *, ignore_case: bool = False) -> None:
        flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
        self._kind: list[int] = []
        self._out: list[int] = []
        self._alt: list[int] = []
        self._atoms: list[re.Pattern[str]] = []
        self._atom_of: list[int] = []
        self._flags = flags
        self._atom_index: dict[str, int] = {}
        match = self._state(_MATCH)
        self._start = self._build(tree, match)
        # The lazy DFA: state sets met so far, numbered, and the steps taken from each.
        self._first = self._closure((self._start,), at_start=True, at_end=False)
        self._reset()

    def _state(self, kind: int, out: int = -1, alt: int = -1, atom: int = -1) -> int:
        self._kind.append(kind)
        self._out.append(out)
        self._alt.append(alt)
        self._atom_of.append(atom)
        return len(self._kind) - 1

    def _atom(self, text: str) -> int:
        if text not in self._atom_index:
            self._atom_index[text] = len(self._atoms)
            self._atoms.append(re.compile(text, self._flags))
        return self._atom_index[text]

    def _build(self, node: Node, after: int) -> int:
        """The start state of `node`, continuing to `after`."""
        if isinstance(node, Atom):
            return self._state(_CHAR, out=after, atom=self._atom(node.text))
        if isinstance(node, Anchor):
            return self._state(_BOL if node.kind == "^" else _EOL, out=after)
        if isinstance(node, Group):
            return self._build(node.inner, after)
        if isinstance(node, Cat):
            for item in reversed(node.items):
                after = self._build(item, after)
            return after
        if isinstance(node, Alt):
            starts = [self._build(item, after) for item in node.items]
            start = starts[-1]
            for other in reversed(starts[:-1]):
                start = self._state(_SPLIT, out=other, alt=start)
            return start
        if node.high is None:  # low copies, then a loop
            loop = self._state(_SPLIT, alt=after)
            self._out[loop] = self._build(node.inner, loop)
            start = loop
        else:  # low copies, then high - low optional ones
            start = after
            for _ in range(node.high - node.low):
                start = self._state(_SPLIT, out=self._build(node.inner, start), alt=after)
        for _ in range(node.low):
            start = self._build(node.inner, start)
        return start

    def _closure(
        self, seeds: tuple[int, ...] | list[int], *, at_start: bool, at_end: bool
    ) -> frozenset[int]:
        """The states reachable without reading: character states, the match state, and
        end anchors not yet passable (kept for the end)."""
        seen: set[int] = set()
        found: set[int] = set()
        todo = list(seeds)
        while todo:
            state = todo.pop()
            if state in seen:
                continue
            seen.add(state)
            kind = self._kind[state]
            if kind == _SPLIT:
                todo += (self._out[state], self._alt[state])
            elif kind == _BOL:
                if at_start:
                    todo.append(self._out[state])
            elif kind == _EOL:
                if at_end:
                    todo.append(self._out[state])
                else:
                    found.add(state)
            else:
                found.add(state)
        return frozenset(found)

    def _reset(self) -> None:
        self._numbers: dict[frozenset[int], int] = {self._first: 0}
        self._sets: list[frozenset[int]] = [self._first]
        self._steps: list[dict[str, int]] = [{}]

    def _step(self, current: int, char: str) -> int:
        seeds = [
            self._out[s]
            for s in self._sets[current]
            if self._kind[s] == _CHAR and self._atoms[self._atom_of[s]].fullmatch(char)
        ]
        states = self._closure(seeds, at_start=False, at_end=False)
        number = self._numbers.get(states)
        if number is None:
            number = len(self._sets)
            self._numbers[states] = number
            self._sets.append(states)
            self._steps.append({})
        self._steps[current][char] = number
        return number

    def fullmatch(self, text: str) -> bool:
        if len(self._sets) > _CACHE_LIMIT:  # between matches, so no number in use goes stale
            self._reset()
        current = 0
        steps = self._steps
        for char in text:
            nxt = steps[current].get(char)
            current = self._step(current, char) if nxt is None else nxt
        states = self._sets[current]
        ends = [s for s in states if self._kind[s] in (_EOL, _MATCH)]
        final = self._closure(ends, at_start=not text, at_end=True)
        return any(self._kind[s] == _MATCH for s in final)
