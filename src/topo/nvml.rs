//! The GPU list from NVML (`libnvidia-ml.so.1`, loaded at run time).
//!
//! Never panics and never fails discovery: without the driver the answer is an empty list and
//! the reason, so a CPU-only host still gets its NIC list.

use nvml_wrapper::Nvml;
use nvml_wrapper::error::NvmlError;

use super::Gpu;
use crate::config::normalize_bdf;

/// The GPUs NVML reports, in NVML order (PCI bus order), or why there are none.
pub(crate) fn gpus() -> Result<Vec<Gpu>, String> {
    let nvml = Nvml::init().map_err(|e| match e {
        // The dlopen message itself ("libnvidia-ml.so.1: cannot open shared object file: ...").
        NvmlError::LibloadingError(e) => format!("NVML not loadable ({e})"),
        e => format!("NVML did not start ({e})"),
    })?;
    let count = nvml.device_count().map_err(|e| format!("NVML cannot count GPUs ({e})"))?;
    if count == 0 {
        return Err("NVML reports no GPUs (check `nvidia-smi` and CUDA_VISIBLE_DEVICES)".into());
    }
    let mut out = Vec::with_capacity(count as usize);
    for index in 0..count {
        let dev = nvml.device_by_index(index).map_err(|e| format!("NVML cannot open GPU {index} ({e})"))?;
        let pci = dev.pci_info().map_err(|e| format!("NVML cannot read GPU {index}'s PCI address ({e})"))?;
        let bus_id = normalize_bdf(&pci.bus_id).map_err(|e| format!("NVML GPU {index}: {e}"))?;
        let name = dev.name().unwrap_or_default();
        out.push(Gpu { index, bus_id, name });
    }
    Ok(out)
}
