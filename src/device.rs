//! Choosing where to run: one device by kind (`--device`), a list for data-parallel training
//! (`--devices`), and the adapters wgpu sees (`--list-devices`). Nothing here panics when no GPU
//! exists: Burn's `Device::default()` would pick wgpu when it is compiled in and panic at the
//! first tensor without an adapter, so every choice is made explicitly and checked.

use burn::tensor::Device;

use crate::error::{Error, Result};

/// A kind of device, as `--device` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    /// A GPU when wgpu finds a hardware adapter, else the CPU (flex), saying why in one line.
    Auto,
    /// A GPU through WebGPU (Vulkan, Metal, DX12), software adapters included; needs the `wgpu`
    /// feature.
    Wgpu,
    /// The CPU, Burn's flex backend.
    Flex,
    /// The CPU, Burn's deprecated ndarray backend (the `ndarray` feature).
    Ndarray,
}

/// An adapter wgpu can see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adapter {
    /// The driver's name for it, e.g. "NVIDIA H100 80GB HBM3" or "llvmpipe (LLVM 15.0.6, 256
    /// bits)".
    pub name: String,
    /// wgpu's device type: DiscreteGpu, IntegratedGpu, VirtualGpu, Cpu or Other.
    pub kind: String,
    /// The graphics API: Vulkan, Metal, Dx12 or Gl.
    pub api: String,
    /// False for software renderers (lavapipe/llvmpipe, WARP), which `Auto` does not pick.
    pub is_gpu: bool,
}

/// `device` as logs and reports name it: its Debug form, and for a GPU the runtime with the
/// compiler that serves it, as CubeCL names it: `wgpu<wgsl>` in this crate's `wgpu` build
/// (`wgpu<spirv>` or `wgpu<msl>` where Burn's `vulkan` or `metal` feature is on).
pub fn describe(device: &Device) -> String {
    let plain = device.clone().without_autodiff();
    #[cfg(feature = "wgpu")]
    if let burn::backend::DispatchDevice::Cube(cube) = plain.as_dispatch() {
        return format!("{plain:?} ({})", cube.client().name());
    }
    format!("{plain:?}")
}

/// The device for `choice` (see [`choose`] for why `Auto` fell back to the CPU).
pub fn choose_device(choice: DeviceChoice) -> Result<Device> {
    choose(choice).map(|c| c.device)
}

/// A chosen device, and why `Auto` took the CPU when it did.
#[derive(Debug, Clone)]
pub struct Chosen {
    /// The device.
    pub device: Device,
    /// For `Auto` on the CPU: the line that says why no GPU was taken, e.g. `no GPU: wgpu sees
    /// no GPU adapter; training on the CPU (flex)`.
    pub fallback: Option<String>,
}

/// The device for `choice`; `Auto` says why when it falls back to the CPU.
pub fn choose(choice: DeviceChoice) -> Result<Chosen> {
    let chosen = |device| Chosen {
        device,
        fallback: None,
    };
    match choice {
        DeviceChoice::Flex => Ok(chosen(Device::flex())),
        DeviceChoice::Ndarray => ndarray_device().map(chosen),
        DeviceChoice::Wgpu => gpu_device(None).map(chosen),
        DeviceChoice::Auto => {
            let found = adapters();
            let why = if !cfg!(feature = "wgpu") {
                "this build has no GPU support (rebuild with `--features wgpu`)".to_string()
            } else if found.is_empty() {
                "wgpu sees no GPU adapter".to_string()
            } else if !found.iter().any(|a| a.is_gpu) {
                // A software Vulkan driver (lavapipe) is slower than flex on the same CPU.
                // One adapter can appear once per graphics API: name each once.
                let mut names: Vec<&str> = found.iter().map(|a| a.name.as_str()).collect();
                names.sort_unstable();
                names.dedup();
                format!(
                    "wgpu sees only software adapters ({}); `--device wgpu` uses them anyway",
                    names.join(", ")
                )
            } else {
                match gpu_device(None) {
                    Ok(device) => return Ok(chosen(device)),
                    Err(why) => why.to_string(),
                }
            };
            Ok(Chosen {
                device: Device::flex(),
                fallback: Some(format!("no GPU: {why}; training on the CPU (flex)")),
            })
        }
    }
}

/// What `--list-devices` prints: one line per adapter wgpu sees, `name (type, API)`, software
/// ones marked; a line saying so when there is none or the build has no GPU support.
pub fn adapter_lines() -> Vec<String> {
    let found = adapters();
    let mut lines = Vec::new();
    if !cfg!(feature = "wgpu") {
        lines.push(
            "this build has no GPU support (rebuild with `--features wgpu`); CPU: flex".into(),
        );
    } else if found.is_empty() {
        lines.push("wgpu sees no adapter; CPU: flex".into());
    }
    lines.extend(found.into_iter().map(|a| {
        format!(
            "{} ({}, {}){}",
            a.name,
            a.kind,
            a.api,
            if a.is_gpu {
                ""
            } else {
                ": software, not used by --device auto"
            }
        )
    }));
    lines
}

/// The devices of a `--devices` list: comma-separated `flex` (or `cpu`), `ndarray`, `wgpu` (the
/// adapter wgpu prefers) and `gpu:N` (the N-th discrete GPU, from 0). A name may repeat:
/// `flex,flex` trains on two CPU workers.
pub fn parse_devices(list: &str) -> Result<Vec<Device>> {
    let names: Vec<&str> = list.split(',').map(str::trim).collect();
    if names.len() < 2 || names.iter().any(|n| n.is_empty()) {
        return Err(Error::Device(format!(
            "--devices takes two or more comma-separated devices (e.g. gpu:0,gpu:1 or flex,flex), \
             got `{list}`; for one device use --device"
        )));
    }
    names.into_iter().map(parse_one).collect()
}

