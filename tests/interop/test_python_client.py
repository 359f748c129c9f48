"""Interop with an unmodified RocketMQ client: PyPI `rocketmq` 0.4.4 (the bundled C++ client, which sends
SEND_MESSAGE 10 with lenient JSON, ordinals in heartbeats, and decodes only V1/IPv4 stored messages).

Starts a real 3-node raftmq cluster (binary from $RAFTMQ_BIN), sends with `send_sync` while the Raft leader is
killed with SIGKILL in the middle, then receives everything with a `PushConsumer` and checks that every
acknowledged message arrived with its keys and tags intact. Run by scripts/test.sh in a venv.
"""

import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

BIN = os.environ.get("RAFTMQ_BIN", "")
TOPIC = "PyInteropTopic"
CLIENT_HOME = []  # the C++ client's $HOME (its log directory), fixed by the first cluster of the process


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, root, extra=""):
        self.root = root
        self.namesrv = f"127.0.0.1:{free_port()}"
        self.procs = {}
        self.peers = [(i, f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}") for i in (1, 2, 3)]
        self.procs["namesrv"] = subprocess.Popen(
            [BIN, "namesrv", "--listen", self.namesrv, "--log-file", f"{root}/namesrv.log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for node_id, client, _raft in self.peers:
            cfg = (f'brokerName = "broker-a"\nnodeId = {node_id}\nnamesrvAddr = "{self.namesrv}"\n'
                   f'storePathRootDir = "{root}/n{node_id}"\nmappedFileSizeCommitLog = 8388608\ndiskMaxUsedSpaceRatio = 0.99\n'
                   f'bootstrap = {"true" if node_id == 1 else "false"}\n' + extra)
            for pid, pclient, praft in self.peers:
                cfg += f'[[peers]]\nid = {pid}\nraftAddr = "{praft}"\nclientAddr = "{pclient}"\n'
            path = f"{root}/n{node_id}.toml"
            with open(path, "w") as f:
                f.write(cfg)
            self.procs[node_id] = subprocess.Popen(
                [BIN, "broker", "--config", path, "--log-file", f"{root}/n{node_id}.log"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def leader(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            r = subprocess.run([BIN, "admin", "--namesrv", self.namesrv, "leader"], capture_output=True, text=True)
            if r.returncode == 0 and r.stdout.strip().startswith("n"):
                return int(r.stdout.strip()[1:])
            time.sleep(0.2)
        raise AssertionError(f"no leader; logs in {self.root}")

    def kill(self, node_id):
        p = self.procs.pop(node_id)
        p.send_signal(signal.SIGKILL)
        p.wait()

    def diagnostics(self):
        """What a failure message needs: the cluster as the nameserver and the nodes see it, and each node's
        role changes and registration warnings."""
        out = []
        for args in (["leader"], ["status"]):
            r = subprocess.run([BIN, "admin", "--namesrv", self.namesrv, *args], capture_output=True, text=True)
            out.append(f"$ raftmq admin {' '.join(args)} -> {r.returncode}\n{r.stdout}{r.stderr}")
        for node_id, _, _ in self.peers:
            try:
                with open(f"{self.root}/n{node_id}.log", errors="replace") as f:
                    lines = [l.rstrip()[:300] for l in f if re.search(r"(INFO|WARN|ERROR) raftmq_", l)
                             and ("raft role" in l or "regist" in l or " ERROR " in l or "leadership" in l)]
            except OSError as e:
                lines = [str(e)]
            out.append(f"n{node_id}.log (role changes, registrations, errors; last 15):\n" + "\n".join(lines[-15:]))
        # The C++ client logs under the $HOME of the process's first test; it refreshes routes every 30 s.
        for path in glob.glob(f"{CLIENT_HOME[0] if CLIENT_HOME else ''}/logs/rocketmq-cpp/*.log*"):
            with open(path, errors="replace") as f:
                lines = [l.rstrip()[:200] for l in f if "updateTopicRouteInfoFromNameServer" in l]
            out.append(f"{path} (route refreshes; last 12):\n" + "\n".join(lines[-12:]))
        return "\n".join(out)

    def stop(self):
        for p in self.procs.values():
            p.kill()
            p.wait()
        # The stores (tens of MB per node, preallocated segments) go; the logs stay for a post-mortem.
        for node_id, _, _ in self.peers:
            shutil.rmtree(f"{self.root}/n{node_id}", ignore_errors=True)


def start_cluster(extra=""):
    if not BIN or not os.path.exists(BIN):
        pytest.fail("RAFTMQ_BIN must point at the raftmq binary")
    root = tempfile.mkdtemp(prefix="raftmq-py-")
    # The C++ client writes its logs under $HOME/logs (the $HOME it first saw).
    os.environ["HOME"] = root
    if not CLIENT_HOME:
        CLIENT_HOME.append(root)
    c = Cluster(root, extra)
    c.leader()
    return c


@pytest.fixture
def cluster():
    c = start_cluster()
    yield c
    c.stop()


# Level n waits n seconds: delays and the retry schedule (level 3 + reconsumeTimes) in test time.
SCALED_LEVELS = 'messageDelayLevel = "1s 2s 3s 4s 5s 6s 7s 8s 9s 10s 11s 12s 13s 14s 15s 16s 17s 18s"\n'


@pytest.fixture
def scaled_cluster():
    c = start_cluster(SCALED_LEVELS)
    # The first leader proposes the table; wait until it is in force.
    deadline = time.time() + 30
    while time.time() < deadline:
        r = subprocess.run([BIN, "admin", "--namesrv", c.namesrv, "schedule"], capture_output=True, text=True)
        if r.returncode == 0 and "delay levels: 1s 2s 3s" in r.stdout:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"the scaled delay levels never took effect; logs in {c.root}")
    yield c
    c.stop()


def test_delay_level_and_retry_schedule(scaled_cluster):
    """set_delay_time_level(2) arrives after 2 s, not before; the RocketMQ 5 property TIMER_DELAY_MS set as a
    plain property arrives after its 1.5 s; a RECONSUME_LATER is retried after level 3 + reconsumeTimes (3 s
    here), through the CONSUMER_SEND_MSG_BACK the C++ client sends to the store host."""
    from rocketmq.client import Message, Producer, PushConsumer, SendStatus

    topic = "PyDelayTopic"
    producer = Producer("PID_delay")
    producer.set_namesrv_addr(scaled_cluster.namesrv)
    producer.start()
    seen = {}

    def text(v):
        return v.decode() if isinstance(v, bytes) else v

    def on_message(m):
        body = text(m.body)
        seen.setdefault(body, []).append(time.time())
        if body == "retry-me" and len(seen[body]) == 1:
            # The client's way of saying RECONSUME_LATER.
            raise RuntimeError("not yet")

    # The topic exists (and its route is known) before the consumer starts.
    warm = Message(topic)
    warm.set_body("warm-up")
    assert producer.send_sync(warm).status == SendStatus.OK
    consumer = PushConsumer("CID_delay")
    consumer.set_namesrv_addr(scaled_cluster.namesrv)
    consumer.subscribe(topic, on_message)
    consumer.start()
    deadline = time.time() + 30
    while "warm-up" not in seen and time.time() < deadline:
        time.sleep(0.1)
    assert "warm-up" in seen, "the consumer never received the warm-up message"

    delayed = Message(topic)
    delayed.set_body("later")
    delayed.set_delay_time_level(2)
    sent = time.time()
    assert producer.send_sync(delayed).status == SendStatus.OK
    timer = Message(topic)
    timer.set_body("timer")
    timer.set_property("TIMER_DELAY_MS", "1500")
    timer_sent = time.time()
    assert producer.send_sync(timer).status == SendStatus.OK
    retry = Message(topic)
    retry.set_body("retry-me")
    assert producer.send_sync(retry).status == SendStatus.OK
    deadline = time.time() + 40
    while (len(seen.get("retry-me", [])) < 2 or "later" not in seen or "timer" not in seen) and time.time() < deadline:
        time.sleep(0.1)
    consumer.shutdown()
    producer.shutdown()
    print(f"seen: { {k: [round(t - sent, 2) for t in v] for k, v in seen.items()} }")
    assert "later" in seen, "the delayed message never arrived"
    waited = seen["later"][0] - sent
    assert 1.9 <= waited < 10, f"delay level 2 (2 s) arrived after {waited:.2f} s"
    assert len(seen["later"]) == 1, f"the delayed message arrived {len(seen['later'])} times"
    assert "timer" in seen, "the TIMER_DELAY_MS message never arrived"
    waited = seen["timer"][0] - timer_sent
    assert 1.45 <= waited < 10, f"TIMER_DELAY_MS 1500 arrived after {waited:.2f} s"
    assert len(seen["timer"]) == 1, f"the timer message arrived {len(seen['timer'])} times"
    times = seen.get("retry-me", [])
    assert len(times) >= 2, f"RECONSUME_LATER was never retried (received {len(times)} time(s))"
    gap = times[1] - times[0]
    assert 2.9 <= gap < 15, f"the first retry came {gap:.2f} s after RECONSUME_LATER, expected level 3 = 3 s"


def test_send_sync_across_a_leader_kill_and_push_consumer_receives_everything(cluster):
    from rocketmq.client import Message, Producer, PushConsumer, SendStatus

    producer = Producer("PID_interop")
    producer.set_namesrv_addr(cluster.namesrv)
    producer.set_timeout(3000)
    producer.start()
    acked = {}
    total, killed, attempts = 60, False, 0
    errors = {}
    started = time.time()
    deadline = started + 120
    i = 0
    while len(acked) < total and time.time() < deadline:
        if len(acked) == total // 2 and not killed:
            victim = cluster.leader()
            cluster.kill(victim)
            killed = time.time()
        attempts += 1
        body = f"py-{i}"
        i += 1
        msg = Message(TOPIC)
        msg.set_keys(f"key-{body}")
        msg.set_tags("TagA" if i % 2 else "TagB")
        msg.set_body(body)
        try:
            r = producer.send_sync(msg)
        except Exception as e:
            # Uncertain: never re-sent with the same body; only acknowledged messages are checked.
            errors[str(e)[:160]] = errors.get(str(e)[:160], 0) + 1
            time.sleep(0.5)
            continue
        if r.status == SendStatus.OK:
            acked[body] = (f"key-{body}", "TagA" if i % 2 else "TagB")
    producer.shutdown()
    assert killed, "the leader was never killed"
    assert len(acked) == total, (
        f"only {len(acked)} of {total} sends acknowledged in time ({attempts} attempts; n{victim} killed "
        f"{killed - started:.1f} s after the producer started); send errors {errors}; logs in {cluster.root}\n"
        + cluster.diagnostics())
    new_leader = cluster.leader()
    print(f"{attempts} send attempts, {len(acked)} acknowledged, leader now n{new_leader}")

    received = {}

    def text(v):
        return v.decode() if isinstance(v, bytes) else v

    def on_message(m):
        received[text(m.body)] = (text(m.keys), text(m.tags))

    consumer = PushConsumer("CID_interop")
    consumer.set_namesrv_addr(cluster.namesrv)
    consumer.subscribe(TOPIC, on_message)
    consumer.start()
    deadline = time.time() + 90
    while not set(acked) <= set(received) and time.time() < deadline:
        time.sleep(0.2)
    consumer.shutdown()
    missing = sorted(set(acked) - set(received))
    assert not missing, f"{len(missing)} acknowledged messages never delivered, e.g. {missing[:5]}"
    for body, (keys, tags) in acked.items():
        assert received[body] == (keys, tags), f"{body}: got {received[body]}, sent {(keys, tags)}"


def test_a_half_message_from_a_client_without_transactions_stays_invisible_and_is_parked():
    """The C++ client's C API has no transaction producer, but `set_property("TRAN_MSG", "true")` makes a half
    message nobody ends. It must never reach consumers of its topic, and the broker's check-backs (which this
    producer cannot answer) must end it: after transactionCheckMax rounds it is parked in
    TRANS_CHECK_MAX_TIME_TOPIC, where a consumer can read it."""
    from rocketmq.client import Message, Producer, PushConsumer, SendStatus

    c = start_cluster("transactionTimeOut = 500\ntransactionCheckInterval = 500\ntransactionCheckMax = 2\n")
    try:
        topic = "PyHalfTopic"
        producer = Producer("PID_half")
        producer.set_namesrv_addr(c.namesrv)
        producer.start()
        received, parked = [], []

        def text(v):
            return v.decode() if isinstance(v, bytes) else v

        def send(body, half=False):
            m = Message(topic)
            m.set_body(body)
            if half:
                m.set_property("TRAN_MSG", "true")
                m.set_property("PGROUP", "PID_half")
            r = producer.send_sync(m)
            assert r.status == SendStatus.OK, f"{body}: {r.status}"

        send("before")
        send("half", half=True)
        send("after")
        consumer = PushConsumer("CID_half")
        consumer.set_namesrv_addr(c.namesrv)
        consumer.subscribe(topic, lambda m: received.append(text(m.body)))
        consumer.start()
        parking = PushConsumer("CID_parking")
        parking.set_namesrv_addr(c.namesrv)
        parking.subscribe("TRANS_CHECK_MAX_TIME_TOPIC", lambda m: parked.append(text(m.body)))
        parking.start()
        deadline = time.time() + 60
        while not ({"before", "after"} <= set(received) and "half" in parked) and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        consumer.shutdown()
        parking.shutdown()
        producer.shutdown()
        assert {"before", "after"} <= set(received), f"plain messages not received: {received}; logs in {c.root}"
        assert "half" not in received, f"a half message nobody committed was delivered: {received}"
        assert parked == ["half"], f"the undecided half message was not parked once: {parked}; logs in {c.root}\n" + c.diagnostics()
    finally:
        c.stop()


def test_a_running_push_consumer_follows_a_server_side_offset_reset(cluster):
    """`raftmq admin group reset --to-time` while a PyPI push consumer that has consumed everything keeps
    running: the broker answers its next pull with PULL_OFFSET_MOVED (21) to the reset offset and ignores its
    stale commits, so it receives the messages stored from that time on again, without a restart (the C++ core
    parses no 220 push; it needs none)."""
    from rocketmq.client import Message, Producer, PushConsumer, SendStatus

    topic = "PyResetTopic"
    r = subprocess.run([BIN, "admin", "--namesrv", cluster.namesrv, "topic", "create", topic, "--queues", "2"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    producer = Producer("PID_reset")
    producer.set_namesrv_addr(cluster.namesrv)
    producer.start()

    def send(prefix):
        for i in range(10):
            msg = Message(topic)
            msg.set_body(f"{prefix}-{i}")
            assert producer.send_sync(msg).status == SendStatus.OK

    counts = {}
    order = []

    def text(v):
        return v.decode() if isinstance(v, bytes) else v

    def on_message(m):
        body = text(m.body)
        counts[body] = counts.get(body, 0) + 1
        order.append((round(time.time(), 3), body, m.queue_id, m.queue_offset))

    def wait(prefix, times, timeout):
        deadline = time.time() + timeout
        want = [f"{prefix}-{i}" for i in range(10)]
        while time.time() < deadline:
            if all(counts.get(b, 0) >= times for b in want):
                return
            time.sleep(0.2)
        raise AssertionError(f"{prefix}: wanted {times} deliveries each, got {counts}; logs in {cluster.root}")

    consumer = PushConsumer("CID_reset")
    consumer.set_namesrv_addr(cluster.namesrv)
    consumer.subscribe(topic, on_message)
    consumer.start()
    try:
        send("old")
        time.sleep(0.1)
        before = int(time.time() * 1000)
        time.sleep(0.1)
        send("new")
        wait("old", 1, 60)
        wait("new", 1, 60)
        # The C++ client commits its offsets every 5 s.
        time.sleep(6)
        r = subprocess.run([BIN, "admin", "--namesrv", cluster.namesrv, "group", "reset", "--group", "CID_reset",
                            "--topic", topic, "--to-time", str(before)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        print(r.stdout)
        wait("new", 2, 60)
        time.sleep(2)
        got = sorted((b, c) for b, c in counts.items())
        print(order)
        assert all(c == 1 for b, c in got if b.startswith("old")), f"{got}; logs in {cluster.root}"
        assert all(c == 2 for b, c in got if b.startswith("new")), f"{got}; logs in {cluster.root}"
    finally:
        consumer.shutdown()
        producer.shutdown()


def test_send_sync_to_a_stale_route_across_leader_transfers_fails_nothing(cluster):
    """Planned leader transfers cost an unmodified client nothing: the C++ client keeps sending to brokerId 0
    of its cached route (refreshed every 30 s), the member that no longer leads forwards each send to the
    leader (docs/protocol.md, Forwarding and the election wait), and every send_sync returns OK."""
    from rocketmq.client import Message, Producer, SendStatus

    producer = Producer("PID_transfer")
    producer.set_namesrv_addr(cluster.namesrv)
    producer.set_timeout(3000)
    producer.start()
    total, acked, errors, transfers = 400, 0, {}, []
    for i in range(total):
        if i in (100, 300):
            old = cluster.leader()
            target = 2 if old == 1 else 1
            t = time.time()
            r = subprocess.run([BIN, "admin", "--namesrv", cluster.namesrv, "transfer-leader", "--to", f"n{target}"],
                               capture_output=True, text=True)
            assert r.returncode == 0, f"transfer n{old} -> n{target}: {r.stdout}{r.stderr[:600]}"
            transfers.append((old, target, round(time.time() - t, 2)))
        msg = Message(TOPIC)
        msg.set_keys(f"t-{i}")
        msg.set_body(f"transfer-{i}")
        try:
            r = producer.send_sync(msg)
            if r.status == SendStatus.OK:
                acked += 1
            else:
                errors[str(r.status)] = errors.get(str(r.status), 0) + 1
        except Exception as e:
            errors[str(e)[:160]] = errors.get(str(e)[:160], 0) + 1
        # 200 sends between the transfers take over leaderTransferIntervalMinMs (3 s).
        time.sleep(0.02)
    producer.shutdown()
    print(f"{total} send_sync across transfers {transfers}: {acked} OK, failures {errors}")
    assert acked == total and not errors, (
        f"{total - acked} of {total} sends failed across transfers {transfers}: {errors}; logs in {cluster.root}\n"
        + cluster.diagnostics())
