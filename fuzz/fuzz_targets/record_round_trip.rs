//! Builds arbitrary records (payloads that contain the `.gor` separator and lines that
//! look like record headers, every metadata flag), writes them as a `.gor` file and as
//! Kafka values, reads them back, and checks they come back equal: same count, same
//! fields, same payload bytes.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::Bytes;
use capture::http::MessageKind;
use capture::record::{parse_value, split_file, ParsedRecord, Record, RecordMeta, RunId, FILE_SEPARATOR};
use capture::sink::write_gor;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

const TOKENS: [&str; 3] = ["content_length_and_transfer_encoding", "invalid_chunk_size", "conflicting_content_length"];

fn address(u: &mut Unstructured) -> Result<SocketAddr> {
    let ip = if u.arbitrary()? { IpAddr::V4(Ipv4Addr::from(u.arbitrary::<u32>()?)) } else { IpAddr::V6(Ipv6Addr::from(u.arbitrary::<u128>()?)) };
    Ok(SocketAddr::new(ip, u.arbitrary()?))
}

/// A payload made of pieces that are hard for a reader: separators, header lines.
fn payload(u: &mut Unstructured) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for _ in 0..u.int_in_range(0..=6)? {
        match u.int_in_range(0..=3)? {
            0 => out.extend_from_slice(FILE_SEPARATOR),
            1 => out.extend_from_slice(b"1 00000000000000010000000100000009 1 0 len=5\nGET /"),
            2 => out.push(b'\n'),
            _ => {
                let n = u.int_in_range(0..=40)?;
                out.extend_from_slice(u.bytes(n)?)
            }
        }
    }
    Ok(out)
}

fn record(u: &mut Unstructured) -> Result<Record> {
    let kind = if u.arbitrary()? { MessageKind::Request } else { MessageKind::Response };
    let payload = payload(u)?;
    let count = u.int_in_range(1..=5u32)?;
    let meta = RecordMeta {
        client: address(u)?,
        server: address(u)?,
        node: "node".into(),
        ifindex: 1,
        truncated: u.arbitrary()?,
        original_len: u.arbitrary()?,
        start_ns: 0,
        end_ns: 0,
        request_start_ns: None,
        request_end_ns: None,
        method: None,
        target: None,
        status: None,
        paired: u.arbitrary()?,
        ambiguous: if u.arbitrary()? { Some(*u.choose(&TOKENS)?) } else { None },
        redacted: u.arbitrary()?,
        tls: u.arbitrary()?,
        part: if u.arbitrary()? { Some((u.int_in_range(1..=count)?, count)) } else { None },
    };
    Ok(Record {
        kind,
        id: RunId(u.arbitrary()?).record_id(u.arbitrary()?, u.arbitrary()?),
        ts_ns: u.arbitrary()?,
        latency_ns: u.arbitrary()?,
        payload: Bytes::from(payload),
        meta,
    })
}

fn assert_same(read: &ParsedRecord, written: &Record) {
    let m = &written.meta;
    assert_eq!(read.type_byte, written.type_byte());
    assert_eq!(read.id, written.id);
    assert_eq!(read.ts_ns, written.ts_ns);
    assert_eq!(read.latency_ns as u64, written.latency_ns.min(i64::MAX as u64));
    assert_eq!(read.payload, &written.payload[..]);
    assert_eq!(read.meta.len, Some(written.payload.len()));
    assert_eq!(read.meta.client.as_deref(), Some(&*m.client.to_string()));
    assert_eq!(read.meta.server.as_deref(), Some(&*m.server.to_string()));
    assert_eq!(read.meta.truncated, m.truncated);
    assert_eq!(read.meta.original_len, m.truncated.then_some(m.original_len));
    assert_eq!(read.meta.unpaired, !m.paired);
    assert_eq!(read.meta.ambiguous.as_deref(), m.ambiguous);
    assert_eq!((read.meta.redacted, read.meta.tls, read.meta.part), (m.redacted, m.tls, m.part));
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mut records = Vec::new();
    while !u.is_empty() && records.len() < 16 {
        match record(&mut u) {
            Ok(r) => records.push(r),
            Err(_) => break,
        }
    }
    let mut file = Vec::new();
    for r in &records {
        write_gor(&mut file, r).expect("writing into memory");
        assert_same(&parse_value(&r.value()).expect("a Kafka value reads back"), r);
    }
    let values = split_file(&file);
    assert_eq!(values.len(), records.len(), "the file splits into the records written");
    for (value, r) in values.iter().zip(&records) {
        let value = value.as_ref().expect("a written record reads back whole");
        assert_same(&parse_value(value).expect("a written record parses"), r);
    }
});
