//! The `capture` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use capture::agent::{self, AgentConfig};
use capture::connections::TableLimits;
use capture::files::{self, FileOptions};
use capture::filter::{self, Filters, HeaderRule};
use capture::http::HttpConfig;
use capture::metrics::agent::AgentMetrics;
use capture::metrics::replay::ReplayMetrics;
use capture::compare::{html, junit, terminal, CompareSettings, JunitRun, OutcomeLog, PathPattern, Report, ReportView, Risk};
use capture::export::write_har;
use capture::output::{parse_size, OutputSpec};
use capture::policy::ExchangePolicy;
use capture::redact::{JsonField, RedactConfig, RedactKey};
use capture::replay::input::{GorInput, InputStats, PairingWindow, WholeInput};
use capture::replay::kafka_input::{consume_group, parse_time, GroupEvent, KafkaInput, WindowInput};
use capture::replay::request::{RewriteOptions, TargetUrl};
use capture::replay::safety::{LocalAddresses, ProductionCheck};
use capture::replay::target::{KeepAlive, Target, IDLE_CLOSE};
use capture::replay::{self, Pacing, ReplayConfig, Results, SAFE_METHODS};
use capture::sink::kafka::{self, KafkaConfig, KafkaSink};
use capture::sink::{file::FileSink, stdout::StdoutSink, RecordSink};

