"""CURVE across machines, for real: three network namespaces joined by veth pairs.

- `rig`: `rig run` with the emulator and the simulated microscope, bound to 10.N.0.1 (events, control,
  display frames); its microscope pushes frames to the online module over TCP.
- `analysis`: `python -m online` bound to 10.N.0.2 (lossless frames, results), `rig status` / `rig stop`,
  and a subscriber with the analysis machine's key: all of it works, over CURVE.
- `intruder`: reaches 10.N.0.1 through its own veth pair. With a key pair the rig does not trust (but the
  rig's public key, which is no secret) and without any CURVE at all, its control requests get no answer
  and its subscriptions get nothing; the rig logs each refusal.

The 10.N addresses exist only inside these namespaces. Skipped, with the reason, where the test is not
root or `ip netns` is unavailable.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from online.transport import create_key_pair

REPO = Path(__file__).resolve().parent.parent
CLIENT = Path(__file__).resolve().parent / "netns_client.py"
WAIT_S = 60.0  # an upper bound for things that happen in a second or two, never a verdict


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)


def _why_no_netns() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    return None


@dataclass
class Net:
    rig: str
    analysis: str
    intruder: str
    rig_ip: str
    analysis_ip: str
    intruder_ip: str


@pytest.fixture
def net() -> Iterator[Net]:
    """Three namespaces: rig <-> analysis on 10.N.0.0/24, rig <-> intruder on 10.N.1.0/24."""
    why = _why_no_netns()
    if why:
        pytest.skip(why)
    tag = f"{os.getpid() % 100000}"
    subnet = 200 + os.getpid() % 50
    names = Net(f"rigsec{tag}-rig", f"rigsec{tag}-ana", f"rigsec{tag}-x",
                f"10.{subnet}.0.1", f"10.{subnet}.0.2", f"10.{subnet}.1.2")
    made: list[str] = []
    try:
        for ns in (names.rig, names.analysis, names.intruder):
            result = _ip("netns", "add", ns)
            if result.returncode != 0:
                pytest.skip(f"ip netns add failed: {result.stderr.strip()}")
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        commands = [
            ("link", "add", f"rs{tag}a", "netns", names.rig, "type", "veth", "peer", "name", f"rs{tag}b",
             "netns", names.analysis),
            ("link", "add", f"rs{tag}c", "netns", names.rig, "type", "veth", "peer", "name", f"rs{tag}d",
             "netns", names.intruder),
            ("-n", names.rig, "addr", "add", f"{names.rig_ip}/24", "dev", f"rs{tag}a"),
            ("-n", names.analysis, "addr", "add", f"{names.analysis_ip}/24", "dev", f"rs{tag}b"),
            ("-n", names.rig, "addr", "add", f"10.{subnet}.1.1/24", "dev", f"rs{tag}c"),
            ("-n", names.intruder, "addr", "add", f"{names.intruder_ip}/24", "dev", f"rs{tag}d"),
            ("-n", names.rig, "link", "set", f"rs{tag}a", "up"),
            ("-n", names.rig, "link", "set", f"rs{tag}c", "up"),
            ("-n", names.analysis, "link", "set", f"rs{tag}b", "up"),
            ("-n", names.intruder, "link", "set", f"rs{tag}d", "up"),
            ("-n", names.intruder, "route", "add", f"10.{subnet}.0.0/24", "via", f"10.{subnet}.1.1"),
        ]
        for command in commands:
            result = _ip(*command)
            if result.returncode != 0:
                pytest.skip(f"ip {' '.join(command)} failed: {result.stderr.strip()}")
        yield names
    finally:
        for ns in made:  # deleting a namespace deletes its end of each veth pair, and so the pair
            _ip("netns", "delete", ns)


class Processes:
    """Processes started in namespaces; each is killed (its whole group) at teardown if still running."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.running: list[subprocess.Popen[str]] = []

    def start(self, ns: str, name: str, *args: str | Path) -> tuple[subprocess.Popen[str], Path, Path]:
        out, err = self.folder / f"{name}.out", self.folder / f"{name}.err"
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, *map(str, args)], cwd=REPO,
                                stdin=subprocess.DEVNULL, stdout=out.open("w"), stderr=err.open("w"),
                                text=True, start_new_session=True)
        self.running.append(proc)
        return proc, out, err

    def run(self, ns: str, name: str, *args: str | Path, timeout: float = WAIT_S) -> tuple[int, str, str]:
        proc, out, err = self.start(ns, name, *args)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            raise
        return code, out.read_text(), err.read_text()

    @staticmethod
    def kill(proc: subprocess.Popen[str]) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def close(self) -> None:
        for proc in self.running:
            self.kill(proc)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    processes = Processes(tmp_path)
    try:
        yield processes
    finally:
        processes.close()


def _wait_for(what: str, condition: Callable[[], bool], proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process ended first (exit status {proc.returncode})")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {WAIT_S:g} s")
        time.sleep(0.05)


