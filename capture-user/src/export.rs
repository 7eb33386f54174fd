//! `capture export --format har`: captured exchanges as a HAR 1.2 log (browser
//! devtools, Insomnia, k6 and other importers read it). Entries are written one at a
//! time, so a file of any size is exported with bounded memory.
//!
//! Mapping: `startedDateTime` is the request's first byte (capture clock); `timings.wait`
//! is the captured latency (request's last byte to response's first byte at the
//! server), `send` and `receive` are 0 (not measured); response `content` holds the body
//! with its Content-Encoding undone (`text` as UTF-8, or base64 with `encoding`).
//! Cut messages and exchanges without a response say so in `comment`. Fields of our
//! own start with `_` as HAR allows: `_captureId`, `_captureConnection`.

use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use serde::Serialize;

use crate::content_encoding;
use crate::http::message;
use crate::replay::input::Exchange;

/// Largest decoded response body put in `content.text`.
const DECODED_LIMIT: usize = 64 << 20;

#[derive(Serialize)]
struct NameValue {
    name: String,
    value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PostData {
    mime_type: String,
    text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'static str>,
    params: Vec<NameValue>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    method: String,
    url: String,
    http_version: String,
    cookies: Vec<NameValue>,
    headers: Vec<NameValue>,
    query_string: Vec<NameValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    post_data: Option<PostData>,
    headers_size: i64,
    body_size: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    comment: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Content {
    size: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    compression: Option<i64>,
    mime_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comment: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    status: u16,
    status_text: String,
    http_version: String,
    cookies: Vec<NameValue>,
    headers: Vec<NameValue>,
    content: Content,
    #[serde(rename = "redirectURL")]
    redirect_url: String,
    headers_size: i64,
    body_size: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    comment: Option<String>,
}

#[derive(Serialize)]
struct Timings {
    send: f64,
    wait: f64,
    receive: f64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    started_date_time: String,
    time: f64,
    request: Request,
    response: Response,
    cache: serde_json::Map<String, serde_json::Value>,
    timings: Timings,
    #[serde(rename = "serverIPAddress", skip_serializing_if = "Option::is_none")]
    server_ip_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connection: Option<String>,
    #[serde(rename = "_captureId")]
    capture_id: String,
    #[serde(rename = "_captureConnection")]
    capture_connection: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    comment: Option<String>,
}

/// What an export wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportStats {
    pub entries: u64,
    /// Requests whose bytes are not an HTTP request: not exported.
    pub unparseable_requests: u64,
    pub without_response: u64,
}

/// Writes a HAR log of `exchanges` to `out`.
pub fn write_har(exchanges: impl IntoIterator<Item = Exchange>, out: &mut impl Write) -> std::io::Result<ExportStats> {
    let mut stats = ExportStats::default();
    write!(
        out,
        "{{\"log\":{{\"version\":\"1.2\",\"creator\":{{\"name\":\"capture\",\"version\":\"{}\"}},\"pages\":[],\"entries\":[",
        env!("CARGO_PKG_VERSION")
    )?;
    for exchange in exchanges {
        let Some(entry) = entry(&exchange) else {
            stats.unparseable_requests += 1;
            continue;
        };
        stats.without_response += u64::from(exchange.response.is_none());
        if stats.entries > 0 {
            out.write_all(b",")?;
        }
        out.write_all(b"\n")?;
        serde_json::to_writer(&mut *out, &entry)?;
        stats.entries += 1;
    }
    out.write_all(b"\n]}}\n")?;
    out.flush()?;
    Ok(stats)
}

fn headers(pairs: impl Iterator<Item = (String, String)>) -> Vec<NameValue> {
    pairs.map(|(name, value)| NameValue { name, value }).collect()
}

/// `name=value` pairs separated by `sep` (cookies, query strings).
fn pairs(text: &str, sep: char) -> Vec<NameValue> {
    text.split(sep)
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (name, value) = p.split_once('=').unwrap_or((p, ""));
            NameValue { name: name.to_string(), value: value.to_string() }
        })
        .collect()
}

/// A body as HAR text: UTF-8 as is, anything else base64.
fn text(bytes: &[u8]) -> (String, Option<&'static str>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_string(), None),
        Err(_) => (base64::engine::general_purpose::STANDARD.encode(bytes), Some("base64")),
    }
}