/// capture: copies live HTTP/1.x traffic off this host with eBPF, byte for byte,
/// so it can be replayed against a candidate release.
///
/// Exit codes: 0 success, 1 runtime error (message on stderr), 2 bad usage (a bad
/// value or combination of flags), 3 the `--fail-on` gate of `replay` or `report merge`
/// failed (differences at that risk or higher, requests a candidate did not answer, or
/// a baseline that answered none).
#[derive(Parser)]
#[command(name = "capture", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Capture HTTP traffic of server ports on network interfaces (needs root).
    ///
    /// Attaches TC classifiers (TCX, or clsact on older kernels) to each interface
    /// matching --iface, also those that appear later (pods), and forgets vanished ones;
    /// each segment is recorded once even when it crosses several watched interfaces.
    /// Rebuilds every TCP connection to the watched ports, frames HTTP/1.x requests and
    /// responses and writes them as GoReplay-compatible records. Stops on SIGINT/SIGTERM
    /// (or after --duration), flushes outputs and prints a summary of all counters.
    Agent(Box<AgentArgs>),
    /// Replay captured requests against candidate targets and compare their answers
    /// with production's.
    ///
    /// Reads `.gor` files (the agent's or GoReplay's) or a Kafka topic the agent wrote
    /// (a time window, or live with a consumer group; continuation records are joined
    /// back into whole messages), keeps the order of requests within each captured
    /// connection, paces them like the capture (or --speed / --rate; gaps capped at
    /// --max-wait), and sends only GET, HEAD and OPTIONS unless --allow-method names
    /// more. Every replayed request carries a marking header.
    ///
    /// Never sent: requests cut at capture, requests whose framing the capture flagged
    /// ambiguous (unless --replay-ambiguous), and anything to a target that is the
    /// captured production server (unless --allow-production). Nothing is retried: a
    /// request that fails (connect, write, read; each bounded by --timeout) is an error.
    ///
    /// With --compare, each candidate response is compared with the captured production
    /// response (status, headers, JSON fields / text lines / binary hash after undoing
    /// Content-Encoding, latency). Each difference is graded by risk: high (status class
    /// change, removed field or header, changed type), medium (changed value), low
    /// (added field or header). "Equal" means compared in full and equal; a body cut at
    /// capture is compared as far as it goes ("partly compared"); a request without a
    /// usable production response is "not compared". --baseline names a second
    /// production copy whose differences are reported as noise; its errors are counted.
    /// Latency on both sides: request's last byte to response's first byte (see README).
    ///
    /// Reports: a terminal summary, and --report-json (mergeable: `capture report
    /// merge`), --report-html, --report-junit (one test case per endpoint),
    /// --report-jsonl (one line per request, written as it happens).
    ///
    /// Exit codes: 0 done, 1 runtime error, 2 bad usage, 3 the --fail-on gate failed
    /// (differences at that risk or higher, requests a candidate did not answer, or a
    /// baseline that answered none).
    Replay(Box<ReplayArgs>),
    /// Export captured exchanges, from `.gor` files or a Kafka time window, as a HAR 1.2
    /// log (browser devtools, Insomnia, k6 and other importers read it).
    ///
    /// Each entry has the request, production's response (Content-Encoding undone in
    /// `content`), the request's start time and the captured latency (`timings.wait`).
    /// Written entry by entry: any size of input is exported with bounded memory.
    Export(Box<ExportArgs>),
    /// Work with the JSON reports `capture replay --report-json` writes.
    Report {
        #[command(subcommand)]
        command: ReportCommand,
    },
    /// List this agent's classifiers attached (TCX) to interfaces: a check that nothing
    /// is left behind after an agent stopped or was killed. Needs root.
    Attachments {
        /// Interface name or glob. Repeatable.
        #[arg(long = "iface", required = true, value_delimiter = ',')]
        ifaces: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ReportCommand {
    /// Merge the JSON reports of several replayers (e.g. of one consumer group) into
    /// one report: counts, risk levels, fields and latency histograms sum; Kafka
    /// records consumed by more than one replayer are counted as duplicates. Prints the
    /// summary and writes the reports asked for.
    ///
    /// Exit codes: 0 done, 1 a report cannot be read, 2 bad usage, 3 the --fail-on gate failed.
    Merge(Box<MergeArgs>),
}

#[derive(Args)]
struct MergeArgs {
    /// JSON reports to merge (format 2, as `capture replay --report-json` writes).
    #[arg(required = true, num_args = 1..)]
    reports: Vec<PathBuf>,

    #[command(flatten)]
    outputs: ReportOutputs,

    #[command(flatten)]
    gate: Gate,
}

/// Report files (replay and report merge).
#[derive(Args)]
struct ReportOutputs {
    /// Write the report as JSON to this file (mergeable with `capture report merge`).
    #[arg(long, env = "CAPTURE_REPORT_JSON")]
    report_json: Option<PathBuf>,

    /// Write the report as a self-contained HTML page to this file.
    #[arg(long, env = "CAPTURE_REPORT_HTML")]
    report_html: Option<PathBuf>,

    /// Write a JUnit XML report to this file: one test case per endpoint, failing when
    /// it has differences at the --fail-on risk or higher (any difference without
    /// --fail-on), in error when a candidate did not answer.
    #[arg(long, env = "CAPTURE_REPORT_JUNIT")]
    report_junit: Option<PathBuf>,
}

/// The exit-code gate.
#[derive(Args)]
struct Gate {
    /// Exit with code 3 when a request differs at this risk or higher (`high`,
    /// `medium` or `low`), a candidate did not answer a request, or the baseline
    /// answered none. High: status class change, removed field or header, changed
    /// type; medium: changed value; low: added field or header.
    #[arg(long, env = "CAPTURE_FAIL_ON", value_parser = parse_risk)]
    fail_on: Option<Risk>,

    /// The same as `--fail-on low`: any difference fails (kept for existing scripts).
    #[arg(long, env = "CAPTURE_FAIL_ON_DIFF", conflicts_with = "fail_on")]
    fail_on_diff: bool,
}

impl Gate {
    /// The risk level that fails the run, and the flag that set it (for messages).
    fn level(&self) -> Option<(Risk, String)> {
        match (self.fail_on, self.fail_on_diff) {
            (Some(r), _) => Some((r, format!("--fail-on {r}"))),
            (None, true) => Some((Risk::Low, "--fail-on-diff".to_string())),
            (None, false) => None,
        }
    }
}

fn parse_risk(s: &str) -> Result<Risk, String> {
    s.parse()
}

fn parse_pattern(s: &str) -> Result<PathPattern, String> {
    s.parse().map_err(|e: capture::compare::PathError| e.to_string())
}

#[derive(Args)]
struct ExportArgs {
    /// Output format. `har`: HAR 1.2 JSON.
    #[arg(long, value_enum, env = "CAPTURE_EXPORT_FORMAT")]
    format: ExportFormat,

    /// Captured records: `.gor` file(s), or `kafka://host:port[,host:port]/topic` with
    /// --from (a time window, read without a consumer group).
    #[arg(long = "input", required = true, env = "CAPTURE_INPUT", value_delimiter = ',')]
    inputs: Vec<String>,

    /// Kafka input: start of the time window, RFC 3339 or relative (`-15m`).
    #[arg(long, env = "CAPTURE_FROM", allow_hyphen_values = true)]
    from: Option<String>,

    /// Kafka input: end of the time window (RFC 3339, `-5m`, `now`). Default: now.
    #[arg(long, env = "CAPTURE_TO", allow_hyphen_values = true)]
    to: Option<String>,

    /// Kafka time window: seconds an exchange waits for earlier ones still to be read
    /// from other partitions before it is replayed (records are written when the
    /// response completes, and partitions are read side by side). The window streams in
    /// request time order with memory bounded by this (and at most 64 MiB held); an
    /// exchange later than this is replayed at once, out of order, and counted
    /// (`input_late`).
    #[arg(long, default_value = "2", env = "CAPTURE_REORDER_WINDOW", value_parser = seconds)]
    reorder_window: Duration,

    /// librdkafka setting for the Kafka input (`key=value`, repeatable), e.g. TLS/SASL.
    #[arg(long = "kafka-opt", env = "CAPTURE_KAFKA_OPT", value_delimiter = ';', value_parser = parse_kafka_opt)]
    kafka_opts: Vec<(String, String)>,

    /// Write to this file instead of stdout.
    #[arg(long, short = 'o', env = "CAPTURE_EXPORT_OUTPUT")]
    output: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ExportFormat {
    /// HAR 1.2 (HTTP Archive).
    Har,
}

#[derive(Args)]
struct ReplayArgs {
    /// Captured records: a `.gor` file (repeatable), or `kafka://host:port[,host:port]/topic`
    /// with --group (live, consumer group) or --from/--to (a time window).
    #[arg(long = "input", required = true, env = "CAPTURE_INPUT", value_delimiter = ',')]
    inputs: Vec<String>,

    /// Kafka input: consumer group to join (offsets are committed only after the
    /// requests were replayed: at-least-once). Several replayers share the partitions.
    #[arg(long, env = "CAPTURE_GROUP", conflicts_with_all = ["from", "to"])]
    group: Option<String>,

    /// Kafka input: start of the time window, RFC 3339 or relative (`-15m`). Read
    /// without a consumer group; no offsets are committed.
    #[arg(long, env = "CAPTURE_FROM", allow_hyphen_values = true)]
    from: Option<String>,

    /// Kafka input: end of the time window (RFC 3339, `-5m`, `now`). Default: now.
    #[arg(long, env = "CAPTURE_TO", allow_hyphen_values = true)]
    to: Option<String>,

    /// Kafka input, group mode: stop after this many seconds without a new record.
    #[arg(long, default_value = "10", env = "CAPTURE_IDLE_EXIT", value_parser = positive_seconds)]
    idle_exit: Duration,

    /// Kafka time window: seconds an exchange waits for earlier ones still to be read
    /// from other partitions before it is replayed (records are written when the
    /// response completes, and partitions are read side by side). The window streams in
    /// request time order with memory bounded by this (and at most 64 MiB held); an
    /// exchange later than this is replayed at once, out of order, and counted
    /// (`input_late`).
    #[arg(long, default_value = "2", env = "CAPTURE_REORDER_WINDOW", value_parser = seconds)]
    reorder_window: Duration,

    /// librdkafka setting for the Kafka input (`key=value`, repeatable), e.g. TLS/SASL.
    #[arg(long = "kafka-opt", env = "CAPTURE_KAFKA_OPT", value_delimiter = ';', value_parser = parse_kafka_opt)]
    kafka_opts: Vec<(String, String)>,

    /// Candidate base URL, `http://host[:port]` or `https://host[:port]` (TLS with
    /// rustls, the host as SNI, verified against the system's roots unless --ca-file
    /// or --insecure). Repeatable: every request goes to each.
    #[arg(long = "target", required = true, env = "CAPTURE_TARGET", value_delimiter = ',')]
    targets: Vec<TargetUrl>,

    /// https:// targets and baseline: accept any certificate (self-signed candidates).
    /// The traffic is encrypted, but the target is not authenticated.
    #[arg(long, env = "CAPTURE_INSECURE")]
    insecure: bool,

    /// https:// targets and baseline: trust the CA certificates in this PEM file instead
    /// of the system's roots.
    #[arg(long, env = "CAPTURE_CA_FILE", conflicts_with = "insecure")]
    ca_file: Option<PathBuf>,

    /// Replay at this multiple of the captured pace (2 = twice as fast; must be > 0), or
    /// `max`: no pacing, each request as soon as the previous one of its worker was
    /// answered (as fast as the targets answer; the order within each captured
    /// connection is kept, --concurrency bounds the requests in flight). Default 1.
    #[arg(long, env = "CAPTURE_SPEED", conflicts_with = "rate", value_parser = speed)]
    speed: Option<Pacing>,

    /// Replay at a fixed number of requests per second instead of the captured pace.
    #[arg(long, env = "CAPTURE_RATE", value_parser = positive_number)]
    rate: Option<f64>,

    /// Longest wait between two requests when following the captured pace (after
    /// --speed): a longer captured gap is shortened to it, with a line saying so.
    #[arg(long, default_value = "10", env = "CAPTURE_MAX_WAIT", value_parser = seconds)]
    max_wait: Duration,

    /// Also replay this method (GET, HEAD and OPTIONS always are). Repeatable.
    #[arg(long = "allow-method", env = "CAPTURE_ALLOW_METHOD", value_delimiter = ',')]
    allow_methods: Vec<String>,

    /// Also send requests whose framing the capture flagged ambiguous (`ambiguous=`:
    /// e.g. both Content-Length and Transfer-Encoding; the server may have read them
    /// differently). Skipped and counted by default.
    #[arg(long, env = "CAPTURE_REPLAY_AMBIGUOUS")]
    replay_ambiguous: bool,

    /// Send even to a target that is the captured production server (same port, and
    /// the same host: equal address, or both this node's: loopback, wildcard, own
    /// addresses). Refused by default: side effects would happen twice.
    #[arg(long, env = "CAPTURE_ALLOW_PRODUCTION")]
    allow_production: bool,

    /// Keep the captured Host header instead of the target's host:port.
    #[arg(long, env = "CAPTURE_KEEP_HOST")]
    keep_host: bool,

    /// Header added to every replayed request, `Name: value`.
    #[arg(long, default_value = "X-Capture-Replay: 1", env = "CAPTURE_MARK_HEADER", value_parser = parse_header)]
    mark_header: (String, String),

    /// Set a header on every replayed request, `Name: value` (e.g. test credentials). Repeatable.
    #[arg(long = "set-header", env = "CAPTURE_SET_HEADER", value_delimiter = ';', value_parser = parse_header)]
    set_headers: Vec<(String, String)>,

    /// Remove a header from every replayed request (e.g. Cookie). Repeatable.
    #[arg(long = "drop-header", env = "CAPTURE_DROP_HEADER", value_delimiter = ',')]
    drop_headers: Vec<String>,

    /// Compare candidate responses with the captured production responses.
    #[arg(long, env = "CAPTURE_COMPARE")]
    compare: bool,

    /// A second production copy: differences it shows too are counted as noise. Its
    /// errors are counted; if it answers nothing the run reports an error.
    #[arg(long, requires = "compare", env = "CAPTURE_BASELINE")]
    baseline: Option<TargetUrl>,

    /// Header never compared, added to the defaults (Date, Server, request ids, ...). Repeatable.
    #[arg(long = "ignore-header", env = "CAPTURE_IGNORE_HEADER", value_delimiter = ',')]
    ignore_headers: Vec<String>,

    /// JSON field never compared (nor anything below it), e.g. `$.meta.generated_at` or
    /// `$.items[*].id` (`[*]` any index, `.*` any key). Repeatable. A pattern that does
    /// not parse is a usage error.
    #[arg(long = "ignore-field", env = "CAPTURE_IGNORE_FIELD", value_delimiter = ',', value_parser = parse_pattern)]
    ignore_fields: Vec<PathPattern>,

    /// JSON array compared without regard to order (as a multiset), e.g. `$.items` or
    /// `$.groups[*].tags`. Repeatable.
    #[arg(long = "unordered", env = "CAPTURE_UNORDERED", value_delimiter = ',', value_parser = parse_pattern)]
    unordered: Vec<PathPattern>,

    #[command(flatten)]
    outputs: ReportOutputs,

    /// Write each request's outcome as a JSON line to this file, as it happens (for a
    /// log pipeline): equal, different (with risk and differences), partial,
    /// not_compared, error or skipped.
    #[arg(long, env = "CAPTURE_REPORT_JSONL")]
    report_jsonl: Option<PathBuf>,

    /// Captured connections replayed at once (each keeps its order).
    #[arg(long, default_value_t = 32, env = "CAPTURE_CONCURRENCY", value_parser = clap::value_parser!(u32).range(1..=4096))]
    concurrency: u32,

    /// Seconds allowed to connect, and to write each request and read its whole
    /// response. A request that fails is never sent again.
    #[arg(long, default_value = "10", env = "CAPTURE_TIMEOUT", value_parser = positive_seconds)]
    timeout: Duration,

    /// Keep-alive connections to the targets open at once, over all workers (at least
    /// one per worker). The least recently used is closed to make room, and one unused
    /// for 30 s is closed; connections are closed only between requests, so nothing is
    /// re-sent. A captured connection that comes back gets a new one, counted
    /// (`replay_connections_reopened`).
    #[arg(long, default_value_t = 512, env = "CAPTURE_MAX_TARGET_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    max_target_connections: u32,

    /// Threads sending the requests of `http://` targets, each running one event loop
    /// over its share of the --concurrency connections (0: one per core, at most
    /// --concurrency). `https://` targets use a thread per unit of concurrency.
    #[arg(long, default_value_t = 0, env = "CAPTURE_REPLAY_THREADS", value_parser = clap::value_parser!(u32).range(0..=4096))]
    replay_threads: u32,

    /// Serve Prometheus metrics on `addr:port` while the replay runs (e.g. `0.0.0.0:9478`,
    /// `127.0.0.1:0` for any free port): `/metrics` (requests sent and skipped, outcomes
    /// by class and risk, errors by target role and kind, input and connection
    /// counters, latency histograms), `/healthz` (200 while the replay makes progress)
    /// and `/readyz` (200 while replaying). Values are live, and equal the report's
    /// totals once the replay finished.
    #[arg(long, env = "CAPTURE_METRICS", value_parser = parse_metrics_addr)]
    metrics: Option<SocketAddr>,

    /// With --metrics: keep serving the final values this many seconds after the
    /// replay finished and its reports were written, so a last scrape sees them
    /// (`capture_replay_finished` is 1 then). SIGTERM or SIGINT ends the wait; the exit
    /// code is the replay's.
    #[arg(long, default_value = "0", env = "CAPTURE_METRICS_LINGER", value_parser = seconds, requires = "metrics")]
    metrics_linger: Duration,

    #[command(flatten)]
    gate: Gate,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((n, v)) if !n.trim().is_empty() && !n.contains(' ') => Ok((n.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("{s:?}: expected `Name: value`")),
    }
}

fn positive_number(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("{s:?}: expected a number greater than 0")),
    }
}

