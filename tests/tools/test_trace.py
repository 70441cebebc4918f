"""wgpy.tools.trace: the token-by-token trace equals the golden transcripts, and ``wgpy trace`` (wgpy.cli.trace) prints it.

The independent source is ``wgpy/tools/data/handshake_transcripts.json`` (package data): its per-token chaining keys and hashes were
cross-checked against the ``noiseprotocol`` oracle when the file was generated. The trace computes them again (and
checks its end-of-message values against ``wgpy.noise``); here they are compared with the file's recorded values.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any, Final

import pytest
from support.helpers import det_rng

import wgpy.noise
from wgpy import crypto
from wgpy.cli.trace import main
from wgpy.constants import CONSTRUCTION, IDENTIFIER
from wgpy.keys import PresharedKey, PrivateKey
from wgpy.tools import trace
from wgpy.tools.trace import (
    HandshakeTrace,
    TraceMismatch,
    format_trace,
    random_inputs,
    trace_handshake,
    trace_inputs,
)

DATA_DIR: Final = Path(__file__).resolve().parents[2] / "wgpy" / "tools" / "data"
GOLDEN: Final = DATA_DIR / "handshake_transcripts.json"
CASES: Final = ("no_psk", "psk")
BLOCK_ORDER: Final = (
    "init",
    "e",
    "es",
    "s",
    "ss",
    "{t}",
    "mac1",
    "mac2",
    "e",
    "ee",
    "se",
    "psk",
    "{}",
    "mac1",
    "mac2",
    "T_send_i",
    "T_recv_i",
)
_ANSI: Final = re.compile(r"\x1b\[[0-9;]*m")


def golden_document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(GOLDEN.read_text(encoding="utf-8"))
    return document


def golden_case(name: str) -> dict[str, Any]:
    (case,) = [c for c in golden_document()["cases"] if c["name"] == name]
    return case  # type: ignore[no-any-return]


def trace_of(case: dict[str, Any]) -> HandshakeTrace:
    inputs = case["inputs"]
    psk = inputs["preshared_key"]
    return trace_handshake(
        PrivateKey(bytes.fromhex(inputs["initiator_static_private"])),
        PrivateKey(bytes.fromhex(inputs["responder_static_private"])),
        preshared_key=PresharedKey(bytes.fromhex(psk)) if psk is not None else None,
        initiator_ephemeral=bytes.fromhex(inputs["initiator_ephemeral_private"]),
        responder_ephemeral=bytes.fromhex(inputs["responder_ephemeral_private"]),
        wall_ns=inputs["wall_ns"],
        sender_indices=(inputs["initiator_sender_index"], inputs["responder_sender_index"]),
    )


# --- The trace against the golden transcripts ------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_every_token_matches_the_golden_transcript(name: str) -> None:
    case = golden_case(name)
    t = trace_of(case)
    noise_tokens = [
        s for s in t.steps if s.message in ("initiation", "response") and s.token not in ("init", "mac1", "mac2")
    ]
    assert [(s.message, s.token) for s in noise_tokens] == [(r["message"], r["token"]) for r in case["steps"]]
    for step, recorded in zip(noise_tokens, case["steps"], strict=True):
        assert step.chaining_key.hex() == recorded["chaining_key"], (name, step.message, step.token)
        assert step.hash.hex() == recorded["hash"], (name, step.message, step.token)
        assert (step.key.hex() if step.key is not None else None) == recorded.get("key"), (name, step.token)
    assert t.step("initiation", "{t}").hash.hex() == case["after_initiation"]["hash"]
    assert t.step("response", "{}").chaining_key.hex() == case["after_response"]["chaining_key"]


@pytest.mark.parametrize("name", CASES)
def test_messages_and_transport_keys_match_the_golden_transcript(name: str) -> None:
    case = golden_case(name)
    t = trace_of(case)
    assert t.initiation.hex() == case["initiation"]["bytes_with_mac1"]
    assert t.response.hex() == case["response"]["bytes_with_mac1"]
    assert (t.initiation[:116] + bytes(32)).hex() == case["initiation"]["bytes"]
    assert (t.response[:60] + bytes(32)).hex() == case["response"]["bytes"]
    assert t.step("initiation", "mac1").output == bytes.fromhex(case["initiation"]["mac1"])
    assert t.step("initiation", "mac1").key == bytes.fromhex(case["initiation"]["mac1_key"])
    assert t.step("response", "mac1").key == bytes.fromhex(case["response"]["mac1_key"])
    assert t.initiator_send_key.hex() == case["transport"]["initiator_send_key"]
    assert t.initiator_recv_key.hex() == case["transport"]["initiator_recv_key"]
    assert t.step("transport", "T_send_i").key == t.initiator_send_key
    assert t.step("transport", "T_recv_i").key == t.initiator_recv_key
    assert t.timestamp.hex() == case["inputs"]["timestamp"]


@pytest.mark.parametrize("name", CASES)
def test_outputs_are_the_message_fields(name: str) -> None:
    t = trace_of(golden_case(name))
    assert t.step("initiation", "e").output == t.initiation[8:40]
    assert t.step("initiation", "s").output == t.initiation[40:88]
    assert t.step("initiation", "{t}").output == t.initiation[88:116]
    assert t.step("initiation", "mac2").output == t.initiation[132:148] == bytes(16)
    assert t.step("response", "e").output == t.response[12:44]
    assert t.step("response", "{}").output == t.response[44:60]


def test_initialisation_follows_the_whitepaper() -> None:
    case = golden_case("no_psk")
    init = trace_of(case).step("initiation", "init")
    responder_public = bytes.fromhex(case["inputs"]["responder_static_public"])
    assert init.chaining_key == crypto.hash(CONSTRUCTION)
    assert init.hash == crypto.hash(crypto.hash(crypto.hash(CONSTRUCTION) + IDENTIFIER) + responder_public)
    assert init.section == "§5.4.2"


def test_steps_carry_the_whitepaper_sections() -> None:
    t = trace_of(golden_case("psk"))
    sections = {(s.message, s.token): s.section for s in t.steps}
    assert sections[("initiation", "ss")] == "§5.4.2"
    assert sections[("response", "psk")] == "§5.4.3"
    assert sections[("initiation", "mac1")] == sections[("response", "mac2")] == "§5.4.4"
    assert sections[("transport", "T_send_i")] == "§5.4.5"
    assert all(s.description and s.formula for s in t.steps)


# --- The cross-check against wgpy.noise ------------------------------------------------------------------------


def test_a_trace_that_disagrees_with_wgpy_noise_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    # wgpy.noise starts from a different Ci; the straight-line trace does not follow, so the two must disagree.
    monkeypatch.setattr(wgpy.noise, "INITIAL_CHAINING_KEY", bytes(32))
    with pytest.raises(TraceMismatch, match="disagree"):
        trace_of(golden_case("no_psk"))


def test_main_reports_a_disagreement_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(wgpy.noise, "INITIAL_CHAINING_KEY", bytes(32))
    assert main(["--golden", "psk"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("wgpy trace: ") and captured.err.count("\n") == 1


def test_random_inputs_trace_and_replay() -> None:
    inputs = random_inputs(det_rng(42), preshared=True)
    assert inputs.preshared_key is not None
    first = trace_inputs(inputs)
    again = trace_handshake(
        inputs.initiator_private,
        inputs.responder_private,
        preshared_key=inputs.preshared_key,
        initiator_ephemeral=inputs.initiator_ephemeral,
        responder_ephemeral=inputs.responder_ephemeral,
        wall_ns=inputs.wall_ns,
        sender_indices=inputs.sender_indices,
    )
    assert again.steps == first.steps and again.initiation == first.initiation
    assert random_inputs(det_rng(42)).preshared_key is None


def test_bad_ephemeral_length_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        trace_handshake(
            PrivateKey(bytes(range(32))),
            PrivateKey(bytes(range(1, 33))),
            initiator_ephemeral=bytes(31),
            responder_ephemeral=bytes(32),
            wall_ns=1,
        )


# --- Text form --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_text_has_every_token_in_order_with_sections_and_values(name: str) -> None:
    t = trace_of(golden_case(name))
    text = format_trace(t)
    blocks = re.findall(r"^(\S+)  (§5\.4\.\d)$", text, flags=re.MULTILINE)
    assert tuple(token for token, _ in blocks) == BLOCK_ORDER
    assert [section for _, section in blocks] == [s.section for s in t.steps]
    for section in ("§5.4.2", "§5.4.3", "§5.4.4", "§5.4.5"):
        assert section in text
    for step in t.steps:
        assert f"ck = {step.chaining_key.hex()}" in text
        assert f"h  = {step.hash.hex()}" in text
        if step.key is not None:
            assert f"k  = {step.key.hex()}" in text
    fields = re.findall(r"^  \[\s*\d+:\s*\d+\] (\w+)", text, flags=re.MULTILINE)
    assert fields == [
        "type",
        "sender",
        "ephemeral",
        "encrypted_static",
        "encrypted_timestamp",
        "mac1",
        "mac2",
        "type",
        "sender",
        "receiver",
        "ephemeral",
        "encrypted_nothing",
        "mac1",
        "mac2",
    ]
    assert "\x1b" not in text


def test_color_only_adds_escape_sequences() -> None:
    t = trace_of(golden_case("psk"))
    colored = format_trace(t, color=True)
    assert "\x1b[" in colored
    assert _ANSI.sub("", colored) == format_trace(t)


# --- wgpy trace (main) --------------------------------------------------------------------------------------------


def test_main_golden_psk_prints_the_trace(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--golden", "psk"]) == 0
    captured = capsys.readouterr()
    case = golden_case("psk")
    assert captured.err == ""
    assert case["steps"][-1]["hash"] in captured.out
    assert case["transport"]["initiator_send_key"] in captured.out
    assert "verified" in captured.out


def test_main_defaults_to_the_no_psk_case(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--color", "never"]) == 0
    assert golden_case("no_psk")["steps"][0]["chaining_key"] in capsys.readouterr().out


@pytest.mark.parametrize("name", CASES)
def test_main_json_parses_and_matches_the_golden_values(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--golden", name, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    case = golden_case(name)
    steps = [s for s in document["steps"] if s["message"] != "transport" and s["token"] not in ("init", "mac1", "mac2")]
    assert [(s["message"], s["token"], s["chaining_key"], s["hash"], s.get("key")) for s in steps] == [
        (r["message"], r["token"], r["chaining_key"], r["hash"], r.get("key")) for r in case["steps"]
    ]
    assert document["initiation"]["bytes"] == case["initiation"]["bytes_with_mac1"]
    assert document["response"]["bytes"] == case["response"]["bytes_with_mac1"]
    assert document["transport"] == case["transport"]
    assert [f["name"] for f in document["initiation"]["fields"]][-2:] == ["mac1", "mac2"]


def test_main_random_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--random", "--psk", "--json"], rng=det_rng(7)) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["inputs"]["preshared_key"] is not None
    assert len(document["steps"]) == len(BLOCK_ORDER)


def test_main_vectors_option_takes_a_folder_or_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--vectors", str(DATA_DIR), "--golden", "psk", "--json"]) == 0
    assert main(["--vectors", str(GOLDEN), "--golden", "psk", "--json"]) == 0
    first, second = capsys.readouterr().out.split("\n}\n")[:2]
    assert json.loads(first + "\n}") == json.loads(second + "\n}")


def _corrupt_step_hash(document: dict[str, Any]) -> None:
    step = document["cases"][1]["steps"][3]
    step["hash"] = ("0" if step["hash"][0] != "0" else "1") + step["hash"][1:]


def _corrupt_private_key(document: dict[str, Any]) -> None:
    document["cases"][1]["inputs"]["initiator_ephemeral_private"] = "zz" * 32


def _drop_inputs(document: dict[str, Any]) -> None:
    del document["cases"][1]["inputs"]


def _corrupt_message(document: dict[str, Any]) -> None:
    message = document["cases"][1]["response"]["bytes_with_mac1"]
    document["cases"][1]["response"]["bytes_with_mac1"] = message[:-2] + "ff"


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        (_corrupt_step_hash, "recorded hash after initiation token ss differs"),
        (_corrupt_private_key, "initiator_ephemeral_private is not hex"),
        (_drop_inputs, "missing field inputs"),
        (_corrupt_message, "recorded response bytes differ"),
    ],
    ids=["step-hash", "bad-hex", "missing-field", "message"],
)
def test_a_corrupted_vector_file_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], corrupt: Any, expected: str
) -> None:
    document = golden_document()
    assert document["cases"][1]["name"] == "psk"
    corrupt(document)
    path = tmp_path / "handshake_transcripts.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    assert main(["--vectors", str(tmp_path), "--golden", "psk"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.err.startswith(f"wgpy trace: {path}: case 'psk': ")
    assert expected in captured.err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"cases": [', "is not valid JSON"),
        (b"\xff\xfe", "is not UTF-8"),
        (b'{"cases": []}', "no case 'psk'"),
        (b"[]", "not a golden transcript file"),
    ],
)
def test_an_unreadable_vector_file_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, expected: str
) -> None:
    path = tmp_path / "handshake_transcripts.json"
    path.write_bytes(content)
    assert main(["--vectors", str(path), "--golden", "psk"]) == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and expected in captured.err and "Traceback" not in captured.err


def test_a_missing_vector_file_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--vectors", str(tmp_path), "--golden", "psk"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("wgpy trace: ") and "cannot read" in err and err.count("\n") == 1


def test_the_default_is_the_package_data() -> None:
    assert Path(str(trace.DEFAULT_GOLDEN)) == GOLDEN
    source, document = trace.load_golden_document()
    assert source == str(GOLDEN) and document == golden_document()


def test_missing_package_data_asks_for_vectors(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(trace, "DEFAULT_GOLDEN", tmp_path / "absent" / "handshake_transcripts.json")
    assert main(["--golden", "psk"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert captured.err.startswith("wgpy trace: ") and "--vectors" in captured.err and captured.err.count("\n") == 1


def test_bad_arguments_return_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--golden", "psk", "--random"]) == 2
    assert main(["--psk"]) == 2
    assert main(["--help"]) == 0
    assert "wgpy trace" in capsys.readouterr().out


def test_the_trace_tool_reads_no_clock_and_opens_no_socket() -> None:
    """Only os.urandom from os; none of the I/O modules the layering rule bans (reading its data file is fine)."""
    tree = ast.parse(Path(trace.__file__).read_text(encoding="utf-8"))
    banned = {"socket", "asyncio", "select", "fcntl", "threading", "time", "subprocess", "logging"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not {alias.name.split(".")[0] for alias in node.names} & banned
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            assert node.module.split(".")[0] not in banned | {"os"}
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os":
            assert node.attr == "urandom"
