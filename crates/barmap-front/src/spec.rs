//! What `barmap run` presents: the devices, their PCI addresses, groups and
//! cdev numbers. Written by `barmap run` into the testbed as JSON and read
//! by the front end inside the program.

use std::path::Path;

use barmap::Policy;
use barmap_models::{DeviceModel, ModelDevice};

/// One emulated device of a run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceSpec {
    /// The model: `default` (barmap's default device) or one of
    /// [`barmap_models::MODELS`].
    pub model: String,
    /// The model's options (`key=value` of `--device NAME,key=value`),
    /// other than `memory` and `policy`.
    #[serde(default)]
    pub options: Vec<(String, String)>,
    /// Size of the memory BAR (BAR2) of the default model, bytes.
    pub memory: u64,
    /// Fault policy.
    pub policy: String,
    /// The limit on device memory committed by the program's devices
    /// together (`barmap run --memory-limit`), bytes; `None`: barmap's
    /// default ([`barmap::MemoryBudget::process`]).
    #[serde(default)]
    pub memory_limit: Option<u64>,
    /// PCI address, `DDDD:BB:DD.F`.
    pub bdf: String,
    /// IOMMU group number.
    pub group: u32,
    /// vfio cdev number (`/dev/vfio/devices/vfioN`).
    pub cdev: u32,
    /// SR-IOV: for a physical function, its TotalVFs (0: no SR-IOV
    /// capability); for a virtual function, 0.
    #[serde(default)]
    pub total_vfs: u16,
    /// SR-IOV: the VF device ID (of a physical function's VFs, or of this
    /// virtual function).
    #[serde(default)]
    pub vf_device: u16,
    /// SR-IOV: for a virtual function, the PCI address of its physical
    /// function and its index among the PF's VFs.
    #[serde(default)]
    pub physfn: Option<(String, u16)>,
    /// The socket of the barmap device server that serves this device to
    /// every process of the run (`barmap run --shared`: the launcher's own
    /// server; `--server PATH`: a running `barmap serve`). The program's
    /// processes reach it as vfio-user clients ([`crate::remote`]).
    #[serde(default)]
    pub served: Option<String>,
    /// What the server said of the device before the program started
    /// (IDs and BARs, for the sysfs view), for a device the run did not
    /// build itself.
    #[serde(default)]
    pub served_ids: Option<ServedIds>,
}

/// A served device's identity and BARs, as its server answers them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServedIds {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code (24 bits).
    pub class: u32,
    /// Revision ID.
    pub revision: u8,
    /// Size of each BAR (0: none).
    pub bars: [u64; 6],
    /// Whether each BAR is prefetchable memory.
    pub prefetchable: [bool; 6],
}

impl ServedIds {
    /// The layout sysfs shows for these IDs and BARs.
    pub fn layout(&self) -> barmap_models::Layout {
        let mut l = barmap_models::Layout::new(self.vendor, self.device);
        l.class = self.class;
        l.revision = self.revision;
        for (i, &size) in self.bars.iter().enumerate() {
            if size == 0 {
                continue;
            }
            let kind = if self.prefetchable[i] {
                barmap_models::RegionKind::Memory(barmap::device::RegionSpec {
                    prefetchable: true,
                    ..barmap::device::RegionSpec::memory(size)
                })
            } else {
                barmap_models::RegionKind::Registers {
                    size,
                    mmap: true,
                    bits64: false,
                }
            };
            l.regions.push((i as u32, kind));
        }
        l
    }
}