/// `--speed`: a factor > 0 on the captured pace, or `max` (no pacing).
fn speed(s: &str) -> Result<Pacing, String> {
    if s.eq_ignore_ascii_case("max") {
        return Ok(Pacing::Max);
    }
    positive_number(s).map(|speed| Pacing::Original { speed }).map_err(|_| format!("{s:?}: expected a number greater than 0, or max"))
}

fn seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() && v < 1e9 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("{s:?}: expected a number of seconds, 0 or more")),
    }
}

fn positive_seconds(s: &str) -> Result<Duration, String> {
    match seconds(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(format!("{s:?}: expected a number of seconds greater than 0")),
    }
}

/// A bad combination of flags: printed like clap's own errors, exit code 2.
fn usage_error(message: String) -> ! {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    let replay = cmd.find_subcommand_mut("replay").expect("replay subcommand").clone();
    replay.bin_name("capture replay").error(clap::error::ErrorKind::ArgumentConflict, message).exit()
}

/// A line on stderr; a closed stderr is not worth dying for.
fn note(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "capture: {line}");
}

/// Where captured records come from.
enum Input {
    /// `.gor` files, read as a stream.
    Files(Vec<PathBuf>),
    /// A Kafka time window (streamed through a reorder buffer, in request time order).
    KafkaWindow(KafkaInput),
    /// A Kafka consumer group (live, in batches).
    KafkaGroup(KafkaInput, String),
}

/// Opens an input that is read to its end: `.gor` files (every one opened first, so a
/// missing one fails before anything is sent) or a Kafka time window.
fn open_whole(input: &Input) -> anyhow::Result<Box<dyn WholeInput>> {
    Ok(match input {
        Input::Files(paths) => {
            let paths: Vec<&std::path::Path> = paths.iter().map(PathBuf::as_path).collect();
            Box::new(GorInput::open(&paths, PairingWindow::default()).context("opening the input")?)
        }
        Input::KafkaWindow(kafka) => Box::new(WindowInput::open(kafka)?),
        Input::KafkaGroup(..) => unreachable!("a consumer group has no end"),
    })
}

/// Checks the input flags (usage errors exit 2) and says where records come from.
/// What the Kafka input flags say (besides `--input`).
struct KafkaFlags<'a> {
    group: Option<&'a String>,
    from: Option<&'a String>,
    to: Option<&'a String>,
    options: &'a [(String, String)],
    idle: Duration,
    reorder_window: Duration,
}

