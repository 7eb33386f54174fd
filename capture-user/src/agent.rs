//! `capture agent`: kernel capture -> pipeline -> sinks, until a signal or `--duration`.
//!
//! The ring buffer is read on a tokio reactor (AsyncFd); decoded segments go in
//! batches over a bounded channel to one worker thread that owns the pipeline.
//! When the worker falls behind, the channel blocks the reader, the ring fills, and
//! the kernel counts what it could not write: nothing is lost without a counter.
//!
//! The same reactor listens for link notifications: interfaces matching `--iface`
//! are attached when they appear and forgotten when they vanish.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use capture_common::{Counter, SampleConfig};
use log::{info, warn};

use crate::connections::TableLimits;
use crate::files::{self, FileOptions};
use crate::http::HttpConfig;
use crate::iface_watch::{InterfacePattern, InterfaceStats, LinkEvent, LinkStats};
use crate::kernel::links::{self, LinkMonitor};
use crate::kernel::loader::AttachMode;
use crate::kernel::watched::WatchedInterfaces;
use crate::kernel::ring::RingReader;
use crate::kernel::tls::TlsProbes;
use crate::kernel::{counters, KernelCapture, KernelError};
use crate::metrics::agent::{AgentMetrics, TlsCounters};
use crate::pipeline::{Pipeline, PipelineStats};
use crate::policy::ExchangePolicy;
use crate::record::{clock_ns, RecordContext};
use crate::redact::{RedactConfig, Redactor};
use crate::segment::Segment;
use crate::sink::RecordSink;
use crate::skip::Skipper;
use crate::tls_libs::{Discovery, TlsLibSpec};
use crate::tls_listeners::{ListenerScan, TlsScope};

pub struct AgentConfig {
    /// `--iface` names and globs; globs stay live (interfaces that appear later).
    pub interfaces: Vec<InterfacePattern>,
    pub ports: Vec<u16>,
    pub ring_bytes: u32,
    /// Entries of the kernel's flow-owner map (two per connection).
    pub owner_entries: u32,
    pub attach: AttachMode,
    pub limits: TableLimits,
    pub http: HttpConfig,
    pub node: String,
    pub stream_log: Option<PathBuf>,
    /// How the stream log is created (outputs are created by the caller's opener).
    pub file_options: FileOptions,
    pub duration: Option<Duration>,
    /// Stats snapshots, readiness and progress for `/metrics`, `/healthz`, `/readyz`.
    pub metrics: Arc<AgentMetrics>,
    /// `--tls-lib`: OpenSSL libraries to probe for plaintext (empty: no TLS capture).
    pub tls_libs: Vec<TlsLibSpec>,
    /// `--tls-scope`: which processes the TLS probes go on.
    pub tls_scope: TlsScope,
    /// `--sample`: which connections the kernel copies.
    pub sampling: SampleConfig,
    /// Filters and rate limits.
    pub policy: ExchangePolicy,
    /// What is redacted, with which key.
    pub redaction: RedactConfig,
}

enum Msg {
    Segments(Vec<Segment>, u64),
    Tick(u64),
}

/// What the agent saw, for the exit summary.
pub struct AgentSummary {
    pub kernel: Vec<(Counter, u64)>,
    /// Interfaces attached and forgotten over the run.
    pub links: LinkStats,
    /// Every interface that was watched at some point, by name.
    pub interfaces: Vec<InterfaceStats>,
    pub pipeline: PipelineStats,
    /// TLS probe counters (none without TLS capture).
    pub tls: TlsCounters,
}

impl AgentSummary {
    /// One `key=value` line with every counter, plus the agent's own CPU time and peak RSS.
    pub fn line(&self) -> String {
        let mut parts: Vec<String> = self.kernel.iter().map(|(c, v)| format!("{}={v}", c.name())).collect();
        if !self.tls.kernel.is_empty() {
            parts.extend(self.tls.kernel.iter().map(|(c, v)| format!("{}={v}", c.name())));
            parts.push(format!(
                "tls_libraries={} tls_library_errors={} tls_processes={} tls_process_errors={}",
                self.tls.libraries, self.tls.library_errors, self.tls.processes, self.tls.process_errors
            ));
        }
        parts.extend(self.links.fields().into_iter().map(|(k, v)| format!("{k}={v}")));
        parts.extend(self.pipeline.fields().into_iter().map(|(k, v)| format!("{k}={v}")));
        for iface in &self.interfaces {
            parts.extend(iface.fields().into_iter().map(|(k, v)| format!("{k}={v}")));
        }
        let usage = crate::usage::own();
        parts.push(format!(
            "agent_cpu_user_ms={} agent_cpu_sys_ms={} agent_max_rss_kb={}",
            usage.user_ms, usage.sys_ms, usage.max_rss_kb
        ));
        parts.join(" ")
    }

