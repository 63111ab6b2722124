//! Tests of the SVG curves: structure, escaping, edge cases, decimation, ticks.
use super::*;

fn realistic() -> (Vec<(usize, f64)>, Vec<Curve>) {
    // Deterministic noise: a small LCG, no dependency on `rand`'s stream.
    let mut state = 12345u64;
    let mut noise = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as f64 / (1u64 << 31) as f64) - 0.5
    };
    let losses = (1..=300)
        .map(|s| {
            let t = s as f64;
            (s, 0.35 + 1.9 * (-t / 70.0).exp() + 0.25 * noise())
        })
        .collect();
    let steps = (50..=300).step_by(50);
    let accuracy = Curve {
        name: "accuracy".into(),
        points: steps
            .clone()
            .map(|s| (s, 0.9 - 0.5 * (-(s as f64) / 90.0).exp()))
            .collect(),
    };
    let f1 = Curve {
        name: "macro-F1".into(),
        points: steps
            .map(|s| (s, 0.85 - 0.6 * (-(s as f64) / 90.0).exp()))
            .collect(),
    };
    (losses, vec![accuracy, f1])
}

/// Elements of the SVG by tag name.
fn count(svg: &str, tag: &str) -> usize {
    svg.matches(&format!("<{tag} ")).count()
}

/// The `<text>` contents, trimmed.
fn texts(svg: &str) -> Vec<String> {
    svg.split("<text ")
        .skip(1)
        .filter_map(|t| {
            let body = &t[t.find('>')? + 1..];
            Some(body[..body.find("</text>")?].trim().to_string())
        })
        .collect()
}

fn check_well_formed(svg: &str) {
    assert!(
        svg.trim_start().starts_with("<svg"),
        "{}",
        &svg[..80.min(svg.len())]
    );
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
    assert!(
        !svg.contains("NaN") && !svg.contains("inf"),
        "non-finite coordinates"
    );
}

#[test]
fn realistic_run_has_title_legends_axes_and_one_line_per_series() {
    let (losses, metrics) = realistic();
    let svg = curves_svg("lora r=8 on sst2", &losses, &metrics, 20).unwrap();
    check_well_formed(&svg);
    let texts = texts(&svg);
    for want in [
        "lora r=8 on sst2",
        "training loss",
        "evaluation metrics",
        "step",
        "loss",
        "metric",
    ] {
        assert!(
            texts.iter().any(|t| t == want),
            "no text {want:?} in {texts:?}"
        );
    }
    for name in [
        "accuracy (last ",
        "macro-F1 (last ",
        "loss per step",
        "mean of last 20 steps",
    ] {
        assert!(
            texts
                .iter()
                .any(|t| t.starts_with(name) || t.contains(name)),
            "no legend {name:?} in {texts:?}"
        );
    }
    // Series polylines: raw loss with 300 points, its average, one per metric with 6 points.
    let lines: Vec<usize> = svg
        .split("<polyline ")
        .skip(1)
        .map(|p| {
            let pts = &p[p.find("points=\"").unwrap() + 8..];
            pts[..pts.find('"').unwrap()].split_whitespace().count()
        })
        .collect();
    assert_eq!(lines.iter().filter(|&&n| n == 300).count(), 2, "{lines:?}");
    assert_eq!(lines.iter().filter(|&&n| n == 6).count(), 2, "{lines:?}");
    // Markers: 6 per metric plus one in each metric's legend entry.
    assert_eq!(count(&svg, "circle"), 2 * 6 + 2);
    // Metrics lie in [0, 1]: the metric axis runs from 0 to 1.
    assert!(texts.iter().any(|t| t == "0.0") && texts.iter().any(|t| t == "1.0"));
}