fn header<'a>(list: &'a [NameValue], name: &str) -> Option<&'a str> {
    list.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.as_str())
}

fn version(v: u8) -> String {
    format!("HTTP/1.{v}")
}

fn entry(ex: &Exchange) -> Option<Entry> {
    let req = message::parse_request(&ex.request).ok()?;
    let req_headers = headers(req.headers().map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v).into_owned())));
    let host = header(&req_headers, "host").map(str::to_string).or_else(|| ex.server.clone()).unwrap_or_else(|| "unknown".into());
    let url = if req.target.starts_with("http://") || req.target.starts_with("https://") { req.target.to_string() } else { format!("http://{host}{}", req.target) };
    let query = req.target.split_once('?').map(|(_, q)| pairs(q.split('#').next().unwrap_or(""), '&')).unwrap_or_default();
    let body = req.body().map(|b| b.bytes).unwrap_or_default();
    let post_data = (!body.is_empty()).then(|| {
        let (text, encoding) = text(&body);
        PostData { mime_type: header(&req_headers, "content-type").unwrap_or("").to_string(), text, encoding, params: Vec::new() }
    });
    let request = Request {
        method: req.method.to_string(),
        url,
        http_version: version(req.head.version),
        cookies: header(&req_headers, "cookie").map(|c| pairs(c, ';')).unwrap_or_default(),
        query_string: query,
        post_data,
        headers_size: req.head.end as i64,
        body_size: body.len() as i64,
        comment: ex.request_cut.map(|n| format!("cut at capture: {} of {n} bytes recorded", ex.request.len())),
        headers: req_headers,
    };
    let wait_ms = ex.response.as_ref().and_then(|r| r.latency_ns).map_or(0.0, |ns| ns as f64 / 1e6);
    let response = match &ex.response {
        Some(captured) => response(captured, req.method),
        None => no_response("no response captured"),
    };
    let started = UNIX_EPOCH + Duration::from_nanos(ex.ts_ns);
    Some(Entry {
        started_date_time: humantime::format_rfc3339_millis(started).to_string(),
        time: wait_ms,
        request,
        response,
        cache: serde_json::Map::new(),
        timings: Timings { send: 0.0, wait: wait_ms, receive: 0.0 },
        server_ip_address: ex.server.as_deref().and_then(|s| s.parse::<std::net::SocketAddr>().ok()).map(|a| a.ip().to_string()),
        connection: (ex.connection.len() == 24).then(|| u32::from_str_radix(&ex.connection[16..], 16).ok()).flatten().map(|n| n.to_string()),
        capture_id: ex.id.clone(),
        capture_connection: ex.connection.to_string(),
        comment: None,
    })
}

fn no_response(why: &str) -> Response {
    Response {
        status: 0,
        status_text: String::new(),
        http_version: String::new(),
        cookies: Vec::new(),
        headers: Vec::new(),
        content: Content { size: 0, compression: None, mime_type: String::new(), text: None, encoding: None, comment: None },
        redirect_url: String::new(),
        headers_size: -1,
        body_size: -1,
        comment: Some(why.to_string()),
    }
}

