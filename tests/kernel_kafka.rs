//! Kernel end-to-end with a real Kafka broker (tansu): the agent publishes captured
//! HTTP records; an independent consumer (Python confluent-kafka) reads them back.

use std::collections::HashMap;
use std::time::Duration;

use capture_tests::*;

const HTTP_PORT: u16 = 18082;
const KAFKA_PORT: u16 = 19092;
const TOPIC: &str = "capture.http";

#[test]
fn records_reach_kafka_keyed_ordered_with_headers_and_exact_bytes() {
    if !kafka_tests_enabled("records_reach_kafka_keyed_ordered_with_headers_and_exact_bytes") {
        return;
    }
    let net = NetPair::new();
    let dir = TempDir::new("kafka");
    let broker = Broker::start(&net.server_ns, KAFKA_PORT, &dir);
    broker.create_topic(TOPIC, 3);
    let _server = RecordServer::start(&net.server_ns, &net.server_v4, HTTP_PORT, &dir);
    let kafka = format!("kafka://{}/{TOPIC}", broker.bootstrap());
    // Two outputs at once: Kafka and a file, each with its own accounting. The records
    // format: one record per message, metadata in headers. zstd instead of the default
    // lz4 (the other tests): the codec README offers with --kafka-opt reads back too.
    let mut agent = Agent::start(
        &net.server_ns,
        &net.server_if,
        &[HTTP_PORT],
        &dir,
        &["--no-stream-log", "--output", &kafka, "--kafka-format", "records", "--kafka-opt", "compression.type=zstd", "--kafka-opt", "compression.level=1"],
    );
    let url = format!("http://{}:{HTTP_PORT}", net.server_v4);
    let mut traces = Vec::new();
    for i in 0..6 {
        traces.push(curl_traced(&net, &dir, &format!("ka{i}"), &format!("{url}/a{i} {url}/bytes/{} {url}/c{i} -o /dev/null -o /dev/null", 1000 * (i + 1))));
    }
    traces.push(curl_traced(&net, &dir, "post", &format!("-X POST --data-binary @/etc/services {url}/post")));
    let stderr = agent.stop();
    let s = summary(&stderr);
    assert_no_kernel_loss(&s);
    let total = (s["http_requests"] + s["http_responses"]) as usize;
    assert_eq!(total, 2 * (6 * 3 + 1));
    // output0 is the file, output1 Kafka.
    assert_eq!(s["output0_records_written"] as usize, total);
    assert_eq!(s["output1_records_written"] as usize, total, "every record acknowledged by the broker");
    for key in ["output1_records_failed", "output1_records_dropped", "output1_records_pending"] {
        assert_eq!(s[key], 0, "{key}");
    }

    let messages = broker.consume(TOPIC, total, 10.0, &dir);
    assert_eq!(messages.len(), total, "the consumer read every record");
    let file_records = parse_gor(&agent.records());
    let mut by_key: HashMap<String, Vec<&KafkaMessage>> = HashMap::new();
    for m in &messages {
        let rec = m.record();
        assert!(!m.is_batch());
        assert_eq!(m.key, rec.connection(), "key is the connection id");
        assert_eq!(m.headers["capture-connection"], m.key);
        assert_eq!(m.headers["capture-type"], if rec.ty == b'1' { "request" } else { "response" });
        assert!(m.headers["capture-client"].starts_with(&format!("{}:", net.client_v4)), "{:?}", m.headers);
        assert_eq!(m.headers["capture-server"], format!("{}:{HTTP_PORT}", net.server_v4));
        assert_eq!(m.headers["capture-iface"], net.server_if);
        assert_eq!(m.headers["capture-truncated"], "0");
        assert_eq!(m.headers["capture-original-length"], rec.payload.len().to_string());
        assert_eq!(m.timestamp_ms as u64, rec.ts_ns / 1_000_000, "message timestamp is the record time");
        if rec.ty == b'2' {
            assert!(m.headers.contains_key("capture-status") && m.headers.contains_key("capture-request-end-ns"));
        } else {
            assert!(m.headers.contains_key("capture-method"));
        }
        by_key.entry(m.key.clone()).or_default().push(m);
    }
    assert_eq!(by_key.len(), 7, "one key per connection");
    for (key, msgs) in &by_key {
        assert!(msgs.iter().all(|m| m.partition == msgs[0].partition), "{key}: one partition per connection");
        let mut sorted = msgs.clone();
        sorted.sort_by_key(|m| m.offset);
        // Same records, same order as the file output wrote them.
        let from_kafka: Vec<GorRecord> = sorted.iter().map(|m| m.record()).collect();
        let from_file: Vec<&GorRecord> = file_records.iter().filter(|r| r.connection() == key).collect();
        assert_eq!(from_kafka.len(), from_file.len());
        for (k, f) in from_kafka.iter().zip(from_file) {
            assert_eq!((k.ty, &k.id, &k.payload), (f.ty, &f.id, &f.payload), "{key}: order and bytes match the file output");
        }
    }
    // Byte-exact against what curl sent and received.
    for (sent, received) in &traces {
        let conn = by_key
            .values()
            .find(|msgs| {
                let mut v: Vec<&&KafkaMessage> = msgs.iter().collect();
                v.sort_by_key(|m| m.offset);
                let recs: Vec<GorRecord> = v.iter().map(|m| m.record()).collect();
                concat(&recs, b'1') == *sent && concat(&recs, b'2') == *received
            });
        assert!(conn.is_some(), "a connection's Kafka records equal exactly what curl sent and received");
    }
}