impl DeviceSpec {
    /// Reads a device description from a TOML file:
    ///
    /// ```toml
    /// model = "default"   # or "edu", "ioat", "igb"
    /// memory = "64M"      # the default model's memory BAR (BAR2)
    /// policy = "page"     # optional: the run's --policy otherwise
    /// xfercap = 20        # ioat only: copies of up to 2^N bytes
    /// mac = "52:54:00:12:34:56"  # igb only: the port's address
    /// sriov = 2           # any model: an SR-IOV PF with TotalVFs 2
    /// ```
    pub fn from_toml(text: &str, default_policy: Policy) -> Result<DeviceSpec, String> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            model: Option<String>,
            memory: Option<String>,
            policy: Option<String>,
            xfercap: Option<u32>,
            mac: Option<String>,
            sriov: Option<u16>,
        }
        let f: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut short = f.model.unwrap_or_else(|| "default".into());
        if let Some(m) = f.memory {
            short += &format!(",memory={m}");
        }
        if let Some(p) = f.policy {
            short += &format!(",policy={p}");
        }
        if let Some(x) = f.xfercap {
            short += &format!(",xfercap={x}");
        }
        if let Some(m) = f.mac {
            short += &format!(",mac={m}");
        }
        if let Some(n) = f.sriov {
            short += &format!(",sriov={n}");
        }
        Self::parse(&short, default_policy)
    }

    /// Parses `NAME[,memory=SIZE][,policy=P][,key=value...]` (for example
    /// `default,memory=64M,policy=page` or `edu`), or, if `text` names a `.toml`
    /// file, reads it ([`DeviceSpec::from_toml`]); the addresses are
    /// assigned by [`RunSpec::new`].
    pub fn parse(text: &str, default_policy: Policy) -> Result<DeviceSpec, String> {
        if let Some(socket) = text.strip_prefix(REMOTE_PREFIX) {
            return Self::remote(socket, default_policy);
        }
        if text.ends_with(".toml") {
            let body = std::fs::read_to_string(text).map_err(|e| format!("{text}: {e}"))?;
            return Self::from_toml(&body, default_policy).map_err(|e| format!("{text}: {e}"));
        }
        let mut parts = text.split(',');
        let model = parts.next().unwrap_or_default().trim().to_string();
        if !barmap_models::MODELS.contains(&model.as_str()) {
            return Err(format!(
                "unknown device model {model:?} (known: {})",
                barmap_models::MODELS.join(", ")
            ));
        }
        let mut spec = DeviceSpec {
            model,
            options: Vec::new(),
            memory: DEFAULT_MEMORY,
            policy: default_policy.to_string(),
            memory_limit: None,
            bdf: String::new(),
            group: 0,
            cdev: 0,
            total_vfs: 0,
            vf_device: 0,
            physfn: None,
            served: None,
            served_ids: None,
        };
        for kv in parts {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("expected key=value, got {kv:?}"))?;
            match k.trim() {
                "memory" if spec.model == "default" => spec.memory = parse_size(v)?,
                "policy" => {
                    let p: Policy = v.trim().parse().map_err(|e| format!("{e}"))?;
                    spec.policy = p.to_string();
                }
                "sriov" => {
                    spec.total_vfs = v
                        .trim()
                        .parse()
                        .ok()
                        .filter(|n| (1..=crate::sriov::MAX_VFS).contains(n))
                        .ok_or_else(|| {
                            format!(
                                "sriov={v}: not a number of VFs from 1 to {}",
                                crate::sriov::MAX_VFS
                            )
                        })?
                }
                other => spec.options.push((other.to_string(), v.trim().to_string())),
            }
        }
        // The model checks its own options.
        let layout = spec.model()?.layout();
        if spec.total_vfs > 0 {
            spec.vf_device = crate::sriov::vf_device_id(&spec.model, layout.device);
        }
        // As barmap's device builder will: a power of two, at most what a
        // 64-bit BAR may be (barmap::Error::BarSizeNotPowerOfTwo, BarTooLarge).
        barmap::memory::check_bar_size(barmap::DEFAULT_MEMORY_BAR, spec.memory, true)
            .map_err(|e| format!("memory={}: {e}", spec.memory))?;
        Ok(spec)
    }

    /// A device served by the vfio-user server listening at `socket`
    /// (`vfio-user:PATH`): model [`REMOTE_MODEL`], the socket's absolute
    /// path as option `socket`.
    fn remote(socket: &str, default_policy: Policy) -> Result<DeviceSpec, String> {
        if socket.is_empty() {
            return Err("vfio-user: expected the server's socket path after the colon".into());
        }
        let path = std::path::absolute(socket).map_err(|e| format!("{socket}: {e}"))?;
        Ok(DeviceSpec {
            model: REMOTE_MODEL.into(),
            options: vec![("socket".into(), path.to_string_lossy().into_owned())],
            memory: 0,
            policy: default_policy.to_string(),
            memory_limit: None,
            bdf: String::new(),
            group: 0,
            cdev: 0,
            total_vfs: 0,
            vf_device: 0,
            physfn: None,
            served: None,
            served_ids: None,
        })
    }

    /// The vfio-user server's socket, for a device served over vfio-user.
    pub fn remote_socket(&self) -> Option<&str> {
        if let Some(s) = &self.served {
            return Some(s);
        }
        (self.model == REMOTE_MODEL)
            .then(|| self.options.iter().find(|(k, _)| k == "socket"))
            .flatten()
            .map(|(_, v)| v.as_str())
    }

    /// The device model this spec names, configured by its options.
    pub fn model(&self) -> Result<Box<dyn DeviceModel>, String> {
        self.model_in(None)
    }

    /// [`DeviceSpec::model`] for a device server that serves the run whose
    /// testbed is `testbed` (`barmap run --shared`): an SR-IOV PF's NumVFs
    /// then follows the testbed's `sriov_numvfs`, written by any of the
    /// run's processes.
    pub fn model_in(&self, testbed: Option<&Path>) -> Result<Box<dyn DeviceModel>, String> {
        let mut options = self.options.clone();
        if self.model == "default" {
            options.push(("memory".into(), self.memory.to_string()));
        }
        let inner = barmap_models::by_name(&self.model, &options)?;
        Ok(if self.physfn.is_some() {
            Box::new(crate::sriov::VirtFn::new(inner, self.vf_device))
        } else if self.total_vfs > 0 {
            let pf = crate::sriov::PhysFn::new(inner, self);
            match testbed {
                Some(tb) => Box::new(pf.served_in(tb)),
                None => Box::new(pf),
            }
        } else {
            inner
        })
    }

    /// Whether this is an SR-IOV virtual function.
    pub fn is_vf(&self) -> bool {
        self.physfn.is_some()
    }

    /// Builds the emulated device, charging its memory to the process's
    /// budget (whose limit [`DeviceSpec::memory_limit`] sets).
    pub fn build(&self) -> barmap::Result<ModelDevice> {
        let policy: Policy = self
            .policy
            .parse()
            .map_err(|_| barmap::Error::InvalidSpec(format!("policy {}", self.policy)))?;
        let model = self.model().map_err(barmap::Error::InvalidSpec)?;
        if let Some(limit) = self.memory_limit {
            barmap::MemoryBudget::process().set_limit(limit);
        }
        ModelDevice::builder_boxed(model).policy(policy).build()
    }
}