fn input_of(inputs: &[String], flags: KafkaFlags<'_>) -> Input {
    let KafkaFlags { group, from, to, options: kafka_opts, idle, reorder_window } = flags;
    let kafka: Vec<&String> = inputs.iter().filter(|i| i.starts_with("kafka://")).collect();
    if !kafka.is_empty() && (kafka.len() > 1 || inputs.len() > 1) {
        usage_error("--input: give one kafka:// input, or any number of .gor files".into());
    }
    let Some(url) = kafka.first() else {
        if group.is_some() || from.is_some() || to.is_some() {
            usage_error("--group, --from and --to apply to a kafka:// input".into());
        }
        return Input::Files(inputs.iter().map(PathBuf::from).collect());
    };
    if group.is_none() && from.is_none() {
        usage_error(format!("--input {url}: give --group (live) or --from (time window)"));
    }
    let (brokers, topic) = match url.parse::<OutputSpec>() {
        Ok(OutputSpec::Kafka { brokers, topic }) => (brokers, topic),
        _ => usage_error(format!("--input {url:?}: expected kafka://host:port[,host:port]/topic")),
    };
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    let parse = |flag: &str, t: Option<&String>| t.map(|t| parse_time(t, now_ms)).transpose().unwrap_or_else(|e| usage_error(format!("--{flag} {e}")));
    let input = KafkaInput {
        brokers,
        topic,
        group: group.cloned(),
        from_ms: parse("from", from),
        to_ms: parse("to", to).or(Some(now_ms)),
        options: kafka_opts.to_vec(),
        idle,
        reorder_window,
    };
    match group {
        Some(group) => Input::KafkaGroup(input, group.clone()),
        None => Input::KafkaWindow(input),
    }
}

/// Opens a file written as it goes (JSON lines, exports). Like reports, it holds
/// production traffic: private, never through a link (see `files`).
fn create_file(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    Ok(files::create_or_truncate(path, &FileOptions::default())?)
}

/// Writes a whole report: a new private file renamed over the path.
fn write_file(path: &std::path::Path, text: &str, what: &str) -> anyhow::Result<()> {
    files::replace(path, text.as_bytes(), &FileOptions::default()).with_context(|| format!("writing the {what}"))?;
    note(format_args!("{what} written to {}", path.display()));
    Ok(())
}

/// Writes the report files asked for, then the summary to stdout (a closed stdout
/// ends it quietly), then the run errors to stderr; returns the exit code of the gate.
fn finish_report(view: &ReportView, outputs: &ReportOutputs, gate: &Gate) -> anyhow::Result<ExitCode> {
    let level = gate.level();
    if let Some(path) = &outputs.report_json {
        write_file(path, &view.to_json(), "JSON report")?;
    }
    if let Some(path) = &outputs.report_html {
        write_file(path, &html::render(view), "HTML report")?;
    }
    if let Some(path) = &outputs.report_junit {
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let run = JunitRun { hostname: hostname(), timestamp: now.trim_end_matches('Z').to_string(), fail_on: level.as_ref().map_or(Risk::Low, |l| l.0) };
        write_file(path, &junit::render(view, &run), "JUnit report")?;
    }
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(terminal::render(view).as_bytes()).and_then(|()| out.flush());
    }
    for error in &view.run_errors {
        note(format_args!("error: {error}"));
    }
    if let Some((risk, flag)) = level {
        let failures = view.gate_failures(risk);
        if !failures.is_empty() {
            note(format_args!("{flag}: failing ({})", failures.join("; ")));
            return Ok(ExitCode::from(3));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(stats: &InputStats, requests: u64, targets: &str) {
    note(format_args!(
        "replaying {requests} request(s) from {} record(s) ({} unparseable, {} null, {} continuation records joined, {} incomplete, \
         {} responses without request, {} ignored, {} handed over in a rebalance) to {targets}",
        stats.records,
        stats.bad_records,
        stats.null_values,
        stats.parts_joined,
        stats.parts_incomplete,
        stats.responses_without_request,
        stats.ignored_records,
        stats.handed_over,
    ))
}

/// Runs the replay and says how long it took: from the first request read to the last
/// answer (a Kafka time window is read before, and not counted).
fn timed_replay(exchanges: impl IntoIterator<Item = capture::replay::input::Exchange>, config: &ReplayConfig, results: Results) -> Results {
    let (started, before) = (std::time::Instant::now(), results.report.total());
    let results = replay::run(exchanges, config, results);
    let (secs, answers) = (started.elapsed().as_secs_f64(), results.report.total() - before);
    note(format_args!("replayed {answers} request(s) to the targets in {secs:.3} s ({:.0} per second)", answers as f64 / secs.max(1e-9)));
    results
}

fn run_replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let input = input_of(
        &args.inputs,
        KafkaFlags {
            group: args.group.as_ref(),
            from: args.from.as_ref(),
            to: args.to.as_ref(),
            options: &args.kafka_opts,
            idle: args.idle_exit,
            reorder_window: args.reorder_window,
        },
    );
    let mut allow: Vec<String> = SAFE_METHODS.iter().map(|m| m.to_string()).collect();
    allow.extend(args.allow_methods.iter().map(|m| m.trim().to_ascii_uppercase()));
    let settings = CompareSettings::with_patterns(&args.ignore_headers, args.ignore_fields.clone(), args.unordered.clone());
    let any_https = args.targets.iter().chain(&args.baseline).any(|t| t.tls);
    let tls = if any_https {
        let options = capture::replay::tls::TlsOptions { insecure: args.insecure, ca_file: args.ca_file.clone() };
        Some(capture::replay::tls::client_config(&options)?)
    } else {
        None
    };
    let resolve = |url: TargetUrl| {
        let target = Target::resolve(url.clone()).with_context(|| format!("resolving target {url}"))?;
        Ok(match &tls {
            Some(config) => target.with_tls(config.clone()),
            None => target,
        })
    };
    let config = ReplayConfig {
        targets: args.targets.iter().cloned().map(resolve).collect::<anyhow::Result<_>>()?,
        baseline: args.baseline.clone().map(resolve).transpose()?,
        pacing: match (args.rate, args.speed) {
            (Some(rate), _) => Pacing::Rate(rate),
            (None, speed) => speed.unwrap_or(Pacing::Original { speed: 1.0 }),
        },
        max_wait: args.max_wait,
        allow_methods: allow,
        replay_ambiguous: args.replay_ambiguous,
        rewrite: RewriteOptions { keep_host: args.keep_host, mark: args.mark_header, set: args.set_headers, drop: args.drop_headers },
        concurrency: args.concurrency as usize,
        timeout: args.timeout,
        compare: args.compare.then_some(settings),
        production: ProductionCheck { local: LocalAddresses::of_this_node(), allow: args.allow_production },
        keep_alive: KeepAlive { max_open: args.max_target_connections as usize, idle: IDLE_CLOSE },
        threads: args.replay_threads as usize,
    };
    // Bound before anything is sent, so a port in use stops the run first.
    let metrics = args.metrics.map(|_| ReplayMetrics::new(config.longest_silence(), config.baseline.is_some()));
    let _metrics_server = match (args.metrics, &metrics) {
        (Some(addr), Some(m)) => {
            let mut registry = capture::metrics::Registry::default();
            m.register(&mut registry);
            let server = capture::metrics::serve(addr, Arc::new(registry), m.health().clone()).context("--metrics")?;
            note(format_args!("metrics on http://{}/metrics (also /healthz, /readyz)", server.local_addr()));
            Some(server)
        }
        _ => None,
    };
    let publish_input = |stats: &InputStats| {
        if let Some(m) = &metrics {
            m.input(&stats.fields());
        }
    };
    if args.allow_production {
        note(format_args!(
            "WARNING: --allow-production: requests may be sent to the captured production servers; their side effects happen twice"
        ));
    }
    // Opened before anything is sent: a path that cannot be written fails first.
    let log = match &args.report_jsonl {
        Some(path) => Some(OutcomeLog::new(Box::new(std::io::BufWriter::new(create_file(path)?)))),
        None => None,
    };
    let title = format!("capture replay of {}", args.inputs.join(", "));
    let targets = args.targets.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ");
    let with_input = |mut results: Results, stats: &InputStats| {
        for (name, n) in stats.fields() {
            results.report.add_counter(&format!("input_{name}"), n);
        }
        results
    };
    let results = Results { report: Report::new(title), log, metrics: metrics.clone() };
    if let Some(m) = &metrics {
        m.health().set_ready(true);
    }
    let mut input_error = None;
    let results = match input {
        Input::Files(_) | Input::KafkaWindow(_) => {
            let mut input = open_whole(&input)?;
            let mut requests = 0u64;
            let mut published = std::time::Instant::now();
            let exchanges = std::iter::from_fn(|| {
                let next = input.next();
                requests += u64::from(next.is_some());
                if next.is_none() || published.elapsed() >= INPUT_PROGRESS_EVERY {
                    publish_input(&input.stats());
                    published = std::time::Instant::now();
                }
                next
            });
            let results = timed_replay(exchanges, &config, results);
            describe(&input.stats(), requests, &targets);
            input_error = input.failure().map(anyhow::Error::msg);
            publish_input(&input.stats());
            with_input(results, &input.stats())
        }
        Input::KafkaGroup(kafka, group) => {
            let mut results = Some(results);
            let mut requests = 0u64;
            let stats = consume_group(&kafka, &group, |event| match event {
                GroupEvent::Batch(batch) => {
                    note(format_args!("replaying a batch of {} request(s)", batch.len()));
                    requests += batch.len() as u64;
                    results = Some(timed_replay(batch, &config, results.take().expect("results")));
                }
                GroupEvent::Replayed { partition, from, to } => {
                    results.as_mut().expect("results").report.add_kafka_records(&kafka.topic, partition, from, to);
                }
                GroupEvent::Progress(stats) => publish_input(&stats),
            })?;
            describe(&stats, requests, &targets);
            publish_input(&stats);
            with_input(results.expect("results"), &stats)
        }
    };
    let Results { report, log, .. } = results;
    let code = finish_report(&report.view(), &args.outputs, &args.gate)?;
    if let (Some(log), Some(path)) = (log, &args.report_jsonl) {
        let lines = log.finish().with_context(|| format!("writing {}", path.display()))?;
        note(format_args!("{lines} JSON line(s) written to {}", path.display()));
    }
    if let Some(m) = &metrics {
        m.finish();
        m.health().set_ready(false);
        if !args.metrics_linger.is_zero() {
            note(format_args!("replay finished: serving its final metrics for {:?} (SIGTERM ends this)", args.metrics_linger));
            linger(args.metrics_linger, m)?;
        }
    }
    if let Some(e) = input_error {
        return Err(e.context("the input ended early: the report covers what was read"));
    }
    Ok(code)
}

/// How often a file input's counters are published to the metrics while reading.
const INPUT_PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Keeps the process (and its metrics server) alive for `duration`, or until SIGTERM or
/// SIGINT; the metrics' health stays good meanwhile.
fn linger(duration: Duration, metrics: &ReplayMetrics) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the tokio runtime")?;
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let end = tokio::time::sleep(duration);
        tokio::pin!(end);
        loop {
            tokio::select! {
                _ = &mut end => break,
                _ = term.recv() => break,
                _ = interrupt.recv() => break,
                _ = tick.tick() => metrics.health().progress(),
            }
        }
        Ok(())
    })
}

