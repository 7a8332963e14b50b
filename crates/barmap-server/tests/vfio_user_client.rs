//! rust-vmm's `vfio_user` crate's `Client`, unmodified, against the
//! server: what barmap's own vfio-user client (and any program built on
//! that crate) sees.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use barmap_server::{proto, DeviceConfig, Server};

#[path = "common/scratch.rs"]
mod scratch;

fn server(name: &str, model: &str, opts: &[(&str, &str)]) -> (Arc<Server>, PathBuf) {
    let dir = scratch::scratch_dir(name, 0o700);
    let path = dir.join("dev.sock");
    let opts: Vec<(String, String)> = opts
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let s = Server::new(
        &path,
        vec![DeviceConfig {
            name: model.into(),
            model: barmap_models::by_name(model, &opts).unwrap(),
            exclusive: false,
        }],
    )
    .unwrap();
    s.start().unwrap();
    (s, path)
}

#[test]
fn the_vfio_user_crates_client_negotiates_and_reaches_the_edu_model() {
    let (s, path) = server("edu", "edu", &[]);
    let mut c = vfio_user::Client::new(&path).expect("handshake and region list");
    // (The crate's `resettable()` reads VFIO_DEVICE_FLAGS_RESET inverted,
    // in 0.1.7: `flags & RESET != RESET`; the server sets the flag, as the
    // raw-client test checks, and the reset below works.)
    let mut id = [0u8; 4];
    c.region_read(0, 0, &mut id).unwrap();
    assert_eq!(u32::from_ne_bytes(id), barmap_models::edu::ID);
    c.region_write(0, 4, &0xf0f0u32.to_ne_bytes()).unwrap();
    c.region_read(0, 4, &mut id).unwrap();
    assert_eq!(u32::from_ne_bytes(id), !0xf0f0u32);
    let mut ids = [0u8; 4];
    c.region_read(proto::CONFIG_REGION, 0, &mut ids).unwrap();
    assert_eq!(u32::from_ne_bytes(ids), 0x11e8_1234);
    let msi = c.get_irq_info(proto::IRQ_MSI).unwrap();
    assert_eq!(msi.count, 1);
    // SAFETY: a new eventfd, owned here.
    let efd = unsafe { OwnedFd::from_raw_fd(libc::eventfd(0, libc::EFD_NONBLOCK)) };
    c.set_irqs(
        proto::IRQ_MSI,
        proto::IRQ_SET_DATA_EVENTFD | proto::IRQ_SET_ACTION_TRIGGER,
        0,
        1,
        &[efd.as_raw_fd()],
    )
    .unwrap();
    c.region_write(0, 0x60, &1u32.to_ne_bytes()).unwrap();
    let mut v = 0u64;
    // SAFETY: reading 8 bytes from our eventfd.
    assert_eq!(
        unsafe { libc::read(efd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) },
        8
    );
    c.reset().unwrap();
    c.region_read(0, 4, &mut id).unwrap();
    assert_eq!(
        u32::from_ne_bytes(id),
        0,
        "reset cleared the liveness register"
    );
    s.stop();
}

#[test]
fn the_vfio_user_crates_client_gets_the_memory_bar_as_an_fd_with_its_sparse_areas() {
    let (s, path) = server("default", "default", &[("memory", "1048576")]);
    let c = vfio_user::Client::new(&path).unwrap();
    let bar2 = c.region(2).expect("BAR2");
    assert_ne!(bar2.flags & proto::REGION_FLAG_MMAP, 0);
    assert_eq!(bar2.size, 1 << 20);
    assert!(bar2.file_offset.is_some(), "the memfd came with the reply");
    // BAR0 holds the MSI-X table and PBA: mmappable around them only, as
    // barmap's device says (a sparse capability), or whole (none).
    let bar0 = c.region(0).expect("BAR0");
    let info = s.devices()[0].model().device().region_info(0).unwrap();
    let whole = info.mmap_areas.len() == 1 && info.mmap_areas[0] == (0..bar0.size);
    let want: Vec<(u64, u64)> = if whole {
        Vec::new()
    } else {
        info.mmap_areas
            .iter()
            .map(|r| (r.start, r.end - r.start))
            .collect()
    };
    let got: Vec<(u64, u64)> = bar0
        .sparse_areas
        .iter()
        .map(|a| (a.offset, a.size))
        .collect();
    assert_eq!(got, want);
    eprintln!("BAR0 mmap areas: {got:x?}");
    s.stop();
}

/// A function with one memory BAR whose first page is trapped registers
/// (reached by message only): the rest is mmappable.
struct Sparse;

impl barmap_models::DeviceModel for Sparse {
    fn layout(&self) -> barmap_models::Layout {
        barmap_models::Layout::new(0x1234, 0x5a5a).region(
            2,
            barmap_models::RegionKind::Memory(
                barmap::RegionSpec::memory(1 << 16)
                    .mmap_areas(vec![0x1000..0x8000, 0x9000..0x10000]),
            ),
        )
    }
    fn read(
        &mut self,
        _: &mut barmap_models::Ctx<'_>,
        _: u32,
        _: u64,
        _: barmap_models::Width,
    ) -> u64 {
        0
    }
    fn write(
        &mut self,
        _: &mut barmap_models::Ctx<'_>,
        _: u32,
        _: u64,
        _: barmap_models::Width,
        _: u64,
    ) {
    }
    fn reset(&mut self) {}
}

#[test]
fn a_bar_with_trapped_pages_comes_with_a_sparse_mmap_capability_around_them() {
    let dir = scratch::scratch_dir("sparse", 0o700);
    let path = dir.join("dev.sock");
    let s = Server::new(
        &path,
        vec![DeviceConfig {
            name: "sparse".into(),
            model: Box::new(Sparse),
            exclusive: false,
        }],
    )
    .unwrap();
    s.start().unwrap();
    let c = vfio_user::Client::new(&path).unwrap();
    let bar2 = c.region(2).expect("BAR2");
    assert_ne!(bar2.flags & proto::REGION_FLAG_MMAP, 0);
    assert_ne!(bar2.flags & proto::REGION_FLAG_CAPS, 0);
    let got: Vec<(u64, u64)> = bar2
        .sparse_areas
        .iter()
        .map(|a| (a.offset, a.size))
        .collect();
    assert_eq!(got, [(0x1000, 0x7000), (0x9000, 0x7000)]);
    s.stop();
}
