//! Error messages that say each cause once.
//!
//! Our error enums keep a cause out of their own message and return it from
//! `source()`, so the binary's `{:#}` prints `what failed: why: ...`. Not every
//! library does that: aya's `EbpfError::MapError` says "map error: <its cause>" and
//! returns that cause too, which made a start without CAP_BPF print
//! "failed to create map X" three times. [`Cause`] holds such a chain with the
//! repeats left out; [`render`] prints any chain that way for log lines.

use std::error::Error;
use std::fmt;

/// A third-party error's messages, outermost first, each cause once: a cause whose
/// message the one above it already contains is left out.
#[derive(Debug)]
pub struct Cause {
    message: String,
    source: Option<Box<Cause>>,
}

impl Cause {
    pub fn of(error: &(dyn Error + 'static)) -> Cause {
        let mut messages = distinct_messages(error).into_iter().rev();
        let innermost = messages.next().expect("an error has a message");
        let mut cause = Cause { message: innermost, source: None };
        for message in messages {
            cause = Cause { message, source: Some(Box::new(cause)) };
        }
        cause
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error for Cause {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|c| c as &(dyn Error + 'static))
    }
}

/// `error` and its causes on one line, `a: b: c` (as anyhow's `{:#}`), each cause once.
pub fn render(error: &(dyn Error + 'static)) -> String {
    distinct_messages(error).join(": ")
}

fn distinct_messages(error: &(dyn Error + 'static)) -> Vec<String> {
    let mut messages = vec![error.to_string()];
    let mut next = error.source();
    while let Some(e) = next {
        let message = e.to_string();
        if !messages.last().is_some_and(|above| above.contains(&message)) {
            messages.push(message);
        }
        next = e.source();
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Like aya's `EbpfError::MapError`: says its cause and returns it as the source.
    #[derive(Debug, thiserror::Error)]
    #[error("map error: {0}")]
    struct Repeating(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("failed to create map `PORTS`")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn a_cause_its_parent_already_says_is_left_out() {
        let error = Repeating(Inner(std::io::Error::from_raw_os_error(libc::EPERM)));
        assert_eq!(render(&error), "map error: failed to create map `PORTS`: Operation not permitted (os error 1)");
        let cause = Cause::of(&error);
        assert_eq!(cause.to_string(), "map error: failed to create map `PORTS`");
        assert_eq!(format!("{:#}", anyhow::Error::new(cause)), render(&error));
    }
}
