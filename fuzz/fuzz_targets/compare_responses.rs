//! Feeds two arbitrary byte strings to the comparator as a production and a
//! candidate response, then through the report and its three renderers, and checks
//! that nothing panics and the results hold together: a response never differs from
//! itself, a partial comparison covers no more than the cut body holds, and the JSON
//! report parses.
//!
//! Input: a flags byte (bits 0-1: request method GET/HEAD/POST/OPTIONS; bit 2:
//! production cut at capture; bit 3: candidate cut; bit 4: a baseline equal to the
//! candidate; bit 5: ignore some JSON fields), two bytes giving where the production
//! bytes end, then production bytes followed by candidate bytes.
#![no_main]

use capture::compare::{self, CompareConfig, Outcome, Report};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let [flags, a, b, rest @ ..] = input else { return };
    let split = (usize::from(*a) << 8 | usize::from(*b)).min(rest.len());
    let (production, candidate) = rest.split_at(split);
    let method = ["GET", "HEAD", "POST", "OPTIONS"][usize::from(flags & 3)];
    let mut config = CompareConfig::default();
    if flags & 32 != 0 {
        config.ignore_fields = vec!["$.a".into(), "$.items[*].id".into(), "$.*.ts".into(), "$[".into()];
    }
    let parse = |raw: &[u8], cut: bool| {
        compare::parse_response(raw, Some(method)).map(|mut r| {
            r.body_complete &= !cut;
            r
        })
    };
    let (Ok(p), Ok(c)) = (parse(production, flags & 4 != 0), parse(candidate, flags & 8 != 0)) else { return };

    assert!(compare::compare(&p, &p, &config).is_empty(), "a response differs from itself");
    assert!(compare::compare(&c, &c, &config).is_empty(), "a response differs from itself");
    let differences = compare::compare(&p, &c, &config);
    let compared = compare::compared_body_bytes(&p, &c);
    if let Some(n) = compared {
        let cut = [&p, &c].iter().filter(|r| !r.body_complete).map(|r| r.body.len()).min();
        assert_eq!(Some(n), cut);
    } else {
        assert!(p.body_complete && c.body_complete);
    }
    for d in &differences {
        let _ = (d.key(), d.values());
    }

    let mut outcome = Outcome::new("0000000000000001000000020000000a", method, "/fuzz/1", "http://127.0.0.1:1");
    outcome.production_status = Some(p.status);
    outcome.candidate_status = Some(c.status);
    outcome.compared_body_bytes = compared.map(|n| n as u64);
    if flags & 16 != 0 {
        let baseline = compare::compare(&p, &c, &config);
        (outcome.differences, outcome.noise) = compare::split_noise(differences, &baseline);
        assert!(outcome.differences.is_empty(), "a baseline equal to the candidate explains every difference");
    } else {
        outcome.differences = differences;
    }
    let mut report = Report::new("fuzz".into());
    report.add(outcome);
    report.add_baseline("http://127.0.0.1:2", (flags & 16 == 0).then_some("connect: refused"));
    let _ = report.terminal_summary();
    let _ = report.to_html();
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("the JSON report parses");
    assert_eq!(json["totals"]["replayed"], 1);
});