fn run_export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let ExportFormat::Har = args.format;
    let input = input_of(
        &args.inputs,
        KafkaFlags {
            group: None,
            from: args.from.as_ref(),
            to: args.to.as_ref(),
            options: &args.kafka_opts,
            idle: Duration::from_secs(10),
            reorder_window: args.reorder_window,
        },
    );
    let mut out: Box<dyn std::io::Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(create_file(path)?)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let (written, stats) = match input {
        Input::Files(_) | Input::KafkaWindow(_) => {
            let mut input = open_whole(&input)?;
            let written = write_har(input.by_ref(), &mut out);
            if let Some(e) = input.failure() {
                anyhow::bail!("{e}");
            }
            (written, input.stats())
        }
        Input::KafkaGroup(..) => unreachable!("export has no --group"),
    };
    let written = written.context("writing the HAR log")?;
    drop(out);
    note(format_args!(
        "exported {} exchange(s) ({} without a response; {} unparseable request(s) left out) from {} record(s) ({} unparseable){}",
        written.entries,
        written.without_response,
        written.unparseable_requests,
        stats.records,
        stats.bad_records,
        args.output.as_ref().map(|p| format!(" to {}", p.display())).unwrap_or_default()
    ));
    Ok(ExitCode::SUCCESS)
}

fn run_merge(args: MergeArgs) -> anyhow::Result<ExitCode> {
    let mut merged: Option<Report> = None;
    for path in &args.reports {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let report = Report::from_json(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        match &mut merged {
            None => merged = Some(report),
            Some(m) => m.merge(report),
        }
    }
    let mut report = merged.expect("at least one report (clap requires it)");
    report.set_title(format!("merged report of {} replays", args.reports.len()));
    finish_report(&report.view(), &args.outputs, &args.gate)
}

#[derive(Args)]
struct AgentArgs {
    /// Interface to capture on: a name (`eth0`, `lo`) or a glob (`veth*`, `cali*`).
    /// Repeatable. Globs stay live: interfaces that appear later (new pods) are attached
    /// at once, vanished ones are forgotten, and a glob may match nothing at start. A
    /// plain name must exist at start. Any orientation works (a NIC, the host side of a
    /// pod's veth, `lo`); a connection crossing two watched interfaces is recorded once.
    #[arg(long = "iface", required = true, env = "CAPTURE_IFACE", value_delimiter = ',')]
    ifaces: Vec<capture::iface_watch::InterfacePattern>,

    /// Server port whose traffic is captured (both requests and responses). Repeatable.
    #[arg(long = "port", required = true, env = "CAPTURE_PORT", value_delimiter = ',')]
    ports: Vec<u16>,

    /// Where records go: `stdout`, `file:///dir/name.gor` (or a path ending in .gor),
    /// `kafka://host:port[,host:port]/topic`. Repeatable: each output gets every record
    /// and keeps its own counters. Default: `capture-<time>.gor` in the working directory.
    #[arg(long = "output", env = "CAPTURE_OUTPUT", value_delimiter = ',')]
    outputs: Vec<OutputSpec>,

    /// Largest message kept per record; longer messages are cut, flagged and counted.
    #[arg(long, default_value = "1000000", env = "CAPTURE_MAX_MESSAGE_SIZE", value_parser = parse_size)]
    max_message_size: u64,

    /// Memory for HTTP messages in progress over all connections. When it is full, the
    /// message that grows is cut where it is (flagged truncated, counted
    /// `http_memory_pressure_truncations`) instead of the agent growing without bound.
    #[arg(long, default_value = "256MiB", env = "CAPTURE_MAX_HTTP_BUFFER", value_parser = parse_size)]
    max_http_buffer: u64,

    /// Start a new `.gor` file (name.1.gor, name.2.gor, ...) when the current one reaches this size.
    #[arg(long, default_value = "1GiB", env = "CAPTURE_FILE_ROTATE_SIZE", value_parser = parse_size)]
    file_rotate_size: u64,

    /// Kernel ring buffer size (a power of two, at least 4KiB).
    #[arg(long, default_value = "16MiB", env = "CAPTURE_RING_SIZE", value_parser = parse_ring_size)]
    ring_size: u32,

    /// How to attach: `auto` (TCX links on kernels >= 6.6, netlink clsact filters
    /// before), `tcx`, or `netlink` (the pre-6.6 path, also on newer kernels). Netlink
    /// filters are named after their agent and outlive a killed one; the next agent
    /// removes them only when their agent is gone, and leaves a live agent's filters
    /// alone with a warning (both agents then capture).
    #[arg(long, default_value = "auto", env = "CAPTURE_ATTACH", value_parser = parse_attach)]
    attach: capture::kernel::loader::AttachMode,

    /// Close a connection after this many seconds without a segment.
    #[arg(long, default_value_t = 120, env = "CAPTURE_IDLE_TIMEOUT")]
    idle_timeout: u64,

    /// Connections tracked at once; the least recently active one is closed to make room.
    /// Also sizes the kernel's flow-owner map (which hook records each flow direction).
    #[arg(long, default_value_t = 65_536, env = "CAPTURE_MAX_CONNECTIONS")]
    max_connections: usize,

    /// librdkafka setting for Kafka outputs, e.g. `security.protocol=SASL_SSL`,
    /// `sasl.mechanism=SCRAM-SHA-512`, `ssl.ca.location=/etc/ssl/ca.pem`, `linger.ms=50`.
    /// Repeatable; overrides the defaults (acks=all, compression.type=lz4, linger.ms=20,
    /// batch.size=1000000); `compression.type=zstd` with `compression.level=1` sends a third
    /// fewer bytes than lz4 for 12-15 % more agent CPU.
    #[arg(long = "kafka-opt", env = "CAPTURE_KAFKA_OPT", value_delimiter = ';', value_parser = parse_kafka_opt)]
    kafka_opts: Vec<(String, String)>,

    /// Memory for records waiting for Kafka (broker down or slow). When full, new
    /// records are dropped and counted (`outputN_buffer_full`); capture goes on.
    #[arg(long, default_value = "128MiB", env = "CAPTURE_KAFKA_BUFFER", value_parser = parse_size)]
    kafka_buffer: u64,

    /// Largest payload per Kafka message. A larger message (kept whole by a raised
    /// --max-message-size) is sent as continuation records `part=I/N` with the same id
    /// and key, which `capture replay` joins back into one message.
    #[arg(long, default_value = "1000000", env = "CAPTURE_KAFKA_PART_SIZE", value_parser = parse_part_size)]
    kafka_part_size: u64,

    /// Kafka value format: `batch` (default) packs several records of one connection
    /// into one message in the .gor file format, with the one header
    /// `capture-format: batch-1`; `records` sends one record per message with its
    /// metadata in `capture-*` headers (for consumers that read those headers).
    #[arg(long, value_enum, default_value = "batch", env = "CAPTURE_KAFKA_FORMAT")]
    kafka_format: kafka::KafkaFormat,

    /// `batch` format: a message leaves before its records would exceed this size (it
    /// also leaves at the end of the first batch of captured events 20 ms after its
    /// oldest record, or at the next 250 ms tick). Capped at --kafka-part-size.
    #[arg(long, default_value = "256KiB", env = "CAPTURE_KAFKA_BATCH_BYTES", value_parser = parse_part_size)]
    kafka_batch_bytes: u64,

    /// Seconds to wait at shutdown for Kafka to acknowledge queued records.
    #[arg(long, default_value_t = 10.0, env = "CAPTURE_KAFKA_FLUSH_TIMEOUT")]
    kafka_flush_timeout: f64,

    /// Node name written into record metadata (default: the hostname).
    #[arg(long, env = "CAPTURE_NODE_NAME")]
    node_name: Option<String>,

    /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long, env = "CAPTURE_DURATION")]
    duration: Option<f64>,

    /// Diagnostics: write one line per closed connection with the byte count and
    /// SHA-256 of each rebuilt direction to this file. Every byte is then copied: bodies
    /// nobody keeps are not skipped in the kernel.
    #[arg(long, env = "CAPTURE_STREAM_LOG")]
    stream_log: Option<PathBuf>,

    /// Serve Prometheus metrics on `addr:port` (e.g. `0.0.0.0:9477`, `[::]:9477`,
    /// `127.0.0.1:0` for any free port): `/metrics` with every counter of the summary
    /// line plus histograms, `/healthz` (200 while the pipeline makes progress) and
    /// `/readyz` (200 once attached with outputs initialised).
    #[arg(long, env = "CAPTURE_METRICS", value_parser = parse_metrics_addr)]
    metrics: Option<SocketAddr>,

    /// Also capture HTTPS as plaintext, at OpenSSL (3.x, dynamically linked) in server
    /// processes on this host, without terminating TLS: the path of a libssl.so file, or
    /// `auto` to find the libssl of every running process (also in containers, through
    /// /proc/PID/root) and of processes that start later. Repeatable. Needs uprobes and
    /// kernel BTF. Only connections whose packets cross a watched interface (and that
    /// `--sample` keeps) are captured. Records of such connections carry `tls=1`; their
    /// ciphertext is not recorded. Go's crypto/tls and statically linked TLS libraries are not supported.
    #[arg(long = "tls-lib", env = "CAPTURE_TLS_LIB", value_delimiter = ',')]
    tls_libs: Vec<capture::tls_libs::TlsLibSpec>,

    /// Which processes the TLS probes (`--tls-lib`) go on. `listeners`: only processes
    /// with a listening socket on a watched port (found in /proc every 2 s, in every
    /// network namespace; in a container the agent needs the host's pid namespace),
    /// so clients and other programs using the same libssl pay nothing. `all`: every
    /// process that maps the library (a server whose processes the agent cannot see,
    /// or that accepts on sockets it did not open itself), at a cost to each of them.
    /// Without --tls-lib it has no effect.
    #[arg(long = "tls-scope", default_value = "listeners", env = "CAPTURE_TLS_SCOPE")]
    tls_scope: capture::tls_listeners::TlsScope,

    /// Permission bits of the `.gor` files and the stream log, in octal (they hold
    /// production traffic). Files are always created new: an existing file, or a
    /// symbolic link, at an output path is refused.
    #[arg(long, default_value = "600", env = "CAPTURE_FILE_MODE", value_parser = files::parse_mode)]
    file_mode: u32,

    /// Write output files into a directory other users may write to without the
    /// sticky bit (refused by default: they could swap the files).
    #[arg(long, env = "CAPTURE_ALLOW_UNSAFE_DIR", value_parser = clap::builder::BoolishValueParser::new())]
    allow_unsafe_dir: bool,

    /// Keep this percentage of connections (more than 0, up to 100; e.g. 10 or 0.5). The
    /// kernel decides once per connection with a keyed hash of its addresses and ports
    /// (random key per start, so the choice cannot be predicted from outside); a kept
    /// connection is kept whole, the others never reach the ring buffer.
    #[arg(long, default_value_t = 100.0, env = "CAPTURE_SAMPLE", value_parser = parse_percent, help_heading = "Controlling what is captured", value_name = "PERCENT")]
    sample: f64,

    /// Keep only exchanges whose request has this method (repeatable; comma-separated in
    /// the env var). Filters decide on the request head; the response follows.
    #[arg(long = "allow-method", env = "CAPTURE_ALLOW_METHOD", value_delimiter = ',', value_parser = filter::parse_method, help_heading = "Controlling what is captured", value_name = "METHOD")]
    allow_methods: Vec<String>,

    /// Keep only exchanges whose request-target (path and query, as sent) matches this
    /// regex; repeatable, any may match (newline-separated in the env var). Unanchored:
    /// use `^/api/` to anchor.
    #[arg(long = "allow-path", env = "CAPTURE_ALLOW_PATH", value_delimiter = '\n', value_parser = filter::parse_regex, help_heading = "Controlling what is captured", value_name = "REGEX")]
    allow_paths: Vec<regex::bytes::Regex>,

    /// Drop exchanges whose request-target matches this regex, e.g. `^/health` (repeatable;
    /// newline-separated in the env var).
    #[arg(long = "deny-path", env = "CAPTURE_DENY_PATH", value_delimiter = '\n', value_parser = filter::parse_regex, help_heading = "Controlling what is captured", value_name = "REGEX")]
    deny_paths: Vec<regex::bytes::Regex>,

    /// Keep only exchanges whose Host header matches this regex (repeatable, any may match;
    /// newline-separated in the env var).
    #[arg(long = "allow-host", env = "CAPTURE_ALLOW_HOST", value_delimiter = '\n', value_parser = filter::parse_regex, help_heading = "Controlling what is captured", value_name = "REGEX")]
    allow_hosts: Vec<regex::bytes::Regex>,

    /// `Name: regex`: keep only exchanges with a header of that name whose value matches
    /// (repeatable: every rule must hold; a missing header fails the rule; newline-separated
    /// in the env var).
    #[arg(long = "allow-header", env = "CAPTURE_ALLOW_HEADER", value_delimiter = '\n', value_parser = HeaderRule::parse, help_heading = "Controlling what is captured", value_name = "NAME: REGEX")]
    allow_headers: Vec<HeaderRule>,

    /// `Name: regex`: drop exchanges with a header of that name whose value matches
    /// (repeatable; newline-separated in the env var).
    #[arg(long = "deny-header", env = "CAPTURE_DENY_HEADER", value_delimiter = '\n', value_parser = HeaderRule::parse, help_heading = "Controlling what is captured", value_name = "NAME: REGEX")]
    deny_headers: Vec<HeaderRule>,

    /// Keep at most this many exchanges per second (token bucket, bursts up to one second);
    /// the others are dropped whole, at their request head, and counted.
    #[arg(long, env = "CAPTURE_RATE", value_parser = parse_rate, help_heading = "Controlling what is captured", value_name = "EXCHANGES_PER_S")]
    rate: Option<f64>,

    /// Keep at most this many record bytes per second (each record's header line and HTTP
    /// bytes, counted once whatever the number of outputs), e.g. `20MB`: protects Kafka.
    /// An exchange starts only while the budget is not in debt and is then kept whole.
    #[arg(long, env = "CAPTURE_MAX_BYTES_PER_SEC", value_parser = parse_size, help_heading = "Controlling what is captured", value_name = "BYTES")]
    max_bytes_per_sec: Option<u64>,

    /// Also redact this header's value (repeatable). Always redacted unless kept:
    /// Authorization, Proxy-Authorization, Cookie, Set-Cookie, X-Api-Key, X-Auth-Token,
    /// X-Access-Token, X-Amz-Security-Token, X-CSRF-Token, X-XSRF-Token.
    #[arg(long = "redact-header", env = "CAPTURE_REDACT_HEADER", value_delimiter = ',', help_heading = "Controlling what is captured", value_name = "HEADER")]
    redact_headers: Vec<String>,

    /// Do not redact this header (one of the defaults), e.g. `Cookie` (repeatable).
    #[arg(long = "keep-header", env = "CAPTURE_KEEP_HEADER", value_delimiter = ',', help_heading = "Controlling what is captured", value_name = "HEADER")]
    keep_headers: Vec<String>,

    /// Also redact this query parameter (request-target, Referer and Location URLs;
    /// repeatable). Always redacted unless kept: password, passwd, client_secret,
    /// access_token, refresh_token, id_token, api_key, apikey.
    #[arg(long = "redact-query", env = "CAPTURE_REDACT_QUERY", value_delimiter = ',', help_heading = "Controlling what is captured", value_name = "PARAM")]
    redact_query: Vec<String>,

    /// Also redact this field of urlencoded form bodies (repeatable; same defaults).
    #[arg(long = "redact-form-field", env = "CAPTURE_REDACT_FORM_FIELD", value_delimiter = ',', help_heading = "Controlling what is captured", value_name = "FIELD")]
    redact_form_fields: Vec<String>,

    /// Also redact this JSON body field: a key name at any depth (`password`) or a path
    /// (`$.user.password`, `$.items[*].token`); repeatable, newline-separated in the env
    /// var. The same default names are redacted at any depth.
    #[arg(long = "redact-json-field", env = "CAPTURE_REDACT_JSON_FIELD", value_delimiter = '\n', value_parser = JsonField::parse, help_heading = "Controlling what is captured", value_name = "NAME|PATH")]
    redact_json_fields: Vec<JsonField>,

    /// Do not redact this default parameter or field name (repeatable).
    #[arg(long = "keep-field", env = "CAPTURE_KEEP_FIELD", value_delimiter = ',', help_heading = "Controlling what is captured", value_name = "NAME")]
    keep_fields: Vec<String>,

    /// File holding the redaction key (at least 16 bytes; one trailing newline is
    /// ignored). Tokens are HMAC-SHA256 of the value under this key: give every agent the
    /// same file and equal secrets get equal tokens across nodes and restarts. Default: a
    /// random key per start (tokens match only within one run).
    #[arg(long = "redact-key-file", env = "CAPTURE_REDACT_KEY_FILE", value_parser = parse_key_file, help_heading = "Controlling what is captured", value_name = "FILE")]
    redact_key: Option<RedactKey>,
}

