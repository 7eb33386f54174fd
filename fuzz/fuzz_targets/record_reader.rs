//! Feeds arbitrary bytes to the record reader, as the contents of a `.gor` file and as
//! one Kafka value, and checks that nothing panics and that every record it accepts
//! carries exactly the payload length its `len` token declares.
#![no_main]

use capture::record::{parse_value, split_file, ParsedRecord, FILE_SEPARATOR};
use libfuzzer_sys::fuzz_target;

fn check(record: &ParsedRecord) {
    if let Some(len) = record.meta.len {
        assert_eq!(record.payload.len(), len, "accepted record {} with a payload that is not its len", record.id);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut covered = 0;
    for value in split_file(data).into_iter().flatten() {
        covered += value.len();
        if let Ok(record) = parse_value(value) {
            check(&record);
        }
    }
    // Accepted values never overlap: together they are no longer than the file.
    assert!(covered <= data.len());
    if let Ok(record) = parse_value(data) {
        check(&record);
    }
    // A value that declares its length is accepted only with exactly that payload,
    // even when followed by what looks like a separator and another record.
    if let Ok(record) = parse_value(data) {
        if record.meta.len.is_some() {
            let mut longer = data.to_vec();
            longer.extend_from_slice(FILE_SEPARATOR);
            longer.extend_from_slice(b"1 x 1 0\nGET / HTTP/1.1\r\n\r\n");
            assert!(parse_value(&longer).is_err(), "trailing bytes accepted as payload");
        }
    }
});
