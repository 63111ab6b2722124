//! Device selection: CUDA is refused with a clear message where it cannot run, never a panic;
//! where it can (a `--features cuda` build on a GPU machine), it computes what the CPU does.
use peft_host::device::{check_cuda, DeviceSpec};

#[test]
fn device_names_parse_with_readable_errors() {
    assert_eq!("cpu".parse::<DeviceSpec>(), Ok(DeviceSpec::Cpu));
    assert_eq!("cuda".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(0)));
    assert_eq!("cuda:1".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(1)));
    let err = "gpu0".parse::<DeviceSpec>().unwrap_err();
    assert!(err.contains("use cpu, cuda or cuda:N"), "{err}");
}

#[test]
fn cuda_is_refused_clearly_where_unavailable() {
    match check_cuda(0) {
        Ok(()) => eprintln!("a CUDA device is available: the refusal path is not exercised here"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("built without CUDA support")
                    || msg.contains("no CUDA driver")
                    || msg.contains("CUDA device(s)"),
                "{msg}"
            );
            eprintln!("skipping GPU checks: {msg}");
        }
    }
    // An index past the devices present is refused too.
    assert!(check_cuda(4096).is_err());
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_forward_matches_cpu() {
    use peft_host::{bridge::HostGraph, config::RunConfig, model::Model};
    if let Err(e) = check_cuda(0) {
        eprintln!("skipping: {e}");
        return;
    }
    let cfg: RunConfig = serde_json::from_value(peft_tests::tiny_bert_config(
        serde_json::json!([{"plugin": "houlsby", "config": {"up_init_std": 0.05}}]),
    ))
    .unwrap();
    let registry = peft_registry::Registry::with_static_plugins().unwrap();
    let texts = vec![("the same numbers on every device".to_string(), None)];
    let cpu =
        Model::<peft_host::device::Cpu>::build(&cfg, &registry, &Default::default(), 0).unwrap();
    let h_cpu: Vec<f32> = {
        let g = HostGraph::new(&cpu.params, false);
        cpu.encode(&g, &cpu.tokenize(&texts, 16, &Default::default()).unwrap())
            .unwrap()
            .into_data()
            .convert::<f32>()
            .into_vec()
            .unwrap()
    };
    let dev: burn::tensor::Device<peft_host::device::Cuda> = Default::default();
    let gpu = Model::<peft_host::device::Cuda>::build(&cfg, &registry, &dev, 0).unwrap();
    let g = HostGraph::new(&gpu.params, false);
    let h_gpu: Vec<f32> = gpu
        .encode(&g, &gpu.tokenize(&texts, 16, &dev).unwrap())
        .unwrap()
        .into_data()
        .convert::<f32>()
        .into_vec()
        .unwrap();
    let d = h_cpu
        .iter()
        .zip(&h_gpu)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(d < 1e-4, "CPU and CUDA differ by {d}");
}
