//! Few-shot transfer by prototype retrieval (PHA): the new task's examples run through the
//! model, the module's retriever leaves each pass's `z` in the context (`pha.z`), and the
//! module's `retrieve` call averages them and picks the nearest training prototype. The task is
//! then mapped to that prototype, so that adapting to it fine-tunes from the prototype.
use anyhow::Context;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use crate::{
    bridge::{value::ft, HostGraph, Value},
    data::Example,
    model::Model,
};

/// Which training task's prototype a new task retrieved, and the cosine to each.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Retrieval {
    pub task: String,
    pub module: String,
    pub picked: usize,
    /// The picked prototype's training task, when the module knows the names.
    #[serde(default)]
    pub picked_task: Option<String>,
    /// `(training task or prototype index, cosine)` per prototype.
    pub cosines: Vec<(String, f64)>,
    pub examples: usize,
}

/// Retrieves a prototype for `task` from its `examples` with module instance `module`, and maps
/// the task to it (`Model::task_index`) when `adopt`.
pub fn retrieve<B: AutodiffBackend>(
    model: &Model<B>,
    module: &str,
    task: &str,
    examples: &[&Example],
    max_length: usize,
    adopt: bool,
    device: &B::Device,
) -> anyhow::Result<Retrieval> {
    anyhow::ensure!(
        !examples.is_empty(),
        "task `{task}`: no examples to retrieve from"
    );
    let m = model
        .modules
        .modules
        .iter()
        .find(|m| m.name == module)
        .with_context(|| format!("no module instance `{module}` in this model"))?;
    let mut rows: Vec<Vec<f32>> = Vec::new();
    for chunk in examples.chunks(32) {
        let graph = HostGraph::inference(&model.params);
        let texts: Vec<_> = chunk
            .iter()
            .map(|e| (e.text_a.clone(), e.text_b.clone()))
            .collect();
        let tb = model.tokenize(&texts, max_length, device)?;
        model.encode(&graph, &tb)?;
        let z = match graph.context.borrow().get("pha.z") {
            Some(Value::Float(z)) => ft::<B, 2>(z.clone()),
            _ => anyhow::bail!(
                "{}: the pass left no `pha.z` (not a retrieving module?)",
                m.describe()
            ),
        };
        let [n, d] = z.dims();
        let v: Vec<f32> = z
            .into_data()
            .convert::<f32>()
            .into_vec()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        rows.extend((0..n).map(|i| v[i * d..(i + 1) * d].to_vec()));
    }
    let graph = HostGraph::inference(&model.params);
    let answer = m
        .call(
            &graph,
            "retrieve",
            &serde_json::json!({ "z": rows }).to_string(),
        )?
        .with_context(|| format!("{} does not answer `retrieve`", m.describe()))?;
    let answer: serde_json::Value = serde_json::from_str(&answer)?;
    let picked = answer["picked"]
        .as_u64()
        .context("`retrieve` answered no `picked` index")? as usize;
    let names: Vec<String> = serde_json::from_value(answer["tasks"].clone()).unwrap_or_default();
    let cosines: Vec<f64> = serde_json::from_value(answer["cosines"].clone())
        .context("`retrieve` answered no `cosines`")?;
    if adopt {
        model
            .task_index
            .borrow_mut()
            .insert(task.to_string(), picked as i64);
    }
    Ok(Retrieval {
        task: task.to_string(),
        module: module.to_string(),
        picked,
        picked_task: names.get(picked).cloned(),
        cosines: cosines
            .into_iter()
            .enumerate()
            .map(|(i, c)| (names.get(i).cloned().unwrap_or_else(|| i.to_string()), c))
            .collect(),
        examples: rows.len(),
    })
}

/// One line per retrieval: the task, the picked prototype and the cosines.
pub fn render(r: &Retrieval) -> String {
    let cos: Vec<String> = r
        .cosines
        .iter()
        .map(|(t, c)| format!("{t} {c:+.3}"))
        .collect();
    format!(
        "{:<28} -> prototype {} ({}) from {} examples; cosines: {}",
        r.task,
        r.picked,
        r.picked_task.as_deref().unwrap_or("?"),
        r.examples,
        cos.join(", ")
    )
}

/// After multi-task training: every PHA module retrieves from each training task's first 32
/// evaluation examples (no task ids), which shows whether the retriever tells the tasks apart.
/// Prints one line per task and writes `retrieval.json` into `dir`. Nothing for other modules.
pub fn report_training_tasks<B: AutodiffBackend>(
    model: &Model<B>,
    tasks: &[crate::data::Task],
    max_length: usize,
    dir: &std::path::Path,
    device: &B::Device,
) -> anyhow::Result<Vec<Retrieval>> {
    let mut out = Vec::new();
    for m in model.modules.modules.iter().filter(|m| m.plugin == "pha") {
        for t in tasks {
            let examples: Vec<&Example> = t.eval.iter().take(32).collect();
            if examples.is_empty() {
                continue;
            }
            let r = retrieve(
                model, &m.name, &t.name, &examples, max_length, false, device,
            )?;
            println!("retrieval: {}", render(&r));
            out.push(r);
        }
    }
    if !out.is_empty() {
        crate::files::write_atomic(
            &dir.join("retrieval.json"),
            serde_json::to_string_pretty(&out)?.as_bytes(),
        )?;
        crate::files::write_atomic(&dir.join("retrieval.svg"), heatmap_svg(&out).as_bytes())?;
        println!("retrieval: {}", dir.join("retrieval.svg").display());
    }
    Ok(out)
}

/// An SVG heat map of the cosine between each task's mean `z` (rows) and each prototype
/// (columns), −1 blue to +1 red, the picked cell outlined.
pub fn heatmap_svg(rows: &[Retrieval]) -> String {
    let (cell, left, top) = (64.0, 200.0, 150.0);
    let cols: Vec<String> = rows
        .first()
        .map(|r| r.cosines.iter().map(|c| c.0.clone()).collect())
        .unwrap_or_default();
    let (w, h) = (
        left + cell * cols.len() as f64 + 20.0,
        top + cell * rows.len() as f64 + 20.0,
    );
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"20\" font-size=\"14\">cosine(mean z of task examples, prototype)</text>\n"
    );
    for (j, c) in cols.iter().enumerate() {
        let x = left + cell * (j as f64 + 0.5);
        svg += &format!(
            "<text transform=\"translate({x},{}) rotate(-45)\">prototype {j}: {}</text>\n",
            top - 8.0,
            esc(c)
        );
    }
    for (i, r) in rows.iter().enumerate() {
        let y = top + cell * i as f64;
        svg += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n",
            left - 8.0,
            y + cell / 2.0 + 4.0,
            esc(&r.task)
        );
        for (j, (_, c)) in r.cosines.iter().enumerate() {
            let x = left + cell * j as f64;
            let v = c.clamp(-1.0, 1.0);
            let (red, blue) = if v >= 0.0 {
                (255.0, 255.0 * (1.0 - v))
            } else {
                (255.0 * (1.0 + v), 255.0)
            };
            let green = red.min(blue);
            let stroke = if j == r.picked {
                "black\" stroke-width=\"3"
            } else {
                "#ccc"
            };
            svg += &format!(
                "<rect x=\"{x}\" y=\"{y}\" width=\"{cell}\" height=\"{cell}\" fill=\"rgb({red:.0},{green:.0},{blue:.0})\" stroke=\"{stroke}\"/>\n<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{c:+.2}</text>\n",
                x + cell / 2.0,
                y + cell / 2.0 + 4.0
            );
        }
    }
    svg + "</svg>\n"
}