fn parse_one(name: &str) -> Result<Device> {
    match name.to_ascii_lowercase().as_str() {
        "flex" | "cpu" => Ok(Device::flex()),
        "ndarray" => ndarray_device(),
        "wgpu" => gpu_device(None),
        other => match other.strip_prefix("gpu:").map(str::parse::<usize>) {
            Some(Ok(index)) => gpu_device(Some(index)),
            _ => Err(Error::Device(format!(
                "unknown device `{name}` in --devices; use flex (or cpu), ndarray, wgpu, or \
                 gpu:N for the N-th discrete GPU (--list-devices shows them)"
            ))),
        },
    }
}

/// The adapters wgpu sees on the graphics APIs Burn can pick from (Vulkan, Metal, DX12 and, when
/// none of those has a GPU, OpenGL); none without the `wgpu` feature.
#[cfg(feature = "wgpu")]
pub fn adapters() -> Vec<Adapter> {
    use burn::tensor::wgpu::wgpu;
    let apis = wgpu::Backends::PRIMARY | wgpu::Backends::GL;
    let infos = std::panic::catch_unwind(|| {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: apis,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        futures_lite::future::block_on(instance.enumerate_adapters(apis))
            .into_iter()
            .map(|a| a.get_info())
            .collect::<Vec<_>>()
    })
    .unwrap_or_default();
    infos
        .into_iter()
        .map(|i| Adapter {
            is_gpu: i.device_type != wgpu::DeviceType::Cpu,
            kind: format!("{:?}", i.device_type),
            api: format!("{:?}", i.backend),
            name: i.name,
        })
        .collect()
}

/// The adapters wgpu sees on the graphics APIs Burn can pick from (Vulkan, Metal, DX12 and, when
/// none of those has a GPU, OpenGL); none without the `wgpu` feature.
#[cfg(not(feature = "wgpu"))]
pub fn adapters() -> Vec<Adapter> {
    Vec::new()
}

#[cfg(feature = "ndarray")]
#[allow(deprecated)]
fn ndarray_device() -> Result<Device> {
    Ok(Device::ndarray())
}

#[cfg(not(feature = "ndarray"))]
fn ndarray_device() -> Result<Device> {
    Err(Error::Device(
        "this build has no ndarray backend; rebuild with `--features ndarray`".into(),
    ))
}

/// wgpu's preferred adapter (`None`) or the `index`-th discrete GPU, initialised now so that a
/// missing adapter is an error here rather than a panic at the first tensor. A runtime can be
/// initialised once per process, so each device is kept and handed out again.
#[cfg(feature = "wgpu")]
fn gpu_device(index: Option<usize>) -> Result<Device> {
    use burn::tensor::DeviceKind;
    use std::sync::Mutex;
    static STARTED: Mutex<Vec<(Option<usize>, Device)>> = Mutex::new(Vec::new());

    let mut started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, device)) = started.iter().find(|(i, _)| *i == index) {
        return Ok(device.clone());
    }
    let kind = index.map_or(DeviceKind::DefaultDevice, DeviceKind::DiscreteGpu);
    let what = index.map_or("adapter".to_string(), |i| format!("discrete GPU {i}"));
    // Adapter discovery reports "no adapter" as an error; a driver that panics instead is
    // caught too, so that no device choice ends in a panic.
    match std::panic::catch_unwind(|| Device::wgpu_options().device_kind(kind).init()) {
        Ok(Ok(device)) => {
            started.push((index, device.clone()));
            Ok(device)
        }
        Ok(Err(e)) => Err(Error::Device(format!(
            "wgpu found no usable {what} ({e}); see --list-devices, or use --device flex"
        ))),
        Err(_) => Err(Error::Device(format!(
            "wgpu failed while looking for an {what}; see --list-devices, or use --device flex"
        ))),
    }
}

#[cfg(not(feature = "wgpu"))]
fn gpu_device(_index: Option<usize>) -> Result<Device> {
    Err(Error::Device(
        "this build has no GPU support; rebuild with `--features wgpu`, or use --device flex"
            .into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_lists_name_their_problem() {
        let two = parse_devices("flex, cpu").expect("two CPU workers");
        assert_eq!(two.len(), 2);
        assert!(two.iter().all(|d| *d == Device::flex()));
        for (list, says) in [
            ("flex", "two or more"),
            ("flex,,flex", "two or more"),
            ("flex,tpu", "unknown device `tpu`"),
            ("gpu:x,flex", "unknown device `gpu:x`"),
        ] {
            let e = parse_devices(list).expect_err(list).to_string();
            assert!(e.contains(says), "{list}: {e}");
        }
    }

    #[cfg(not(feature = "wgpu"))]
    #[test]
    fn without_wgpu_a_gpu_is_an_error_and_auto_is_the_cpu() {
        let e = parse_devices("gpu:0,gpu:1")
            .expect_err("no wgpu")
            .to_string();
        assert!(e.contains("--features wgpu"), "{e}");
        assert!(choose_device(DeviceChoice::Wgpu).is_err());
        assert_eq!(choose_device(DeviceChoice::Auto).unwrap(), Device::flex());
    }
}