    /// Kernel counters (classifiers and TLS probes) that mean lost bytes, if any are non-zero.
    pub fn kernel_losses(&self) -> Vec<(&'static str, u64)> {
        let tcp = self.kernel.iter().filter(|(c, v)| c.is_loss() && *v > 0).map(|(c, v)| (c.name(), *v));
        let tls = self.tls.kernel.iter().filter(|(c, v)| c.is_loss() && *v > 0).map(|(c, v)| (c.name(), *v));
        tcp.chain(tls).collect()
    }
}

/// The TLS probes and, with `--tls-lib auto`, the search for libssl in processes;
/// with `--tls-scope listeners`, the search for the processes to probe.
struct TlsCapture {
    probes: TlsProbes,
    discovery: Option<Discovery>,
    /// Scope `listeners`: the watched ports' listening processes.
    listeners: Option<ListenerScan>,
    ports: Vec<u16>,
    scans: u64,
    attach_errors: u64,
    /// Processes whose probing failed (logged once; tried again once they are gone and
    /// their pid is reused).
    failed_processes: HashSet<u32>,
    process_errors: u64,
}

/// Seconds between scans of new processes for libssl (`--tls-lib auto`) and for
/// listeners on watched ports (`--tls-scope listeners`); every `FULL_RESCAN_EVERY`th
/// scan reads every process again (a library loaded late with dlopen).
const TLS_SCAN_INTERVAL: Duration = Duration::from_secs(2);
const FULL_RESCAN_EVERY: u64 = 15;

impl TlsCapture {
    /// Loads the probes and attaches the libraries named (errors are fatal at start);
    /// with `auto`, also every libssl running processes map.
    fn start(kernel: &mut KernelCapture, specs: &[TlsLibSpec], scope: TlsScope, ports: &[u16]) -> anyhow::Result<Option<TlsCapture>> {
        if specs.is_empty() {
            return Ok(None);
        }
        let mut probes = TlsProbes::load(kernel.ebpf_mut(), scope)?;
        let mut discovery = None;
        for spec in specs {
            match spec {
                TlsLibSpec::Path(path) => {
                    probes.attach_library(kernel.ebpf_mut(), path)?;
                }
                TlsLibSpec::Auto => discovery = Some(Discovery::new("/proc")),
            }
        }
        if let Some(d) = &mut discovery {
            for (id, path) in probes.library_ids() {
                d.add_known(id, path);
            }
        }
        let auto = discovery.is_some();
        let listeners = (scope == TlsScope::Listeners).then(|| ListenerScan::new("/proc"));
        let mut tls = TlsCapture {
            probes,
            discovery,
            listeners,
            ports: ports.to_vec(),
            scans: 0,
            attach_errors: 0,
            failed_processes: HashSet::new(),
            process_errors: 0,
        };
        tls.rescan(kernel);
        if auto && tls.probes.library_count() == 0 {
            eprintln!("capture: TLS: no process maps libssl.so yet; looking for new ones every {} s", TLS_SCAN_INTERVAL.as_secs());
        }
        Ok(Some(tls))
    }

    /// The probes' counters, as the summary and `/metrics` show them.
    fn counters(&self) -> TlsCounters {
        TlsCounters {
            kernel: self.probes.counters(),
            libraries: self.probes.library_count() as u64,
            library_errors: self.attach_errors,
            processes: self.probes.processes() as u64,
            process_errors: self.process_errors,
        }
    }

    /// Is there anything to look for in `/proc` from time to time?
    fn scans_proc(&self) -> bool {
        self.discovery.is_some() || self.listeners.is_some()
    }

