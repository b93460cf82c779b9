//! Device names from recipes and the command line (`settings.device`, `--device`).
//!
//! `"cpu"` is burn's pure-Rust `flex` backend (always built). `"cuda:N"` is burn's libtorch backend on
//! GPU N and exists only in binaries built with the cargo feature `tch` (docs/gpu.md). Callers add
//! `.autodiff()` themselves when they train.

use burn::tensor::Device;

use super::ModelError;

/// Whether this binary was built with the libtorch (CUDA) backend.
pub const HAS_CUDA_BACKEND: bool = cfg!(feature = "tch");

/// Parse `"cpu"` or `"cuda:N"` (also `"cuda"` = `"cuda:0"`).
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
    let index = match trimmed.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => match rest.strip_prefix(':').and_then(|n| n.parse::<usize>().ok()) {
            Some(index) => index,
            None => return fail("expected `cuda:N` with N a GPU index, e.g. `cuda:0`".into()),
        },
        None => return fail("unknown device; use `cpu` or `cuda:N` (e.g. `cuda:0`)".into()),
    };
    cuda(index).or_else(fail)
}

#[cfg(feature = "tch")]
fn cuda(index: usize) -> Result<Device, String> {
    #[allow(deprecated)] // burn-tch is deprecated upstream but is the GPU backend buildable offline
    Ok(Device::libtorch_cuda(index))
}

#[cfg(not(feature = "tch"))]
fn cuda(_index: usize) -> Result<Device, String> {
    Err("this sheared binary was built without a GPU backend; rebuild with `cargo build --release --features tch` \
         against libtorch (see docs/gpu.md), or use `cpu`"
        .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_rejects_garbage() {
        assert!(parse("cpu").is_ok());
        let message = parse("tpu:0").unwrap_err().to_string();
        assert!(
            message.contains("tpu:0") && message.contains("cuda:N"),
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
    fn cuda_without_tch_names_the_feature() {
        let message = parse("cuda:0").unwrap_err().to_string();
        assert!(message.contains("--features tch"), "{message}");
    }
}
