//! Where this process sits in a multi-process run: from `run --world-size N --rank R
//! --coordinator HOST:PORT`, or torchrun's variables (WORLD_SIZE, RANK, MASTER_ADDR,
//! MASTER_PORT); flags win over variables.
use std::time::Duration;

use anyhow::{bail, Context};

use super::Dist;

/// A resolved launch of one rank.
#[derive(Clone, Debug, PartialEq)]
pub struct Launch {
    pub world_size: usize,
    pub rank: usize,
    /// `HOST:PORT` of rank 0's orchestrator.
    pub coordinator: String,
    /// The host other ranks reach this one at.
    pub node_host: String,
    /// This rank's data-service port (default: the coordinator's port + 1 + rank).
    pub data_port: u16,
    /// How long to wait for the peers at any point (joining, each all-reduce).
    pub timeout: Duration,
}

/// What the command line said (all optional).
#[derive(Clone, Debug, Default)]
pub struct LaunchArgs {
    pub world_size: Option<usize>,
    pub rank: Option<usize>,
    pub coordinator: Option<String>,
    /// `HOST` or `HOST:PORT` of this rank's data service.
    pub node_address: Option<String>,
    pub timeout_s: u64,
}

impl LaunchArgs {
    /// The launch, or `None` for a single process (no world size, or 1).
    pub fn resolve(&self, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<Launch>> {
        let num =
            |flag: Option<usize>, var: &str| -> anyhow::Result<Option<usize>> {
                match (flag, env(var)) {
                    (Some(v), _) => Ok(Some(v)),
                    (None, Some(s)) => s.trim().parse().map(Some).with_context(|| {
                        format!("environment variable {var}=`{s}` is not a number")
                    }),
                    (None, None) => Ok(None),
                }
            };
        let world = num(self.world_size, "WORLD_SIZE")?;
        let rank = num(self.rank, "RANK")?;
        let world = match (world, rank) {
            (None | Some(1), None | Some(0)) => return Ok(None),
            (None, Some(r)) => {
                bail!("rank {r} given without a world size (--world-size or WORLD_SIZE)")
            }
            (Some(0), _) => bail!("--world-size must be at least 1"),
            (Some(w), _) => w,
        };
        let rank = rank.context("--world-size > 1 needs this process's --rank (or RANK)")?;
        anyhow::ensure!(
            rank < world,
            "--rank {rank} is out of range for --world-size {world} (ranks are 0..{world})"
        );
        let coordinator = match (&self.coordinator, env("MASTER_ADDR"), env("MASTER_PORT")) {
            (Some(c), _, _) => c.clone(),
            (None, Some(a), Some(p)) => format!("{a}:{p}"),
            _ => bail!(
                "--world-size > 1 needs --coordinator HOST:PORT (rank 0's address), or \
                 MASTER_ADDR and MASTER_PORT"
            ),
        };
        let (chost, cport) = split_host_port(&coordinator)?;
        let (node_host, data_port) = match &self.node_address {
            Some(a) if a.contains(':') => split_host_port(a)?,
            Some(h) => (h.clone(), default_port(cport, rank)?),
            None => (
                local_host_towards(&chost, cport)?,
                default_port(cport, rank)?,
            ),
        };
        Ok(Some(Launch {
            world_size: world,
            rank,
            coordinator,
            node_host,
            data_port,
            timeout: Duration::from_secs(self.timeout_s.max(1)),
        }))
    }
}

fn default_port(coordinator_port: u16, rank: usize) -> anyhow::Result<u16> {
    u16::try_from(coordinator_port as usize + 1 + rank).with_context(|| {
        format!("the default data port {coordinator_port} + 1 + rank {rank} is past 65535: give --node-address HOST:PORT")
    })
}

/// `HOST:PORT` into its parts.
pub fn split_host_port(s: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = s
        .rsplit_once(':')
        .with_context(|| format!("`{s}` is not HOST:PORT"))?;
    let port = port
        .parse::<u16>()
        .with_context(|| format!("`{s}`: `{port}` is not a port number"))?;
    anyhow::ensure!(!host.is_empty(), "`{s}`: the host is empty");
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

/// The address of the interface this machine reaches `host` through (loopback for a loopback
/// coordinator): what the other ranks will reach this one at. No packet is sent.
fn local_host_towards(host: &str, port: u16) -> anyhow::Result<String> {
    use std::net::{ToSocketAddrs, UdpSocket};
    let target = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve the coordinator host `{host}`"))?
        .next()
        .with_context(|| format!("the coordinator host `{host}` has no address"))?;
    if target.ip().is_loopback() {
        return Ok(target.ip().to_string());
    }
    let sock = UdpSocket::bind(("0.0.0.0", 0)).context("finding this machine's address")?;
    sock.connect(target)
        .with_context(|| format!("no route to the coordinator {host}:{port}"))?;
    Ok(sock.local_addr()?.ip().to_string())
}

impl Launch {
    /// Joins the group (rank 0 starts the orchestrator first).
    pub fn connect(&self) -> anyhow::Result<Dist> {
        #[cfg(feature = "distributed")]
        {
            let engine = super::collective::Collective::global(
                self.rank,
                self.world_size,
                &super::collective::Global {
                    coordinator: self.coordinator.clone(),
                    node_host: self.node_host.clone(),
                    data_port: self.data_port,
                },
                self.timeout,
            )?;
            Ok(Dist::new(self.rank, self.world_size, Box::new(engine)))
        }
        #[cfg(not(feature = "distributed"))]
        bail!("this peft-host was built without the `distributed` feature: rebuild with it to run on several ranks")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn single_process_without_a_world() {
        let a = LaunchArgs::default();
        assert_eq!(a.resolve(env(&[])).unwrap(), None);
        assert_eq!(
            a.resolve(env(&[("WORLD_SIZE", "1"), ("RANK", "0")]))
                .unwrap(),
            None
        );
    }

    #[test]
    fn torchrun_variables_and_flags() {
        let a = LaunchArgs {
            timeout_s: 30,
            ..Default::default()
        };
        let l = a
            .resolve(env(&[
                ("WORLD_SIZE", "4"),
                ("RANK", "2"),
                ("MASTER_ADDR", "127.0.0.1"),
                ("MASTER_PORT", "29500"),
            ]))
            .unwrap()
            .unwrap();
        assert_eq!((l.world_size, l.rank, l.data_port), (4, 2, 29503));
        assert_eq!(l.coordinator, "127.0.0.1:29500");
        assert_eq!(l.node_host, "127.0.0.1");
        let flags = LaunchArgs {
            world_size: Some(2),
            rank: Some(1),
            coordinator: Some("localhost:4000".into()),
            node_address: Some("10.0.0.7:5000".into()),
            timeout_s: 30,
        };
        let l = flags.resolve(env(&[("WORLD_SIZE", "8")])).unwrap().unwrap();
        assert_eq!((l.world_size, l.rank), (2, 1), "flags win over variables");
        assert_eq!((l.node_host.as_str(), l.data_port), ("10.0.0.7", 5000));
    }

    #[test]
    fn bad_launches_are_named() {
        let err = |a: LaunchArgs| format!("{:#}", a.resolve(env(&[])).unwrap_err());
        let w = |w, r: Option<usize>| LaunchArgs {
            world_size: Some(w),
            rank: r,
            coordinator: Some("127.0.0.1:1234".into()),
            ..Default::default()
        };
        assert!(err(w(2, Some(2))).contains("out of range"));
        assert!(err(w(2, None)).contains("--rank"));
        let mut no_coord = w(2, Some(0));
        no_coord.coordinator = None;
        assert!(err(no_coord).contains("--coordinator"));
        let mut bad = w(2, Some(0));
        bad.coordinator = Some("nohost".into());
        assert!(err(bad).contains("HOST:PORT"));
        let e = LaunchArgs::default()
            .resolve(env(&[("RANK", "1")]))
            .unwrap_err();
        assert!(format!("{e}").contains("world size"));
        let e = LaunchArgs::default()
            .resolve(env(&[("WORLD_SIZE", "two")]))
            .unwrap_err();
        assert!(format!("{e}").contains("WORLD_SIZE"));
    }
}
