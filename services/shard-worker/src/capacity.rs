//! How much memory this node offers for layers. The choice is pure ([`usable_memory`]): from
//! where the layers live (host RAM or a CUDA device), what that memory has free now, and the
//! configured override. Reading the facts is the thin edge below it: `/proc/meminfo` for the
//! host, `nvidia-smi` for a CUDA device (libtorch, as tch exposes it, has no free-memory
//! query).

use std::process::Command;

use neuroshard_common::{Error, Result};

/// Where the span's weights and caches live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Memory {
    Host,
    /// CUDA device by ordinal, as libtorch numbers them.
    Cuda(usize),
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Host => f.write_str("host memory"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// A CUDA device keeps 1/`CUDA_RESERVE_DIVISOR` of its free memory out of what it offers:
/// activations, the allocator's fragmentation and libtorch's workspaces grow with load, not
/// with the span.
pub const CUDA_RESERVE_DIVISOR: u64 = 10;

/// Bytes offered for layers. `free` is what `memory` has free now (`None`: it could not be
/// read, with why); `configured` is `usable_memory_bytes` (0: derive it). The host offers
/// half of its available memory (the rest is the OS's, other processes' and the caches');
/// a CUDA device its free memory less a [`CUDA_RESERVE_DIVISOR`]th. A configured figure is
/// taken as long as `memory` has that much free: a node never claims more than it has.
pub fn usable_memory(
    memory: Memory,
    configured: u64,
    free: std::result::Result<u64, String>,
) -> Result<u64> {
    let free = free.map_err(|why| {
        Error::failed_precondition(format!(
            "usable_memory_bytes: cannot read the free memory of {memory} ({why}); the node \
             will not offer memory it cannot verify"
        ))
    })?;
    if configured > 0 {
        if configured > free {
            return Err(Error::invalid_argument(format!(
                "usable_memory_bytes: {configured} configured, but {memory} has {free} bytes \
                 free"
            )));
        }
        return Ok(configured);
    }
    let derived = match memory {
        Memory::Host => free / 2,
        Memory::Cuda(_) => free - free / CUDA_RESERVE_DIVISOR,
    };
    if derived == 0 {
        return Err(Error::failed_precondition(format!(
            "usable_memory_bytes: {memory} has no memory free"
        )));
    }
    Ok(derived)
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
pub fn parse_meminfo(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb.saturating_mul(1024))
}

/// The free memory of one GPU from `nvidia-smi --query-gpu=memory.free
/// --format=csv,noheader,nounits` (MiB, one line per GPU queried), in bytes.
pub fn parse_nvidia_smi_free(text: &str) -> std::result::Result<u64, String> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .ok_or("nvidia-smi printed nothing")?;
    let mib: u64 = line
        .parse()
        .map_err(|_| format!("nvidia-smi printed `{line}`, not a number of MiB"))?;
    Ok(mib.saturating_mul(1 << 20))
}

/// The identifier `nvidia-smi -i` takes for CUDA ordinal `ordinal`: with
/// `CUDA_VISIBLE_DEVICES` set, libtorch's ordinals index that list (of indices or UUIDs);
/// otherwise they are the driver's indices (which follow `CUDA_DEVICE_ORDER=PCI_BUS_ID`, the
/// order nvidia-smi uses; set it on machines with different GPU models).
pub fn nvidia_smi_id(ordinal: usize, visible_devices: Option<&str>) -> String {
    visible_devices
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| v.split(',').nth(ordinal))
        .map_or_else(|| ordinal.to_string(), |id| id.trim().to_string())
}

/// What `memory` has free now.
pub fn free_memory(memory: Memory) -> std::result::Result<u64, String> {
    match memory {
        Memory::Host => std::fs::read_to_string("/proc/meminfo")
            .map_err(|e| format!("/proc/meminfo: {e}"))
            .and_then(|text| parse_meminfo(&text).ok_or("no MemAvailable in /proc/meminfo".into())),
        Memory::Cuda(ordinal) => {
            let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
            let id = nvidia_smi_id(ordinal, visible.as_deref());
            let output = Command::new("nvidia-smi")
                .args([
                    "--query-gpu=memory.free",
                    "--format=csv,noheader,nounits",
                    "-i",
                    &id,
                ])
                .output()
                .map_err(|e| format!("running nvidia-smi: {e}"))?;
            if !output.status.success() {
                return Err(format!(
                    "nvidia-smi -i {id} failed: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
            }
            parse_nvidia_smi_free(&String::from_utf8_lossy(&output.stdout))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn a_gpu_offers_its_free_memory_not_the_hosts() {
        // 80 GiB device with 70 GiB free: 63 GiB offered, whatever the host has.
        assert_eq!(
            usable_memory(Memory::Cuda(0), 0, Ok(70 * GIB)).unwrap(),
            70 * GIB - 7 * GIB
        );
        assert_eq!(
            usable_memory(Memory::Host, 0, Ok(64 * GIB)).unwrap(),
            32 * GIB
        );
    }

    #[test]
    fn a_configured_figure_is_capped_by_what_the_memory_has() {
        assert_eq!(
            usable_memory(Memory::Cuda(1), 40 * GIB, Ok(70 * GIB)).unwrap(),
            40 * GIB
        );
        let err = usable_memory(Memory::Cuda(1), 80 * GIB, Ok(70 * GIB)).unwrap_err();
        assert!(
            err.to_string()
                .contains("cuda:1 has 75161927680 bytes free"),
            "{err}"
        );
        let err = usable_memory(Memory::Host, 80 * GIB, Ok(8 * GIB)).unwrap_err();
        assert!(err.to_string().contains("usable_memory_bytes"), "{err}");
    }

    #[test]
    fn unknown_free_memory_is_never_guessed() {
        for configured in [0, GIB] {
            let err = usable_memory(Memory::Cuda(0), configured, Err("no nvidia-smi".into()))
                .unwrap_err();
            assert!(err.to_string().contains("no nvidia-smi"), "{err}");
        }
        assert!(usable_memory(Memory::Host, 0, Ok(0)).is_err());
    }

    #[test]
    fn facts_are_read_from_their_tools_output() {
        let meminfo = "MemTotal:       16318480 kB\nMemFree:  1 kB\nMemAvailable:   8159240 kB\n";
        assert_eq!(parse_meminfo(meminfo), Some(8_159_240 * 1024));
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
        assert_eq!(parse_nvidia_smi_free("81037\n").unwrap(), 81_037 << 20);
        assert!(
            parse_nvidia_smi_free("[N/A]\n")
                .unwrap_err()
                .contains("N/A")
        );
        assert!(parse_nvidia_smi_free("").is_err());
        assert_eq!(nvidia_smi_id(1, None), "1");
        assert_eq!(nvidia_smi_id(1, Some("3,5")), "5");
        assert_eq!(nvidia_smi_id(0, Some("GPU-8a1b, GPU-9c2d")), "GPU-8a1b");
        assert_eq!(nvidia_smi_id(2, Some("")), "2");
    }
}