fn response(captured: &crate::replay::input::CapturedResponse, method: &str) -> Response {
    let Ok(parsed) = message::parse_response(&captured.bytes, Some(method)) else {
        return no_response("the captured response is not HTTP");
    };
    let list = headers(parsed.headers().map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v).into_owned())));
    let status_line_end = captured.bytes[parsed.head.start..].iter().position(|&b| b == b'\n').map_or(0, |i| parsed.head.start + i);
    let status_line = String::from_utf8_lossy(&captured.bytes[parsed.head.start..status_line_end]);
    let status_text = status_line.trim_end().splitn(3, ' ').nth(2).unwrap_or("").to_string();
    let body = parsed.body().unwrap_or(message::Body { bytes: Vec::new(), complete: false });
    let cut = captured.cut.is_some() || !body.complete;
    let mime_type = header(&list, "content-type").unwrap_or("").to_string();
    let mut comment = None;
    let content = if cut {
        // A cut compressed body would not decode: its bytes as they are.
        let (text, encoding) = text(&body.bytes);
        comment = Some(format!("cut at capture: the body holds the first {} bytes", body.bytes.len()));
        Content { size: body.bytes.len() as i64, compression: None, mime_type: mime_type.clone(), text: Some(text), encoding, comment: comment.clone() }
    } else {
        match content_encoding::decode(header(&list, "content-encoding"), &body.bytes, DECODED_LIMIT) {
            Ok(decoded) => {
                let (text, encoding) = text(&decoded);
                // Bytes saved by the coding (none when it grew the body).
                let compression = (decoded.len() > body.bytes.len()).then(|| decoded.len() as i64 - body.bytes.len() as i64);
                Content { size: decoded.len() as i64, compression, mime_type: mime_type.clone(), text: Some(text), encoding, comment: None }
            }
            Err(e) => {
                let (text, encoding) = text(&body.bytes);
                Content { size: body.bytes.len() as i64, compression: None, mime_type: mime_type.clone(), text: Some(text), encoding, comment: Some(format!("not decoded: {e}")) }
            }
        }
    };
    Response {
        status: parsed.status,
        status_text,
        http_version: version(parsed.head.version),
        cookies: list.iter().filter(|h| h.name.eq_ignore_ascii_case("set-cookie")).filter_map(|h| pairs(h.value.split(';').next().unwrap_or(""), ';').pop()).collect(),
        redirect_url: header(&list, "location").unwrap_or("").to_string(),
        headers_size: (parsed.head.end - parsed.head.start) as i64,
        body_size: body.bytes.len() as i64,
        headers: list,
        content,
        comment,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::input::CapturedResponse;

    fn exchange(request: &str, response: Option<Vec<u8>>) -> Exchange {
        Exchange {
            id: "0000000000abcdef0000000700000003".into(),
            connection: "0000000000abcdef00000007".into(),
            ts_ns: 1_764_050_000_123_000_000,
            request: request.as_bytes().to_vec(),
            request_cut: None,
            request_ambiguous: None,
            response: response.map(|bytes| CapturedResponse { bytes, latency_ns: Some(2_500_000), cut: None, ambiguous: None, unpaired: false }),
            server: Some("10.0.0.1:8080".into()),
        }
    }

    #[test]
    fn har_entries_carry_requests_responses_and_timings() {
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(br#"{"ok":true}"#).unwrap();
            e.finish().unwrap()
        };
        let mut resp = format!("HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nSet-Cookie: s=1; Path=/\r\nContent-Length: {}\r\n\r\n", gz.len()).into_bytes();
        resp.extend_from_slice(&gz);
        let exchanges = vec![
            exchange("POST /api/items?a=1&b=two HTTP/1.1\r\nHost: shop\r\nCookie: c=3; d=4\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"x\":1}", Some(resp)),
            exchange("GET /bin HTTP/1.0\r\n\r\n", None),
            exchange("\x16\x03 not http\r\n\r\n", None),
        ];
        let mut out = Vec::new();
        let stats = write_har(exchanges, &mut out).unwrap();
        assert_eq!(stats, ExportStats { entries: 2, unparseable_requests: 1, without_response: 1 });
        let har: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let log = &har["log"];
        assert_eq!(log["version"], "1.2");
        let e = &log["entries"][0];
        assert_eq!(e["startedDateTime"], "2025-11-25T05:53:20.123Z");
        assert_eq!((e["time"].as_f64(), e["timings"]["wait"].as_f64()), (Some(2.5), Some(2.5)));
        assert_eq!(e["request"]["url"], "http://shop/api/items?a=1&b=two");
        assert_eq!(e["request"]["queryString"][1], serde_json::json!({"name": "b", "value": "two"}));
        assert_eq!(e["request"]["cookies"][1], serde_json::json!({"name": "d", "value": "4"}));
        assert_eq!(e["request"]["postData"]["text"], "{\"x\":1}");
        assert_eq!(e["response"]["status"], 201);
        assert_eq!(e["response"]["statusText"], "Created");
        assert_eq!(e["response"]["content"]["text"], "{\"ok\":true}", "Content-Encoding undone");
        assert_eq!(e["response"]["cookies"][0]["name"], "s");
        assert_eq!((e["serverIPAddress"].as_str(), e["connection"].as_str()), (Some("10.0.0.1"), Some("7")));
        let bare = &log["entries"][1];
        assert_eq!((bare["response"]["status"].as_u64(), bare["response"]["comment"].as_str()), (Some(0), Some("no response captured")));
        assert_eq!(bare["request"]["url"], "http://shop/bin".replace("shop", "10.0.0.1:8080"));
    }
}
