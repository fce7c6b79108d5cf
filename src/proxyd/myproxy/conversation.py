"""The MyProxy v2 conversation as a state machine, shared by our server and our client (sans-I/O).

In the manner of h11: the connection's owner feeds what arrives to
`receive_data`, asks `next_event` for the next complete message (or
NEED_DATA), and writes what `send(event)` returns. Both sides of a
conversation run the same machine, with `Role.SERVER` or `Role.CLIENT`;
`TRANSITIONS` says, as data, which message may come next in which state,
who sends it and where it leads. A message out of turn raises
`ConversationError`, naming the state and the message.

The messages are protocol.py's codec; the framing is PROTOCOLS.md §1:
NUL-terminated text for requests, responses and PEM, raw DER for
certificate requests, one count byte and DER certificates for chains,
the length-prefixed renewal reply of renewal.py, and two single bytes
(the server's 0x00 under TLS 1.3, the client's GSI flag `0`) that each
travel in a TLS record of their own: `send` returns one message at a time.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal, TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from . import protocol as p
from .renewal import reply_length

# A trust-roots answer carries every file of the CA directory; the real server's own
# request limit is the bound for what we accept from a server.
MAX_SERVER_TEXT = 1024 * 1024


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"

    @property
    def peer(self) -> Role:
        return Role.SERVER if self is Role.CLIENT else Role.CLIENT


class State(enum.Enum):
    START = enum.auto()  # the TLS handshake is done, nothing said yet
    READY = enum.auto()  # TLS 1.3: the server sent its 0x00 byte
    AWAITING_REQUEST = enum.auto()  # the client sent its GSI flag
    AWAITING_RESPONSE = enum.auto()  # the request is out; the server answers first
    AWAITING_CHALLENGE_REPLY = enum.auto()  # GET: the server asked for a renewal proof
    AWAITING_CHALLENGE_VERDICT = enum.auto()  # GET: the proof is out
    AWAITING_CSR = enum.auto()  # GET: from the client; PUT: from the server
    AWAITING_CHAIN = enum.auto()  # GET: from the server; PUT: from the client
    AWAITING_PEM = enum.auto()  # STORE: from the client; RETRIEVE: from the server
    AWAITING_FINAL_RESPONSE = enum.auto()  # the server's last OK
    DONE = enum.auto()
    REFUSED = enum.auto()  # the server sent an ERROR; nothing follows


FINAL_STATES: Final = frozenset({State.DONE, State.REFUSED})


class Kind(enum.Enum):
    """What the transition table knows of a message: its type, and a response's RESPONSE=."""

    SERVER_READY = "ServerReady"
    GSI_FLAG = "GsiFlag"
    REQUEST = "Request"
    OK = "Response (OK)"
    ERROR = "Response (ERROR)"
    AUTHORIZATION = "Response (AUTHORIZATION)"
    CHALLENGE_REPLY = "ChallengeReply"
    CSR = "CertificateRequest"
    CHAIN = "Chain"
    PEM = "CredentialPem"


# --- events: the messages, as values --------------------------------------------------------
# A request and a response are protocol.Request and protocol.Response themselves.


@dataclass(frozen=True)
class ServerReady:
    """The server's single 0x00 byte after a TLS 1.3 handshake (the Globus clients wait for it)."""


@dataclass(frozen=True)
class GsiFlag:
    """The client's GSI flag byte `0` (no delegation), in a TLS record of its own."""


@dataclass(frozen=True)
class ChallengeReply:
    """The client's answer to a renewal challenge, checked by renewal.parse_challenge_reply
    against the challenges offered (which only the server's driver holds)."""

    data: bytes = field(repr=False)


@dataclass(frozen=True)
class CertificateRequest:
    """A raw DER PKCS#10 request: the client's in a GET, the server's in a PUT."""

    csr: x509.CertificateSigningRequest


@dataclass(frozen=True)
class Chain:
    """One count byte, then DER certificates: the issued proxy (GET) or the delegated one (PUT)
    first, then its chain."""

    certificates: tuple[x509.Certificate, ...]


@dataclass(frozen=True)
class CredentialPem:
    """STORE (from the client) and RETRIEVE (from the server): PEM text, NUL-terminated on the
    wire; `data` is without the NUL."""

    data: bytes = field(repr=False)


