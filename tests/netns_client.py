"""A peer of the rig for tests/test_network_security.py, run inside a network namespace.

    python tests/netns_client.py SETTINGS FEEDS UNTIL [--plain]

Subscribes to FEEDS (comma-separated: events, frames, results) with the CURVE identity of SETTINGS and
sends one soft-code request to the control socket, as the online module does. `--plain` uses bare ZeroMQ
without CURVE instead (a peer that never heard of keys), asking the session to stop. Prints `subscribed`
once its sockets exist, then runs until UNTIL: `all` (every feed got 3 messages and the request was
answered) or a file path (ends when that file exists). Prints one JSON line of counts; exit status 1 if
`all` was not reached within 60 s.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import zmq

from online.closed_loop import SoftCodeOutput
from online.transport import LossySubscriber, security_for
from rig.settings import load_settings

WANTED = 3
BITE = 20
DEADLINE_S = 60.0


def main() -> int:
    settings_path, feeds, until = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
    plain = "--plain" in sys.argv[4:]
    net = load_settings(settings_path).network
    endpoints = {"events": net.events_pub, "frames": net.frames_display, "results": net.online_results}
    context = zmq.Context()
    counts = {feed: 0 for feed in feeds}
    answered = 0
    if plain:
        subs = {feed: context.socket(zmq.SUB) for feed in feeds}
        for feed, sub in subs.items():
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(endpoints[feed])
        control = context.socket(zmq.REQ)
        control.connect(net.control)
        control.send(json.dumps({"command": "stop"}).encode())
    else:
        security = security_for(net)
        subscribers = {feed: LossySubscriber(endpoints[feed], hwm=1000, context=context, security=security)
                       for feed in feeds}
        soft_code = SoftCodeOutput(net.control, context=context, security=security)
        soft_code.send(1, trial=0)  # refused by a running session (trial 0 is never running), but answered
    print("subscribed", flush=True)
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        for feed in feeds:  # a bounded bite of each feed per round, so none starves the others
            for _ in range(BITE):
                if plain:
                    if not subs[feed].poll(10):
                        break
                    subs[feed].recv_multipart()
                elif subscribers[feed].recv(timeout_s=0.01) is None:
                    break
                counts[feed] += 1
        if plain:
            if control.poll(0):
                control.recv()
                answered += 1
        else:
            soft_code.poll()
            answered = soft_code.accepted + soft_code.refused
        if until == "all" and answered and all(n >= WANTED for n in counts.values()):
            break
        if until != "all" and Path(until).exists():
            break
    print(json.dumps({"counts": counts, "answered": answered}), flush=True)
    if plain:
        for sock in (*subs.values(), control):
            sock.close(linger=0)
    else:
        for subscriber in subscribers.values():
            subscriber.close()
        soft_code.close()
    context.term()
    reached = answered and all(n >= WANTED for n in counts.values())
    return 0 if until != "all" or reached else 1


if __name__ == "__main__":
    sys.exit(main())