/// The default batch format: each message holds whole records of one connection in
/// the `.gor` format, the metadata in each record's header line, one Kafka header.
/// An independent consumer splits the values and finds every record byte-exact and
/// in order per connection; the accounting counts records, not messages.
#[test]
fn batch_values_hold_whole_records_of_one_connection_in_order() {
    if !kafka_tests_enabled("batch_values_hold_whole_records_of_one_connection_in_order") {
        return;
    }
    let net = NetPair::new();
    let dir = TempDir::new("kafka_batch");
    let broker = Broker::start(&net.server_ns, KAFKA_PORT, &dir);
    broker.create_topic(TOPIC, 3);
    let _server = RecordServer::start(&net.server_ns, &net.server_v4, HTTP_PORT, &dir);
    let kafka = format!("kafka://{}/{TOPIC}", broker.bootstrap());
    // A small pack limit, so a connection's records also leave because of it.
    let mut agent = Agent::start(
        &net.server_ns,
        &net.server_if,
        &[HTTP_PORT],
        &dir,
        &["--no-stream-log", "--output", &kafka, "--kafka-batch-bytes", "8KiB", "--node-name", "node-b"],
    );
    let url = format!("http://{}:{HTTP_PORT}", net.server_v4);
    let mut traces = Vec::new();
    for i in 0..4 {
        let urls: Vec<String> = (0..8).map(|j| format!("{url}/bytes/{} -o /dev/null", 700 * (i + j + 1))).collect();
        traces.push(curl_traced(&net, &dir, &format!("batch{i}"), &urls.join(" ")));
    }
    let stderr = agent.stop();
    let s = summary(&stderr);
    assert_no_kernel_loss(&s);
    let total = (s["http_requests"] + s["http_responses"]) as usize;
    assert_eq!(total, 2 * 4 * 8);
    assert_eq!(s["output1_records_written"] as usize, total, "every record acknowledged");
    for key in ["output1_records_failed", "output1_records_dropped", "output1_records_pending"] {
        assert_eq!(s[key], 0, "{key}");
    }
    let sent_messages = s["output1_messages_written"] as usize;
    assert!(sent_messages > 0 && sent_messages <= total, "{s:?}");

    let messages = broker.consume(TOPIC, total, 10.0, &dir);
    assert_eq!(messages.len(), sent_messages, "the agent counted the messages it sent");
    let file_records = parse_gor(&agent.records());
    let mut by_key: HashMap<String, Vec<&KafkaMessage>> = HashMap::new();
    for m in &messages {
        assert_eq!(m.headers.keys().collect::<Vec<_>>(), ["capture-format"], "one header");
        assert!(m.is_batch());
        let records = m.records();
        assert!(!records.is_empty());
        assert!(records.iter().all(|r| r.connection() == m.key), "a message holds one connection's records");
        assert_eq!(m.timestamp_ms as u64, records[0].ts_ns / 1_000_000, "message time is its first record's");
        // A message holds one record more than fits 8 KiB at most (the one that filled it leaves alone).
        let sizes: Vec<usize> = records.iter().map(|r| r.payload.len()).collect();
        assert!(records.len() == 1 || m.value.len() <= 8192, "{sizes:?}");
        for r in &records {
            assert_eq!(r.meta["server"], format!("{}:{HTTP_PORT}", net.server_v4));
            assert_eq!((r.meta["node"].as_str(), r.meta["iface"].as_str()), ("node-b", net.server_if.as_str()));
            assert_eq!(r.meta["orig_len"], r.payload.len().to_string());
            assert!(r.meta["end_ns"].parse::<u64>().unwrap() >= r.ts_ns);
            assert_eq!(r.meta["method"], "GET");
            assert!(r.meta["target"].starts_with("/bytes/"));
            if r.ty == b'2' {
                assert_eq!(r.meta["status"], "200");
                assert!(r.meta.contains_key("req_start_ns") && r.meta.contains_key("req_end_ns"));
            }
        }
        by_key.entry(m.key.clone()).or_default().push(m);
    }
    assert_eq!(by_key.len(), 4, "one key per connection");
    assert!(messages.len() < total, "records were packed: {} messages for {total} records", messages.len());
    for (key, msgs) in &mut by_key {
        assert!(msgs.iter().all(|m| m.partition == msgs[0].partition), "{key}: one partition per connection");
        msgs.sort_by_key(|m| m.offset);
        let from_kafka: Vec<GorRecord> = msgs.iter().flat_map(|m| m.records()).collect();
        let from_file: Vec<&GorRecord> = file_records.iter().filter(|r| r.connection() == *key).collect();
        assert_eq!(from_kafka.len(), from_file.len());
        for (k, f) in from_kafka.iter().zip(from_file) {
            assert_eq!((k.ty, &k.id, &k.payload), (f.ty, &f.id, &f.payload), "{key}: order and bytes match the file output");
        }
        let (sent, received) = traces
            .iter()
            .find(|(sent, _)| *sent == concat(&from_kafka, b'1'))
            .unwrap_or_else(|| panic!("{key}: the requests equal exactly what one curl sent"));
        assert_eq!(*received, concat(&from_kafka, b'2'), "{key}: the responses equal exactly what curl received");
        assert!(!sent.is_empty());
    }
}

