//! `capture agent`: kernel capture -> pipeline -> sinks, until a signal or `--duration`.
//!
//! The ring buffer is read on a tokio reactor (AsyncFd); decoded segments go in
//! batches over a bounded channel to one worker thread that owns the pipeline.
//! When the worker falls behind, the channel blocks the reader, the ring fills, and
//! the kernel counts what it could not write: nothing is lost without a counter.

use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver};
use std::time::Duration;

use anyhow::Context;
use capture_common::Counter;
use log::{info, warn};

use crate::connections::TableLimits;
use crate::files::{self, FileOptions};
use crate::http::HttpConfig;
use crate::kernel::loader::AttachMode;
use crate::kernel::ring::RingReader;
use crate::kernel::{counters, KernelCapture};
use crate::pipeline::{Pipeline, PipelineStats};
use crate::record::{clock_ns, RecordContext};
use crate::segment::Segment;
use crate::sink::RecordSink;

pub struct AgentConfig {
    pub interfaces: Vec<String>,
    pub ports: Vec<u16>,
    pub ring_bytes: u32,
    pub attach: AttachMode,
    pub limits: TableLimits,
    pub http: HttpConfig,
    pub node: String,
    pub stream_log: Option<PathBuf>,
    /// How the stream log is created (outputs are created by the caller's opener).
    pub file_options: FileOptions,
    pub duration: Option<Duration>,
}

enum Msg {
    Segments(Vec<Segment>, u64),
    Tick(u64),
}

/// What the agent saw, for the exit summary.
pub struct AgentSummary {
    pub kernel: Vec<(Counter, u64)>,
    pub pipeline: PipelineStats,
}

impl AgentSummary {
    /// One `key=value` line with every counter, plus the agent's own CPU time and peak RSS.
    pub fn line(&self) -> String {
        let mut parts: Vec<String> = self.kernel.iter().map(|(c, v)| format!("{}={v}", c.name())).collect();
        parts.extend(self.pipeline.fields().into_iter().map(|(k, v)| format!("{k}={v}")));
        let (user_ms, sys_ms, max_rss_kb) = own_usage();
        parts.push(format!("agent_cpu_user_ms={user_ms} agent_cpu_sys_ms={sys_ms} agent_max_rss_kb={max_rss_kb}"));
        parts.join(" ")
    }

    /// Kernel counters that mean lost bytes, if any are non-zero.
    pub fn kernel_losses(&self) -> Vec<(Counter, u64)> {
        self.kernel.iter().copied().filter(|(c, v)| c.is_loss() && *v > 0).collect()
    }
}

/// (user ms, system ms, peak RSS KiB) of this process so far.
fn own_usage() -> (u64, u64, u64) {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage struct.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let ms = |tv: libc::timeval| tv.tv_sec as u64 * 1000 + tv.tv_usec as u64 / 1000;
    (ms(ru.ru_utime), ms(ru.ru_stime), ru.ru_maxrss as u64)
}

/// Runs the agent. `open_outputs` is called once the kernel programs are loaded and
/// attached: a start that cannot capture (not root, no BPF) creates no file.
pub fn run(
    config: AgentConfig,
    open_outputs: impl FnOnce() -> anyhow::Result<Vec<Box<dyn RecordSink>>>,
) -> anyhow::Result<AgentSummary> {
    let mut kernel = KernelCapture::load(&config.interfaces, &config.ports, config.ring_bytes, config.attach)?;

    let ctx = RecordContext::new(config.node.clone());
    let mut pipeline = Pipeline::new(config.limits, config.http, ctx, open_outputs()?);
    if let Some(path) = &config.stream_log {
        let file = files::create_new(path, &config.file_options).context("creating the stream log")?;
        pipeline = pipeline.with_stream_digest(Box::new(file));
    }
    for out in pipeline.describe_outputs() {
        eprintln!("capture: writing records to {out}");
    }

    let ring = kernel.take_ring()?;
    let counter_map = kernel.take_counters()?;

    // At most 8 batches of <= 1 MiB wait for the pipeline: ~8 MiB queued.
    let (tx, rx) = sync_channel::<Msg>(8);
    // Emptied batch vectors go back to the reader: no allocation per batch.
    let (back_tx, back_rx) = sync_channel::<Vec<Segment>>(16);
    let worker = std::thread::Builder::new()
        .name("capture-pipeline".into())
        .spawn(move || work(pipeline, rx, back_tx))
        .context("starting the pipeline thread")?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let ports: Vec<String> = config.ports.iter().map(|p| p.to_string()).collect();
    eprintln!(
        "capture: ready: watching port(s) {} on {}",
        ports.join(","),
        config.interfaces.join(",")
    );
    let read_result = runtime.block_on(read_loop(ring, tx, back_rx, config.duration));
    let pipeline_stats = worker.join().map_err(|_| anyhow::anyhow!("pipeline thread panicked"))?;
    let kernel_counters = counters::read(&counter_map);
    drop(kernel);
    read_result?;
    Ok(AgentSummary { kernel: kernel_counters, pipeline: pipeline_stats })
}

async fn read_loop(
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    tx: std::sync::mpsc::SyncSender<Msg>,
    spare: Receiver<Vec<Segment>>,
    duration: Option<Duration>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut reader = RingReader::new(ring).context("registering the ring buffer with the reactor")?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let deadline = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    // The kernel wakes us only past a fill threshold; this timer bounds the delay
    // for a trickle of events.
    let mut poll = tokio::time::interval(Duration::from_millis(5));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut errors = Vec::new();
    loop {
        tokio::select! {
            r = reader.wait() => r.context("waiting for the ring buffer")?,
            _ = poll.tick() => {}
            _ = tick.tick() => {
                if tx.send(Msg::Tick(clock_ns(libc::CLOCK_MONOTONIC))).is_err() { break; }
                continue;
            }
            _ = sigint.recv() => { info!("SIGINT: stopping"); break; }
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
            _ = &mut deadline => { info!("duration reached: stopping"); break; }
        }
        // Drain what is there, in bounded batches; then look at signals and ticks again.
        for _ in 0..16 {
            let mut batch = spare.try_recv().unwrap_or_default();
            if reader.try_batch(&mut batch, &mut errors) == 0 {
                break;
            }
            let n_err = errors.len() as u64;
            if n_err > 0 {
                warn!("{n_err} undecodable ring events, first: {}", errors[0]);
                errors.clear();
            }
            if tx.send(Msg::Segments(batch, n_err)).is_err() {
                return Ok(());
            }
        }
    }
    // What the kernel already wrote is still captured.
    let mut batch = Vec::new();
    reader.drain(&mut batch, &mut errors);
    let _ = tx.send(Msg::Segments(batch, errors.len() as u64));
    drop(tx);
    Ok(())
}

fn work(mut pipeline: Pipeline, rx: Receiver<Msg>, spare: std::sync::mpsc::SyncSender<Vec<Segment>>) -> PipelineStats {
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Segments(mut segments, decode_errors) => {
                pipeline.decode_errors += decode_errors;
                for seg in segments.drain(..) {
                    pipeline.on_segment(seg);
                }
                let _ = spare.try_send(segments);
            }
            Msg::Tick(now) => pipeline.on_tick(now),
        }
    }
    pipeline.shutdown(clock_ns(libc::CLOCK_MONOTONIC));
    pipeline.stats()
}
