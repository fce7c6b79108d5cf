"""Valid inputs for every fuzz target, built from a development PKI (the seed corpus).

`python -m tests.fuzz.seeds OUT` writes a dev PKI to OUT/pki and one corpus
directory per harness (OUT/corpus/<harness>/seed-<n>), each file being a
selector byte plus a valid input for that target. The hypothesis tests call
`build_seeds` with the session's dev PKI.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from proxyd.devpki import DevPKI, generate
from proxyd.myproxy import protocol as p
from proxyd.myproxy.renewal import sign_challenge
from tests.fuzz.targets import CHALLENGES, HARNESSES
from voms_ext import (
    AttributeCertificateBuilder,
    Credential,
    ProxyBuilder,
    credential_to_pem,
    load_credential_file,
)
from voms_ext.asn1 import OID_VOMS_AC_SEQ

Seeds = dict[str, list[bytes]]


def _load(pki: DevPKI, cert: Path, key: Path) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    k = serialization.load_pem_private_key(key.read_bytes(), password=None)
    assert isinstance(k, rsa.RSAPrivateKey)
    return load_credential_file(cert).certificate, k


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _csr(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "proxy")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


def _requests() -> list[bytes]:
    out = [
        p.encode_request(p.Request(p.Command.GET, "alice", "secret123", 43200)),
        p.encode_request(
            p.Request(
                p.Command.GET,
                "/C=XX/O=proxyd dev/OU=Users/CN=alice",
                "",
                3600,
                cred_name="wms",
                vonames=("dteam", "dteam:/dteam/Role=production"),
                vomses=('"dteam" "voms.localhost" "15000" "/CN=voms" "dteam"',),
                trusted_certs=True,
            )
        ),
        p.encode_request(
            p.Request(
                p.Command.PUT,
                "alice",
                "secret123",
                604800,
                cred_name="c1",
                cred_desc="a description = with equals",
                retriever="*/CN=wms.localhost",
                renewer="*",
                trusted_retrievers="*/CN=wms.localhost,*/CN=other",
                keyretrievers="*/CN=x",
            )
        ),
        p.encode_request(p.Request(p.Command.INFO, "alice", "DUMMY-PASSPHRASE")),
        p.encode_request(p.Request(p.Command.DESTROY, "alice", "DUMMY-PASSPHRASE", cred_name="x")),
        p.encode_request(
            p.Request(p.Command.CHANGE_CRED_PASSPHRASE, "alice", "old pass", new_phrase="new pass")
        ),
        p.encode_request(p.Request(p.Command.STORE, "alice", "", 0)),
        p.encode_request(p.Request(p.Command.RETRIEVE, "alice", "secret123", 3600)),
        p.encode_request(p.Request(p.Command.GET_TRUSTROOTS, "", "", 0, trusted_certs=True)),
        # As the C clients write it: TRUSTED_RETRIEVERS spelling, unknown keys, no final NUL.
        b"VERSION=MYPROXYv2\nCOMMAND=1\nUSERNAME=bob\nPASSPHRASE=\nLIFETIME=43200\n"
        b"TRUSTED_RETRIEVERS=*/CN=wms\nAUTHZ_CERT=1\n",
    ]
    return out


def _responses() -> list[bytes]:
    return [
        p.ok(),
        p.error("Bad password", "invalid credential passphrase"),
        p.error("not authorized", "(proxyd policy rule: retrieve.not_trusted)"),
        p.encode_response(
            p.Response(
                p.ResponseType.AUTHORIZATION,
                authorization=tuple((c.method, c.hex) for c in CHALLENGES),
            )
        ),
        p.ok(
            [
                ("CRED_START_TIME", "1764057600"),
                ("CRED_END_TIME", "1764662400"),
                ("CRED_OWNER", "/C=XX/O=proxyd dev/OU=Users/CN=alice"),
                ("CRED_RETRIEVER_TRUSTED", "*/CN=wms.localhost"),
                ("CRED_wms_DESC", "for the WMS"),
                ("ADDL_CREDS", "wms"),
            ]
        ),
        p.ok([("TRUSTED_CERTS", "abcd1234.0"), ("FILEDATA_abcd1234.0", "LS0tLS1CRUdJTg==")]),
    ]


def build_seeds(pki: DevPKI) -> Seeds:
    """Valid inputs per target id (see tests/fuzz/targets.py)."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    alice_cert, alice_key = _load(pki, *pki.user("alice"))
    ca_cert = load_credential_file(pki.ca_cert).certificate
    host_cert = load_credential_file(pki.host("host")[0]).certificate
    aa_cert, aa_key = _load(pki, *pki.host("aa"))
    proxy_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())

    base = ProxyBuilder(alice_cert).public_key(proxy_key).lifetime(dt.timedelta(hours=12))
    proxies = [
        base.sign(alice_key),
        base.limited().sign(alice_key),
        base.independent().path_length(2).sign(alice_key),
        base.draft().sign(alice_key),
        base.draft().limited().path_length(0).sign(alice_key),
        base.legacy().sign(alice_key),
        base.legacy().limited().sign(alice_key),
    ]
    ac_builder = (
        AttributeCertificateBuilder()
        .vo("dteam")
        .uri("voms.localhost:15000")
        .holder(alice_cert)
        .validity(now - dt.timedelta(minutes=5), now + dt.timedelta(hours=12))
    )
    acs = [
        ac_builder.fqans(["/dteam"]).sign(aa_cert, aa_key),
        ac_builder.fqans(["/dteam/Role=production", "/dteam", "/dteam/analysis"])
        .generic_attribute("nickname", "alice", "dteam")
        .target("https://wms.localhost/")
        .sign(aa_cert, aa_key),
        ac_builder.holder(alice_cert, legacy=True).fqans(["/dteam"]).sign(aa_cert, aa_key),
    ]
    voms_proxy = base.attribute_certificates(acs[:2]).sign(alice_key)
    voms_ext = voms_proxy.extensions.get_extension_for_oid(
        x509.ObjectIdentifier(OID_VOMS_AC_SEQ)
    ).value.value  # type: ignore[attr-defined]
    second = ProxyBuilder(proxies[0], (alice_cert,)).public_key(ec_key).sign(proxy_key)
    ec_proxy = ProxyBuilder(alice_cert).public_key(ec_key).sign(alice_key)

    chains = [(proxies[0], alice_cert), (second, proxies[0], alice_cert), (alice_cert,)]
    cert_msgs = [p.encode_certificates(c) for c in chains]
    csrs = [_csr(proxy_key), _csr(ec_key)]

    pem_proxy = credential_to_pem(Credential((proxies[0], alice_cert), proxy_key))
    pem_encrypted = (
        proxies[1].public_bytes(serialization.Encoding.PEM)
        + proxy_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret123"),
        )
        + alice_cert.public_bytes(serialization.Encoding.PEM)
    )
    pem_ec = credential_to_pem(Credential((ec_proxy, alice_cert), ec_key))

    lsc = [path.read_bytes() for path in sorted(pki.voms_dir.rglob("*.lsc"))]
    lsc.append(
        b"# two alternatives\n/C=XX/O=proxyd dev/OU=Hosts/CN=voms.localhost\n"
        b"/C=XX/O=proxyd dev/CN=proxyd dev CA\n------ NEXT CHAIN ------\n"
        b"/DC=org/DC=example/CN=voms\n/DC=org/DC=example/CN=CA\n"
    )
    dns = [
        "/C=XX/O=proxyd dev/OU=Users/CN=alice",
        "/C=XX/O=proxyd dev/OU=Hosts/CN=host/wms.localhost",
        "/DC=org/DC=example/CN=a+UID=b/emailAddress=x@example.org",
        "/C=XX/O=proxyd dev/OU=Users/CN=alice/CN=1234567/CN=proxy",
        "/2.5.4.3=oid form/0.9.2342.19200300.100.1.25=org",
        "/C=DE/ST=Baden/L=Karlsruhe/serialNumber=42/title=Dr/GN=A/SN=B/pseudonym=p",
    ]
    fqans = [
        "/dteam",
        "/dteam/analysis/sub.group-1",
        "/dteam/Role=production",
        "/dteam/Role=NULL/Capability=NULL",
        "/atlas/prod/Role=pilot/Capability=x",
    ]

    configs = [pki.config.read_bytes()]
    configs.append(
        b'[server]\nhost_cert = "/etc/grid-security/hostcert.pem"\n'
        b'host_key = "/etc/grid-security/hostkey.pem"\n'
        b'database = "postgresql+psycopg://proxyd@db.example.org/proxyd"\n'
        b'[myproxy]\nlisten = "[::1]:7512"\ntls_min_version = "1.3"\n[api]\nlisten = "off"\n'
        b'[policy]\nmax_proxy_lifetime = 43200\nlockout_base = "3s"\nlockout_max = "2w"\n'
        b"passphrase_attempts = 7\nallow_self_authorization = true\n"
        b'auditors = ["/C=XX/*"]\n[sealing]\nargon2_time_cost = 2\nargon2_memory_kib = 1024\n'
    )

    replies = [
        sign_challenge(CHALLENGES[1], alice_key, [alice_cert]),
        sign_challenge(CHALLENGES[0], proxy_key, [proxies[0], alice_cert]),
        sign_challenge(CHALLENGES[1], proxy_key, [proxies[1], alice_cert, ca_cert]),
        _ec_reply(ec_key, [ec_proxy, alice_cert]),
    ]
    certs_der = [_der(c) for c in (*proxies, voms_proxy, second, ec_proxy)]
    certs_der += [_der(alice_cert), _der(ca_cert), _der(host_cert), _der(aa_cert)]

    return {
        "myproxy_codec.parse_request": _requests(),
        "myproxy_codec.parse_response": _responses(),
        "myproxy_codec.parse_certificates": cert_msgs,
        "myproxy_codec.der_length": [
            *csrs,
            certs_der[0],
            b"\x30\x03abc",
            b"\x30\x81\x80" + b"x" * 128,
        ],
        "myproxy_codec.chain_length": [*cert_msgs, cert_msgs[1][:-10]],
        "myproxy_codec.parse_csr": csrs,
        "voms_ext.parse_attribute_certificate": [ac.der for ac in acs],
        "voms_ext.parse_voms_extension": [voms_ext],
        "voms_ext.parse_credential_pem": [pem_proxy, pem_encrypted, pem_ec],
        "voms_ext.classify": certs_der,
        "voms_ext.parse_lsc": lsc,
        "voms_ext.slash_to_name": [d.encode() for d in dns],
        "voms_ext.parse_fqan": [f.encode() for f in fqans],
        "config.parse_config": configs,
        "renewal.reply_length": replies,
        "renewal.parse_challenge_reply": replies,
        "renewal.pipeline": [r + b"trailing" for r in replies],
    }