/// `--device vfio-user:PATH`: a device served by the vfio-user server at
/// PATH ([`crate::remote`]).
pub const REMOTE_PREFIX: &str = "vfio-user:";

/// The [`DeviceSpec::model`] of a device served over vfio-user.
pub const REMOTE_MODEL: &str = "vfio-user";

/// The default model's memory BAR (BAR2): 256 MiB, as barmap's default
/// device has it.
pub const DEFAULT_MEMORY: u64 = 256 << 20;

/// Parses sizes like `4096`, `64K`, `16M`, `1G`, `1T`, `2MiB` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let s = s
        .strip_suffix("iB")
        .or_else(|| s.strip_suffix('B'))
        .unwrap_or(s);
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("unknown size suffix in {s:?} (use K, M, G or T)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("not a size: {s:?}"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size too large: {s:?}"))
}

/// Everything a run presents.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunSpec {
    /// The devices, in order.
    pub devices: Vec<DeviceSpec>,
    /// The directory of the group and device lock files, when the devices'
    /// server keeps one for all its clients (`barmap run --shared`,
    /// `--server`: `barmap_server::locks_dir`), so that two runs joining
    /// one server see each other's opens; None: the testbed's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locks: Option<String>,
}

/// File name of the spec inside the testbed.
pub const SPEC_FILE: &str = "barmap-run.json";
/// Environment variable naming the testbed directory.
pub const TESTBED_ENV: &str = "BARMAP_TESTBED";