/// Writes the realistic plot for a person to look at:
/// `cargo test -p peft-host --lib report::tests::sample -- --ignored --nocapture`.
#[test]
#[ignore = "writes a file for eyes, checks nothing more than the other tests"]
fn sample() {
    let (losses, metrics) = realistic();
    let path = std::env::temp_dir().join("peft-report-sample.svg");
    write_curves_svg(&path, "lora r=8 on sst2", &losses, &metrics, 20).unwrap();
    let edge = std::env::temp_dir().join("peft-report-edge.svg");
    let one = [Curve {
        name: "accuracy".into(),
        points: vec![(100, 0.5)],
    }];
    write_curves_svg(&edge, "one point", &[(100, 2.0)], &one, 20).unwrap();
    let empty = std::env::temp_dir().join("peft-report-empty.svg");
    write_curves_svg(&empty, "nothing yet", &[], &[], 20).unwrap();
    println!(
        "wrote {}, {} and {}",
        path.display(),
        edge.display(),
        empty.display()
    );
}

#[test]
fn title_and_names_are_escaped() {
    let metrics = [Curve {
        name: "p<0.5 & \"f1\"".into(),
        points: vec![(1, 0.5), (2, 0.6)],
    }];
    let svg = curves_svg("a < b & c", &[(1, 1.0), (2, 0.5)], &metrics, 5).unwrap();
    check_well_formed(&svg);
    assert!(svg.contains("a &lt; b &amp; c"));
    assert!(svg.contains("p&lt;0.5 &amp; &quot;f1&quot;"));
    assert!(!svg.contains("a < b"));
}

#[test]
fn edge_cases_render() {
    let metric = |points: Vec<(usize, f64)>| {
        vec![Curve {
            name: "accuracy".into(),
            points,
        }]
    };
    // Nothing at all: both panels carry a note.
    let svg = curves_svg("empty", &[], &[], 10).unwrap();
    check_well_formed(&svg);
    assert!(svg.contains("no training loss recorded"));
    assert!(svg.contains("no evaluation recorded"));
    assert_eq!(count(&svg, "circle"), 0);

    // A single loss point and a single evaluation: both drawn as markers.
    let svg = curves_svg("one", &[(0, 2.0)], &metric(vec![(0, 0.5)]), 10).unwrap();
    check_well_formed(&svg);
    assert_eq!(
        count(&svg, "circle"),
        1 + 1 + 1,
        "loss, metric and its legend marker"
    );
    assert!(texts(&svg).iter().any(|t| t == "accuracy (last 0.5000)"));

    // One evaluation among many loss steps.
    let losses: Vec<_> = (0..50).map(|s| (s, 1.0 / (1.0 + s as f64))).collect();
    let svg = curves_svg("one eval", &losses, &metric(vec![(25, 0.7)]), 10).unwrap();
    check_well_formed(&svg);
    assert_eq!(count(&svg, "circle"), 2);

    // Non-finite values are skipped, not drawn.
    let losses = [
        (0, f64::NAN),
        (1, 2.0),
        (2, f64::INFINITY),
        (3, 1.0),
        (4, f64::NEG_INFINITY),
    ];
    let svg = curves_svg(
        "nan",
        &losses,
        &metric(vec![(1, f64::NAN), (3, 0.25), (4, 0.5)]),
        2,
    )
    .unwrap();
    check_well_formed(&svg);
    assert_eq!(count(&svg, "circle"), 2 + 1);

    // Only non-finite values: empty panels, the curve still named.
    let svg = curves_svg("all nan", &[(0, f64::NAN)], &metric(vec![(1, f64::NAN)]), 3).unwrap();
    check_well_formed(&svg);
    assert!(svg.contains("no training loss recorded"));
    assert!(svg.contains("accuracy (no values)"));

    // All-equal values, including zero, and metrics outside [0, 1].
    for v in [0.0, 3.5, -2.0, 1e300] {
        let losses: Vec<_> = (0..10).map(|s| (s, v)).collect();
        let curves = metric((0..10).map(|s| (s, v + 100.0)).collect());
        let svg = curves_svg("flat", &losses, &curves, 4).unwrap();
        check_well_formed(&svg);
        assert_eq!(count(&svg, "circle"), 11);
    }

    // Values whose range overflows: an error, not a panic.
    let huge = [(0, -1.7e308), (1, 1.7e308)];
    let err = curves_svg("huge", &huge, &[], 2).unwrap_err();
    assert!(err.to_string().contains("too large"), "{err}");

    // smooth of 0 or 1: the raw loss alone.
    let svg = curves_svg("raw", &losses_of(30), &[], 0).unwrap();
    assert!(!svg.contains("mean of last"));
    assert!(svg.contains("loss per step"));
    let svg = curves_svg("raw", &losses_of(30), &[], 1).unwrap();
    assert!(!svg.contains("mean of last"));

    // Loss logged every 10 steps: the window is named in logged values.
    let sparse: Vec<_> = (0..30).map(|s| (10 * s, 1.0 / (1.0 + s as f64))).collect();
    let svg = curves_svg("sparse", &sparse, &[], 5).unwrap();
    assert!(svg.contains("mean of last 5 logged values"));
}