def _ec_reply(key: ec.EllipticCurvePrivateKey, chain: Sequence[x509.Certificate]) -> bytes:
    signature = key.sign(CHALLENGES[1].hex.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    return (
        bytes([CHALLENGES[1].method_id, 0, 0, 0])
        + len(signature).to_bytes(4, "big")
        + signature
        + p.encode_certificates(chain)
    )


# libFuzzer dictionaries: tokens that byte mutations rarely invent on their own.
DICTIONARIES: dict[str, list[bytes]] = {
    "myproxy_codec": [
        b"VERSION=MYPROXYv2\n",
        b"COMMAND=",
        b"USERNAME=",
        b"PASSPHRASE=",
        b"LIFETIME=",
        b"VONAME=",
        b"VOMSES=",
        b"TRUSTED_CERTS=1",
        b"RETRIEVER_TRUSTED=",
        b"NEW_PHRASE=",
        b"CRED_NAME=",
        b"RESPONSE=",
        b"ERROR=",
        b"AUTHORIZATION_DATA=",
        b"\x00",
        b"\n",
        "\u00b2".encode(),
        "\u0661".encode(),
        b"\x30\x82",
        b"\x30\x81",
        b"\x30\x83",
        b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01",
        b"\x06\x07\x2a\x86\x48\xce\x3d\x02\x01",
    ],
    "voms_ext": [
        b"/Role=",
        b"/Capability=",
        b"NULL",
        b"/CN=",
        b"/C=",
        b"+",
        b"=",
        b"\n",
        b"-----BEGIN CERTIFICATE-----\n",
        b"-----END CERTIFICATE-----",
        b"-----BEGIN RSA PRIVATE KEY-----\n",
        b"-----END RSA PRIVATE KEY-----",
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n",
        b"------ NEXT CHAIN ------",
        b"/3.5=",
        b"/2.5.4.3=",
        b"\x30\x82",
        b"\x06\x08\x2b\x06\x01\x05\x05\x07\x01\x0e",
    ],
    "config": [
        b"[server]\n",
        b"[policy]\n",
        b"[myproxy]\n",
        b"[api]\n",
        b"[sealing]\n",
        b"[[voms]]\n",
        b"[voms.members]\n",
        b"voms = [",
        b"host_cert",
        b"state_dir",
        b"database",
        b"listen",
        b"master_key_file",
        b"max_proxy_lifetime",
        b"lockout_max",
        b"passphrase_attempts",
        b"argon2_memory_kib",
        b'"~nosuchuser/x"',
        b"\\u0000",
        b"99999999999999999999",
        b'"999999999999w"',
        b"true",
        b"= [",
        b"= {",
        b'"off"',
        b"sqlite:///",
        b"postgresql://",
    ],
    "renewal": [b"\x04\x00\x00\x00", b"\x02\x00\x00\x00", b"\x00\x00\x01\x00", b"\x30\x82"],
}


def _dict_line(token: bytes) -> str:
    body = "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\x{b:02x}" for b in token)
    return f'"{body}"'


def harness_inputs(harness: str, seeds: Seeds) -> list[bytes]:
    """Seeds of one harness with their selector byte in front."""
    out = []
    for index, t in enumerate(HARNESSES[harness]):
        out += [bytes([index]) + s for s in seeds.get(t.id, [])]
    return out


def write_corpus(out: Path) -> Path:
    """A dev PKI in OUT/pki and seed files in OUT/corpus/<harness>/; returns the PKI root."""
    pki = generate(out / "pki")
    seeds = build_seeds(pki)
    shutil.rmtree(out / "seeds", ignore_errors=True)
    for harness in HARNESSES:
        directory = out / "seeds" / harness
        directory.mkdir(parents=True, exist_ok=True)
        for data in harness_inputs(harness, seeds):
            name = hashlib.sha1(data, usedforsecurity=False).hexdigest()
            (directory / name).write_bytes(data)
        tokens = DICTIONARIES.get(harness, [])
        (out / "dict").mkdir(exist_ok=True)
        (out / "dict" / f"{harness}.dict").write_text("".join(_dict_line(t) + "\n" for t in tokens))
    return pki.root


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write the fuzzing seed corpus")
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    root = write_corpus(args.out)
    print(f"seed corpus in {args.out / 'seeds'}, PKI in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