/// First IOMMU group number handed out.
const FIRST_GROUP: u32 = 42;

impl RunSpec {
    /// Assigns PCI addresses (`0000:ba:NN.0`), groups and cdev numbers,
    /// and appends the virtual functions that each SR-IOV physical
    /// function may enable (see [`crate::sriov`]): their addresses follow
    /// from the PF's and its capability's offset and stride, their groups
    /// and cdevs come after the PFs'. They exist only while the PF's
    /// `sriov_numvfs` covers them.
    pub fn new(mut devices: Vec<DeviceSpec>) -> RunSpec {
        devices.retain(|d| !d.is_vf());
        for (i, d) in devices.iter_mut().enumerate() {
            d.bdf = format!("0000:ba:{i:02x}.0");
            d.group = FIRST_GROUP + i as u32;
            d.cdev = i as u32;
        }
        let mut next = devices.len() as u32;
        let mut vfs = Vec::new();
        for (p, pf) in devices.iter().enumerate() {
            for k in 0..pf.total_vfs {
                let mut vf = pf.clone();
                vf.options.retain(|(key, _)| key != "wire");
                vf.total_vfs = 0;
                vf.bdf = crate::sriov::vf_bdf(p as u32, k);
                vf.physfn = Some((pf.bdf.clone(), k));
                vf.group = FIRST_GROUP + next;
                vf.cdev = next;
                next += 1;
                vfs.push(vf);
            }
        }
        devices.extend(vfs);
        RunSpec {
            devices,
            locks: None,
        }
    }