Event: TypeAlias = (
    ServerReady
    | GsiFlag
    | p.Request
    | p.Response
    | ChallengeReply
    | CertificateRequest
    | Chain
    | CredentialPem
)


class Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = Sentinel.NEED_DATA

_RESPONSE_KINDS: Final = {
    p.ResponseType.OK: Kind.OK,
    p.ResponseType.ERROR: Kind.ERROR,
    p.ResponseType.AUTHORIZATION: Kind.AUTHORIZATION,
}
_EVENT_KINDS: Final[Mapping[type, Kind]] = {
    ServerReady: Kind.SERVER_READY,
    GsiFlag: Kind.GSI_FLAG,
    p.Request: Kind.REQUEST,
    ChallengeReply: Kind.CHALLENGE_REPLY,
    CertificateRequest: Kind.CSR,
    Chain: Kind.CHAIN,
    CredentialPem: Kind.PEM,
}


def kind_of(event: Event) -> Kind:
    if isinstance(event, p.Response):
        return _RESPONSE_KINDS[event.type]
    return _EVENT_KINDS[type(event)]


# --- the transition table -------------------------------------------------------------------

Transition: TypeAlias = tuple[Role, State]  # who sends the message, and the state it leads to
Table: TypeAlias = Mapping[tuple[State, Kind], Transition]
_S, _C = Role.SERVER, Role.CLIENT

# Until the request names a command.
_PRELUDE: Final[dict[tuple[State, Kind], Transition]] = {
    (State.START, Kind.SERVER_READY): (_S, State.READY),
    (State.START, Kind.GSI_FLAG): (_C, State.AWAITING_REQUEST),
    (State.READY, Kind.GSI_FLAG): (_C, State.AWAITING_REQUEST),
    # A client that skips the flag byte is served all the same.
    (State.START, Kind.REQUEST): (_C, State.AWAITING_RESPONSE),
    (State.READY, Kind.REQUEST): (_C, State.AWAITING_RESPONSE),
    (State.AWAITING_REQUEST, Kind.REQUEST): (_C, State.AWAITING_RESPONSE),
}

_OK_AND_DONE: Final = {(State.AWAITING_RESPONSE, Kind.OK): (_S, State.DONE)}

# From the request on, by command.
_FLOWS: Final[Mapping[p.Command, dict[tuple[State, Kind], Transition]]] = {
    p.Command.GET: {
        (State.AWAITING_RESPONSE, Kind.OK): (_S, State.AWAITING_CSR),
        (State.AWAITING_RESPONSE, Kind.AUTHORIZATION): (_S, State.AWAITING_CHALLENGE_REPLY),
        (State.AWAITING_CHALLENGE_REPLY, Kind.CHALLENGE_REPLY): (
            _C,
            State.AWAITING_CHALLENGE_VERDICT,
        ),
        (State.AWAITING_CHALLENGE_VERDICT, Kind.OK): (_S, State.AWAITING_CSR),
        (State.AWAITING_CSR, Kind.CSR): (_C, State.AWAITING_CHAIN),
        (State.AWAITING_CHAIN, Kind.CHAIN): (_S, State.AWAITING_FINAL_RESPONSE),
        # The real clients close after the chain; this OK is for everyone else.
        (State.AWAITING_FINAL_RESPONSE, Kind.OK): (_S, State.DONE),
    },
    p.Command.PUT: {
        (State.AWAITING_RESPONSE, Kind.OK): (_S, State.AWAITING_CSR),
        (State.AWAITING_CSR, Kind.CSR): (_S, State.AWAITING_CHAIN),
        (State.AWAITING_CHAIN, Kind.CHAIN): (_C, State.AWAITING_FINAL_RESPONSE),
        (State.AWAITING_FINAL_RESPONSE, Kind.OK): (_S, State.DONE),
    },
    p.Command.STORE: {
        (State.AWAITING_RESPONSE, Kind.OK): (_S, State.AWAITING_PEM),
        (State.AWAITING_PEM, Kind.PEM): (_C, State.AWAITING_FINAL_RESPONSE),
        (State.AWAITING_FINAL_RESPONSE, Kind.OK): (_S, State.DONE),
    },
    p.Command.RETRIEVE: {
        (State.AWAITING_RESPONSE, Kind.OK): (_S, State.AWAITING_PEM),
        (State.AWAITING_PEM, Kind.PEM): (_S, State.AWAITING_FINAL_RESPONSE),
        (State.AWAITING_FINAL_RESPONSE, Kind.OK): (_S, State.DONE),
    },
    p.Command.INFO: _OK_AND_DONE,
    p.Command.DESTROY: _OK_AND_DONE,
    p.Command.CHANGE_CRED_PASSPHRASE: _OK_AND_DONE,
    p.Command.GET_TRUSTROOTS: _OK_AND_DONE,
}


