//! The nameserver's web console (crates/namesrv/src/console.rs) against a real cluster (a nameserver and three
//! `raftmq broker` processes on loopback): its JSON API names the Raft leader, lists the topic's queues, finds
//! a produced message by id, offsetMsgId, key and queue offset, shows a consumer group's lag after a commit and
//! the rates between two samples, renders a `<script>` body as data, and shows a killed node as unreachable
//! without holding the answer; and, as a person would see it, headless Chromium renders the page (the leader's
//! row, the message found from the URL's `#id=`) and takes a screenshot. The browser test is skipped, with the
//! reason printed, when no `chromium` (or `chromium-browser`) is installed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use raftmq_remoting::message::property;
use serde_json::Value;

const TOPIC: &str = "ConsoleTopic";
const GROUP: &str = "console-group";
const MSG_ID: &str = "7F0000010000A1B2C3D4E5F600000001";
const XSS_ID: &str = "7F0000010000A1B2C3D4E5F600000002";
const XSS_BODY: &str = "<script>document.title='owned'</script><b>bold</b>";
const XSS_KEY: &str = "<img src=x onerror=document.title=1>";

/// `GET path` on the console; the status and the body.
async fn get(addr: &str, path: &str) -> (u16, String) {
    raftmq_metrics::server::http_get(addr, path, 8 << 20).await.unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

async fn get_json(addr: &str, path: &str) -> Value {
    let (status, body) = get(addr, path).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
}

async fn wait_json(addr: &str, path: &str, what: &str, timeout: Duration, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let v = get_json(addr, path).await;
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {v:#}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

fn nodes(cluster: &Value) -> Vec<Value> {
    cluster["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["groups"].as_array().into_iter().flatten())
        .flat_map(|g| g["nodes"].as_array().into_iter().flatten().cloned())
        .collect()
}

/// A cluster with a leader, `TOPIC` holding five messages on queue 1 (the first with id `MSG_ID` and key
/// `order-42`) and the `<script>` message on queue 2, and `GROUP` committed at 2 on queue 1. Returns the
/// leader's id and client address.
async fn populated() -> (Cluster, u64, String) {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_registered_leader(Duration::from_secs(30)).await;
    let addr = cluster.node(leader).client_addr.clone();
    let c = client(&addr).await.expect("connect to the leader");
    let first =
        send_request_with(TOPIC, 1, b"hello console", &[(property::KEYS, "order-42"), (property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX, MSG_ID)]);
    assert_eq!(send_cmd(&c, first).await, Ok(0));
    for i in 1..5 {
        send(&c, TOPIC, 1, format!("m{i}").as_bytes()).await.expect("send");
    }
    let xss = send_request_with(
        TOPIC,
        2,
        XSS_BODY.as_bytes(),
        &[(property::KEYS, "xss-key"), (property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX, XSS_ID), (property::TAGS, XSS_KEY)],
    );
    assert_eq!(send_cmd(&c, xss).await, Ok(0));
    assert_eq!(commit_offset(&c, GROUP, TOPIC, 1, 2).await, 0);
    (cluster, leader, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_json_api_shows_the_leader_offsets_lag_and_messages() {
    let (mut cluster, leader, leader_addr) = populated().await;
    let http = cluster.namesrv_metrics.clone();

    // The cluster view: three reachable nodes, the leader at its address with role Leader.
    let view = wait_json(&http, "/api/cluster", "three nodes, the leader's status", Duration::from_secs(20), |v| {
        let ns = nodes(v);
        ns.len() == 3
            && ns.iter().all(|n| n["reachable"] == true)
            && ns.iter().any(|n| n["addr"] == leader_addr.as_str() && n["role"] == "Leader")
    })
    .await;
    let ns = nodes(&view);
    let l = ns.iter().find(|n| n["role"] == "Leader").expect("a leader");
    assert_eq!(l["nodeId"], leader, "{view:#}");
    assert_eq!(l["registeredId"], 0, "the leader registers as brokerId 0");
    assert!(l["commitIndex"].as_u64().unwrap() > 0 && l["appliedIndex"].as_u64().unwrap() > 0 && l["term"].as_u64().unwrap() > 0, "{l:#}");
    assert_eq!(ns.iter().filter(|n| n["role"] == "Follower").count(), 2, "{view:#}");
    assert_eq!(view["clusters"][0]["groups"][0]["registeredLeader"], leader_addr.as_str());

    // The topic view: queue 1 holds offsets 0..5, queue 2 one message (once the topic is routed).
    let topics = wait_json(&http, "/api/topics", "the topic routed", Duration::from_secs(20), |v| {
        v["topics"].as_array().is_some_and(|ts| ts.iter().any(|t| t["name"] == TOPIC))
    })
    .await;
    let t = topics["topics"].as_array().unwrap().iter().find(|t| t["name"] == TOPIC).unwrap();
    let g = &t["groups"][0];
    assert_eq!(g["brokerName"], "broker-a");
    assert_eq!(g["config"]["readQueues"], 4, "{g:#}");
    let q1 = g["queues"].as_array().unwrap().iter().find(|q| q["queueId"] == 1).expect("queue 1");
    assert_eq!((q1["minOffset"].as_i64(), q1["maxOffset"].as_i64()), (Some(0), Some(5)), "{g:#}");
    assert_eq!(g["messages"], 6);

    // A message found by its id (UNIQ_KEY) without and with the topic, by offsetMsgId, by key, by queue offset.
    let by_id = get_json(&http, &format!("/api/message?id={MSG_ID}")).await;
    let m = &by_id["messages"][0];
    assert_eq!(m["msgId"], MSG_ID, "{by_id:#}");
    assert_eq!((m["topic"].as_str(), m["queueId"].as_i64(), m["queueOffset"].as_i64()), (Some(TOPIC), Some(1), Some(0)));
    assert_eq!(m["bodyPreview"], "hello console");
    assert_eq!(m["keys"], "order-42");
    assert_eq!(get_json(&http, &format!("/api/message?id={MSG_ID}&topic={TOPIC}")).await["messages"][0]["msgId"], MSG_ID);
    let offset_id = m["offsetMsgId"].as_str().expect("an offsetMsgId").to_string();
    let by_offset_id = get_json(&http, &format!("/api/message?id={offset_id}")).await;
    assert_eq!(by_offset_id["messages"][0]["msgId"], MSG_ID, "{by_offset_id:#}");
    let by_key = get_json(&http, &format!("/api/message?topic={TOPIC}&key=order-42")).await;
    assert_eq!(by_key["messages"].as_array().map(Vec::len), Some(1), "{by_key:#}");
    assert_eq!(by_key["messages"][0]["msgId"], MSG_ID);
    let by_pos = get_json(&http, &format!("/api/message?topic={TOPIC}&queue=1&offset=3")).await;
    assert_eq!(by_pos["messages"][0]["bodyPreview"], "m3", "{by_pos:#}");
    let none = get_json(&http, &format!("/api/message?topic={TOPIC}&key=no-such-key")).await;
    assert_eq!(none["messages"].as_array().map(Vec::len), Some(0), "{none:#}");
    // Bad lookups are refused with the reason, before any broker is asked.
    let (status, body) = get(&http, "/api/message").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("name a lookup"), "{body}");
    let (status, body) = get(&http, &format!("/api/message?topic={}&key=k", enc("<script>"))).await;
    assert_eq!(status, 400, "{body}");
    assert!(!body.contains('<'), "{body}");
    let (status, body) = get(&http, &format!("/api/message?topic={TOPIC}&queue=one&offset=0")).await;
    assert_eq!(status, 400, "{body}");

    // Broker-supplied markup travels as data: no '<' in the answer, the strings intact once decoded.
    let (status, raw) = get(&http, &format!("/api/message?id={XSS_ID}&topic={TOPIC}")).await;
    assert_eq!(status, 200, "{raw}");
    assert!(!raw.contains('<') && !raw.contains('>'), "{raw}");
    let xss: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(xss["messages"][0]["bodyPreview"], XSS_BODY);
    assert_eq!(xss["messages"][0]["tags"], XSS_KEY);

    // The group's lag: committed 2 of 5 on queue 1 (named; listing needs GET_ALL_SUBSCRIPTIONGROUP_CONFIG).
    let groups = get_json(&http, &format!("/api/groups?group={GROUP}")).await;
    let cg = &groups["groups"][0];
    assert_eq!(cg["name"], GROUP, "{groups:#}");
    let row = cg["queues"].as_array().unwrap().iter().find(|q| q["topic"] == TOPIC && q["queueId"] == 1).expect("queue 1 row");
    assert_eq!((row["consumerOffset"].as_i64(), row["brokerOffset"].as_i64(), row["lag"].as_i64()), (Some(2), Some(5), Some(3)), "{cg:#}");
    assert_eq!(cg["lag"], 4, "3 on queue 1 and the uncommitted message of queue 2: {cg:#}");
    let listing = get_json(&http, "/api/groups").await;
    if listing["listed"] == false {
        let notes = listing["notes"].to_string();
        assert!(notes.contains("not supported"), "{listing:#}");
        assert_eq!(listing["groups"].as_array().map(Vec::len), Some(0), "{listing:#}");
    }

    // Rates: the difference of two samples; ten more messages in between count.
    let first = get_json(&http, "/api/rates").await;
    assert_eq!(first["storedMessages"]["broker-a"], 6, "{first:#}");
    let c = client(&leader_addr).await.expect("leader");
    for i in 0..10 {
        send(&c, TOPIC, 0, format!("r{i}").as_bytes()).await.expect("send");
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let second = get_json(&http, "/api/rates").await;
    assert_eq!(second["storedMessages"]["broker-a"], 16, "{second:#}");
    let secs = second["intervalSeconds"].as_f64().expect("an interval");
    let rate = second["storedMessagesPerSec"]["broker-a"].as_f64().expect("a rate");
    assert!((rate * secs - 10.0).abs() < 0.01, "10 messages over {secs} s, got {rate}/s: {second:#}");
    assert!(second["commitlogBytesPerSec"]["broker-a"].as_f64().expect("a byte rate") > 0.0, "{second:#}");

    // What an answer costs on this 3-node loopback cluster (printed for docs/operations.md).
    for path in ["/api/cluster", "/api/topics", &format!("/api/groups?group={GROUP}"), &format!("/api/message?id={MSG_ID}"), "/api/rates"] {
        let started = Instant::now();
        get_json(&http, path).await;
        println!("{path} answered in {:?}", started.elapsed());
    }

    // The page and its script are served, with a policy that forbids foreign and inline scripts.
    let (status, page) = get(&http, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("<script src=\"/console.js\"></script>") && page.contains("raftmq console"), "{page}");
    assert!(!page.contains("http://") && !page.contains("https://"), "no external resources");
    let (status, script) = get(&http, "/console.js").await;
    assert_eq!(status, 200);
    assert!(!script.contains("innerHTML"), "the script writes text, not markup");
    assert_eq!(get(&http, "/metrics").await.0, 200, "metrics still served on the same port");

    // A killed follower shows as unreachable, quickly; the others still answer.
    let follower = cluster.nodes.iter().map(|n| n.id).find(|id| *id != leader).unwrap();
    let follower_addr = cluster.node(follower).client_addr.clone();
    cluster.kill(follower);
    let started = Instant::now();
    let view = get_json(&http, "/api/cluster").await;
    println!("/api/cluster with a killed follower answered in {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    let ns = nodes(&view);
    let dead = ns.iter().find(|n| n["addr"] == follower_addr.as_str()).expect("the killed node is still registered");
    assert_eq!(dead["reachable"], false, "{view:#}");
    assert!(dead["error"].as_str().unwrap().contains("unreachable"), "{dead:#}");
    assert_eq!(ns.iter().filter(|n| n["reachable"] == true).count(), 2, "{view:#}");

    // A stopped node (SIGSTOP: connections accepted by the kernel, never answered) costs one call timeout, not a hang.
    let stopped = cluster.nodes.iter().map(|n| n.id).find(|id| *id != leader && *id != follower).unwrap();
    let stopped_addr = cluster.node(stopped).client_addr.clone();
    cluster.signal(stopped, "STOP");
    cluster.wait_stopped(stopped, Duration::from_secs(5));
    let started = Instant::now();
    let view = get_json(&http, "/api/cluster").await;
    let took = started.elapsed();
    cluster.signal(stopped, "CONT");
    println!("/api/cluster with a stopped follower answered in {took:?}");
    let ns = nodes(&view);
    let s = ns.iter().find(|n| n["addr"] == stopped_addr.as_str()).expect("the stopped node");
    assert_eq!(s["reachable"], false, "{view:#}");
    assert!(s["error"].as_str().unwrap().contains("unreachable"), "{s:#}");
    let timeout = raftmq_namesrv::console::CONSOLE_CALL_TIMEOUT;
    assert!(took >= timeout && took < timeout * 2, "took {took:?}: {view:#}");
    assert!(ns.iter().any(|n| n["addr"] == leader_addr.as_str() && n["role"] == "Leader"), "the leader still shown: {view:#}");
}

/// The Chromium binary, if one is installed.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for name in ["chromium", "chromium-browser"] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Runs headless Chromium on `url` with `args`; its stdout. Killed after 90 s.
fn run_chromium(bin: &Path, profile: &Path, args: &[String], url: &str) -> String {
    let mut child = Command::new(bin)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut out = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).ok();
        s
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    reader.join().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn headless_chromium_renders_the_leader_and_the_looked_up_message() {
    let Some(bin) = chromium() else {
        println!("SKIPPED headless_chromium_renders_the_leader_and_the_looked_up_message: no chromium or chromium-browser on PATH (apt-get install chromium)");
        return;
    };
    let (cluster, leader, leader_addr) = populated().await;
    let http = cluster.namesrv_metrics.clone();
    // The page shows what the API has: wait until the topic is routed and every node answers.
    wait_json(&http, "/api/topics", "the topic routed", Duration::from_secs(20), |v| {
        v["topics"].as_array().is_some_and(|ts| ts.iter().any(|t| t["name"] == TOPIC))
    })
    .await;
    wait_json(&http, "/api/cluster", "three reachable nodes", Duration::from_secs(20), |v| {
        let ns = nodes(v);
        ns.len() == 3 && ns.iter().all(|n| n["reachable"] == true)
    })
    .await;
    // Two rate samples, so that the page's first sample has a base.
    get_json(&http, "/api/rates").await;

    let profile = tempfile::tempdir().expect("a profile dir");
    let base = format!("http://{http}/");
    let budget = "--virtual-time-budget=5000".to_string();
    let url = format!("{base}#id={MSG_ID}&group={GROUP}");
    let dom = tokio::task::block_in_place(|| run_chromium(&bin, profile.path(), &[budget.clone(), "--dump-dom".into()], &url));
    // The leader's row: its address, its node id, role Leader.
    let row = format!(r#"<tr data-addr="{leader_addr}" data-node="{leader}" data-role="Leader">"#);
    assert!(dom.contains(&row), "no leader row {row} in the DOM:\n{dom}");
    let row_text = &dom[dom.find(&row).unwrap()..];
    let row_text = &row_text[..row_text.find("</tr>").unwrap()];
    assert!(row_text.contains(r#"<td class="Leader">Leader</td>"#), "{row_text}");
    // The message found from the URL's #id=…, with its body.
    assert!(dom.contains(&format!(r#"<div class="message" data-msgid="{MSG_ID}">"#)), "message not found in the DOM:\n{dom}");
    assert!(dom.contains(r#"<pre class="body">hello console</pre>"#), "{dom}");
    // The topic's rows and the group's lag.
    assert!(dom.contains(&format!(r#"<tr data-topic="{TOPIC}"><td><b>{TOPIC}</b></td><td>broker-a</td><td>4 queues</td>"#)), "{dom}");
    let q1 = format!(
        r#"<tr data-topic="{TOPIC}" data-queue="1"><td></td><td></td><td class="num">1</td><td class="num">0</td><td class="num">5</td>"#
    );
    assert!(dom.contains(&q1), "no row of queue 1 with offsets 0..5:\n{dom}");
    assert!(dom.contains(&format!(r#"<tr data-group="{GROUP}" class="group">"#)) && dom.contains("lag 4"), "{dom}");

    // The rates, against the sample taken above: a rate per broker group, not the "first sample" note.
    assert!(dom.contains("<td>broker group broker-a</td><td>messages stored</td><td>0.0/s</td>"), "{dom}");
    assert!(dom.contains("over the last "), "{dom}");

    // The <script> message rendered as text: escaped in the DOM, never executed (the title is untouched).
    let xss_url = format!("{base}#id={XSS_ID}&topic={TOPIC}");
    let dom = tokio::task::block_in_place(|| run_chromium(&bin, profile.path(), &[budget.clone(), "--dump-dom".into()], &xss_url));
    assert!(dom.contains("&lt;script&gt;document.title='owned'&lt;/script&gt;&lt;b&gt;bold&lt;/b&gt;"), "body not shown as text:\n{dom}");
    assert!(dom.contains("&lt;img src=x onerror=document.title=1&gt;"), "tag not shown as text:\n{dom}");
    assert!(!dom.contains("<script>document.title") && !dom.contains("<img src=\"x\"") && !dom.contains("<b>bold</b>"), "{dom}");
    assert!(dom.contains("<title>raftmq console</title>"), "{dom}");

    // The screenshot: $RAFTMQ_CONSOLE_SCREENSHOT when set (docs/console.png is made this way), else a temp file.
    let shot = std::env::var_os("RAFTMQ_CONSOLE_SCREENSHOT").map(PathBuf::from).unwrap_or_else(|| profile.path().join("console.png"));
    let _ = std::fs::remove_file(&shot);
    let args = [budget, format!("--screenshot={}", shot.display()), "--window-size=1280,900".into()];
    tokio::task::block_in_place(|| run_chromium(&bin, profile.path(), &args, &url));
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", shot.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "not a screenshot: {} bytes", png.len());
    println!("screenshot: {} ({} bytes)", shot.display(), png.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_cluster_secret_the_console_signs_node_status_and_shows_no_secret() {
    use std::os::unix::fs::PermissionsExt;
    const SECRET: &str = "console-test-cluster-secret-0123456789";
    let secrets = tempfile::tempdir().unwrap();
    let file = secrets.path().join("cluster-secret");
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    // The nameserver of a cluster whose brokers have a clusterSecretFile gets the same file (tests/common).
    let cluster = Cluster::start_with(3, None, &format!("clusterSecretFile = \"{}\"\n", file.display())).await;
    let leader = cluster.wait_registered_leader(Duration::from_secs(30)).await;
    let leader_addr = cluster.node(leader).client_addr.clone();
    // Unsigned, node status is refused: the console's answers below come from signed requests.
    let c = client(&leader_addr).await.expect("leader");
    let cmd = raftmq_remoting::RemotingCommand::request(raftmq_remoting::RequestCode(raftmq_remoting::codes::RAFTMQ_NODE_STATUS), 0);
    let r = c.invoke(cmd, TIMEOUT).await.expect("an answer");
    assert_eq!(r.code, raftmq_remoting::ResponseCode::NO_PERMISSION.0, "{:?}", r.remark);

    let http = cluster.namesrv_metrics.clone();
    let view = wait_json(&http, "/api/cluster", "three nodes with their status", Duration::from_secs(20), |v| {
        let ns = nodes(v);
        ns.len() == 3 && ns.iter().all(|n| n["reachable"] == true && n["role"].is_string())
    })
    .await;
    let ns = nodes(&view);
    assert!(ns.iter().any(|n| n["addr"] == leader_addr.as_str() && n["role"] == "Leader" && n["nodeId"] == leader), "{view:#}");
    for path in ["/", "/console.js", "/api/cluster", "/api/topics", "/api/groups?group=g", "/api/rates", "/api/message?topic=TBW102&key=k"]
    {
        let (status, body) = get(&http, path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(!body.contains(SECRET) && !body.contains("raftmqAuth"), "{path} shows the secret or a signature: {body}");
    }
}