fn losses_of(n: usize) -> Vec<(usize, f64)> {
    (0..n).map(|s| (s, 1.0 / (1.0 + s as f64))).collect()
}

#[test]
fn long_runs_are_decimated_but_keep_extremes() {
    let mut losses = losses_of(100_000);
    losses[54_321].1 = 9.0;
    let svg = curves_svg("long", &losses, &[], 100).unwrap();
    check_well_formed(&svg);
    assert!(svg.len() < 400_000, "{} bytes", svg.len());
    // The spike survives: the loss axis reaches past 9.
    assert!(texts(&svg)
        .iter()
        .any(|t| t.parse::<f64>().is_ok_and(|v| v >= 8.0)));
    let d = decimate(&finite(&losses));
    assert!(d.len() <= 2 * MAX_BUCKETS);
    assert!(d.contains(&(54_321, 9.0)));
    assert!(d.windows(2).all(|w| w[0].0 < w[1].0));
}

#[test]
fn tick_labels_have_the_decimals_their_spacing_needs() {
    let f = tick_label(0.0..1.0, 8);
    assert_eq!(
        (f(&0.0), f(&0.6), f(&1.0)),
        ("0.0".into(), "0.6".into(), "1.0".into())
    );
    let f = tick_label(1.8..2.2, 8);
    assert_eq!((f(&1.9), f(&2.0)), ("1.9".into(), "2.0".into()));
    let f = tick_label(0.0..1.0, 30);
    assert_eq!(f(&0.05), "0.05");
    assert_eq!(tick_label(0.0..900.0, 8)(&200.0), "200");
    assert_eq!(tick_label(-1e-9..1e-9, 8)(&-0.0), "0.000e0");
    assert_eq!(tick_label(0.0..2e300, 8)(&1e300), "1.000e300");
}

#[test]
fn moving_average_is_trailing() {
    let p = [(0, 1.0), (1, 3.0), (2, 5.0), (3, 7.0)];
    assert_eq!(
        moving_average(&p, 2),
        vec![(0, 1.0), (1, 2.0), (2, 4.0), (3, 6.0)]
    );
    assert_eq!(moving_average(&p, 0), p.to_vec());
}

#[test]
fn write_leaves_only_the_final_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("curves.svg");
    let (losses, metrics) = realistic();
    write_curves_svg(&path, "run", &losses, &metrics, 10).unwrap();
    // Overwriting works too and stays atomic.
    write_curves_svg(&path, "run again", &losses, &metrics, 10).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("curves.svg")]);
    let written = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        written,
        curves_svg("run again", &losses, &metrics, 10).unwrap()
    );
    // A missing folder is an error, not a panic.
    let err = write_curves_svg(&dir.path().join("no/such/x.svg"), "t", &[], &[], 1);
    assert!(err.is_err());
}