    /// Probes libssl files of processes not seen before (all processes now and then),
    /// then (scope `listeners`) the processes listening on watched ports.
    fn rescan(&mut self, kernel: &mut KernelCapture) {
        let full = self.scans % FULL_RESCAN_EVERY == 0;
        self.scans += 1;
        if let Some(discovery) = &mut self.discovery {
            for (pid, path) in discovery.scan(full) {
                if let Err(e) = self.probes.attach_library(kernel.ebpf_mut(), &path) {
                    self.attach_errors += 1;
                    warn!("TLS: libssl of process {pid} not probed: {}", crate::error_chain::render(&e));
                }
            }
        }
        let Some(scan) = &mut self.listeners else { return };
        let libraries: HashSet<_> = self.probes.library_ids().into_iter().map(|(id, _)| id).collect();
        let found = scan.scan(&self.ports, &libraries, full);
        let gone = self.probes.detach_gone(kernel.ebpf_mut(), &found.live);
        if gone > 0 {
            info!("TLS: {gone} probed processes are gone, their probes removed");
        }
        self.failed_processes.retain(|pid| found.live.contains(pid));
        for listener in found.listeners {
            if self.failed_processes.contains(&listener.pid) {
                continue;
            }
            for id in listener.libraries {
                match self.probes.attach_process(kernel.ebpf_mut(), listener.pid, id) {
                    Ok(false) => {}
                    Ok(true) => info!(
                        "TLS: probing process {} (listens on port {}) in {}",
                        listener.pid,
                        listener.ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", "),
                        self.probes.library_path(id).map(|p| p.display().to_string()).unwrap_or_default()
                    ),
                    Err(e) => {
                        self.process_errors += 1;
                        self.failed_processes.insert(listener.pid);
                        warn!("TLS: process {} not probed: {}", listener.pid, crate::error_chain::render(&e));
                        break;
                    }
                }
            }
        }
    }
}

/// Runs the agent. `open_outputs` is called once the kernel programs are loaded and
/// attached: a start that cannot capture (not root, no BPF) creates no file.
pub fn run(
    config: AgentConfig,
    open_outputs: impl FnOnce() -> anyhow::Result<Vec<Box<dyn RecordSink>>>,
) -> anyhow::Result<AgentSummary> {
    let mut kernel =
        KernelCapture::load(
            &config.ports,
            config.ring_bytes,
            config.owner_entries,
            config.sampling,
            !config.tls_libs.is_empty(),
            config.attach,
        )?;

    let ctx = RecordContext::new(config.node.clone());
    let mut pipeline = Pipeline::new(config.limits, config.http, ctx, open_outputs()?)
        .with_policy(config.policy)
        .with_redactor(Redactor::new(config.redaction));
    if !config.tls_libs.is_empty() {
        pipeline = pipeline.with_tls(config.limits);
    }
    // The stream log hashes every byte, so nothing is skipped when it is written.
    if config.stream_log.is_none() {
        pipeline = pipeline.with_skipper(Skipper::new(Box::new(kernel.take_skips()?)));
    }
    if let Some(path) = &config.stream_log {
        let file = files::create_new(path, &config.file_options).context("creating the stream log")?;
        pipeline = pipeline.with_stream_digest(Box::new(file));
    }
    if let Some(histograms) = config.metrics.histograms() {
        pipeline = pipeline.with_histograms(histograms);
    }
    let metrics = config.metrics.clone();
    metrics.publish(pipeline.stats());
    for out in pipeline.describe_outputs() {
        eprintln!("capture: writing records to {out}");
    }

    let ring = kernel.take_ring()?;
    let counter_map = Arc::new(kernel.take_counters()?);
    let scraped_map = counter_map.clone();
    metrics.set_kernel_source(Box::new(move || counters::read(&scraped_map)));
    let mut tls = TlsCapture::start(&mut kernel, &config.tls_libs, config.tls_scope, &config.ports)?;
    // Subscribe before listing the links: nothing that happens in between is missed.
    let link_socket = links::subscribe().map_err(KernelError::Links)?;
    let snapshot = links::current_links().map_err(KernelError::Links)?;
    let mut interfaces = WatchedInterfaces::new(config.interfaces.clone());
    let actions = interfaces.watch.on_event(LinkEvent::Snapshot(snapshot));
    let missing: Vec<String> = interfaces.watch.missing_names().iter().map(|p| p.to_string()).collect();
    if !missing.is_empty() {
        return Err(KernelError::NoSuchInterface(missing.join(", ")).into());
    }
    // At start, an attach that failed on a link that still exists is a setup problem
    // (e.g. --attach tcx on a kernel without TCX): say so and stop. Later, such
    // failures are logged and counted, and capture goes on.
    if let Some(e) = interfaces.apply(&mut kernel, actions).into_iter().next() {
        return Err(e.into());
    }
    let waiting: Vec<String> = interfaces.watch.waiting_globs().iter().map(|p| p.to_string()).collect();
    if !waiting.is_empty() {
        eprintln!("capture: waiting for interfaces matching {}", waiting.join(", "));
    }
    metrics.publish_interfaces(interfaces.links.clone(), interfaces.snapshot(&kernel));

    // At most 8 batches of <= 1 MiB wait for the pipeline: ~8 MiB queued.
    let (tx, rx) = sync_channel::<Msg>(8);
    // Emptied batch vectors go back to the reader: no allocation per batch.
    let (back_tx, back_rx) = sync_channel::<Vec<Segment>>(16);
    let worker_metrics = metrics.clone();
    let worker = std::thread::Builder::new()
        .name("capture-pipeline".into())
        .spawn(move || work(pipeline, rx, back_tx, &worker_metrics))
        .context("starting the pipeline thread")?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let ports: Vec<String> = config.ports.iter().map(|p| p.to_string()).collect();
    let names: Vec<String> = kernel.attached().into_iter().map(|(_, n)| n).collect();
    let globs: Vec<String> = config.interfaces.iter().filter(|p| p.is_glob()).map(|p| p.to_string()).collect();
    metrics.health().set_ready(true);
    eprintln!(
        "capture: ready: watching port(s) {} on {}{}",
        ports.join(","),
        if names.is_empty() { "no interface yet".to_string() } else { names.join(",") },
        if globs.is_empty() { String::new() } else { format!(" (and interfaces matching {} as they appear)", globs.join(", ")) }
    );
    let read_result = runtime.block_on(async {
        let monitor = LinkMonitor::new(link_socket).context("registering the link socket with the reactor")?;
        read_loop(ring, tx, back_rx, config.duration, monitor, &mut kernel, &mut interfaces, &metrics, tls.as_mut()).await
    });
    metrics.health().set_ready(false);
    let pipeline_stats = worker.join().map_err(|_| anyhow::anyhow!("pipeline thread panicked"))?;
    let kernel_counters = counters::read(&counter_map);
    let tls_counters = tls.as_ref().map(TlsCapture::counters);
    if let Some(counters) = &tls_counters {
        metrics.publish_tls(counters.clone());
    }
    let (links, interface_stats) = interfaces.finish(&mut kernel);
    metrics.publish_interfaces(links.clone(), interface_stats.clone());
    drop(tls);
    drop(kernel);
    read_result?;
    Ok(AgentSummary {
        kernel: kernel_counters,
        links,
        interfaces: interface_stats,
        pipeline: pipeline_stats,
        tls: tls_counters.unwrap_or_default(),
    })
}

