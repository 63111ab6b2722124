//! Data-parallel training (host/src/dist/): N ranks, each on its share of every batch with the
//! gradients averaged by burn-collective, equal one process on the combined batch.
//! - in one process: two threads (burn-collective's local collective), tiny BERT;
//! - two processes of the real binary on loopback (its global collective: orchestrator and
//!   peer-to-peer data service over websockets), MiniLM + LoRA on SST-2, inside a network
//!   namespace with only loopback when `unshare -rn` works (burn-collective binds 0.0.0.0);
//! - ranks started with different seeds or configs refuse to train, naming why.
//!
//! Dropout is off: with it, N ranks draw other masks than one process (equal in distribution,
//! not in value).
#![cfg(feature = "distributed")]

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use peft_host::{
    config::RunConfig,
    data,
    dist::{collective::Collective, Dist},
    model::Model,
    train,
};
use peft_registry::Registry;

type B = peft_host::device::Cpu;

fn shared() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared");
    assert!(p.is_dir(), "expected the shared folder at {}", p.display());
    p
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// A small random-init BERT, dropout off.
fn tiny_bert_config(modules: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "backbone": {"name": "tiny-bert", "architecture": "bert", "config": {
            "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 64, "max_position_embeddings": 128,
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0
        }},
        "modules": modules,
    })
}

fn max_tensor_diff(a: &Path, b: &Path) -> f64 {
    use peft_host::backbone::weights::Checkpoint;
    let (a, b) = (Checkpoint::read(a).unwrap(), Checkpoint::read(b).unwrap());
    assert_eq!(
        a.tensors.keys().collect::<Vec<_>>(),
        b.tensors.keys().collect::<Vec<_>>()
    );
    a.tensors
        .iter()
        .flat_map(|(k, (_, x))| {
            x.iter()
                .zip(&b.tensors[k].1)
                .map(|(p, q)| (p - q).abs() as f64)
        })
        .fold(0.0, f64::max)
}

/// The largest difference allowed between the losses and weights of N ranks and one process:
/// the mean of two half-batch gradients differs from the full-batch one by float rounding only.
/// (With AdamW and LoRA the trained weights differ more, ~1e-4 at lr 5e-3: Adam divides by
/// sqrt(v), so near-zero gradients, LoRA's A while B is still ~0, turn rounding into a visible
/// fraction of a step; the two-process test uses SGD with momentum, the in-process one AdamW.)
const TOL: f64 = 1e-5;

fn trainable(model: &Model<B>) -> BTreeMap<String, Vec<f32>> {
    let store = model.params.borrow();
    store
        .trainable()
        .map(|p| {
            let v: Result<Vec<f32>, peft_api::ApiError> =
                peft_host::by_rank!(p.shape.len(), |D| Ok(peft_host::nn::value::ft::<B, D>(
                    p.value.clone()
                )
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .unwrap()));
            (p.name.clone(), v.unwrap())
        })
        .collect()
}

fn max_weight_diff(a: &BTreeMap<String, Vec<f32>>, b: &BTreeMap<String, Vec<f32>>) -> f64 {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter()
        .flat_map(|(k, x)| x.iter().zip(&b[k]).map(|(p, q)| (p - q).abs() as f64))
        .fold(0.0, f64::max)
}

fn max_loss_diff(a: &[(usize, f64)], b: &[(usize, f64)]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            assert_eq!(x.0, y.0);
            (x.1 - y.1).abs()
        })
        .fold(0.0, f64::max)
}