def _with_refusals(rows: Mapping[tuple[State, Kind], Transition]) -> Table:
    """The server may refuse in every state it can reach, also while the client is to speak
    (a CSR or chain that does not parse is answered with an ERROR)."""
    sources = {state for state, _ in rows}
    refusals = {(state, Kind.ERROR): (_S, State.REFUSED) for state in sources}
    return MappingProxyType({**rows, **refusals})


_TABLES: dict[p.Command | None, Table] = {None: _with_refusals(_PRELUDE)}
_TABLES.update((command, _with_refusals(rows)) for command, rows in _FLOWS.items())
TRANSITIONS: Final[Mapping[p.Command | None, Table]] = MappingProxyType(_TABLES)


@functools.cache
def _expected(command: p.Command | None, state: State, sender: Role) -> frozenset[Kind]:
    return frozenset(
        kind
        for (src, kind), (who, _) in TRANSITIONS[command].items()
        if src is state and who is sender
    )


# --- errors ---------------------------------------------------------------------------------


class ConversationError(p.ProtocolError):
    """A message out of turn. The text names the message, the state and the conversation."""

    def __init__(
        self,
        problem: str,
        *,
        state: State,
        role: Role,
        command: p.Command | None,
        kind: Kind | None = None,
    ) -> None:
        what = command.name if command is not None else "before the request"
        super().__init__(
            f"MyProxy conversation: {problem} in state {state.name} ({role.value}, {what})"
        )
        self.state = state
        self.role = role
        self.command = command
        self.kind = kind


# --- the conversation -----------------------------------------------------------------------

_RESPONSES: Final = frozenset({Kind.OK, Kind.ERROR, Kind.AUTHORIZATION})
_TEXT: Final = _RESPONSES | {Kind.REQUEST, Kind.PEM}


def _parse_chain(data: bytes) -> Chain:
    return Chain(tuple(p.parse_certificates(data)))


def _parse_csr(data: bytes) -> CertificateRequest:
    return CertificateRequest(p.parse_csr(data))


# How long a binary message is (None: more is needed), and what it holds.
_BINARY: Final[Mapping[Kind, tuple[Callable[[bytes], int | None], Callable[[bytes], Event]]]] = {
    Kind.CSR: (p.der_length, _parse_csr),
    Kind.CHAIN: (p.chain_length, _parse_chain),
    Kind.CHALLENGE_REPLY: (reply_length, ChallengeReply),
}


def encode(event: Event) -> bytes:
    """The bytes of one message, exactly as each side has always written them."""
    if isinstance(event, ServerReady):
        return b"\x00"
    if isinstance(event, GsiFlag):
        return p.GSI_NO_DELEGATION
    if isinstance(event, p.Request):
        return p.encode_request(event)
    if isinstance(event, p.Response):
        return p.encode_response(event)
    if isinstance(event, ChallengeReply):
        return event.data
    if isinstance(event, CertificateRequest):
        return event.csr.public_bytes(Encoding.DER)
    if isinstance(event, Chain):
        return p.encode_certificates(event.certificates)
    return event.data + b"\0"