#[test]
fn broker_outage_buffers_up_to_the_limit_then_counts_drops_and_recovers() {
    if !kafka_tests_enabled("broker_outage_buffers_up_to_the_limit_then_counts_drops_and_recovers") {
        return;
    }
    let net = NetPair::new();
    let dir = TempDir::new("outage");
    let mut broker = Broker::start(&net.server_ns, KAFKA_PORT, &dir);
    broker.create_topic(TOPIC, 3);
    let _server = RecordServer::start(&net.server_ns, &net.server_v4, HTTP_PORT, &dir);
    let kafka = format!("kafka://{}/{TOPIC}", broker.bootstrap());
    let mut agent = Agent::start(
        &net.server_ns,
        &net.server_if,
        &[HTTP_PORT],
        &dir,
        &["--no-stream-log", "--output", &kafka, "--kafka-buffer", "256KiB", "--kafka-opt", "reconnect.backoff.max.ms=500"],
    );
    let url = format!("http://{}:{HTTP_PORT}", net.server_v4);
    let curl = |urls: &str| sh(&format!("ip netns exec {} curl -sf {urls}", net.client_ns));
    curl(&format!("{url}/before1 -o /dev/null {url}/before2 -o /dev/null"));
    assert_eq!(records_of(&broker.consume(TOPIC, 4, 10.0, &dir)).len(), 4, "delivered while the broker is up");

    // Outage 1: the broker stops answering (frozen, state kept). ~40 responses of
    // 20 KB are more than the 256 KiB buffer holds.
    broker.freeze(true);
    for i in 0..8 {
        curl(&(0..5).map(|j| format!("{url}/bytes/20000/{i}-{j} -o /dev/null")).collect::<Vec<_>>().join(" "));
    }
    std::thread::sleep(Duration::from_secs(1));
    broker.freeze(false);
    std::thread::sleep(Duration::from_secs(3));
    let first = records_of(&broker.consume(TOPIC, 1000, 5.0, &dir));
    let delivered_after_outage = first.len() - 4;
    assert!(delivered_after_outage > 0, "records buffered during the outage were delivered after it");

    // Outage 2: the broker process dies and a new one starts. tansu's in-memory
    // storage comes back empty and acknowledges produce requests for a topic that
    // does not exist yet, so traffic resumes only once the topic is recreated.
    broker.stop();
    broker.restart();
    broker.create_topic(TOPIC, 3);
    std::thread::sleep(Duration::from_secs(2));
    curl(&format!("{url}/after -o /dev/null"));
    std::thread::sleep(Duration::from_secs(2));
    let stderr = agent.stop();
    let second = records_of(&broker.consume(TOPIC, 1000, 5.0, &dir));

    let s = summary(&stderr);
    assert_no_kernel_loss(&s);
    let produced = s["http_requests"] + s["http_responses"];
    assert_eq!(produced, 2 * (2 + 40 + 1), "the agent kept capturing through both outages");
    let (written, dropped) = (s["output1_records_written"], s["output1_records_dropped"]);
    let (failed, pending) = (s["output1_records_failed"], s["output1_records_pending"]);
    eprintln!(
        "outage: produced={produced} acknowledged={written} dropped={dropped} failed={failed} pending={pending} \
         delivered_after_freeze={delivered_after_outage} delivered_after_restart={}",
        second.len()
    );
    assert_eq!(written + dropped + failed + pending, produced, "every record is acknowledged or counted");
    assert!(dropped > 0, "the outage overflowed the 256 KiB buffer");
    assert_eq!(s["output1_buffer_full"], dropped, "drops are counted by reason");
    assert!(stderr.contains("send buffer"), "the drop was reported:\n{stderr}");
    assert_eq!(written as usize, first.len() + second.len(), "what was acknowledged is what the consumer read");
    assert!(second.iter().any(|r| r.start_line() == "GET /after HTTP/1.1"), "reconnected after the restart");
}

