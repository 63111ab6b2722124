//! PHA transfer: after multi-task training the retriever tells the training tasks apart, the
//! trained module saves and loads back exactly, and a new task retrieves a prototype from the
//! saved file and fine-tunes from it.
use peft_host::{
    adapters,
    config::RunConfig,
    data::{self, Example},
    heads::Head,
    model::Model,
    retrieval,
    train::{self, TaskRun},
};
use peft_registry::Registry;
use peft_tests::*;

fn prototypes(model: &Model<B>) -> Vec<f32> {
    model
        .params
        .borrow()
        .tensor::<2>("pha.prototypes")
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap()
}

#[test]
fn trained_pha_retrieves_saves_and_adapts_a_new_task() {
    let dir = data::data_dir(None).unwrap();
    let sst = data::load_task(&dir, "glue-sst2", 32, 32, 13, 1).unwrap();
    let stsb = data::load_task(&dir, "glue/stsb", 32, 32, 13, 1).unwrap();
    let pha = serde_json::json!({
        "num_tasks": 2, "task_names": ["glue-sst2", "glue/stsb"], "z_dim": 8,
        "retriever_hidden": 16, "layer_embedding_dim": 6, "projector_dim": 10,
        "hyper_hidden": 14, "bottleneck": 4, "shared_bottleneck": 5
    });
    let mut cfg = tiny_bert_config(serde_json::json!([{ "plugin": "pha", "config": pha }]));
    cfg["training"] = serde_json::json!({
        "steps": 40, "batch_size": 16, "learning_rate": 1e-2, "max_length": 32,
        "mixed_batches": true, "task_sampling": "uniform",
        "train_groups": ["adapter", "retriever", "prototype", "hyper", "head"]
    });
    let cfg: RunConfig = serde_json::from_value(cfg).unwrap();
    let registry = Registry::with_static_plugins().unwrap();
    let dev = Default::default();
    let model = Model::<B>::build(&cfg, &registry, &dev, 0).unwrap();
    let mut runs = Vec::new();
    for (task, prefix) in [(&sst, "head.sst"), (&stsb, "head.stsb")] {
        let head = Head::resolve(&cfg.task, task, prefix).unwrap();
        head.create(&mut model.params.borrow_mut(), 32).unwrap();
        runs.push(TaskRun { task, head });
    }
    train::train_tasks(&model, &runs, &cfg, &dev, &Default::default()).unwrap();

    // Each training task's held-out examples retrieve its own prototype.
    let mut before = Vec::new();
    for t in [&sst, &stsb] {
        let ex: Vec<&Example> = t.eval.iter().collect();
        let r = retrieval::retrieve(&model, "pha", &t.name, &ex, 32, false, &dev).unwrap();
        assert_eq!(
            r.picked_task.as_deref(),
            Some(t.name.as_str()),
            "{}",
            retrieval::render(&r)
        );
        assert_eq!(r.cosines.len(), 2);
        before.push(r);
    }

    // Save, rebuild from the file alone, load: the same retrievals, bit for bit.
    let tmp = tempfile::tempdir().unwrap();
    let saved = tmp.path().join("pha");
    adapters::save(&model, "pha", &cfg.modules[0].config, None, &saved).unwrap();
    let spec = adapters::module_spec(&saved).unwrap();
    let mut cfg2 = cfg.clone();
    cfg2.modules = vec![serde_json::from_value(spec).unwrap()];
    cfg2.training.mixed_batches = false;
    cfg2.training.steps = 30;
    // No decoupled weight decay: the prototypes not picked must not move at all.
    cfg2.training.weight_decay = 0.0;
    cfg2.training.train_groups = vec!["prototype".into(), "hyper".into(), "head".into()];
    let reloaded = Model::<B>::build(&cfg2, &registry, &dev, 0).unwrap();
    adapters::load(&reloaded, "pha", &saved).unwrap();
    for (t, r) in [&sst, &stsb].into_iter().zip(&before) {
        let ex: Vec<&Example> = t.eval.iter().collect();
        let again = retrieval::retrieve(&reloaded, "pha", &t.name, &ex, 32, false, &dev).unwrap();
        assert_eq!(&again, r);
    }

    // A new task retrieves from its 16 examples and fine-tunes from the picked prototype:
    // only that prototype moves.
    let cola = data::load_task(&dir, "glue/cola", 16, 32, 13, 1).unwrap();
    let shots: Vec<&Example> = cola.train.iter().collect();
    let r = retrieval::retrieve(&reloaded, "pha", &cola.name, &shots, 32, true, &dev).unwrap();
    assert_eq!(reloaded.task_index.borrow()[&cola.name], r.picked as i64);
    let k0 = prototypes(&reloaded);
    let report = train::train_with(&reloaded, &cola, &cfg2, &dev, &Default::default()).unwrap();
    let k1 = prototypes(&reloaded);
    let z = 8;
    for row in 0..2 {
        let moved = (0..z).any(|j| k0[row * z + j] != k1[row * z + j]);
        assert_eq!(
            moved,
            row == r.picked,
            "prototype {row} (picked {})",
            r.picked
        );
    }
    let mean = |s: &[(usize, f64)]| s.iter().map(|x| x.1).sum::<f64>() / s.len() as f64;
    let (first, last) = (mean(&report.losses[..5]), mean(&report.losses[25..]));
    assert!(last < first, "adaptation loss {first} -> {last}");
}