/// Runs `run` in one process and as two ranks (threads), asserts equal losses, weights and
/// rank 0's evaluations, and returns the ranks' results.
fn compare_on_two_threads<F>(what: &str, run: &F) -> Vec<(train::TrainReport, Weights)>
where
    F: Fn(Dist) -> (train::TrainReport, Weights) + Sync,
{
    let (single, w1) = run(Dist::single());
    let ranks: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|rank| {
                s.spawn(move || {
                    let engine = Collective::local(rank, 2, Duration::from_secs(120)).unwrap();
                    let dist = Dist::new(rank, 2, Box::new(engine));
                    let r = run(dist.clone());
                    dist.finish().unwrap();
                    r
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (rank, (report, w)) in ranks.iter().enumerate() {
        let dl = max_loss_diff(&single.losses, &report.losses);
        let dw = max_weight_diff(&w1, w);
        println!(
            "{what}: rank {rank}: max |loss - single| {dl:.2e}, max |weight - single| {dw:.2e}"
        );
        assert!(dl <= TOL, "{what}: rank {rank}: losses differ by {dl}");
        assert!(dw <= TOL, "{what}: rank {rank}: weights differ by {dw}");
        assert_eq!(report.batches_per_task, single.batches_per_task);
    }
    let (e0, e1) = (&ranks[0].0.evaluations, &single.evaluations);
    assert!(!e1.is_empty() && e0.len() == e1.len());
    for (a, b) in e0.iter().zip(e1) {
        assert_eq!(
            (a.step, a.score),
            (b.step, b.score),
            "{what}: rank 0 evaluates as one process"
        );
        assert!((a.loss - b.loss).abs() <= TOL, "{} vs {}", a.loss, b.loss);
    }
    ranks
}

type Weights = BTreeMap<String, Vec<f32>>;

#[test]
fn two_threads_equal_one_process_on_the_combined_batch() {
    let mut cfg = tiny_bert_config(serde_json::json!([{ "plugin": "houlsby" }]));
    cfg["training"] = serde_json::json!({ "steps": 8, "batch_size": 8, "learning_rate": 1e-2,
        "max_length": 24, "gradient_accumulation": 2, "max_grad_norm": 1.0 });
    let cfg: RunConfig = serde_json::from_value(cfg).unwrap();
    let data_dir = shared().join("data");
    let task = data::load_task(&data_dir, "glue-sst2", 64, 16, 13, 5).unwrap();
    let run = |dist: Dist| {
        let registry = Registry::with_static_plugins().unwrap();
        let model =
            Model::<B>::build(&cfg, &registry, &Default::default(), task.labels.len()).unwrap();
        let opts = train::TrainOptions {
            dist,
            ..Default::default()
        };
        let report = train::train_with(&model, &task, &cfg, &Default::default(), &opts).unwrap();
        (report, trainable(&model))
    };
    let ranks = compare_on_two_threads("one task, accumulation, clipping", &run);
    assert!(
        ranks[1].0.evaluations.is_empty(),
        "rank 1 does not evaluate"
    );

    // Two tasks in mixed batches: a rank's half of a batch may lack a task, whose head then
    // gets its gradient from the other rank only (the presence flags).
    let mut mixed = tiny_bert_config(serde_json::json!([{ "plugin": "houlsby" }]));
    mixed["tasks"] = serde_json::json!([{ "name": "glue-sst2" }, { "name": "glue/rte" }]);
    mixed["training"] = serde_json::json!({ "steps": 6, "batch_size": 4, "learning_rate": 1e-2,
        "max_length": 24, "mixed_batches": true });
    let mixed: RunConfig = serde_json::from_value(mixed).unwrap();
    let tasks: Vec<_> = ["glue-sst2", "glue/rte"]
        .iter()
        .map(|n| data::load_task(&data_dir, n, 32, 8, 13, 5).unwrap())
        .collect();
    let run_mixed = |dist: Dist| {
        let registry = Registry::with_static_plugins().unwrap();
        let model = Model::<B>::build(&mixed, &registry, &Default::default(), 0).unwrap();
        let runs: Vec<_> = tasks
            .iter()
            .zip(mixed.task_specs())
            .map(|(task, spec)| {
                let prefix = format!("head.{}", task.name.replace(['/', '.'], "-"));
                let head = peft_host::heads::Head::resolve(&spec, task, &prefix).unwrap();
                head.create(&mut model.params.borrow_mut(), model.info().hidden_size)
                    .unwrap();
                train::TaskRun { task, head }
            })
            .collect();
        let opts = train::TrainOptions {
            dist,
            ..Default::default()
        };
        let report = train::train_tasks(&model, &runs, &mixed, &Default::default(), &opts).unwrap();
        (report, trainable(&model))
    };
    let ranks = compare_on_two_threads("two tasks, mixed batches", &run_mixed);
    assert_eq!(ranks[0].0.batches_per_task.values().sum::<usize>(), 6 * 4);

    // Ranks whose models differ (another seed) under the same config refuse to start.
    let errors: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|rank| {
                let cfg = &cfg;
                s.spawn(move || {
                    let mut own = cfg.clone();
                    own.seed = 100 + rank as u64;
                    let registry = Registry::with_static_plugins().unwrap();
                    let model = Model::<B>::build(&own, &registry, &Default::default(), 2).unwrap();
                    model.set_trainable(&cfg.training.train_groups).unwrap();
                    let engine = Collective::local(rank, 2, Duration::from_secs(120)).unwrap();
                    let dist = Dist::new(rank, 2, Box::new(engine));
                    let e = dist.check_start(cfg, &model.params.borrow()).unwrap_err();
                    dist.finish().unwrap();
                    format!("{e:#}")
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for e in errors {
        assert!(e.contains("start from different weights"), "{e}");
    }
}

fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// Whether this sandbox can make a network namespace with only loopback.
fn have_netns() -> bool {
    Command::new("unshare")
        .args(["-rn", "sh", "-c", "ip link set lo up"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

struct Rank {
    code: Option<i32>,
    output: String,
}

/// Starts one `peft-host run` per argument list, all at once (inside one loopback-only network
/// namespace when possible), and waits for all of them.
fn run_ranks(args: &[Vec<String>], dir: &Path) -> Vec<Rank> {
    let bin = env!("CARGO_BIN_EXE_peft-host");
    let q = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut script = String::from("set -u\n");
    if have_netns() {
        script.push_str("ip link set lo up\n");
    }
    for (i, a) in args.iter().enumerate() {
        let log = dir.join(format!("rank{i}.log"));
        let rc = dir.join(format!("rank{i}.rc"));
        let cmd: Vec<String> = std::iter::once(q(bin))
            .chain(a.iter().map(|s| q(s)))
            .collect();
        script.push_str(&format!(
            "({} > {} 2>&1; echo $? > {}) &\n",
            cmd.join(" "),
            q(log.to_str().unwrap()),
            q(rc.to_str().unwrap())
        ));
    }
    script.push_str("wait\n");
    let status = if have_netns() {
        Command::new("unshare")
            .args(["-rn", "sh", "-c", &script])
            .status()
    } else {
        eprintln!("unshare -rn is not available: the ranks listen on every interface meanwhile");
        Command::new("sh").args(["-c", &script]).status()
    }
    .unwrap();
    assert!(status.success());
    (0..args.len())
        .map(|i| Rank {
            code: std::fs::read_to_string(dir.join(format!("rank{i}.rc")))
                .ok()
                .and_then(|s| s.trim().parse().ok()),
            output: std::fs::read_to_string(dir.join(format!("rank{i}.log"))).unwrap_or_default(),
        })
        .collect()
}

fn base_args(cfg: &Path, out: &Path) -> Vec<String> {
    let data = shared().join("data");
    [
        "run",
        cfg.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]
    .map(String::from)
    .to_vec()
}

fn rank_args(cfg: &Path, out: &Path, rank: usize, ports: &[u16], timeout: u64) -> Vec<String> {
    let mut a = base_args(cfg, out);
    a.extend([
        "--world-size".into(),
        "2".into(),
        "--rank".into(),
        rank.to_string(),
        "--coordinator".into(),
        format!("127.0.0.1:{}", ports[0]),
        "--node-address".into(),
        format!("127.0.0.1:{}", ports[1 + rank]),
        "--dist-timeout".into(),
        timeout.to_string(),
    ]);
    a
}

fn run_dir(out: &Path) -> PathBuf {
    std::fs::read_dir(out)
        .unwrap_or_else(|e| panic!("{}: {e}", out.display()))
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .expect("run folder")
}

fn losses(out: &Path) -> Vec<(usize, f64)> {
    let r = read_json(&run_dir(out).join("result.json"));
    r["report"]["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x[0].as_u64().unwrap() as usize, x[1].as_f64().unwrap()))
        .collect()
}

/// MiniLM as installed, with dropout off (its config.json says 0.1).
fn minilm_without_dropout(dir: &Path) -> PathBuf {
    let src = peft_host::model::model_dirs()
        .into_iter()
        .map(|d| d.join("all-MiniLM-L6-v2"))
        .find(|d| d.join("model.safetensors").exists())
        .expect("all-MiniLM-L6-v2 is not installed: run scripts/setup.sh")
        .canonicalize()
        .unwrap();
    let dst = dir.join("minilm-no-dropout");
    std::fs::create_dir_all(&dst).unwrap();
    let mut c = read_json(&src.join("config.json"));
    c["hidden_dropout_prob"] = 0.0.into();
    c["attention_probs_dropout_prob"] = 0.0.into();
    std::fs::write(dst.join("config.json"), c.to_string()).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::os::unix::fs::symlink(src.join(f), dst.join(f)).unwrap();
    }
    dst
}

#[test]
fn two_processes_on_loopback_equal_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let backbone = minilm_without_dropout(tmp.path());
    let cfg = tmp.path().join("run.json");
    let config = serde_json::json!({
        "backbone": { "path": backbone },
        "modules": [{ "plugin": "lora" }],
        "task": { "name": "glue-sst2", "train_examples": 64, "eval_examples": 32 },
        "training": { "steps": 5, "batch_size": 8, "learning_rate": 0.05, "max_length": 32,
                      "optimizer": "sgd", "momentum": 0.9, "checkpoint_every": 0 },
        "seed": 3
    });
    std::fs::write(&cfg, config.to_string()).unwrap();
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));

    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_peft-host"))
        .args(base_args(&cfg, &one))
        .output()
        .unwrap();
    let single_s = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ports = free_ports(3);
    let t = Instant::now();
    let ranks = run_ranks(
        &[
            rank_args(&cfg, &two, 0, &ports, 300),
            rank_args(&cfg, &two, 1, &ports, 300),
        ],
        tmp.path(),
    );
    let pair_s = t.elapsed().as_secs_f64();
    for (i, r) in ranks.iter().enumerate() {
        assert_eq!(r.code, Some(0), "rank {i} failed:\n{}", r.output);
    }
    assert!(ranks[1].output.contains("rank 1 of 2: trained 5 steps"));

    let (l1, l2) = (losses(&one), losses(&two));
    let dl = max_loss_diff(&l1, &l2);
    let dw = max_tensor_diff(
        &run_dir(&one).join("adapter/adapter.safetensors"),
        &run_dir(&two).join("adapter/adapter.safetensors"),
    );
    println!("losses one process: {l1:?}\nlosses two ranks:   {l2:?}");
    println!(
        "max |loss diff| {dl:.2e}, max |weight diff| {dw:.2e}; wall time (incl. start, load, eval): \
         one process {single_s:.1} s, two ranks {pair_s:.1} s"
    );
    assert!(dl <= TOL, "losses differ by {dl}");
    assert!(dw <= TOL, "trained weights differ by {dw}");
    let files: Vec<_> = std::fs::read_dir(&two).unwrap().collect();
    assert_eq!(files.len(), 1, "only rank 0 writes a run folder");
}

#[test]
fn ranks_with_different_weights_or_configs_refuse_to_train() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, seed: u64, steps: usize| {
        let mut c = tiny_bert_config(serde_json::json!([{ "plugin": "houlsby" }]));
        c["task"] =
            serde_json::json!({ "name": "glue-sst2", "train_examples": 32, "eval_examples": 8 });
        c["training"] = serde_json::json!({ "steps": steps, "batch_size": 4, "max_length": 16 });
        c["seed"] = seed.into();
        let p = tmp.path().join(name);
        std::fs::write(&p, c.to_string()).unwrap();
        p
    };
    let (a, b, c) = (
        write("a.json", 1, 3),
        write("b.json", 2, 3),
        write("c.json", 1, 4),
    );
    let out = tmp.path().join("out");
    // Another seed, another step count.
    for other in [&b, &c] {
        let ports = free_ports(3);
        let ranks = run_ranks(
            &[
                rank_args(&a, &out, 0, &ports, 60),
                rank_args(other, &out, 1, &ports, 60),
            ],
            tmp.path(),
        );
        for (i, r) in ranks.iter().enumerate() {
            assert_ne!(r.code, Some(0), "rank {i} trained:\n{}", r.output);
            assert!(
                r.output.contains("started with different run configs"),
                "rank {i}:\n{}",
                r.output
            );
        }
    }
    // Same config, batch not divisible.
    let odd = {
        let mut c = read_json(&a);
        c["training"]["batch_size"] = 3.into();
        let p = tmp.path().join("odd.json");
        std::fs::write(&p, c.to_string()).unwrap();
        p
    };
    let ports = free_ports(3);
    let ranks = run_ranks(
        &[
            rank_args(&odd, &out, 0, &ports, 60),
            rank_args(&odd, &out, 1, &ports, 60),
        ],
        tmp.path(),
    );
    for r in &ranks {
        assert_ne!(r.code, Some(0));
        assert!(
            r.output.contains("does not split over 2 ranks"),
            "{}",
            r.output
        );
    }
}

#[test]
fn a_rank_without_peers_gives_up_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = tiny_bert_config(serde_json::json!([{ "plugin": "houlsby" }]));
    c["task"] =
        serde_json::json!({ "name": "glue-sst2", "train_examples": 32, "eval_examples": 8 });
    c["training"] = serde_json::json!({ "steps": 3, "batch_size": 4, "max_length": 16 });
    let cfg = tmp.path().join("run.json");
    std::fs::write(&cfg, c.to_string()).unwrap();
    let ports = free_ports(3);
    let t = Instant::now();
    let ranks = run_ranks(
        &[rank_args(&cfg, &tmp.path().join("out"), 1, &ports, 3)],
        tmp.path(),
    );
    assert_ne!(ranks[0].code, Some(0));
    assert!(
        ranks[0].output.contains("no answer within 3 s") && ranks[0].output.contains("register"),
        "{}",
        ranks[0].output
    );
    assert!(t.elapsed() < Duration::from_secs(60));
}

/// SIGINT to one rank only: its stop request travels with the gradients, so both ranks stop
/// after the same step (exit 130) and rank 0 writes the checkpoint; `--resume` on both then
/// finishes with the losses of an uninterrupted two-rank run.
#[test]
fn sigint_on_one_rank_stops_both_and_resume_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = tiny_bert_config(serde_json::json!([{ "plugin": "houlsby" }]));
    c["task"] =
        serde_json::json!({ "name": "glue-sst2", "train_examples": 64, "eval_examples": 8 });
    c["training"] = serde_json::json!({ "steps": 3000, "batch_size": 4, "max_length": 16,
                                        "checkpoint_every": 0 });
    let cfg = tmp.path().join("run.json");
    std::fs::write(&cfg, c.to_string()).unwrap();
    let (cut, full) = (tmp.path().join("cut"), tmp.path().join("full"));
    let bin = env!("CARGO_BIN_EXE_peft-host");
    let q = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let ports = free_ports(3);
    let cmd = |rank: usize, extra: &[&str]| {
        let mut a = rank_args(&cfg, &cut, rank, &ports, 60);
        a.extend(extra.iter().map(|s| s.to_string()));
        std::iter::once(q(bin))
            .chain(a.iter().map(|s| q(s)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let log = |name: &str| q(tmp.path().join(name).to_str().unwrap());
    let mut script = String::new();
    if have_netns() {
        script.push_str("ip link set lo up\n");
    }
    script.push_str(&format!(
        "{} > {} 2>&1 & p0=$!\n{} > {} 2>&1 & p1=$!\n",
        cmd(0, &[]),
        log("cut0.log"),
        cmd(1, &[]),
        log("cut1.log")
    ));
    // Once training runs (rank 0 logged the start check), interrupt rank 1 only.
    script.push_str(&format!(
        "i=0; until grep -q 'ranks agree' {} || [ $i -gt 600 ]; do sleep 0.1; i=$((i+1)); done\n\
         sleep 0.5; kill -INT $p1\nwait $p0; echo $? > {}\nwait $p1; echo $? > {}\n",
        log("cut0.log"),
        log("cut0.rc"),
        log("cut1.rc")
    ));
    let status = if have_netns() {
        Command::new("unshare")
            .args(["-rn", "sh", "-c", &script])
            .status()
    } else {
        Command::new("sh").args(["-c", &script]).status()
    }
    .unwrap();
    assert!(status.success());
    let read = |f: &str| std::fs::read_to_string(tmp.path().join(f)).unwrap_or_default();
    for r in 0..2 {
        assert_eq!(
            read(&format!("cut{r}.rc")).trim(),
            "130",
            "rank {r} exits 130 after the stop:\n--- rank 0 ---\n{}\n--- rank 1 (exit {}) ---\n{}",
            read("cut0.log"),
            read("cut1.rc").trim(),
            read("cut1.log")
        );
    }
    let progress = read_json(&run_dir(&cut).join("checkpoint/progress.json"));
    let step = progress["step"].as_u64().unwrap();
    assert!(step > 0 && step < 3000, "stopped mid-run at step {step}");

    let ports = free_ports(3);
    let resume: Vec<Vec<String>> = (0..2)
        .map(|r| {
            let mut a = rank_args(&cfg, &cut, r, &ports, 60);
            a.push("--resume".into());
            a
        })
        .collect();
    let ranks = run_ranks(&resume, tmp.path());
    for (i, r) in ranks.iter().enumerate() {
        assert_eq!(r.code, Some(0), "resumed rank {i}:\n{}", r.output);
    }
    let ports = free_ports(3);
    let ranks = run_ranks(
        &[
            rank_args(&cfg, &full, 0, &ports, 60),
            rank_args(&cfg, &full, 1, &ports, 60),
        ],
        tmp.path(),
    );
    assert!(ranks.iter().all(|r| r.code == Some(0)));
    let (a, b) = (losses(&cut), losses(&full));
    assert_eq!(a.len(), 3000);
    assert!(max_loss_diff(&a, &b) <= TOL, "resumed run differs");
}