#[test]
fn unreachable_broker_and_oversized_records_are_reported_and_counted() {
    if !kafka_tests_enabled("unreachable_broker_and_oversized_records_are_reported_and_counted") {
        return;
    }
    let net = NetPair::new();
    let dir = TempDir::new("kafka_errors");
    let _server = RecordServer::start(&net.server_ns, &net.server_v4, HTTP_PORT, &dir);
    let url = format!("http://{}:{HTTP_PORT}", net.server_v4);

    // Nothing listens on this port: the agent says so at start and still captures.
    let kafka = format!("kafka://127.0.0.1:{}/{TOPIC}", KAFKA_PORT + 1);
    let mut agent = Agent::start(
        &net.server_ns,
        &net.server_if,
        &[HTTP_PORT],
        &dir,
        &["--no-stream-log", "--output", &kafka, "--kafka-opt", "message.timeout.ms=1500", "--kafka-flush-timeout", "3"],
    );
    sh(&format!("ip netns exec {} curl -sf {url}/one {url}/two -o /dev/null -o /dev/null", net.client_ns));
    std::thread::sleep(Duration::from_secs(2));
    let stderr = agent.stop();
    let s = summary(&stderr);
    assert!(stderr.contains("no broker answered within 5 s"), "{stderr}");
    assert_eq!(s["output0_records_written"], 4, "the file output is unaffected");
    assert_eq!(s["output1_records_written"], 0);
    assert_eq!(s["output1_records_failed"], 4);
    assert_eq!(s["output1_message_timed_out"], 4);
    assert!(stderr.contains("4 record(s) failed"), "{stderr}");

    // Oversized: a 2 MB response kept whole by --max-message-size, not split into
    // continuation records (--kafka-part-size above it), exceeds message.max.bytes.
    let dir2 = TempDir::new("kafka_oversize");
    let broker = Broker::start(&net.server_ns, KAFKA_PORT, &dir2);
    broker.create_topic(TOPIC, 1);
    let kafka = format!("kafka://{}/{TOPIC}", broker.bootstrap());
    let mut agent = Agent::start(
        &net.server_ns,
        &net.server_if,
        &[HTTP_PORT],
        &dir2,
        &["--no-stream-log", "--output", &kafka, "--max-message-size", "3MB", "--kafka-part-size", "3MB"],
    );
    sh(&format!("ip netns exec {} curl -sf {url}/bytes/2000000 {url}/small -o /dev/null -o /dev/null", net.client_ns));
    let stderr = agent.stop();
    let s = summary(&stderr);
    assert_eq!(s["output1_records_dropped"], 1);
    assert_eq!(s["output1_too_large"], 1);
    assert_eq!(s["output1_records_written"], 3);
    assert!(stderr.contains("exceeds message.max.bytes"), "{stderr}");
    let got = records_of(&broker.consume(TOPIC, 3, 5.0, &dir2));
    assert_eq!(got.len(), 3);
}