#[test]
fn the_heat_map_has_a_cell_per_task_and_prototype() {
    let r = |task: &str, picked: usize, c: [f64; 2]| retrieval::Retrieval {
        task: task.into(),
        module: "pha".into(),
        picked,
        picked_task: None,
        cosines: vec![("a".into(), c[0]), ("b<&>".into(), c[1])],
        examples: 4,
    };
    let svg = retrieval::heatmap_svg(&[r("a", 0, [0.9, -0.2]), r("b", 1, [0.1, 0.5])]);
    assert_eq!(svg.matches("<rect x=").count(), 4);
    assert!(svg.contains("+0.90") && svg.contains("-0.20") && svg.contains("b&lt;&amp;&gt;"));
    assert_eq!(
        svg.matches("stroke-width=\"3\"").count(),
        2,
        "the picked cells are outlined"
    );
}

/// The run pipeline's transfer path: a PHA run's adapter folder, then a new task's run with
/// `init_from` that folder and `prototype` — retrieve (the prototype the task's examples pick,
/// as `retrieval::retrieve` finds it), random (a valid index drawn with the seed), an index,
/// or one out of range (refused).
#[test]
fn a_run_starts_a_new_task_from_the_retrieved_or_a_random_prototype() {
    let registry = Registry::with_static_plugins().unwrap();
    let data_dir = data::data_dir(None).unwrap();
    let pha = serde_json::json!({
        "z_dim": 8, "retriever_hidden": 16, "layer_embedding_dim": 6, "projector_dim": 10,
        "hyper_hidden": 14, "bottleneck": 4, "shared_bottleneck": 5
    });
    let mut cfg = tiny_bert_config(serde_json::json!([{ "plugin": "pha", "config": pha }]));
    cfg["tasks"] = serde_json::json!([
        { "name": "glue-sst2", "train_examples": 32, "eval_examples": 16 },
        { "name": "glue/stsb", "train_examples": 32, "eval_examples": 16 }
    ]);
    cfg["training"] = serde_json::json!({
        "steps": 20, "batch_size": 16, "learning_rate": 1e-2, "max_length": 32,
        "mixed_batches": true, "task_sampling": "uniform",
        "train_groups": ["adapter", "retriever", "prototype", "hyper", "head"]
    });
    let out = tempfile::tempdir().unwrap();
    let flags = || peft_host::run::RunFlags {
        progress: false,
        resume: false,
    };
    let first: RunConfig = serde_json::from_value(cfg.clone()).unwrap();
    peft_host::run::run_generic::<B>(
        &first,
        &registry,
        &data_dir,
        out.path(),
        flags(),
        &Default::default(),
    )
    .unwrap();
    let trained = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("adapter").exists())
        .unwrap();
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(trained.join("result.json")).unwrap()).unwrap();
    // The new task's run: the module's config as trained (with its two prototypes).
    let mut next = cfg.clone();
    next["modules"] = saved["config"]["modules"].clone();
    next.as_object_mut().unwrap().remove("tasks");
    next["task"] =
        serde_json::json!({ "name": "glue/cola", "train_examples": 16, "eval_examples": 16 });
    next["init_from"] = trained.join("adapter").display().to_string().into();
    next["training"] = serde_json::json!({ "steps": 3, "batch_size": 8, "learning_rate": 1e-2,
        "max_length": 32, "weight_decay": 0.0, "train_groups": ["prototype", "hyper", "head"] });
    let picked = |pick: serde_json::Value| -> anyhow::Result<serde_json::Value> {
        let mut c = next.clone();
        c["prototype"] = serde_json::json!({ "pick": pick });
        let c: RunConfig = serde_json::from_value(c).unwrap();
        let o = tempfile::tempdir().unwrap();
        peft_host::run::run_generic::<B>(
            &c,
            &registry,
            &data_dir,
            o.path(),
            flags(),
            &Default::default(),
        )?;
        let dir = std::fs::read_dir(o.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("result.json")).unwrap()).unwrap();
        assert!(r["init_from"]["tensors"].as_u64().unwrap() > 0);
        Ok(r["prototypes"][0].clone())
    };
    // Retrieve: the same pick as the library call on the loaded model.
    let r = picked("retrieve".into()).unwrap();
    let c: RunConfig = serde_json::from_value(next.clone()).unwrap();
    let model = Model::<B>::build(&c, &registry, &Default::default(), 0).unwrap();
    peft_host::serve::init::init_from(&model, &c, &trained.join("adapter")).unwrap();
    let cola = data::load(&data_dir, &c.task, c.seed).unwrap();
    let shots: Vec<&Example> = cola.train.iter().collect();
    let want = retrieval::retrieve(
        &model,
        "pha",
        &cola.name,
        &shots,
        32,
        false,
        &Default::default(),
    )
    .unwrap();
    assert_eq!(r["picked"].as_u64().unwrap() as usize, want.picked, "{r}");
    assert_eq!(r["cosines"].as_array().unwrap().len(), 2);
    // Random and an index: valid picks; out of range: refused naming the count.
    assert!(picked("random".into()).unwrap()["picked"].as_u64().unwrap() < 2);
    assert_eq!(picked(1.into()).unwrap()["picked"], 1);
    let err = format!("{:#}", picked(5.into()).unwrap_err());
    assert!(
        err.contains("index 5") && err.contains("2 prototypes"),
        "{err}"
    );
}
