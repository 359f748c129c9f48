"""A full rolling restart with an unmodified RocketMQ client: PyPI `rocketmq` 0.4.4 (the bundled C++ client)
sends with `send_sync` without a pause while `scripts/rolling-restart.sh` restarts every node of the local
cluster from `scripts/cluster.sh up` (the test suite's binary, $RAFTMQ_BIN; a temporary data directory; the
script's fixed ports), followers first and the leader last. Every send returns OK, and every acknowledged
message is stored exactly once. The C++ client refreshes its routes only every 30 s: the old leader forwards
its sends while it drains (docs/operations.md, Rolling restarts).

Skipped, with the reason, when the local cluster's ports are taken (a developer's running cluster).
"""

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import pytest

BIN = os.environ.get("RAFTMQ_BIN", "")
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PORTS = (9876, 9877, 10911, 10912, 10913, 10921, 10922, 10923, 10931, 10932, 10933)
NAMESRV = "127.0.0.1:9876"
TOPIC = "PyRollingTopic"


def port_taken(port):
    with socket.socket() as s:
        # As the servers bind: connections of an earlier cluster in TIME_WAIT do not make a port taken.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return False
        except OSError:
            return True


def run(data, *args, check=True):
    env = dict(os.environ, RAFTMQ_BIN=BIN, RAFTMQ_DATA_DIR=data)
    r = subprocess.run(["bash", *args], cwd=REPO, env=env, capture_output=True, text=True)
    if check:
        assert r.returncode == 0, f"{args} failed ({r.returncode}):\n{r.stdout}{r.stderr}"
    return r.stdout + r.stderr


def test_send_sync_through_a_full_rolling_restart_fails_nothing():
    from rocketmq.client import Message, Producer, SendStatus

    assert BIN, "RAFTMQ_BIN must name the raftmq binary"
    taken = [p for p in PORTS if port_taken(p)]
    if taken:
        pytest.skip(f"ports {taken} of the local cluster are in use (a running scripts/cluster.sh cluster?)")
    root = tempfile.mkdtemp(prefix="raftmq-rolling-")
    data = os.path.join(root, "data")
    try:
        run(data, "scripts/cluster.sh", "up")
        producer = Producer("PID_rolling")
        producer.set_namesrv_addr(NAMESRV)
        producer.set_timeout(3000)
        producer.start()
        acked, errors, stop, stamps = [], {}, threading.Event(), []

        def send_all():
            i = 0
            while not stop.is_set():
                msg = Message(TOPIC)
                msg.set_keys(f"r-{i}")
                msg.set_body(f"rolling-{i}")
                try:
                    r = producer.send_sync(msg)
                    if r.status == SendStatus.OK:
                        acked.append(f"rolling-{i}")
                        stamps.append(time.time())
                    else:
                        errors[str(r.status)] = errors.get(str(r.status), 0) + 1
                except Exception as e:  # the client raises on a failed send
                    errors[str(e)[:160]] = errors.get(str(e)[:160], 0) + 1
                i += 1
                time.sleep(0.005)

        sender = threading.Thread(target=send_all)
        sender.start()
        time.sleep(3)
        started = time.time()
        out = run(data, "scripts/rolling-restart.sh", check=False)
        took = time.time() - started
        time.sleep(2)
        stop.set()
        sender.join()
        producer.shutdown()
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        during = sum(1 for t in stamps if started < t < started + took)
        print(out)
        print(f"rolling restart in {took:.1f} s: {len(acked)} send_sync OK ({during} during the restart), failures {errors}; "
              f"longest stall between acknowledgements {max(gaps, default=0) * 1000:.0f} ms")
        assert "rolling restart of broker-a done" in out, out
        assert not errors, f"sends failed during the rolling restart: {errors}; logs in {data}/logs"
        assert during > 0, "no send was acknowledged during the rolling restart"

        # Every acknowledged message is stored once.
        env = dict(os.environ, RAFTMQ_CLUSTER_SECRET_FILE=os.path.join(data, "cluster-secret"))
        r = subprocess.run([BIN, "consume", "--namesrv", NAMESRV, "--topic", TOPIC, "--group", "rolling_check",
                            "--count", str(len(acked) + 100), "--timeout-secs", "20"],
                           env=env, capture_output=True, text=True)
        bodies = [l.split("body=", 1)[1] for l in r.stdout.splitlines() if "body=" in l]
        counts = {}
        for b in bodies:
            counts[b] = counts.get(b, 0) + 1
        missing = [b for b in acked if b not in counts]
        twice = [b for b, n in counts.items() if n > 1]
        assert not missing, f"{len(missing)} acknowledged messages are not stored, e.g. {missing[:5]}"
        assert not twice, f"messages stored more than once: {twice[:5]}"
        print(f"all {len(acked)} acknowledged messages stored once")
    finally:
        run(data, "scripts/cluster.sh", "down", check=False)
        # The local cluster's configs preallocate large commitlog segments: do not leave them behind.
        shutil.rmtree(root, ignore_errors=True)