async fn read_loop(
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    tx: std::sync::mpsc::SyncSender<Msg>,
    spare: Receiver<Vec<Segment>>,
    duration: Option<Duration>,
    monitor: LinkMonitor,
    kernel: &mut KernelCapture,
    interfaces: &mut WatchedInterfaces,
    metrics: &AgentMetrics,
    mut tls: Option<&mut TlsCapture>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut reader = RingReader::new(ring).context("registering the ring buffer with the reactor")?;
    // None after the link socket failed: capture goes on with what is attached.
    let mut monitor = Some(monitor);
    let mut link_events = Vec::new();
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut tls_scan = tokio::time::interval(TLS_SCAN_INTERVAL);
    tls_scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                if metrics.is_served() {
                    metrics.publish_interfaces(interfaces.links.clone(), interfaces.snapshot(kernel));
                    if let Some(t) = tls.as_deref() {
                        metrics.publish_tls(t.counters());
                    }
                }
                continue;
            }
            r = async { monitor.as_ref().expect("guarded").readable().await }, if monitor.is_some() => {
                let result = r.and_then(|()| monitor.as_mut().expect("guarded").read_events(&mut link_events));
                match result {
                    Ok((n, resynced)) => {
                        interfaces.links.link_events += n;
                        interfaces.links.link_resyncs += resynced as u64;
                    }
                    Err(e) => {
                        warn!("link notifications failed, interfaces that appear from now on are not attached: {e}");
                        monitor = None;
                    }
                }
                for event in link_events.drain(..) {
                    interfaces.on_event(kernel, event);
                }
            }
            _ = tls_scan.tick(), if tls.as_ref().is_some_and(|t| t.scans_proc()) => {
                if let Some(t) = tls.as_deref_mut() {
                    t.rescan(kernel);
                }
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

fn work(
    mut pipeline: Pipeline,
    rx: Receiver<Msg>,
    spare: std::sync::mpsc::SyncSender<Vec<Segment>>,
    metrics: &AgentMetrics,
) -> PipelineStats {
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Segments(mut segments, decode_errors) => {
                pipeline.decode_errors += decode_errors;
                for seg in segments.drain(..) {
                    pipeline.on_segment(seg);
                }
                pipeline.end_batch();
                let _ = spare.try_send(segments);
            }
            Msg::Tick(now) => {
                pipeline.on_tick(now);
                metrics.publish(pipeline.stats());
            }
        }
    }
    pipeline.shutdown(clock_ns(libc::CLOCK_MONOTONIC));
    let stats = pipeline.stats();
    metrics.publish(stats.clone());
    stats
}