fn parse_percent(s: &str) -> Result<f64, String> {
    match s.trim().trim_end_matches('%').parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 100.0 => Ok(p),
        _ => Err(format!("{s:?}: expected a percentage above 0 and at most 100, e.g. 10 or 0.5")),
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(r),
        _ => Err(format!("{s:?}: expected a positive number of exchanges per second")),
    }
}

fn parse_key_file(s: &str) -> Result<RedactKey, String> {
    RedactKey::from_file(std::path::Path::new(s))
}

fn parse_metrics_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| format!("{s:?}: expected an address and port, e.g. 0.0.0.0:9477 or [::]:9477"))
}

fn parse_kafka_opt(s: &str) -> Result<(String, String), String> {
    kafka::parse_option(s).map_err(|e| e.to_string())
}

fn parse_attach(s: &str) -> Result<capture::kernel::loader::AttachMode, String> {
    s.parse()
}

fn parse_part_size(s: &str) -> Result<u64, String> {
    match parse_size(s)? {
        n if n >= 1024 => Ok(n),
        _ => Err(format!("{s:?}: expected at least 1KiB")),
    }
}

fn parse_ring_size(s: &str) -> Result<u32, String> {
    let n = parse_size(s)?;
    if n < 4096 || !n.is_power_of_two() || n > (1 << 30) {
        return Err(format!("{s:?}: the ring size must be a power of two between 4KiB and 1GiB"));
    }
    Ok(n as u32)
}

