"""Security: TLS (and mutual TLS) on loopback with a throwaway CA made here (no key is committed), the bearer
token on every RPC, sessions that belong to the token that made them, the per-token quota, and the
plaintext health-only port for probes."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import Offline, bits, service_config

from ntm_serve.api.proto_gen.ntm.v1 import ntm_pb2
from ntm_serve.api.tls import TLSConfigError
from ntm_serve.client.sdk import NTMClient, step_request
from ntm_serve.demos import __main__ as demo_cli
from ntm_serve.server import healthcheck
from ntm_serve.server.config import ServiceConfig
from ntm_serve.server.server import ServerThread

ALPHA, BETA = "alpha-token-" + "a" * 32, "beta-token-" + "b" * 32
RPCS = ("ListModels", "CreateSession", "GetSession", "DeleteSession", "Step", "ExportSession", "ImportSession")


# --- a throwaway PKI ------------------------------------------------------------------------------------


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
                 *, ca: bool = False, server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = (_name(issuer[0]), issuer[1]) if issuer else (_name(subject), key)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    if not ca:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    rogue_cert: Path
    rogue_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate for localhost / 127.0.0.1, a client certificate, and a rogue CA with its own
    client certificate: all made now, in a temporary directory."""
    folder = tmp_path_factory.mktemp("pki")

    def write(name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> None:
        (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            (folder / f"{name}.key").write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

    keys = {name: ec.generate_private_key(ec.SECP256R1()) for name in ("ca", "server", "client", "rogue_ca", "rogue")}
    write("ca", _certificate("test CA", keys["ca"], None, ca=True))
    write("server", _certificate("localhost", keys["server"], ("test CA", keys["ca"]), server=True), keys["server"])
    write("client", _certificate("client", keys["client"], ("test CA", keys["ca"])), keys["client"])
    write("rogue_ca", _certificate("rogue CA", keys["rogue_ca"], None, ca=True))
    write("rogue", _certificate("client", keys["rogue"], ("rogue CA", keys["rogue_ca"])), keys["rogue"])
    return Pki(folder / "ca.pem", folder / "server.pem", folder / "server.key", folder / "client.pem",
               folder / "client.key", folder / "rogue_ca.pem", folder / "rogue.pem", folder / "rogue.key")


@pytest.fixture(scope="module")
def tls_server(copy_dir: Path, pki: Pki) -> Iterator[ServerThread]:
    config = service_config(copy_dir, tls_cert=pki.server_cert, tls_key=pki.server_key, auth_tokens=(ALPHA, BETA),
                            max_sessions_per_owner=3)
    with ServerThread(config) as server:
        yield server


@pytest.fixture(scope="module")
def mtls_server(copy_dir: Path, pki: Pki) -> Iterator[ServerThread]:
    config = service_config(copy_dir, tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca,
                            auth_tokens=(ALPHA,), health_port=0)
    with ServerThread(config) as server:
        yield server


def _refused_connection(call: object) -> None:
    with pytest.raises(grpc.RpcError) as err:
        call()  # type: ignore[operator]
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()


# --- TLS ------------------------------------------------------------------------------------------------


def test_tls_serves_exactly_and_refuses_plaintext_and_strangers(tls_server: ServerThread, pki: Pki, offline: Offline,
                                                                rng: np.random.Generator) -> None:
    x = bits(rng, 12)
    with NTMClient(tls_server.target, token=ALPHA, tls_ca=pki.ca, timeout=30) as alpha:
        session = alpha.create_session("copy").session_id
        np.testing.assert_array_equal(alpha.step(session, x).outputs, offline.run(x)["outputs"])
        alpha.delete_session(session)
    with NTMClient(tls_server.target, token=ALPHA, timeout=5) as plaintext:
        _refused_connection(plaintext.list_models)
    with NTMClient(tls_server.target, token=ALPHA, tls_ca=pki.rogue_ca, timeout=5) as fooled:  # not our CA
        _refused_connection(fooled.list_models)
    with NTMClient(tls_server.target, token=ALPHA, tls_ca=pki.ca, tls_server_name="other.example", timeout=5) as wrong:
        _refused_connection(wrong.list_models)  # the certificate is not for that name


def test_mutual_tls_needs_a_client_certificate_from_the_ca(mtls_server: ServerThread, pki: Pki) -> None:
    with NTMClient(mtls_server.target, token=ALPHA, tls_ca=pki.ca, tls_cert=pki.client_cert,
                   tls_key=pki.client_key, timeout=30) as good:
        assert [m.name for m in good.list_models()] == ["copy"]
    with NTMClient(mtls_server.target, token=ALPHA, tls_ca=pki.ca, timeout=5) as anonymous:
        _refused_connection(anonymous.list_models)
    with NTMClient(mtls_server.target, token=ALPHA, tls_ca=pki.ca, tls_cert=pki.rogue_cert, tls_key=pki.rogue_key,
                   timeout=5) as rogue:
        _refused_connection(rogue.list_models)


def test_demo_cli_over_mutual_tls_with_a_token(mtls_server: ServerThread, pki: Pki,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["copy", "--length", "4", "--target", mtls_server.target, "--tls-ca", str(pki.ca), "--tls-cert",
            str(pki.client_cert), "--tls-key", str(pki.client_key)]
    assert demo_cli.main([*argv, "--token", ALPHA]) == 0
    assert "bit errors:" in capsys.readouterr().out
    assert demo_cli.main([*argv, "--token", "not-a-token"]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert demo_cli.main([*argv[:-4], "--tls-cert", str(pki.client_cert), "--token", ALPHA]) == 2  # no key
    assert "needs its key" in capsys.readouterr().err


def test_health_port_answers_probes_in_plaintext_and_nothing_else(mtls_server: ServerThread, monkeypatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    port = mtls_server.server.health_port
    assert port
    monkeypatch.setenv("NTM_HEALTH_PORT", str(port))
    monkeypatch.setenv("NTM_PORT", str(mtls_server.port))
    assert healthcheck.main([]) == 0  # the container's probe finds the health port by itself
    assert capsys.readouterr().out.strip() == "SERVING"
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="ntm.v1.NTM"),
                                                           timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:  # the NTM service is not on this port
            channel.unary_unary("/ntm.v1.NTM/ListModels", request_serializer=None,
                                response_deserializer=None)(b"", timeout=10)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_bad_tls_settings_fail_loudly(copy_dir: Path, pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tls_cert and tls_key go together"):
        ServiceConfig(models=copy_dir, tls_cert=pki.server_cert)
    with pytest.raises(ValueError, match="needs TLS"):
        ServiceConfig(models=copy_dir, tls_client_ca=pki.ca)
    (tmp_path / "empty.pem").write_text("not a certificate")
    for cert in (tmp_path / "missing.pem", tmp_path / "empty.pem"):
        with pytest.raises(TLSConfigError, match="tls_cert"):
            ServerThread(service_config(copy_dir, tls_cert=cert, tls_key=pki.server_key)).start()


# --- tokens, ownership, quota ---------------------------------------------------------------------------


def _raw(channel: grpc.Channel, method: str) -> object:
    return channel.unary_unary(f"/ntm.v1.NTM/{method}", request_serializer=None, response_deserializer=None)


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer wrong-token"),),
                                      (("authorization", f"Basic {ALPHA}"),), (("authorization", "Bearer "),),
                                      (("authorization", ALPHA),)], ids=["none", "wrong", "basic", "empty", "bare"])
def test_every_rpc_needs_a_valid_token(tls_server: ServerThread, pki: Pki, metadata) -> None:
    credentials = grpc.ssl_channel_credentials(pki.ca.read_bytes())
    with grpc.secure_channel(tls_server.target, credentials) as channel:
        for method in RPCS:
            with pytest.raises(grpc.RpcError) as err:
                _raw(channel, method)(b"", metadata=metadata, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, method
            assert "bearer token" in err.value.details()
        stream = channel.stream_stream("/ntm.v1.NTM/StreamSteps", request_serializer=None,
                                       response_deserializer=None)(iter([b""]), metadata=metadata, timeout=10)
        with pytest.raises(grpc.RpcError) as err:
            list(stream)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reflection = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                           request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as err:
            list(reflection(iter([b""]), metadata=metadata, timeout=10))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), metadata=metadata,
                                                           timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING  # exempt: probes carry no token


def test_sessions_belong_to_their_token(tls_server: ServerThread, pki: Pki, offline: Offline,
                                        rng: np.random.Generator) -> None:
    x = bits(rng, 9)
    with NTMClient(tls_server.target, token=ALPHA, tls_ca=pki.ca, timeout=30) as alpha, \
            NTMClient(tls_server.target, token=BETA, tls_ca=pki.ca, timeout=30) as beta:
        mine = alpha.create_session("copy").session_id
        alpha.step(mine, x[:4])
        before = alpha.export_session(mine)
        denied = [lambda: beta.step(mine, x[4:5]), lambda: beta.get_session(mine, include_state=True),
                  lambda: beta.export_session(mine), lambda: beta.delete_session(mine)]
        for call in denied:
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "another client" in err.value.details()
        (answer,) = beta.stream([step_request(mine, x[4:5])])  # in a stream, too
        assert answer.error is not None and answer.error.code == grpc.StatusCode.PERMISSION_DENIED
        after = alpha.export_session(mine)
        assert after.steps == 4
        for name in before.tensors:
            np.testing.assert_array_equal(after.tensors[name], before.tensors[name])
        # an import is the importer's own session: beta may continue a state alpha handed over, alpha's is untouched
        copy = beta.import_session(before).session_id
        np.testing.assert_array_equal(beta.step(copy, x[4:]).outputs, offline.run(x)["outputs"][4:])
        with pytest.raises(grpc.RpcError) as err:
            alpha.get_session(copy)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert alpha.get_session(mine).steps == 4
        for session, owner in ((mine, alpha), (copy, beta)):
            owner.delete_session(session)


def test_per_token_quota_counts_creates_and_imports(tls_server: ServerThread, pki: Pki) -> None:
    with NTMClient(tls_server.target, token=ALPHA, tls_ca=pki.ca, timeout=30) as alpha, \
            NTMClient(tls_server.target, token=BETA, tls_ca=pki.ca, timeout=30) as beta:
        ids = [alpha.create_session("copy").session_id for _ in range(2)]
        ids.append(alpha.import_session(alpha.export_session(ids[0])).session_id)  # the third of 3
        for call in (lambda: alpha.create_session("copy"), lambda: alpha.import_session(alpha.export_session(ids[0]))):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "per-client" in err.value.details()
        other = beta.create_session("copy").session_id  # another token is not held back by alpha's quota
        alpha.delete_session(ids.pop())
        ids.append(alpha.create_session("copy").session_id)  # room again
        for session in ids:
            alpha.delete_session(session)
        beta.delete_session(other)
        request = ntm_pb2.ListModelsRequest()
        assert alpha.stub.ListModels(request, metadata=alpha.metadata, timeout=10).models
