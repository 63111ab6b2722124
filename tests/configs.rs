//! Config compositions pinned by snapshots: `plan` of valid configs, `validate` of broken ones.
use peft_host::{run::plan_generic, validate::validate};
use peft_registry::Registry;
use peft_tests::*;

fn configs(kind: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(root().join("tests/configs").join(kind))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    v.sort();
    v
}

fn rel(p: &std::path::Path) -> String {
    p.strip_prefix(root()).unwrap().display().to_string()
}

#[test]
fn plans_of_valid_compositions() {
    require_minilm();
    let registry = Registry::with_static_plugins().unwrap();
    let files = configs("plan");
    assert!(files.len() >= 4);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let cfg = validate(&text, &rel(&f), &registry).unwrap_or_else(|e| panic!("{e}"));
        let plan = plan_generic::<B>(&cfg, &registry, &Default::default()).unwrap();
        let name = f.file_stem().unwrap().to_string_lossy().to_string();
        insta::assert_snapshot!(format!("plan-{name}"), plan.render());
    }
}

#[test]
fn broken_configs_give_readable_errors() {
    let registry = Registry::with_static_plugins().unwrap();
    let files = configs("invalid");
    assert!(files.len() >= 8);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let err = validate(&text, &rel(&f), &registry).expect_err(&rel(&f));
        let name = f.file_stem().unwrap().to_string_lossy().to_string();
        insta::assert_snapshot!(format!("validate-{name}"), err.to_string());
    }
}

#[test]
fn schemas_in_the_repository_are_current() {
    let registry = Registry::with_static_plugins().unwrap();
    for (path, schema) in peft_host::config::schema_files(&registry) {
        let file = root().join("schemas").join(&path);
        let want = serde_json::to_string_pretty(&schema).unwrap() + "\n";
        let have = std::fs::read_to_string(&file).unwrap_or_default();
        assert!(
            have == want,
            "schemas/{path} is stale: run `cargo run -p peft-host -- schema`"
        );
    }
}

#[test]
fn shipped_experiment_configs_are_valid() {
    let registry = Registry::with_static_plugins().unwrap();
    let files = configs("e2e");
    assert!(files.len() >= 12);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        validate(&text, &rel(&f), &registry).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Every backbone declares its sites; LoRA, adapters and prefixes find theirs on each.
#[test]
fn sites_and_compositions_of_each_backbone() {
    let registry = Registry::with_static_plugins().unwrap();
    let modules =
        serde_json::json!([{ "plugin": "houlsby" }, { "plugin": "lora" }, { "plugin": "prefix" }]);
    let mut backbones = vec![(
        "bert-tiny",
        tiny_bert_config(modules.clone())["backbone"].clone(),
    )];
    for name in ["t5-v1_0-tiny", "t5-v1_1-tiny", "bart-tiny"] {
        backbones.push((
            name,
            serde_json::json!({ "name": name, "path": fixture(name) }),
        ));
    }
    for (name, backbone) in backbones {
        let cfg = serde_json::json!({ "backbone": backbone, "modules": modules });
        let cfg = validate(&cfg.to_string(), name, &registry).unwrap_or_else(|e| panic!("{e}"));
        let plan = plan_generic::<B>(&cfg, &registry, &Default::default()).unwrap();
        insta::assert_snapshot!(format!("sites-{name}"), plan.render_sites());
        insta::assert_snapshot!(format!("composition-{name}"), plan.render());
    }
}

/// The main job's config (`run --plugin NAME`, repeatable) is valid and trains a set of real
/// tasks together.
#[test]
fn the_default_run_is_valid_and_multi_task() {
    let registry = Registry::with_static_plugins().unwrap();
    let cfg = peft_host::config::RunConfig::default_run(&["houlsby".into(), "lora".into()]);
    let text = serde_json::to_string(&cfg).unwrap();
    let cfg = validate(&text, "the default config", &registry).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<String> = cfg.task_specs().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["glue-sst2", "glue/rte"]);
    assert_eq!(cfg.modules.len(), 2);
}

/// `peft-host run --plugin pha` validates as `run` sees it: PHA's task count comes from the
/// run's tasks, which `validate` fills in before attaching, as `run` does.
#[test]
fn the_pha_default_run_is_valid() {
    let registry = Registry::with_static_plugins().unwrap();
    let cfg = peft_host::config::RunConfig::default_run(&["pha".into()]);
    let text = serde_json::to_string(&cfg).unwrap();
    let cfg = validate(&text, "the default config", &registry).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.task_specs().len(), 6);
    assert!(cfg.training.mixed_batches);
}