def _settings_file(folder: Path, trusted: list[Path], net: Net) -> Path:
    """The settings of one machine whose key pair is in `folder/keys`, trusting the `trusted` public keys."""
    authorized = folder / "authorized"
    authorized.mkdir()
    for key in trusted:
        (authorized / key.name).write_bytes(key.read_bytes())
    settings = {
        "network": {
            "events_pub": f"tcp://{net.rig_ip}:5555", "control": f"tcp://{net.rig_ip}:5556",
            "frames": f"tcp://{net.analysis_ip}:5557", "frames_display": f"tcp://{net.rig_ip}:5558",
            "online_results": f"tcp://{net.analysis_ip}:5559", "bind_loopback_only": False,
            "keys": str(folder / "keys"), "authorized_keys": str(authorized),
        },
        "online": {"start_with_rig": False},
        "imaging": {"frame_height": 128, "frame_width": 128},
        "sim": {"microscope": {"n_neurons": 30}},
    }
    path = folder / "settings.yaml"
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


def test_rig_online_module_and_clients_over_curve_and_an_intruder_refused(
        net: Net, procs: Processes, tmp_path: Path) -> None:
    # the rig and the analysis machine trust each other; the intruder knows their public keys only
    rig_dir, analysis_dir, intruder_dir = tmp_path / "rig", tmp_path / "analysis", tmp_path / "intruder"
    rig_pub, _ = create_key_pair(rig_dir / "keys", net.rig_ip)  # named after the host the others reach
    analysis_pub, _ = create_key_pair(analysis_dir / "keys", net.analysis_ip)
    intruder_pub, _ = create_key_pair(intruder_dir / "keys", "intruder")
    rig_settings = _settings_file(rig_dir, [rig_pub, analysis_pub], net)
    analysis_settings = _settings_file(analysis_dir, [rig_pub, analysis_pub], net)
    intruder_settings = _settings_file(intruder_dir, [rig_pub, analysis_pub, intruder_pub], net)

    online, online_out, online_err = procs.start(
        net.analysis, "online", "-m", "rig", "online", "--settings", analysis_settings,
        "--session", tmp_path / "online-session")
    _wait_for("the online module says ready", lambda: "ready" in online_out.read_text(), online)
    rig, _, rig_err = procs.start(net.rig, "rig", "-m", "rig", "run", "--settings", rig_settings, "--no-gui",
                                  "--speed", "10", "--data", tmp_path / "data", "--subject", "netmouse")

    def answers(settings: Path) -> bool:
        code, _, _ = procs.run(net.analysis, "status", "-m", "rig", "status", "--settings", settings)
        return code == 0

    _wait_for("the rig answers rig status from the analysis machine", lambda: answers(analysis_settings), rig)

    # the intruder first: a CURVE peer with an untrusted key, and a plain one
    done = tmp_path / "done"
    intruder, intruder_out, _ = procs.start(net.intruder, "intruder", CLIENT, intruder_settings,
                                            "events,frames", done)
    plain, plain_out, _ = procs.start(net.intruder, "plain", CLIENT, intruder_settings, "events,frames", done,
                                      "--plain")
    for proc, out in ((intruder, intruder_out), (plain, plain_out)):
        _wait_for("the intruder subscribed", lambda out=out: "subscribed" in out.read_text(), proc)

    code, out, err = procs.run(net.intruder, "intruder-stop", "-m", "rig", "stop", "--settings",
                               intruder_settings)
    assert code == 2 and out == ""
    assert f"no session answered on tcp://{net.rig_ip}:5556" in err and "authorised" in err
    assert len(err.strip().splitlines()) == 1

    # the trusted subscriber gets every feed and an answer to its soft-code request
    code, out, err = procs.run(net.analysis, "subscriber", CLIENT, analysis_settings, "events,frames,results",
                               "all")
    assert code == 0, out + err
    trusted = json.loads(out.splitlines()[-1])
    assert trusted["answered"] == 1 and min(trusted["counts"].values()) >= 3

    _wait_for("the rig logs the refused intruder",
              lambda: f"refused a connection from {net.intruder_ip}" in rig_err.read_text(), rig)
    done.touch()
    for proc, out in ((intruder, intruder_out), (plain, plain_out)):
        assert proc.wait(WAIT_S) == 0
        refused = json.loads(out.read_text().splitlines()[-1])
        assert refused == {"counts": {"events": 0, "frames": 0}, "answered": 0}

    code, out, err = procs.run(net.analysis, "status-after", "-m", "rig", "status", "--settings",
                               analysis_settings)
    assert code == 0 and json.loads(out)["trials"] >= 0  # nobody stopped it: the intruder's stop never landed
    code, out, err = procs.run(net.analysis, "stop", "-m", "rig", "stop", "--settings", analysis_settings)
    assert code == 0, err
    assert rig.wait(WAIT_S) == 0, rig_err.read_text()[-2000:]
    online.send_signal(signal.SIGTERM)
    assert online.wait(WAIT_S) == 0, online_err.read_text()[-2000:]

    log = rig_err.read_text()
    assert f"on tcp://{net.rig_ip}:5556: its public key" in log  # the control socket refused it
    (session,) = (tmp_path / "data" / "netmouse").glob("20*")
    assert (session / "trials.jsonl").read_text().strip()
    summary = json.loads((tmp_path / "online-session" / "online_summary.json").read_text())
    assert summary["frames_receiver"]["received"] > 0  # simulated microscope -> online module, over CURVE
    assert summary["events_receiver"]["received"] > 0  # rig events -> online module, over CURVE
