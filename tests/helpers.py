"""What the tests share besides fixtures (those are in conftest.py): paths, random inputs, test
server settings, building a models directory, the offline reference run, and a throwaway PKI."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from onnx_contract import GRAPH_FILES, META_CHECKPOINT, SEQUENCE_INPUTS, STATE_NAMES
from service.config import ServiceConfig
from service.ort_session import open_session

if TYPE_CHECKING:
    from service.engine import Engine

ROOT = Path(__file__).resolve().parent.parent
MODEL_FILES = (*GRAPH_FILES.values(), "checkpoint.pt", "config.json")


def bits(rng: np.random.Generator, steps: int, width: int = 9) -> np.ndarray:
    """Random task-like inputs (T, I)."""
    return rng.integers(0, 2, (steps, width)).astype(np.float32)


def service_config(models: Path, **overrides: object) -> ServiceConfig:
    """Test server settings: loopback, free ports, CPU (exactness is checked against CPU onnxruntime;
    tests/test_service_gpu.py covers CUDA)."""
    settings = {"models": models, "host": "127.0.0.1", "port": 0, "metrics_host": "127.0.0.1", "metrics_port": 0,
                "provider": "cpu", "max_wait_ms": 2.0, "grace_s": 2.0, **overrides}
    return ServiceConfig(**settings)  # type: ignore[arg-type]


def _checkpoint_of_graphs(folder: Path) -> set[str]:
    import onnx

    hashes = set()
    for name in GRAPH_FILES.values():
        props = {p.key: p.value for p in onnx.load(folder / name, load_external_data=False).metadata_props}
        hashes.add(props.get(META_CHECKPOINT, ""))
    return hashes


def snapshot_model(source: Path, target: Path) -> bool:
    """Copy a shipped model folder; keep it only if its graphs and checkpoint are one export (training and
    export rewrite these files while we run)."""
    if not all((source / f).is_file() for f in MODEL_FILES):
        return False
    target.mkdir(parents=True)
    for name in MODEL_FILES:
        shutil.copy2(source / name, target / name)
    sha = hashlib.sha256((target / "checkpoint.pt").read_bytes()).hexdigest()
    if _checkpoint_of_graphs(target) != {sha}:
        shutil.rmtree(target)
        return False
    return True


def build_dev_model(folder: Path) -> None:
    """An untrained copy-task NTM, saved and exported like a shipped one (serving tests need exactness,
    not skill)."""
    import torch

    from export.exporter import export_folder
    from training.checkpoint import save_model
    from training.config import NTMConfig
    from training.model import NTM
    from training.tasks import get_task

    torch.manual_seed(0)
    task = get_task("copy")
    model = NTM(NTMConfig(input_size=task.input_size, output_size=task.output_size))
    save_model(model, folder, {"task": "copy", "input_size": task.input_size, "output_size": task.output_size,
                               "encoding": task.encoding})
    export_folder(folder)


@dataclass
class Offline:
    """The reference: the model's own graph files run offline by onnxruntime (and torch on its checkpoint).

    `run` puts the session in row 0 of a batch of 4 (the other rows: initial state, zero inputs), the
    layout the server computes every row in (service/engine.py, ROW_MULTIPLE), so the numbers must agree
    to the last bit; `batch=1` gives the plain single-sequence run."""

    folder: Path

    def __post_init__(self) -> None:
        self._sequence = open_session(self.folder / GRAPH_FILES["sequence"], "cpu")
        initial = open_session(self.folder / GRAPH_FILES["initial_state"], "cpu").run(None, {})
        assert tuple(i.name for i in self._sequence.get_inputs()) == SEQUENCE_INPUTS
        self.state_names = list(STATE_NAMES)
        self.initial = dict(zip(self.state_names, initial, strict=True))  # batch 1

    def run(self, inputs: np.ndarray, state: dict[str, np.ndarray] | None = None,
            batch: int = 4) -> dict[str, np.ndarray]:
        """inputs (T, I) from `state` (per-session shapes) or the initial state -> outputs (T, O),
        read/write weights (T, R|W, N), and `state` after the last step (per-session shapes)."""
        first = self.initial if state is None else {k: v[None] for k, v in state.items()}
        batch_state = {k: np.concatenate([first[k], np.repeat(v, batch - 1, 0)]) for k, v in self.initial.items()}
        padded = np.zeros((len(inputs), batch, np.shape(inputs)[1]), np.float32)  # (T, batch, I)
        padded[:, 0] = inputs
        feeds = {"inputs": padded, **batch_state}
        outputs, reads, writes, *final = self._sequence.run(None, feeds)
        return {"outputs": outputs[:, 0], "read_weights": reads[:, 0], "write_weights": writes[:, 0],
                "state": {k: v[0] for k, v in zip(self.state_names, final, strict=True)}}

    def torch_outputs(self, inputs: np.ndarray) -> np.ndarray:
        """The trained PyTorch model's probabilities for inputs (T, I) from the initial state."""
        import torch

        from training.checkpoint import load_model

        model, _ = load_model(self.folder)
        with torch.no_grad():
            logits, *_ = model(torch.from_numpy(np.asarray(inputs, np.float32))[:, None])  # (T, 1, O)
        return torch.sigmoid(logits)[:, 0].numpy()


def schedule(rng: np.random.Generator) -> list[list[int]]:
    """Which of 32 sessions step in each engine call: growing, shrinking and churning, across the edges of the
    batch buckets 4, 8, 16, 32 (tests of the CUDA-graph path, tests/test_service_buckets.py and _gpu.py)."""
    sizes = [1, 2, 5, 8, 9, 17, 32, 30, 28, 20, 7, 3, 1, 12, 12, 31, 6]
    return [sorted(rng.choice(32, n, replace=False).tolist()) for n in sizes]


def run_schedule(engine: Engine, calls: list[list[int]], inputs: np.ndarray) -> tuple[dict[int, list], list[int]]:
    """`calls` of `schedule` on 32 new sessions, inputs (calls, 32, I): every session's outputs in call order, and
    the resident batch's size after each call."""
    slots = [engine.new_row() for _ in range(32)]
    outputs: dict[int, list[np.ndarray]] = {i: [] for i in range(32)}
    sizes = []
    for t, members in enumerate(calls):
        result = engine.step(np.array([slots[i] for i in members], dtype=np.int64), inputs[t, members])
        for i, row in zip(members, result.outputs, strict=True):
            outputs[i].append(row)
        sizes.append(engine._resident.size)
    return outputs, sizes


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


def make_pki(folder: Path) -> Pki:
    """A CA, a server certificate for localhost / 127.0.0.1, a client certificate, and a rogue CA with its own
    client certificate: all made now, in a temporary directory."""

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
