//! Device names from recipes and the command line (`settings.device`, `--device`, `SHEARED_DEVICE`).
//!
//! - `"cpu"`: burn's pure-Rust `flex` backend, always built.
//! - `"torch-cpu"`: burn's libtorch backend on the CPU. The same code path that runs on GPUs, so that
//!   a CPU-only machine (and CI) can test it; only in binaries built with the cargo feature `tch`.
//! - `"cuda:N"` (`"cuda"` = `"cuda:0"`): burn's libtorch backend on GPU N; feature `tch` (docs/gpu.md).
//!
//! Callers add `.autodiff()` themselves when they train.

use burn::tensor::Device;

use super::ModelError;

/// Whether this binary was built with the libtorch backend (`torch-cpu`, `cuda:N`).
pub const HAS_LIBTORCH_BACKEND: bool = cfg!(feature = "tch");

/// The environment variable that, when set, is the default device of every command (`--device` and
/// `settings.device` still win where given) and of the tests.
pub const DEVICE_ENV: &str = "SHEARED_DEVICE";

/// Every device name this parser knows, for error messages.
const KNOWN: &str = "`cpu`, `torch-cpu` or `cuda:N` (e.g. `cuda:0`)";

/// Parse a device name (see the module docs).
pub fn parse(name: &str) -> Result<Device, ModelError> {
    let trimmed = name.trim();
    let fail = |message: String| {
        Err(ModelError::Device {
            name: name.to_string(),
            message,
        })
    };
    if trimmed == "cpu" {
        return Ok(Device::flex());
    }
    if trimmed == "torch-cpu" {
        return libtorch_cpu().or_else(fail);
    }
    let index = match trimmed.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => match rest.strip_prefix(':').and_then(|n| n.parse::<usize>().ok()) {
            Some(index) => index,
            None => return fail("expected `cuda:N` with N a GPU index, e.g. `cuda:0`".into()),
        },
        None => return fail(format!("unknown device; use {KNOWN}")),
    };
    cuda(index).or_else(fail)
}

/// Use `threads` threads for libtorch's CPU kernels (`torch-cpu`). libtorch keeps its own OpenMP
/// pool, sized to the machine's cores, which a rayon pool (what sizes `cpu`) does not reach; a
/// benchmark that promises both sides the same threads must set both. Without the `tch` feature
/// there is no libtorch and nothing to set.
pub fn set_libtorch_threads(threads: usize) {
    #[cfg(feature = "tch")]
    tch::set_num_threads(i32::try_from(threads).unwrap_or(i32::MAX));
    #[cfg(not(feature = "tch"))]
    let _ = threads;
}

/// The device tests run their numerics on: `SHEARED_DEVICE` if set (`scripts/test-libtorch.sh` sets
/// `torch-cpu`), else `cpu`. Panics on a bad name, which only a test run sees.
pub fn for_tests() -> Device {
    let name = name_for_tests();
    parse(&name).unwrap_or_else(|error| panic!("{DEVICE_ENV}: {error}"))
}

/// The device name tests put into `settings.device`: `SHEARED_DEVICE` if set, else `cpu`.
pub fn name_for_tests() -> String {
    std::env::var(DEVICE_ENV).unwrap_or_else(|_| "cpu".into())
}

#[cfg(feature = "tch")]
#[allow(deprecated)] // burn-tch is deprecated upstream but is the GPU backend buildable offline
fn libtorch_cpu() -> Result<Device, String> {
    Ok(Device::libtorch())
}

#[cfg(feature = "tch")]
#[allow(deprecated)]
fn cuda(index: usize) -> Result<Device, String> {
    // libtorch itself would abort on the first tensor op with "invalid device ordinal"; say it here.
    if !tch::Cuda::is_available() {
        return Err("libtorch sees no CUDA GPU (no NVIDIA driver, CUDA_VISIBLE_DEVICES hides them, or the \
                    libtorch this binary loaded is a CPU-only build); use `torch-cpu` or `cpu` on this machine"
            .into());
    }
    let count = tch::Cuda::device_count();
    if index as i64 >= count {
        return Err(format!(
            "this machine has {count} CUDA GPU(s), numbered 0 to {}; pick one of them",
            count - 1
        ));
    }
    Ok(Device::libtorch_cuda(index))
}

#[cfg(not(feature = "tch"))]
const NO_LIBTORCH: &str = "this sheared binary was built without the libtorch backend; rebuild with \
                           `cargo build --release --features tch` against libtorch (docs/gpu.md), or use `cpu`";

#[cfg(not(feature = "tch"))]
fn libtorch_cpu() -> Result<Device, String> {
    Err(NO_LIBTORCH.into())
}

#[cfg(not(feature = "tch"))]
fn cuda(_index: usize) -> Result<Device, String> {
    Err(NO_LIBTORCH.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_rejects_garbage() {
        assert!(parse("cpu").is_ok());
        let message = parse("tpu:0").unwrap_err().to_string();
        assert!(
            message.contains("tpu:0")
                && message.contains("cuda:N")
                && message.contains("torch-cpu"),
            "{message}"
        );
        assert!(
            parse("cuda:x")
                .unwrap_err()
                .to_string()
                .contains("GPU index")
        );
    }

    #[cfg(not(feature = "tch"))]
    #[test]
    fn libtorch_devices_without_tch_name_the_feature() {
        for name in ["cuda:0", "torch-cpu"] {
            let message = parse(name).unwrap_err().to_string();
            assert!(message.contains("--features tch"), "{message}");
        }
    }

    #[cfg(feature = "tch")]
    #[test]
    fn torch_cpu_runs_and_an_absent_gpu_is_named() {
        use burn::tensor::{Tensor, TensorData};
        let device = parse("torch-cpu").unwrap();
        let sum = Tensor::<1>::from_data(TensorData::from([1.0f32, 2.0, 3.0]), &device)
            .sum()
            .into_scalar::<f32>();
        assert_eq!(sum, 6.0);
        if !tch::Cuda::is_available() {
            let message = parse("cuda:0").unwrap_err().to_string();
            assert!(message.contains("no CUDA GPU"), "{message}");
        } else {
            let count = tch::Cuda::device_count() as usize;
            let message = parse(&format!("cuda:{count}")).unwrap_err().to_string();
            assert!(message.contains("pick one"), "{message}");
        }
    }
}