    /// Reads the spec of the testbed at `dir`, if `dir` is the testbed
    /// this run made and still owns ([`crate::testbed::check`]): a
    /// directory that is gone, or that fails a check, is an error, and the
    /// process then sees no devices ([`crate::testbed::refused`]).
    pub fn load(dir: &Path) -> std::io::Result<RunSpec> {
        let spec = crate::testbed::read_file(dir, SPEC_FILE)
            .and_then(|text| serde_json::from_slice(&text).map_err(std::io::Error::other));
        if spec.is_err() {
            crate::testbed::mark_refused();
        }
        spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_and_toml_files_describe_the_same_device() {
        let a = DeviceSpec::parse("default,memory=16M,policy=page", Policy::Prefault).unwrap();
        let b = DeviceSpec::from_toml(
            "model = \"default\"\nmemory = \"16M\"\npolicy = \"page\"\n",
            Policy::Prefault,
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.memory, 16 << 20);
        assert!(DeviceSpec::from_toml("colour = \"red\"\n", Policy::Prefault).is_err());
        assert!(DeviceSpec::parse("ioat9", Policy::Prefault).is_err());
        assert!(DeviceSpec::parse("edu,colour=red", Policy::Prefault).is_err());
        assert!(DeviceSpec::parse("edu,memory=16M", Policy::Prefault).is_err());
        let edu = DeviceSpec::parse("edu,policy=page", Policy::Prefault).unwrap();
        assert_eq!((edu.model.as_str(), edu.policy.as_str()), ("edu", "page"));
        assert!(DeviceSpec::parse("default,memory=3M", Policy::Prefault).is_err());
        assert_eq!(
            DeviceSpec::parse("default", Policy::Prefault)
                .unwrap()
                .memory,
            256 << 20
        );
        let big = DeviceSpec::parse("default,memory=1T", Policy::Prefault).unwrap();
        assert_eq!(big.memory, 1 << 40);
        for bad in [
            "default,memory=128T",
            "default,memory=8388608T",
            "default,memory=0",
        ] {
            let e = DeviceSpec::parse(bad, Policy::Prefault).unwrap_err();
            assert!(e.contains("BAR2"), "{bad}: {e}");
        }
        let toml = DeviceSpec::from_toml("memory = \"3M\"\n", Policy::Prefault).unwrap_err();
        assert!(toml.contains("not a power of two"), "{toml}");
        let ioat = DeviceSpec::parse("ioat,xfercap=20", Policy::Prefault).unwrap();
        let toml = DeviceSpec::from_toml("model = \"ioat\"\nxfercap = 20\n", Policy::Prefault);
        assert_eq!(toml.unwrap(), ioat);
        assert!(DeviceSpec::parse("ioat,xfercap=40", Policy::Prefault).is_err());
        assert!(DeviceSpec::parse("ioat,memory=16M", Policy::Prefault).is_err());
        let igb = DeviceSpec::parse("igb,mac=02:00:00:00:00:01", Policy::Prefault).unwrap();
        let toml = DeviceSpec::from_toml(
            "model = \"igb\"\nmac = \"02:00:00:00:00:01\"\n",
            Policy::Prefault,
        );
        assert_eq!(toml.unwrap(), igb);
        assert!(DeviceSpec::parse("igb,mac=01:00:00:00:00:01", Policy::Prefault).is_err());
        assert!(DeviceSpec::parse("igb,mac=02:00:00:00:01", Policy::Prefault).is_err());
        let remote = DeviceSpec::parse("vfio-user:/run/dev.sock", Policy::Prefault).unwrap();
        assert_eq!(remote.remote_socket(), Some("/run/dev.sock"));
        assert_eq!(ioat.remote_socket(), None);
        assert!(DeviceSpec::parse("vfio-user:", Policy::Prefault).is_err());
    }

    #[test]
    fn an_sriov_pf_brings_its_vfs_with_groups_and_cdevs_after_the_pfs() {
        let pf = DeviceSpec::parse("igb,sriov=2,wire=w", Policy::Prefault).unwrap();
        assert_eq!((pf.total_vfs, pf.vf_device), (2, 0x10ca));
        let toml = DeviceSpec::from_toml("model = \"igb\"\nsriov = 2\n", Policy::Prefault);
        assert_eq!(toml.unwrap().total_vfs, 2);
        let ioat = DeviceSpec::parse("ioat,sriov=1", Policy::Prefault).unwrap();
        assert_eq!(ioat.vf_device, ioat.model().unwrap().layout().device);
        for bad in ["igb,sriov=0", "igb,sriov=65", "igb,sriov=x"] {
            assert!(DeviceSpec::parse(bad, Policy::Prefault).is_err(), "{bad}");
        }
        let edu = DeviceSpec::parse("edu", Policy::Prefault).unwrap();
        let run = RunSpec::new(vec![pf, edu]);
        let names: Vec<(&str, u32, u32)> = run
            .devices
            .iter()
            .map(|d| (d.bdf.as_str(), d.group, d.cdev))
            .collect();
        assert_eq!(
            names,
            [
                ("0000:ba:00.0", 42, 0),
                ("0000:ba:01.0", 43, 1),
                ("0000:bb:00.0", 44, 2),
                ("0000:bb:00.1", 45, 3),
            ]
        );
        let vf = &run.devices[2];
        assert_eq!(vf.physfn, Some(("0000:ba:00.0".to_string(), 0)));
        assert!(
            vf.options.iter().all(|(k, _)| k != "wire"),
            "a VF joins no wire"
        );
        let layout = vf.model().unwrap().layout();
        assert_eq!((layout.device, layout.intx), (0x10ca, false));
        // Laid out again (a spec read back), the VFs are not doubled.
        assert_eq!(RunSpec::new(run.devices.clone()).devices.len(), 4);
    }
}
