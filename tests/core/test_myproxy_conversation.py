"""The MyProxy conversation state machine (proxyd.myproxy.conversation), without sockets.

Every transition of the table, from both sides; every event out of turn refused with
the state and the event named; the same events whatever the bytes' split; the wire
bytes exactly the codec's. Also the renewal-challenge choice (proxyd.policy.challenge).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
from collections import deque
from collections.abc import Iterator, Sequence

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxyd.config import PolicyConfig
from proxyd.myproxy import protocol as p
from proxyd.myproxy.conversation import (
    FINAL_STATES,
    NEED_DATA,
    TRANSITIONS,
    CertificateRequest,
    Chain,
    ChallengeReply,
    ConversationError,
    CredentialPem,
    Event,
    GsiFlag,
    Kind,
    MyProxyConversation,
    Role,
    ServerReady,
    State,
    encode,
)
from proxyd.policy.challenge import may_need_renewal_challenge, needs_renewal_challenge
from proxyd.policy.model import CredentialFacts
from proxyd.principal import Principal, PrincipalKind, anonymous

S, C = Role.SERVER, Role.CLIENT
_KEY = ec.generate_private_key(ec.SECP256R1())


def _cert(cn: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(_KEY.public_key())
        .serial_number(abs(hash(cn)) % 2**60 + 1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(_KEY, hashes.SHA256())
    )


CERTS = (_cert("proxy"), _cert("user"))
CSR = (
    x509.CertificateSigningRequestBuilder()
    .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "proxy")]))
    .sign(_KEY, hashes.SHA256())
)
SIGNATURE = bytes(range(64))
REPLY = bytes([4, 0, 0, 0]) + len(SIGNATURE).to_bytes(4, "big") + SIGNATURE
REPLY += p.encode_certificates(CERTS)
PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def sample(kind: Kind, command: p.Command) -> Event:
    """One event of each kind, as the peers of a `command` conversation would send it."""
    events: dict[Kind, Event] = {
        Kind.SERVER_READY: ServerReady(),
        Kind.GSI_FLAG: GsiFlag(),
        Kind.REQUEST: p.Request(command, username="alice", passphrase="secret1", lifetime=3600),
        Kind.OK: p.ok_response([("CRED_OWNER", "/DC=org/CN=alice")]),
        Kind.ERROR: p.error_response("Bad password", "invalid credential passphrase"),
        Kind.AUTHORIZATION: p.Response(
            p.ResponseType.AUTHORIZATION, authorization=(("X509_certificate_SHA256", "ab" * 16),)
        ),
        Kind.CHALLENGE_REPLY: ChallengeReply(REPLY),
        Kind.CSR: CertificateRequest(CSR),
        Kind.CHAIN: Chain(CERTS),
        Kind.PEM: CredentialPem(PEM),
    }
    return events[kind]


Step = tuple[Kind, Role]


def _paths(command: p.Command) -> dict[tuple[p.Command | None, State], list[Step]]:
    """The shortest way to reach every state of a `command` conversation, from the start."""
    paths: dict[tuple[p.Command | None, State], list[Step]] = {(None, State.START): []}
    todo: deque[tuple[p.Command | None, State]] = deque([(None, State.START)])
    while todo:
        table_key, state = todo.popleft()
        for (src, kind), (sender, nxt) in TRANSITIONS[table_key].items():
            if src is not state:
                continue
            key = (command if kind is Kind.REQUEST else table_key, nxt)
            if key not in paths:
                paths[key] = [*paths[(table_key, state)], (kind, sender)]
                todo.append(key)
    return paths


def drive(role: Role, command: p.Command, path: Sequence[Step]) -> MyProxyConversation:
    conv = MyProxyConversation(role)
    for kind, sender in path:
        event = sample(kind, command)
        if sender is role:
            conv.send(event)
        else:
            conv.receive_data(encode(event))
            assert conv.next_event() == event
    return conv


def _rows() -> Iterator[tuple[p.Command, p.Command | None, State, Kind]]:
    for command in p.Command:
        for table_key in (None, command):
            for state, kind in TRANSITIONS[table_key]:
                if table_key is None and command is not p.Command.GET:
                    continue  # the prelude is the same for every command: walk it once
                yield command, table_key, state, kind


@pytest.mark.parametrize(
    ("command", "table_key", "state", "kind"),
    list(_rows()),
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_every_allowed_transition_from_both_sides(
    command: p.Command, table_key: p.Command | None, state: State, kind: Kind
) -> None:
    sender, nxt = TRANSITIONS[table_key][(state, kind)]
    path = _paths(command)[(table_key, state)]
    event = sample(kind, command)

    speaker = drive(sender, command, path)
    assert speaker.state is state
    data = speaker.send(event)
    assert data == encode(event)
    assert speaker.state is nxt

    listener = drive(sender.peer, command, path)
    listener.receive_data(data)
    assert listener.next_event() == event
    assert listener.state is nxt
    assert listener.trailing_data == b""


def test_every_state_is_used_and_every_conversation_can_end() -> None:
    used = {state for table in TRANSITIONS.values() for state, _ in table}
    used |= {nxt for table in TRANSITIONS.values() for _, nxt in table.values()}
    assert used == set(State)
    for command in p.Command:
        reached = {state for key, state in _paths(command) if key in (None, command)}
        assert {State.DONE, State.REFUSED} <= reached, command


@pytest.mark.parametrize("command", list(p.Command), ids=lambda c: c.name)
def test_every_event_out_of_turn_is_refused_naming_state_and_event(command: p.Command) -> None:
    checked = 0
    for (table_key, state), path in _paths(command).items():
        for role in Role:
            for kind in Kind:
                row = TRANSITIONS[table_key].get((state, kind))
                if row is not None and row[0] is role:
                    continue
                conv = drive(role, command, path)
                with pytest.raises(ConversationError) as err:
                    conv.send(sample(kind, command))
                message = str(err.value)
                assert message.startswith("MyProxy conversation: ")
                assert state.name in message and kind.value in message, message
                assert f"({role.value}, " in message
                assert err.value.state is state and err.value.kind is kind
                assert conv.state is state, "a refused event moved the state"
                checked += 1
    assert checked > 100


def test_the_error_reads_as_a_sentence() -> None:
    conv = drive(S, p.Command.PUT, _paths(p.Command.PUT)[(p.Command.PUT, State.AWAITING_CHAIN)])
    with pytest.raises(ConversationError) as err:
        conv.send(p.ok_response())
    assert str(err.value) == (
        "MyProxy conversation: a Response (OK) from the server is not expected "
        "in state AWAITING_CHAIN (server, PUT)"
    )
    # the same message, but from the wrong side
    with pytest.raises(ConversationError, match=r"a Chain from the server .* AWAITING_CHAIN"):
        conv.send(Chain(CERTS))


def test_a_received_message_out_of_turn_is_refused() -> None:
    """INFO has no renewal challenge: a client that gets one says so, and stops listening."""
    conv = drive(C, p.Command.INFO, [(Kind.GSI_FLAG, C), (Kind.REQUEST, C)])
    conv.receive_data(encode(sample(Kind.AUTHORIZATION, p.Command.INFO)))
    with pytest.raises(ConversationError) as err:
        conv.next_event()
    assert "Response (AUTHORIZATION) from the server is not expected" in str(err.value)
    assert "AWAITING_RESPONSE (client, INFO)" in str(err.value)
    with pytest.raises(ConversationError, match="after a malformed message"):
        conv.next_event()


def test_nothing_is_received_while_it_is_our_turn() -> None:
    conv = drive(S, p.Command.GET, [(Kind.GSI_FLAG, C), (Kind.REQUEST, C)])
    with pytest.raises(ConversationError, match="nothing is expected from the client"):
        conv.next_event()
    done = drive(C, p.Command.DESTROY, [(Kind.GSI_FLAG, C), (Kind.REQUEST, C), (Kind.OK, S)])
    assert done.finished
    with pytest.raises(ConversationError, match="in state DONE"):
        done.next_event()


# --- whole conversations, as the wire carries them ---------------------------------------

Script = list[tuple[Role, Event]]


def _script(command: p.Command, *kinds: tuple[Kind, Role]) -> Script:
    return [(sender, sample(kind, command)) for kind, sender in kinds]


SCRIPTS: dict[str, Script] = {
    "get": _script(
        p.Command.GET,
        (Kind.GSI_FLAG, C),
        (Kind.REQUEST, C),
        (Kind.OK, S),
        (Kind.CSR, C),
        (Kind.CHAIN, S),
        (Kind.OK, S),
    ),
    "get-tls13-renewal": _script(
        p.Command.GET,
        (Kind.SERVER_READY, S),
        (Kind.GSI_FLAG, C),
        (Kind.REQUEST, C),
        (Kind.AUTHORIZATION, S),
        (Kind.CHALLENGE_REPLY, C),
        (Kind.OK, S),
        (Kind.CSR, C),
        (Kind.CHAIN, S),
        (Kind.OK, S),
    ),
    "get-refused-after-csr": _script(
        p.Command.GET,
        (Kind.GSI_FLAG, C),
        (Kind.REQUEST, C),
        (Kind.OK, S),
        (Kind.CSR, C),
        (Kind.ERROR, S),
    ),
    "put": _script(
        p.Command.PUT,
        (Kind.GSI_FLAG, C),
        (Kind.REQUEST, C),
        (Kind.OK, S),
        (Kind.CSR, S),
        (Kind.CHAIN, C),
        (Kind.OK, S),
    ),
    "store": _script(
        p.Command.STORE,
        (Kind.SERVER_READY, S),
        (Kind.GSI_FLAG, C),
        (Kind.REQUEST, C),
        (Kind.OK, S),
        (Kind.PEM, C),
        (Kind.OK, S),
    ),
    "retrieve": _script(
        p.Command.RETRIEVE,
        (Kind.GSI_FLAG, C),
        (Kind.REQUEST, C),
        (Kind.OK, S),
        (Kind.PEM, S),
        (Kind.OK, S),
    ),
    "retrieve-refused": _script(
        p.Command.RETRIEVE, (Kind.GSI_FLAG, C), (Kind.REQUEST, C), (Kind.ERROR, S)
    ),
    "info-no-flag": _script(p.Command.INFO, (Kind.REQUEST, C), (Kind.OK, S)),
    "destroy": _script(p.Command.DESTROY, (Kind.GSI_FLAG, C), (Kind.REQUEST, C), (Kind.OK, S)),
}


def _split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def play(role: Role, script: Script, chunks: Sequence[bytes]) -> tuple[list[Event], State]:
    """Run `script` from `role`'s side, the peer's bytes arriving as `chunks`."""
    conv = MyProxyConversation(role)
    pending = iter(chunks)
    received: list[Event] = []
    for sender, event in script:
        if sender is role:
            conv.send(event)
            continue
        while (got := conv.next_event()) is NEED_DATA:
            conv.receive_data(next(pending))
        received.append(got)
    assert conv.trailing_data == b"" and next(pending, None) is None
    return received, conv.state


def _peer_bytes(role: Role, script: Script) -> bytes:
    return b"".join(encode(event) for sender, event in script if sender is role.peer)


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
@pytest.mark.parametrize("name", list(SCRIPTS))
def test_byte_at_a_time_gives_the_same_events_as_one_chunk(name: str, role: Role) -> None:
    script = SCRIPTS[name]
    data = _peer_bytes(role, script)
    whole = play(role, script, [data])
    assert whole[0] == [event for sender, event in script if sender is role.peer]
    assert whole[1] in FINAL_STATES
    assert play(role, script, [data[i : i + 1] for i in range(len(data))]) == whole


@settings(
    max_examples=300, derandomize=True, database=None, deadline=None,
    suppress_health_check=list(HealthCheck),
)  # fmt: skip
@given(
    name=st.sampled_from(sorted(SCRIPTS)),
    role=st.sampled_from(list(Role)),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=40),
)
def test_any_split_gives_the_same_events(name: str, role: Role, cuts: list[int]) -> None:
    script = SCRIPTS[name]
    data = _peer_bytes(role, script)
    assert play(role, script, _split(data, cuts)) == play(role, script, [data])


def test_the_wire_bytes_are_the_codec_s_one_message_per_send() -> None:
    """What the server wrote before the state machine, message for message."""
    server = MyProxyConversation(S)
    assert server.send(ServerReady()) == b"\x00"
    server.receive_data(b"0")
    assert server.next_event() == GsiFlag()
    request = p.Request(p.Command.GET, username="alice", passphrase="secret1", lifetime=60)
    server.receive_data(p.encode_request(request))
    assert server.next_event() == request
    assert server.send(p.ok_response([("A", "b")])) == p.ok([("A", "b")])
    server.receive_data(CSR.public_bytes(Encoding.DER))
    assert server.next_event() == CertificateRequest(CSR)
    assert server.send(Chain(CERTS)) == p.encode_certificates(CERTS)
    assert server.send(p.ok_response()) == p.ok()
    assert server.state is State.DONE

    client = MyProxyConversation(C)
    assert client.send(GsiFlag()) == p.GSI_NO_DELEGATION == b"0"
    assert client.send(request) == p.encode_request(request)
    retrieve = MyProxyConversation(S)
    retrieve.receive_data(b"0" + p.encode_request(p.Request(p.Command.RETRIEVE, "a", "b", 1)))
    retrieve.next_event()
    retrieve.next_event()
    retrieve.send(p.ok_response())
    assert retrieve.send(CredentialPem(PEM)) == PEM + b"\0"


# --- the server's tolerances and limits -----------------------------------------------------

REQUEST = p.encode_request(p.Request(p.Command.INFO, "alice", "DUMMY-PASSPHRASE", 0))


def test_a_request_without_its_nul_is_complete_once_the_client_pauses() -> None:
    server = MyProxyConversation(S)
    server.receive_data(b"0" + REQUEST[:-1])
    assert server.next_event() == GsiFlag()
    assert server.next_event() is NEED_DATA
    assert server.incomplete_text
    server.peer_paused()
    assert server.next_event() == p.parse_request(REQUEST)
    assert server.state is State.AWAITING_RESPONSE


def test_a_pause_outside_a_text_message_is_refused() -> None:
    server = MyProxyConversation(S)
    assert server.next_event() is NEED_DATA
    assert not server.incomplete_text
    with pytest.raises(ConversationError, match="pause"):
        server.peer_paused()


def test_a_client_that_skips_the_flag_is_served() -> None:
    server = MyProxyConversation(S)
    server.receive_data(REQUEST)
    assert server.next_event() == p.parse_request(REQUEST)


def test_a_request_that_never_ends_is_refused_at_the_old_limit() -> None:
    server = MyProxyConversation(S)
    server.receive_data(b"0" + b"A" * (p.MAX_REQUEST_BYTES + 1))
    server.next_event()
    with pytest.raises(p.ProtocolError, match=f"request larger than {p.MAX_REQUEST_BYTES} bytes"):
        server.next_event()
    # nothing more is read, but the server may still answer
    with pytest.raises(ConversationError):
        server.next_event()
    assert server.send(p.error_response("too large")) == p.error("too large")
    assert server.state is State.REFUSED


def test_a_pem_csr_is_refused_with_the_message_the_clients_know() -> None:
    server = drive(S, p.Command.GET, [(Kind.GSI_FLAG, C), (Kind.REQUEST, C), (Kind.OK, S)])
    server.receive_data(CSR.public_bytes(Encoding.PEM))
    with pytest.raises(p.ProtocolError, match=r"expected a DER SEQUENCE \(raw DER, not PEM\)"):
        server.next_event()


def test_the_client_reads_a_refusal_where_a_chain_or_pem_was_due() -> None:
    for command, path in (
        (p.Command.GET, [(Kind.GSI_FLAG, C), (Kind.REQUEST, C), (Kind.OK, S), (Kind.CSR, C)]),
        (p.Command.RETRIEVE, [(Kind.GSI_FLAG, C), (Kind.REQUEST, C), (Kind.OK, S)]),
        (p.Command.PUT, [(Kind.GSI_FLAG, C), (Kind.REQUEST, C), (Kind.OK, S)]),
    ):
        client = drive(C, command, path)
        client.receive_data(p.error("Unable to delegate credentials."))
        event = client.next_event()
        assert isinstance(event, p.Response) and event.errors == (
            "Unable to delegate credentials.",
        )
        assert client.state is State.REFUSED


# --- the renewal-challenge choice ------------------------------------------------------------

ALICE = "/DC=org/DC=example/CN=alice"
WMS = "/DC=org/DC=example/CN=wms.example.org"
POLICY = PolicyConfig(authorized_renewers=("*",), trusted_retrievers=("*/CN=wms.example.org",))
T0 = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)


def stored(
    sealed: bool = False,
    owner: str = ALICE,
    trusted_retrievers: tuple[str, ...] | None = None,
    renewers: tuple[str, ...] | None = None,
) -> CredentialFacts:
    return CredentialFacts(
        owner,
        "default",
        sealed,
        T0,
        dt.timedelta(hours=12),
        renewers=renewers,
        trusted_retrievers=trusted_retrievers,
    )


@pytest.mark.parametrize(
    ("principal", "credential", "expected"),
    [
        (Principal(ALICE, PrincipalKind.USER), stored(), True),
        (Principal(ALICE, PrincipalKind.USER), stored(sealed=True), False),  # its passphrase
        (Principal(ALICE, PrincipalKind.USER), None, False),  # no credential: not found
        (Principal(WMS, PrincipalKind.HOST), stored(), False),  # a trusted retriever of it
        (Principal(ALICE, PrincipalKind.PILOT), stored(), False),  # I2: pilots never renew
        (anonymous("127.0.0.1"), stored(), False),
        # Trusted by the server, not by the credential (myproxy-init -Z): offered renewal.
        (Principal(WMS, PrincipalKind.HOST), stored(trusted_retrievers=("*/CN=other",)), True),
        # Its own credential, allow_self_authorization off: not a trusted retriever of it.
        (Principal(WMS, PrincipalKind.HOST), stored(owner=WMS), True),
        # ... but not if the credential's own renewers (myproxy-init -R) leave it out.
        (
            Principal(WMS, PrincipalKind.HOST),
            stored(trusted_retrievers=("*/CN=other",), renewers=("*/CN=other",)),
            False,
        ),
        (Principal(ALICE, PrincipalKind.USER), stored(renewers=("*/CN=bob",)), False),
    ],
)
def test_who_is_challenged(
    principal: Principal, credential: CredentialFacts | None, expected: bool
) -> None:
    assert needs_renewal_challenge(principal, POLICY, credential=credential) is expected
    if expected:
        assert may_need_renewal_challenge(principal, POLICY)


def test_the_servers_default_lists_stand_for_a_credential_without_its_own() -> None:
    wms = Principal(WMS, PrincipalKind.HOST)
    strict = dataclasses.replace(POLICY, default_trusted_retrievers=("*/CN=other",))
    assert needs_renewal_challenge(wms, strict, credential=stored())
    own = stored(trusted_retrievers=("*/CN=wms.example.org",))
    assert not needs_renewal_challenge(wms, strict, credential=own)
    selfish = dataclasses.replace(POLICY, allow_self_authorization=True)
    assert not needs_renewal_challenge(wms, selfish, credential=stored(owner=WMS))
    # default_renewers stand for a credential stored without its own renewer list.
    untrusted = stored(trusted_retrievers=("*/CN=other",))
    no_renewing = dataclasses.replace(POLICY, default_renewers=("*/CN=other",))
    assert not needs_renewal_challenge(wms, no_renewing, credential=untrusted)
    assert needs_renewal_challenge(wms, POLICY, credential=untrusted)


def test_only_authorized_renewers_are_challenged() -> None:
    bob = Principal("/DC=org/DC=example/CN=bob", PrincipalKind.USER)
    policy = PolicyConfig(authorized_renewers=("*/CN=alice",))
    assert not may_need_renewal_challenge(bob, policy)
    assert not needs_renewal_challenge(bob, policy, credential=stored())
    alice = Principal(ALICE, PrincipalKind.USER)
    assert needs_renewal_challenge(alice, policy, credential=stored())
    assert not needs_renewal_challenge(alice, PolicyConfig(), credential=stored())
