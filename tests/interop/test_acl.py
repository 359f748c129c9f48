"""Interop of RocketMQ plain ACL with an unmodified RocketMQ client: PyPI `rocketmq` 0.4.4 (the bundled C++
client) with `set_session_credentials(ak, sk, "ALIYUN")`, which signs every request with an extra `OnsChannel`
ext field.

Starts a real 3-node raftmq cluster with `aclEnable` and cluster/local/acl.toml (RocketMQ's sample accounts:
`RocketMQ` may PUB|SUB topicB with groupB, is denied topicA and groupA; `rocketmq2` is admin), then: a
permitted producer sends and a permitted push consumer receives; a wrong secret and a denied topic fail the
send; a consumer of a denied group receives nothing and the leader logs the refusals.
"""

import os
import subprocess
import threading
import time

import pytest

from test_python_client import BIN, start_cluster

ACL_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "cluster", "local", "acl.toml")
SECRET = "12345678"


@pytest.fixture
def acl_cluster(monkeypatch):
    # The fixture's own `raftmq admin` calls (leader lookup) sign as the sample admin account.
    monkeypatch.setenv("RAFTMQ_ACCESS_KEY", "rocketmq2")
    monkeypatch.setenv("RAFTMQ_SECRET_KEY", SECRET)
    c = start_cluster(f'aclEnable = true\naclFile = "{os.path.abspath(ACL_FILE)}"\n')
    for topic in ("topicA", "topicB"):
        r = subprocess.run([BIN, "admin", "--namesrv", c.namesrv, "topic", "create", topic], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    # The leader registers new topics with the nameserver right after creating them; wait for the routes.
    deadline = time.time() + 30
    for topic in ("topicA", "topicB"):
        while subprocess.run([BIN, "admin", "--namesrv", c.namesrv, "topic", "route", topic], capture_output=True).returncode != 0:
            assert time.time() < deadline, f"no route of {topic}; logs in {c.root}"
            time.sleep(0.2)
    yield c
    c.stop()


def producer(cluster, group, ak, sk):
    from rocketmq.client import Producer
    p = Producer(group)
    p.set_namesrv_addr(cluster.namesrv)
    p.set_session_credentials(ak, sk, "ALIYUN")
    p.set_timeout(3000)
    p.start()
    return p


def leader_log(cluster):
    text = ""
    for node_id, _, _ in cluster.peers:
        with open(f"{cluster.root}/n{node_id}.log", errors="replace") as f:
            text += f.read()
    return text


def test_permitted_account_sends_and_consumes_and_refusals(acl_cluster):
    from rocketmq.client import Message, PushConsumer, SendStatus

    p = producer(acl_cluster, "PID_acl", "RocketMQ", SECRET)
    sent = []
    for i in range(5):
        m = Message("topicB")
        m.set_keys(f"k{i}")
        m.set_body(f"acl-{i}")
        r = p.send_sync(m)
        assert r.status == SendStatus.OK, r
        sent.append(f"acl-{i}")

    # Missing permission: topicA is DENY for RocketMQ.
    denied = Message("topicA")
    denied.set_body("denied")
    with pytest.raises(Exception) as e:
        p.send_sync(denied)
    # The C++ client retries a 16 and then reports a generic failure; the refusal itself is in the brokers'
    # logs (checked below) and in the client's log.
    assert e.value is not None
    p.shutdown()

    # Wrong secret: the signature does not verify.
    bad = producer(acl_cluster, "PID_acl_bad", "RocketMQ", "wrong-secret")
    m = Message("topicB")
    m.set_body("wrong secret")
    with pytest.raises(Exception) as e:
        bad.send_sync(m)
    assert e.value is not None
    bad.shutdown()

    # A permitted consumer (groupB) receives everything that was sent.
    got, lock, done = [], threading.Lock(), threading.Event()

    def on_message(msg):
        with lock:
            got.append(msg.body.decode())
            if len(got) >= len(sent):
                done.set()

    c = PushConsumer("groupB")
    c.set_namesrv_addr(acl_cluster.namesrv)
    c.set_session_credentials("RocketMQ", SECRET, "ALIYUN")
    c.subscribe("topicB", on_message)
    c.start()
    try:
        assert done.wait(60), f"received {got}; logs in {acl_cluster.root}"
    finally:
        c.shutdown()
    assert sorted(set(got)) == sorted(sent)

    # A consumer of a denied group (groupA) receives nothing; the brokers log why.
    denied_got = []
    d = PushConsumer("groupA")
    d.set_namesrv_addr(acl_cluster.namesrv)
    d.set_session_credentials("RocketMQ", SECRET, "ALIYUN")
    d.subscribe("topicB", lambda msg: denied_got.append(msg.body))
    d.start()
    time.sleep(8)
    d.shutdown()
    assert denied_got == []
    log = leader_log(acl_cluster)
    assert "no SUB permission on group:groupA" in log
    assert "no PUB permission on topic:topicA" in log
    assert "check signature failed for accessKey=RocketMQ" in log
    assert "wrong-secret" not in log