/// 64 random bits from the kernel (the sampling key).
fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: writes at most 8 bytes into the buffer.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr() as *mut libc::c_void, 8, 0) };
    assert_eq!(n, 8, "getrandom failed");
    u64::from_le_bytes(buf)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    let metrics = AgentMetrics::new();
    // Bound first, so a port in use fails before anything is attached.
    let _metrics_server = match args.metrics {
        Some(addr) => {
            let mut registry = capture::metrics::Registry::default();
            metrics.register(&mut registry);
            let server = capture::metrics::serve(addr, Arc::new(registry), metrics.health().clone())
                .context("--metrics")?;
            eprintln!("capture: metrics on http://{}/metrics (also /healthz, /readyz)", server.local_addr());
            Some(server)
        }
        None => None,
    };
    // A plain --iface name must exist; say so before any output file is created.
    let mut watch = capture::iface_watch::InterfaceWatch::new(args.ifaces.clone());
    let links = capture::kernel::links::current_links().context("listing network interfaces")?;
    watch.on_event(capture::iface_watch::LinkEvent::Snapshot(links));
    if let Some(missing) = watch.missing_names().first() {
        return Err(capture::kernel::KernelError::NoSuchInterface(missing.to_string()).into());
    }
    let node = args.node_name.unwrap_or_else(hostname);
    let mut outputs = args.outputs;
    if outputs.is_empty() {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        outputs.push(OutputSpec::File(PathBuf::from(format!("capture-{secs}.gor"))));
    }
    let file_options = FileOptions { mode: args.file_mode, allow_unsafe_dir: args.allow_unsafe_dir };
    // Files are checked now (clear errors early) but created only once the kernel
    // programs are attached: a start that cannot capture leaves nothing behind.
    let mut planned: Vec<Result<Box<dyn RecordSink>, PathBuf>> = Vec::new();
    for spec in outputs {
        match spec {
            OutputSpec::Stdout => planned.push(Ok(Box::new(StdoutSink::new()))),
            OutputSpec::File(path) => {
                let path = std::path::absolute(&path).unwrap_or(path);
                files::check_new(&path, &file_options).context("--output")?;
                planned.push(Err(path));
            }
            OutputSpec::Kafka { brokers, topic } => {
                planned.push(Ok(Box::new(KafkaSink::create(KafkaConfig {
                    brokers,
                    topic,
                    options: args.kafka_opts.clone(),
                    buffer_bytes: args.kafka_buffer,
                    flush_timeout: Duration::from_secs_f64(args.kafka_flush_timeout.max(0.0)),
                    client_id: format!("capture-{node}"),
                    part_size: args.kafka_part_size as usize,
                    format: args.kafka_format,
                    batch_bytes: args.kafka_batch_bytes.min(args.kafka_part_size) as usize,
                    pack_wait: capture::sink::kafka::PACK_WAIT,
                })?)));
            }
        }
    }
    let (k0, k1) = (random_u64(), random_u64());
    let sampling = capture_common::SampleConfig::new(args.sample, k0, k1);
    if args.sample < 100.0 {
        eprintln!("capture: sampling: keeping {}% of connections (decided in the kernel, once per connection)", args.sample);
    }
    let filters = Filters {
        allow_methods: args.allow_methods,
        allow_paths: args.allow_paths,
        deny_paths: args.deny_paths,
        allow_hosts: args.allow_hosts,
        allow_headers: args.allow_headers,
        deny_headers: args.deny_headers,
    };
    let policy = ExchangePolicy::new(filters, args.rate, args.max_bytes_per_sec);
    let key_note = match &args.redact_key {
        Some(_) => "key from --redact-key-file".to_string(),
        None => "key: random for this run (tokens match only within this run; --redact-key-file keeps them stable across restarts and nodes)".to_string(),
    };
    let key = args.redact_key.unwrap_or_else(RedactKey::random);
    let redaction = RedactConfig::new(
        &args.redact_headers,
        &args.keep_headers,
        &args.redact_query,
        &args.redact_form_fields,
        &args.redact_json_fields,
        &args.keep_fields,
        key,
    );
    eprintln!(
        "capture: redacting {} header(s), {} query parameter(s), {} form field(s), {} JSON field(s) before any output; {key_note}",
        redaction.headers.len(),
        redaction.query_params.len(),
        redaction.form_fields.len(),
        redaction.json_fields.len()
    );
    if let Some(path) = &args.stream_log {
        files::check_new(path, &file_options).context("--stream-log")?;
    }
    let rotate_bytes = args.file_rotate_size;
    let open_outputs = move || -> anyhow::Result<Vec<Box<dyn RecordSink>>> {
        let mut sinks: Vec<Box<dyn RecordSink>> = Vec::new();
        for planned in planned {
            sinks.push(match planned {
                Ok(sink) => sink,
                Err(path) => Box::new(FileSink::create(&path, rotate_bytes, file_options)?),
            });
        }
        Ok(sinks)
    };
    let config = AgentConfig {
        sampling,
        policy,
        redaction,
        interfaces: args.ifaces,
        ports: args.ports,
        ring_bytes: args.ring_size,
        owner_entries: args.max_connections.clamp(1024, 1 << 22) as u32,
        attach: args.attach,
        limits: TableLimits {
            max_connections: args.max_connections.max(1),
            idle_timeout_ns: args.idle_timeout.saturating_mul(1_000_000_000),
            ..TableLimits::default()
        },
        http: HttpConfig {
            max_message_bytes: args.max_message_size as usize,
            max_total_buffered_bytes: args.max_http_buffer as usize,
            ..HttpConfig::default()
        },
        node,
        stream_log: args.stream_log,
        file_options,
        duration: args.duration.map(Duration::from_secs_f64),
        metrics,
        tls_libs: args.tls_libs,
        tls_scope: args.tls_scope,
    };
    let summary = agent::run(config, open_outputs).context("capture agent")?;
    eprintln!("capture: summary {}", summary.line());
    for (name, value) in summary.kernel_losses() {
        eprintln!("capture: warning: kernel lost data: {name}={value}");
    }
    for (name, s) in &summary.pipeline.sinks {
        if s.records_failed + s.records_dropped + s.records_pending > 0 {
            eprintln!(
                "capture: warning: {name}: {} record(s) failed, {} dropped, {} never acknowledged",
                s.records_failed, s.records_dropped, s.records_pending
            );
        }
    }
    Ok(())
}

fn list_attachments(patterns: &[String]) -> anyhow::Result<ExitCode> {
    let mut any = false;
    for iface in capture::kernel::loader::resolve_interfaces(patterns)? {
        for (direction, name) in capture::kernel::loader::attached_programs(&iface)? {
            println!("{iface} {direction} {name}");
            any = true;
        }
    }
    if !any {
        eprintln!("capture: no capture classifier attached");
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Agent(args) => run_agent(*args).map(|()| ExitCode::SUCCESS),
        Command::Replay(args) => run_replay(*args),
        Command::Export(args) => run_export(*args),
        Command::Report { command: ReportCommand::Merge(args) } => run_merge(*args),
        Command::Attachments { ifaces } => list_attachments(&ifaces),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            note(format_args!("error: {e:#}"));
            ExitCode::from(1)
        }
    }
}
