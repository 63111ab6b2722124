//! Compute devices: the CPU backend by default, CUDA with the `cuda` cargo feature. burn
//! panics when the CUDA driver is missing, so the driver is probed first.
use std::str::FromStr;

use anyhow::bail;

/// The CPU backend, with autodiff.
pub type Cpu = burn::backend::Autodiff<burn::backend::Flex>;

#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Autodiff<burn_cuda::Cuda>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
                _ => Err(format!("`{s}` is not a device: use cpu, cuda or cuda:N")),
            },
        }
    }
}

/// Checks that a CUDA device can be used, without letting burn panic.
pub fn check_cuda(index: usize) -> anyhow::Result<()> {
    if !cfg!(feature = "cuda") {
        bail!("this peft-host was built without CUDA support; rebuild with `cargo build --release --features cuda`");
    }
    // SAFETY: probing for the driver library; nothing of it is called here.
    let lib = unsafe { libloading::Library::new("libcuda.so.1") };
    if let Err(e) = lib {
        bail!("device cuda:{index} requested, but no CUDA driver is available ({e})");
    }
    let count = cuda_device_count();
    if index >= count {
        bail!("device cuda:{index} requested, but this machine has {count} CUDA device(s)");
    }
    Ok(())
}

/// Counts CUDA devices through the driver API (`cuInit`, `cuDeviceGetCount`).
fn cuda_device_count() -> usize {
    // SAFETY: the driver API functions are called with their documented signatures.
    unsafe {
        let Ok(lib) = libloading::Library::new("libcuda.so.1") else {
            return 0;
        };
        let Ok(init) = lib.get::<unsafe extern "C" fn(u32) -> i32>(b"cuInit\0") else {
            return 0;
        };
        if init(0) != 0 {
            return 0;
        }
        let Ok(count) = lib.get::<unsafe extern "C" fn(*mut i32) -> i32>(b"cuDeviceGetCount\0")
        else {
            return 0;
        };
        let mut n = 0i32;
        if count(&mut n) != 0 {
            return 0;
        }
        n.max(0) as usize
    }
}