class MyProxyConversation:
    """One MyProxy conversation, seen from one side. No I/O: bytes in, events out, and back.

    End of file is the driver's business: no MyProxy message is delimited by the
    connection closing, so a peer that closes mid-message is an error the driver reports.
    """

    def __init__(self, role: Role) -> None:
        self.role = role
        self.state = State.START
        self.command: p.Command | None = None
        self._buffer = b""
        self._paused = False  # peer_paused(): take a NUL-terminated message without its NUL
        self._text_pending = False
        self._broken: str | None = None
        # What the server reads as text is a request (or STORE's PEM), capped as before;
        # the client reads answers, which may carry trust roots.
        if role is Role.SERVER:
            self._text_limit, self._text_name = p.MAX_REQUEST_BYTES, "request"
        else:
            self._text_limit, self._text_name = MAX_SERVER_TEXT, "message from the server"

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def incomplete_text(self) -> bool:
        """Whether the last next_event() wanted more of a NUL-terminated message it has the
        start of. A driver that then hears nothing for a while calls peer_paused()."""
        return self._text_pending

    @property
    def trailing_data(self) -> bytes:
        """Received bytes no event has taken yet."""
        return self._buffer

    # --- receiving ----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        self._buffer += data
        self._text_pending = False

    def peer_paused(self) -> None:
        """The peer went quiet in the middle of a NUL-terminated message: what arrived is the
        whole message (the real server accepts a request without its NUL, and so do we)."""
        if not self._text_pending:
            raise self._error("a pause is meaningful only within a text message")
        self._paused = True

    def next_event(self) -> Event | Literal[Sentinel.NEED_DATA]:
        """The next complete message from the peer, or NEED_DATA. A malformed message raises
        protocol.ProtocolError (its text is safe to send back); a message out of turn raises
        ConversationError. After either, only an ERROR may still be sent."""
        self._text_pending = False
        if self._broken is not None:
            raise self._error(f"nothing can be received after a malformed message ({self._broken})")
        expected = _expected(self.command, self.state, self.role.peer)
        if not expected:
            raise self._error(f"nothing is expected from the {self.role.peer.value}")
        try:
            event = self._frame(expected)
            if event is not NEED_DATA:
                self._advance(event, self.role.peer)
        except p.ProtocolError as exc:
            self._broken = str(exc).split("\n", 1)[0][:200]
            raise
        return event

    def _take(self, size: int) -> bytes:
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def _frame(self, expected: frozenset[Kind]) -> Event | Literal[Sentinel.NEED_DATA]:
        buffer = self._buffer
        if not buffer:
            return NEED_DATA
        if Kind.GSI_FLAG in expected and buffer[:1] == p.GSI_NO_DELEGATION:
            self._take(1)
            return GsiFlag()
        if Kind.SERVER_READY in expected and buffer[:1] == b"\x00":
            self._take(1)
            return ServerReady()
        binary = [kind for kind in expected if kind in _BINARY]
        # A refusal where a binary message was due starts with VERSION=; no binary message
        # starts with a V (DER starts 0x30, a chain with its count, at most 32).
        if binary and not (expected & _RESPONSES and buffer[:1] == b"V"):
            [kind] = binary
            length, parse = _BINARY[kind]
            size = length(buffer)
            return NEED_DATA if size is None else parse(self._take(size))
        if not expected & _TEXT:
            raise self._error(f"byte 0x{buffer[0]:02x} starts no message that may come")
        data = self._take_text()
        if data is None:
            return NEED_DATA
        if Kind.REQUEST in expected:
            return p.parse_request(data)
        if Kind.PEM in expected and not (expected & _RESPONSES and data.startswith(b"VERSION=")):
            return CredentialPem(data.removesuffix(b"\0"))
        return p.parse_response(data)

    def _take_text(self) -> bytes | None:
        end = self._buffer.find(b"\0")
        if end >= 0:
            self._paused = False
            return self._take(end + 1)
        if len(self._buffer) > self._text_limit:
            raise p.ProtocolError(f"{self._text_name} larger than {self._text_limit} bytes")
        if self._paused and self._buffer:
            self._paused = False
            return self._take(len(self._buffer))
        self._text_pending = bool(self._buffer)
        return None

    # --- sending ------------------------------------------------------------------------

    def send(self, event: Event) -> bytes:
        """The bytes to write for `event`, one TLS record's worth; the state moves on."""
        data = encode(event)
        self._advance(event, self.role)
        return data

    # --- the table ----------------------------------------------------------------------

    def _advance(self, event: Event, sender: Role) -> None:
        kind = kind_of(event)
        row = TRANSITIONS[self.command].get((self.state, kind))
        if row is None or row[0] is not sender:
            raise self._error(f"a {kind.value} from the {sender.value} is not expected", kind=kind)
        self.state = row[1]
        if isinstance(event, p.Request):
            self.command = event.command

    def _error(self, problem: str, kind: Kind | None = None) -> ConversationError:
        return ConversationError(
            problem, state=self.state, role=self.role, command=self.command, kind=kind
        )
