//! The burn-collective engine of [`GradientSync`]: ranks as threads of one process (its local
//! collective), or as processes on one or many machines (its global collective: an
//! orchestrator that rank 0 starts, and a peer-to-peer data service per rank, over websockets).
//!
//! burn-collective's calls block, and some of its failures (a peer that vanished) panic inside
//! its runtime or never return. Every call therefore runs on a thread of its own that this
//! wrapper waits on with a timeout: a failure or a silent peer becomes an error naming the rank
//! and what it waited for, not a hang.
use std::{
    str::FromStr,
    sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender},
    time::Duration,
};

use anyhow::{bail, Context};
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_collective::{AllReduceStrategy, CollectiveConfig, PeerId, ReduceOperation};

use super::{launch::split_host_port, GradientSync};

/// The backend of the exchanged buffers: host memory, whatever the model trains on.
type Buf = burn::backend::Flex;

enum Job {
    Reduce(Vec<f32>),
    Finish,
}

/// One rank's connection to the others through burn-collective.
pub struct Collective {
    rank: usize,
    jobs: Sender<Job>,
    results: Receiver<anyhow::Result<Vec<f32>>>,
    timeout: Duration,
    /// Where the peers are, for messages.
    what: String,
    broken: bool,
}

/// How the ranks of a multi-process group find each other.
#[derive(Clone, Debug)]
pub struct Global {
    /// `HOST:PORT` of the orchestrator (rank 0 starts it on PORT, on every interface).
    pub coordinator: String,
    /// This rank's data service: the host peers reach it at, and the port it listens on.
    pub node_host: String,
    pub data_port: u16,
}

impl Collective {
    /// Rank `rank` of `world` threads of this process (burn-collective's local collective).
    pub fn local(rank: usize, world: usize, timeout: Duration) -> anyhow::Result<Self> {
        let config = CollectiveConfig::default()
            .with_num_devices(world)
            .with_local_all_reduce_strategy(AllReduceStrategy::Tree(2));
        Self::start(
            rank,
            config,
            timeout,
            format!("{world} threads of this process"),
        )
    }

    /// Rank `rank` of `world` processes; rank 0 starts the orchestrator first.
    pub fn global(
        rank: usize,
        world: usize,
        g: &Global,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let (host, port) = split_host_port(&g.coordinator)?;
        if rank == 0 {
            start_orchestrator(port)?;
        }
        ensure_port_free(g.data_port, "this rank's data service")?;
        let node = format!("ws://{}:{}", g.node_host, g.data_port);
        let config = CollectiveConfig::default()
            .with_num_devices(1)
            .with_num_nodes(world as u32)
            .with_global_address(parse_address(&format!("ws://{host}:{port}"))?)
            .with_node_address(parse_address(&node)?)
            .with_data_service_port(g.data_port)
            .with_global_all_reduce_strategy(AllReduceStrategy::Tree(2));
        Self::start(
            rank,
            config,
            timeout,
            format!("{world} ranks, coordinator {}", g.coordinator),
        )
    }

    /// Registers on a thread of its own (it blocks until every rank has registered), which
    /// then serves this rank's all-reduces.
    fn start(
        rank: usize,
        config: CollectiveConfig,
        timeout: Duration,
        what: String,
    ) -> anyhow::Result<Self> {
        let (jobs, job_rx) = channel::<Job>();
        let (res_tx, results) = channel::<anyhow::Result<Vec<f32>>>();
        std::thread::Builder::new()
            .name(format!("collective-{rank}"))
            .spawn(move || serve(rank, config, job_rx, res_tx))
            .context("starting the collective thread")?;
        let mut c = Collective {
            rank,
            jobs,
            results,
            timeout,
            what,
            broken: false,
        };
        c.wait("every rank to register (are all ranks started, with the same --world-size and --coordinator?)")
            .with_context(|| format!("rank {rank}: joining the group of {}", c.what))?;
        tracing::info!(rank, group = %c.what, "joined the data-parallel group");
        Ok(c)
    }

    fn wait(&mut self, what: &str) -> anyhow::Result<Vec<f32>> {
        match self.results.recv_timeout(self.timeout) {
            Ok(r) => r.inspect_err(|_| self.broken = true),
            Err(RecvTimeoutError::Timeout) => {
                self.broken = true;
                bail!(
                    "no answer within {} s while waiting for {what}: a peer is gone, hung or much \
                     slower (raise --dist-timeout if rank 0's evaluation takes longer)",
                    self.timeout.as_secs()
                )
            }
            Err(RecvTimeoutError::Disconnected) => {
                self.broken = true;
                bail!("the collective engine stopped (a peer failed; see its panic message above)")
            }
        }
    }
}

