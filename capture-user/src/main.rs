//! The `capture` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use capture::agent::{self, AgentConfig};
use capture::connections::TableLimits;
use capture::http::HttpConfig;
use capture::output::{parse_size, OutputSpec};
use capture::sink::kafka::{self, KafkaConfig, KafkaSink};
use capture::sink::{file::FileSink, stdout::StdoutSink, RecordSink};

/// capture: copies live HTTP/1.x traffic off this host with eBPF, byte for byte,
/// so it can be replayed against a candidate release.
///
/// Exit codes: 0 success, 1 runtime error (message on stderr), 2 bad usage.
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
    /// Attaches TC classifiers (TCX, or clsact on older kernels) to each interface,
    /// rebuilds every TCP connection to the watched ports, frames HTTP/1.x requests and
    /// responses and writes them as GoReplay-compatible records. Stops on SIGINT/SIGTERM
    /// (or after --duration), flushes outputs and prints a summary of all counters.
    Agent(AgentArgs),
}

#[derive(Args)]
struct AgentArgs {
    /// Interface to capture on: a name (`eth0`, `lo`) or a glob (`veth*`). Repeatable.
    #[arg(long = "iface", required = true, env = "CAPTURE_IFACE", value_delimiter = ',')]
    ifaces: Vec<String>,

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

    /// Start a new `.gor` file (name.1.gor, name.2.gor, ...) when the current one reaches this size.
    #[arg(long, default_value = "1GiB", env = "CAPTURE_FILE_ROTATE_SIZE", value_parser = parse_size)]
    file_rotate_size: u64,

    /// Kernel ring buffer size (a power of two, at least 4KiB).
    #[arg(long, default_value = "32MiB", env = "CAPTURE_RING_SIZE", value_parser = parse_ring_size)]
    ring_size: u32,

    /// Close a connection after this many seconds without a segment.
    #[arg(long, default_value_t = 120, env = "CAPTURE_IDLE_TIMEOUT")]
    idle_timeout: u64,

    /// Connections tracked at once; the least recently active one is closed to make room.
    #[arg(long, default_value_t = 65_536, env = "CAPTURE_MAX_CONNECTIONS")]
    max_connections: usize,

    /// librdkafka setting for Kafka outputs, e.g. `security.protocol=SASL_SSL`,
    /// `sasl.mechanism=SCRAM-SHA-512`, `ssl.ca.location=/etc/ssl/ca.pem`, `linger.ms=50`.
    /// Repeatable; overrides the defaults (acks=all, zstd, linger.ms=20, batch.size=1000000).
    #[arg(long = "kafka-opt", env = "CAPTURE_KAFKA_OPT", value_delimiter = ';', value_parser = parse_kafka_opt)]
    kafka_opts: Vec<(String, String)>,

    /// Memory for records waiting for Kafka (broker down or slow). When full, new
    /// records are dropped and counted (`outputN_buffer_full`); capture goes on.
    #[arg(long, default_value = "128MiB", env = "CAPTURE_KAFKA_BUFFER", value_parser = parse_size)]
    kafka_buffer: u64,

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
    /// SHA-256 of each rebuilt direction to this file.
    #[arg(long, env = "CAPTURE_STREAM_LOG")]
    stream_log: Option<PathBuf>,
}

fn parse_kafka_opt(s: &str) -> Result<(String, String), String> {
    kafka::parse_option(s).map_err(|e| e.to_string())
}

fn parse_ring_size(s: &str) -> Result<u32, String> {
    let n = parse_size(s)?;
    if n < 4096 || !n.is_power_of_two() || n > (1 << 30) {
        return Err(format!("{s:?}: the ring size must be a power of two between 4KiB and 1GiB"));
    }
    Ok(n as u32)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    let interfaces = capture::kernel::loader::resolve_interfaces(&args.ifaces)?;
    let node = args.node_name.unwrap_or_else(hostname);
    let mut outputs = args.outputs;
    if outputs.is_empty() {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        outputs.push(OutputSpec::File(PathBuf::from(format!("capture-{secs}.gor"))));
    }
    let mut sinks: Vec<Box<dyn RecordSink>> = Vec::new();
    for spec in outputs {
        match spec {
            OutputSpec::Stdout => sinks.push(Box::new(StdoutSink::new())),
            OutputSpec::File(path) => {
                let path = std::path::absolute(&path).unwrap_or(path);
                sinks.push(Box::new(FileSink::create(&path, args.file_rotate_size)?));
            }
            OutputSpec::Kafka { brokers, topic } => {
                sinks.push(Box::new(KafkaSink::create(KafkaConfig {
                    brokers,
                    topic,
                    options: args.kafka_opts.clone(),
                    buffer_bytes: args.kafka_buffer,
                    flush_timeout: Duration::from_secs_f64(args.kafka_flush_timeout.max(0.0)),
                    client_id: format!("capture-{node}"),
                })?));
            }
        }
    }
    let config = AgentConfig {
        interfaces,
        ports: args.ports,
        ring_bytes: args.ring_size,
        limits: TableLimits {
            max_connections: args.max_connections.max(1),
            idle_timeout_ns: args.idle_timeout.saturating_mul(1_000_000_000),
            ..TableLimits::default()
        },
        http: HttpConfig { max_message_bytes: args.max_message_size as usize, ..HttpConfig::default() },
        node,
        stream_log: args.stream_log,
        duration: args.duration.map(Duration::from_secs_f64),
    };
    let summary = agent::run(config, sinks).context("capture agent")?;
    eprintln!("capture: summary {}", summary.line());
    for (counter, value) in summary.kernel_losses() {
        eprintln!("capture: warning: kernel lost data: {}={value}", counter.name());
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

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Agent(args) => run_agent(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("capture: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