impl GradientSync for Collective {
    fn all_reduce_mean(&mut self, buf: &mut [f32]) -> anyhow::Result<()> {
        anyhow::ensure!(!self.broken, "rank {}: the group failed earlier", self.rank);
        self.jobs
            .send(Job::Reduce(buf.to_vec()))
            .map_err(|_| anyhow::anyhow!("the collective thread is gone"))?;
        let out = self
            .wait("the other ranks' gradients")
            .with_context(|| format!("rank {} ({})", self.rank, self.what))?;
        anyhow::ensure!(
            out.len() == buf.len(),
            "the all-reduce returned {} values for {}",
            out.len(),
            buf.len()
        );
        buf.copy_from_slice(&out);
        Ok(())
    }

    /// Leaves the group; a peer that already left (or an orchestrator that stopped) is not an
    /// error any more: the work is done.
    fn finish(&mut self) -> anyhow::Result<()> {
        if self.broken {
            return Ok(());
        }
        if self.jobs.send(Job::Finish).is_ok() {
            match self.results.recv_timeout(Duration::from_secs(5)) {
                Ok(Err(e)) => tracing::debug!("leaving the group: {e:#}"),
                Err(e) => tracing::debug!("leaving the group: {e}"),
                Ok(Ok(_)) => {}
            }
        }
        self.broken = true;
        Ok(())
    }
}

/// The collective thread: registers, then answers jobs until finished.
fn serve(
    rank: usize,
    config: CollectiveConfig,
    jobs: Receiver<Job>,
    results: Sender<anyhow::Result<Vec<f32>>>,
) {
    let id = PeerId::from(rank);
    let device = Default::default();
    let registered = burn_collective::register::<Buf>(id, device, config)
        .map(|_| Vec::new())
        .map_err(|e| anyhow::anyhow!("burn-collective register: {e:?}"));
    let ok = registered.is_ok();
    if results.send(registered).is_err() || !ok {
        return;
    }
    while let Ok(job) = jobs.recv() {
        match job {
            Job::Reduce(v) => {
                let n = v.len();
                let t = Tensor::<Buf, 1>::from_data(TensorData::new(v, [n]), &Default::default())
                    .into_primitive()
                    .tensor();
                let r = burn_collective::all_reduce::<Buf>(id, t, ReduceOperation::Mean)
                    .map_err(|e| anyhow::anyhow!("burn-collective all-reduce: {e:?}"))
                    .and_then(|r| {
                        Tensor::<Buf, 1>::from_primitive(TensorPrimitive::Float(r))
                            .into_data()
                            .convert::<f32>()
                            .into_vec::<f32>()
                            .map_err(|e| anyhow::anyhow!("{e:?}"))
                    });
                if results.send(r).is_err() {
                    return;
                }
            }
            Job::Finish => {
                let r = burn_collective::finish_collective::<Buf>(id)
                    .map(|_| Vec::new())
                    .map_err(|e| anyhow::anyhow!("burn-collective finish: {e:?}"));
                let _ = results.send(r);
                return;
            }
        }
    }
}

fn parse_address(s: &str) -> anyhow::Result<burn_communication::Address> {
    burn_communication::Address::from_str(s).map_err(|e| anyhow::anyhow!("address `{s}`: {e}"))
}

/// burn-communication's servers bind every interface (0.0.0.0); a port taken there would fail
/// inside its runtime with only a log line, so try it first.
fn ensure_port_free(port: u16, what: &str) -> anyhow::Result<()> {
    std::net::TcpListener::bind(("0.0.0.0", port))
        .map(drop)
        .with_context(|| format!("port {port} for {what} is not free"))
}

/// Rank 0: the orchestrator, on a runtime and thread of its own for the life of the process.
/// It ignores SIGINT (the trainer handles that, checkpointing first).
fn start_orchestrator(port: u16) -> anyhow::Result<()> {
    ensure_port_free(port, "the coordinator (rank 0's orchestrator)")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the orchestrator's runtime")?;
    std::thread::Builder::new()
        .name("orchestrator".into())
        .spawn(move || {
            rt.block_on(burn_collective::start_global_orchestrator_until(
                port,
                std::future::pending(),
            ))
        })
        .context("starting the orchestrator thread")?;
    Ok(())
}
