//! Random ioctls on every kind of fd the front end hands out.
//!
//! - Random inputs of each class of rejected input that
//!   [`common::kernel_errnos::KERNEL_ERRNOS`] names: each gets exactly the
//!   errno that the kernel's source gives for it, and changes nothing.
//! - Fully random calls, with random arguments: short, long and zero
//!   `argsz`, unknown flags, bad indexes, bad pointers, fds of the wrong
//!   type. Each either succeeds or fails with an errno of the table (or
//!   one of iommufd's), never panics, and a failed call changes nothing
//!   observable (the front end's digest).
//!
//! `BARMAP_IOCTL_FUZZ_ITERS` sets the number of fully random calls
//! (default 100000), and a tenth of it the inputs per class.

use barmap_front::Errno;
use barmap_vfio::iommufd as ifd;
use barmap_vfio::uapi as v;

mod common;

use common::kernel_errnos::{errno_of, KERNEL_ERRNOS};

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

const REQUESTS: [libc::c_ulong; 24] = [
    v::VFIO_GET_API_VERSION,
    v::VFIO_CHECK_EXTENSION,
    v::VFIO_SET_IOMMU,
    v::VFIO_GROUP_GET_STATUS,
    v::VFIO_GROUP_SET_CONTAINER,
    v::VFIO_GROUP_UNSET_CONTAINER,
    v::VFIO_GROUP_GET_DEVICE_FD,
    v::VFIO_DEVICE_GET_INFO,
    v::VFIO_DEVICE_GET_REGION_INFO,
    v::VFIO_DEVICE_GET_IRQ_INFO,
    v::VFIO_DEVICE_SET_IRQS,
    v::VFIO_DEVICE_RESET,
    v::VFIO_IOMMU_GET_INFO,
    v::VFIO_IOMMU_MAP_DMA,
    v::VFIO_IOMMU_UNMAP_DMA,
    v::VFIO_DEVICE_BIND_IOMMUFD,
    v::VFIO_DEVICE_ATTACH_IOMMUFD_PT,
    v::VFIO_DEVICE_DETACH_IOMMUFD_PT,
    ifd::IOMMU_DESTROY,
    ifd::IOMMU_IOAS_ALLOC,
    ifd::IOMMU_IOAS_MAP,
    ifd::IOMMU_IOAS_UNMAP,
    ifd::IOMMU_IOAS_IOVA_RANGES,
    ifd::IOMMU_VFIO_IOAS,
];

/// Errnos of iommufd's ioctls (outside the legacy table).
const IOMMUFD_ERRNOS: [Errno; 16] = [
    Errno::EINVAL,
    // iommufd: bytes past the structure the kernel knows are not zero.
    Errno(libc::E2BIG),
    Errno::EFAULT,
    Errno::ENOTTY,
    Errno::EEXIST,
    Errno::ENOENT,
    Errno::EBUSY,
    Errno::ENOSPC,
    Errno::EBADF,
    Errno::ENODEV,
    Errno::EOPNOTSUPP,
    Errno::EOVERFLOW,
    Errno::EMSGSIZE,
    Errno::EACCES,
    Errno::EIO,
    Errno::EPERM,
];

#[test]
fn random_ioctls_get_the_kernels_errnos_and_failures_change_nothing() {
    let iters: u64 = std::env::var("BARMAP_IOCTL_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let seed: u64 = std::env::var("BARMAP_IOCTL_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed);
    let (f, _dir) = common::front("default,memory=4M");
    let mut fds = vec![
        f.open("/dev/vfio/vfio", 0).unwrap(),
        f.open("/dev/vfio/42", 0).unwrap(),
        f.open("/dev/iommu", 0).unwrap(),
        f.open("/dev/vfio/devices/vfio0", 0).unwrap(),
        9999, // not an fd
    ];
    // So that some SET_IRQS calls can succeed.
    let efd = common::eventfd();
    let memory = vec![0u8; 1 << 20];
    let va = (memory.as_ptr() as u64).next_multiple_of(4096);
    let mut rng = Rng(seed | 1);
    let mut buf = [0u64; 64];
    let (mut ok, mut failed) = (0u64, 0u64);
    for i in 0..iters {
        for w in buf.iter_mut() {
            *w = match rng.below(8) {
                0 => 0,
                1 => rng.below(16),
                2 => {
                    u64::from(fds[rng.below(fds.len() as u64) as usize] as u32)
                        | (u64::from(efd as u32) << 32)
                }
                3 => va + rng.below(64) * 4096,
                4 => rng.pick(&[4096, 1 << 20, 1 << 21]),
                5 => u64::MAX - rng.below(8192),
                _ => rng.next(),
            };
        }
        // The size field: a small or plausible argsz, or junk.
        let argsz: u32 = rng.pick(&[0, 4, 8, 12, 15, 16, 20, 23, 24, 31, 32, 40, 48, 4096]);
        buf[0] = (buf[0] & !0xffff_ffff) | u64::from(argsz);
        let req = if rng.below(20) == 0 {
            rng.next() as libc::c_ulong & 0xffff
        } else {
            rng.pick(&REQUESTS)
        };
        let fd = fds[rng.below(fds.len() as u64) as usize];
        let arg = match rng.below(10) {
            0 => 0,
            1 => 8,                         // a bad pointer
            2 => rng.below(16) as usize,    // an integer argument
            3 => 0x7fff_ffff_f000,          // unmapped
            _ => buf.as_mut_ptr() as usize, // a structure
        };
        let before = f.digest();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            f.ioctl(fd, req as u64, arg)
        }));
        let r = r.unwrap_or_else(|_| panic!("call {i}: ioctl({fd}, {req:#x}, {arg:#x}) panicked"));
        match r {
            Ok(v) => {
                ok += 1;
                // A new device fd: keep it in the pool.
                if req == v::VFIO_GROUP_GET_DEVICE_FD && v > 0 {
                    fds.push(v as i32);
                }
            }
            Err(e) => {
                failed += 1;
                assert!(
                    IOMMUFD_ERRNOS.contains(&e) || KERNEL_ERRNOS.iter().any(|r| r.1 == e.0),
                    "call {i}: ioctl({fd}, {req:#x}) failed with errno {}",
                    e.0
                );
                // The kernel's IOAS_UNMAP unmaps the areas before the
                // first one that the range only partly covers, then fails
                // with ENOENT (iopt_unmap_iova_range).
                if req == ifd::IOMMU_IOAS_UNMAP && e == Errno::ENOENT {
                    continue;
                }
                assert_eq!(
                    before,
                    f.digest(),
                    "call {i}: ioctl({fd}, {req:#x}, {arg:#x}) failed with errno {} but changed state",
                    e.0
                );
            }
        }
    }
    assert!(
        ok > 0 && failed > 0,
        "both outcomes seen: {ok} ok, {failed} failed"
    );
}

/// The state a class of input is tried in.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Setup {
    /// A container with no group, and a group with no container.
    Fresh,
    /// The group in the container, no IOMMU driver set.
    Attached,
    /// Container (type1v2), group, device fd, one DMA mapping at
    /// [`MAPPED`].
    Legacy,
    /// [`Setup::Legacy`] with MSI-X vector 0 enabled.
    Msix,
    /// [`Setup::Legacy`] with INTx enabled.
    Intx,
}

/// IOVA and size of the mapping of [`Setup::Legacy`].
const MAPPED: (u64, u64) = (0x10_0000, 0x4000);

/// A front end in one [`Setup`], with memory of every protection.
struct Env {
    f: barmap_front::Front,
    _dir: common::Dir,
    c: i32,
    g: i32,
    d: i32,
    efd: i32,
    /// Readable and writable, private.
    rw: u64,
    /// Read-only.
    ro: u64,
    /// PROT_NONE.
    none: u64,
    _buf: Vec<u8>,
}

fn anon(prot: i32) -> u64 {
    // SAFETY: a fresh private mapping for the test, never unmapped.
    let a = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            1 << 20,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(a, libc::MAP_FAILED);
    a as u64
}

fn env(setup: Setup) -> Env {
    let (f, dir) = common::front("default,memory=4M");
    let buf = vec![0u8; 2 << 20];
    let rw = (buf.as_ptr() as u64).next_multiple_of(4096);
    let efd = common::eventfd();
    let c = f.open("/dev/vfio/vfio", 0).unwrap();
    let g = f.open("/dev/vfio/42", 0).unwrap();
    let mut d = -1;
    if setup != Setup::Fresh {
        let mut cfd = c;
        f.ioctl(g, v::VFIO_GROUP_SET_CONTAINER, common::p(&mut cfd))
            .unwrap();
    }
    if !matches!(setup, Setup::Fresh | Setup::Attached) {
        f.ioctl(c, v::VFIO_SET_IOMMU, v::VFIO_TYPE1V2_IOMMU as usize)
            .unwrap();
        d = f
            .ioctl(
                g,
                v::VFIO_GROUP_GET_DEVICE_FD,
                c"0000:ba:00.0".as_ptr() as usize,
            )
            .unwrap() as i32;
        let mut m = dma_map(32, 3, rw, MAPPED.0, MAPPED.1);
        f.ioctl(c, v::VFIO_IOMMU_MAP_DMA, m.as_mut_ptr() as usize)
            .unwrap();
    }
    let index = match setup {
        Setup::Msix => Some(v::VFIO_PCI_MSIX_IRQ_INDEX),
        Setup::Intx => Some(v::VFIO_PCI_INTX_IRQ_INDEX),
        _ => None,
    };
    if let Some(i) = index {
        f.ioctl(
            d,
            v::VFIO_DEVICE_SET_IRQS,
            common::p(&mut common::set_one(i, efd)),
        )
        .unwrap();
    }
    Env {
        f,
        _dir: dir,
        c,
        g,
        d,
        efd,
        rw,
        ro: anon(libc::PROT_READ),
        none: anon(libc::PROT_NONE),
        _buf: buf,
    }
}

fn words(ws: &[u64]) -> Vec<u8> {
    let mut out: Vec<u8> = ws.iter().flat_map(|w| w.to_ne_bytes()).collect();
    out.resize(256, 0);
    out
}

fn dma_map(argsz: u32, flags: u32, vaddr: u64, iova: u64, size: u64) -> Vec<u8> {
    words(&[u64::from(argsz) | u64::from(flags) << 32, vaddr, iova, size])
}

fn dma_unmap(argsz: u32, flags: u32, iova: u64, size: u64, bitmap: [u64; 3]) -> Vec<u8> {
    let h = u64::from(argsz) | u64::from(flags) << 32;
    words(&[h, iova, size, bitmap[0], bitmap[1], bitmap[2]])
}

fn irq_set(argsz: u32, flags: u32, index: u32, start: u32, count: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for x in [argsz, flags, index, start, count] {
        out.extend_from_slice(&x.to_ne_bytes());
    }
    out.extend_from_slice(data);
    out.resize(256, 0);
    out
}

fn info(argsz: u32, index: u32) -> Vec<u8> {
    words(&[u64::from(argsz), u64::from(index)])
}

/// The argument of one call: an integer or a structure.
enum Arg {
    Int(usize),
    Buf(Vec<u8>),
}

/// One random input of `class`: its setup, fd, request and argument.
fn instance(class: &str, r: &mut Rng, e: Option<&Env>) -> (Setup, i32, libc::c_ulong, Arg) {
    use libc::c_ulong;
    use Arg::{Buf, Int};
    use Setup::*;
    let (c, g, d, efd) = e.map_or((0, 0, 0, 0), |e| (e.c, e.g, e.d, e.efd));
    let (rw, ro, none) = e.map_or((0, 0, 0), |e| (e.rw, e.ro, e.none));
    let page = |r: &mut Rng| 4096 * (1 + r.below(16));
    let rwflags = |r: &mut Rng| 1 + r.below(3) as u32; // READ, WRITE or both
    let bad_ptr = |r: &mut Rng| r.pick(&[0usize, 8, 0x7fff_ffff_f000]);
    let unknown_base = |r: &mut Rng| (0x3b00 | (0x80 + r.below(0x7f))) as c_ulong;
    let free_iova = |r: &mut Rng| 0x100_0000 + 4096 * r.below(1024);
    let eventfd_data = |fd: i32| fd.to_ne_bytes().to_vec();
    let trig = v::VFIO_IRQ_SET_ACTION_TRIGGER;
    let ev = v::VFIO_IRQ_SET_DATA_EVENTFD;
    let none_t = v::VFIO_IRQ_SET_DATA_NONE;
    match class {
        "container: unknown ioctl before SET_IOMMU" => {
            let unknown = unknown_base(r);
            let req = r.pick(&[unknown, v::VFIO_IOMMU_GET_INFO, v::VFIO_IOMMU_UNMAP_DMA]);
            (
                r.pick(&[Fresh, Attached]),
                c,
                req,
                Int(r.below(16) as usize),
            )
        }
        "container: MAP_DMA before SET_IOMMU" => {
            let m = dma_map(32, rwflags(r), rw, free_iova(r), page(r));
            (r.pick(&[Fresh, Attached]), c, v::VFIO_IOMMU_MAP_DMA, Buf(m))
        }
        "container: unknown ioctl after SET_IOMMU" => {
            (Legacy, c, unknown_base(r), Int(r.below(16) as usize))
        }
        "container: SET_IOMMU without a group" => {
            let t = r.pick(&[v::VFIO_TYPE1_IOMMU, v::VFIO_TYPE1V2_IOMMU, 99]);
            (Fresh, c, v::VFIO_SET_IOMMU, Int(t as usize))
        }
        "container: SET_IOMMU twice" => {
            let t = r.pick(&[v::VFIO_TYPE1_IOMMU, v::VFIO_TYPE1V2_IOMMU, 99]);
            (Legacy, c, v::VFIO_SET_IOMMU, Int(t as usize))
        }
        "container: SET_IOMMU of a type no driver claims" => {
            let t = r.pick(&[0, 2, 4, 5, 6, 7, 8, 10, 11, 12, 99]);
            (Attached, c, v::VFIO_SET_IOMMU, Int(t as usize))
        }
        "container: SET_IOMMU(VFIO_UNMAP_ALL)" => (
            Attached,
            c,
            v::VFIO_SET_IOMMU,
            Int(v::VFIO_UNMAP_ALL as usize),
        ),
        "group: unknown ioctl" => (r.pick(&[Fresh, Legacy]), g, unknown_base(r), Int(0)),
        "group: GET_STATUS with a bad pointer" => {
            (Fresh, g, v::VFIO_GROUP_GET_STATUS, Int(bad_ptr(r)))
        }
        "group: GET_STATUS with argsz < 8" => {
            let b = words(&[r.below(8)]);
            (
                r.pick(&[Fresh, Legacy]),
                g,
                v::VFIO_GROUP_GET_STATUS,
                Buf(b),
            )
        }
        "group: SET_CONTAINER with a bad pointer" => (
            r.pick(&[Fresh, Legacy]),
            g,
            v::VFIO_GROUP_SET_CONTAINER,
            Int(bad_ptr(r)),
        ),
        "group: SET_CONTAINER with a number that is no fd" => {
            let fd = r.pick(&[-1i32, 9999, 100_000, i32::MIN]);
            let b = words(&[u64::from(fd as u32)]);
            (
                r.pick(&[Fresh, Legacy]),
                g,
                v::VFIO_GROUP_SET_CONTAINER,
                Buf(b),
            )
        }
        "group: SET_CONTAINER with a container already set" => {
            let fd = r.pick(&[c, g, d, efd]);
            let b = words(&[u64::from(fd as u32)]);
            (Legacy, g, v::VFIO_GROUP_SET_CONTAINER, Buf(b))
        }
        "group: SET_CONTAINER with an fd that is no container" => {
            let fd = r.pick(&[g, efd, 0, 1, 2]);
            let b = words(&[u64::from(fd as u32)]);
            (Fresh, g, v::VFIO_GROUP_SET_CONTAINER, Buf(b))
        }
        "group: UNSET_CONTAINER without a container" => (
            Fresh,
            g,
            v::VFIO_GROUP_UNSET_CONTAINER,
            Int(r.below(16) as usize),
        ),
        "group: UNSET_CONTAINER with a device fd open" => (
            r.pick(&[Legacy, Msix]),
            g,
            v::VFIO_GROUP_UNSET_CONTAINER,
            Int(0),
        ),
        "group: GET_DEVICE_FD with a bad pointer" => (
            r.pick(&[Fresh, Legacy]),
            g,
            v::VFIO_GROUP_GET_DEVICE_FD,
            Int(bad_ptr(r)),
        ),
        "group: GET_DEVICE_FD with a name longer than a page" => {
            let mut b = vec![b'a'; 8192];
            b[4096 + r.below(4000) as usize] = 0;
            (
                r.pick(&[Fresh, Legacy]),
                g,
                v::VFIO_GROUP_GET_DEVICE_FD,
                Buf(b),
            )
        }
        "group: GET_DEVICE_FD with an unknown name" => {
            let name = r.pick(&[
                &b"0000:ba:01.0\0"[..],
                b"\0",
                b"vfio0\0",
                b"0000:ba:00.00\0",
            ]);
            let mut b = name.to_vec();
            b.resize(256, 0);
            (
                r.pick(&[Fresh, Attached, Legacy]),
                g,
                v::VFIO_GROUP_GET_DEVICE_FD,
                Buf(b),
            )
        }
        "group: GET_DEVICE_FD with an unknown option or a malformed vf_token" => {
            let tail = r.pick(&[
                &b" colour=red"[..],
                b" vf_token=52ac9bff",
                b" vf_token=52ac9bff-3a88-4fbd-901a-0d767c3b6cZZ",
                b" vf_token=52ac9bff-3a88-4fbd-901a-0d767c3b6c97x",
                b" vf_token=52ac9bff-3a88-4fbd-901a-0d767c3b6c97 vf_token=52ac9bff-3a88-4fbd-901a-0d767c3b6c97",
            ]);
            let mut b = b"0000:ba:00.0".to_vec();
            b.extend_from_slice(tail);
            b.resize(256, 0);
            (
                r.pick(&[Fresh, Attached, Legacy]),
                g,
                v::VFIO_GROUP_GET_DEVICE_FD,
                Buf(b),
            )
        }
        "group: GET_DEVICE_FD with a vf_token for a function without SR-IOV" => {
            let mut b = b"0000:ba:00.0 vf_token=88594674-90a0-47a9-aea8-9d9b352ac08a".to_vec();
            b.resize(256, 0);
            (
                r.pick(&[Fresh, Attached, Legacy]),
                g,
                v::VFIO_GROUP_GET_DEVICE_FD,
                Buf(b),
            )
        }
        "group: GET_DEVICE_FD without a container" => {
            let mut b = b"0000:ba:00.0\0".to_vec();
            b.resize(256, 0);
            (Fresh, g, v::VFIO_GROUP_GET_DEVICE_FD, Buf(b))
        }
        "group: GET_DEVICE_FD without an IOMMU driver" => {
            let mut b = b"0000:ba:00.0\0".to_vec();
            b.resize(256, 0);
            (Attached, g, v::VFIO_GROUP_GET_DEVICE_FD, Buf(b))
        }
        "MAP_DMA: a bad pointer" => (Legacy, c, v::VFIO_IOMMU_MAP_DMA, Int(bad_ptr(r))),
        "MAP_DMA: argsz < 32 or an unknown flag" => {
            let (argsz, flags) = if r.below(2) == 0 {
                (r.below(32) as u32, rwflags(r))
            } else {
                (32 + r.below(64) as u32, rwflags(r) | 8 << r.below(28))
            };
            let m = dma_map(argsz, flags, r.next(), r.next(), r.next());
            (Legacy, c, v::VFIO_IOMMU_MAP_DMA, Buf(m))
        }
        "MAP_DMA: size 0" => {
            let m = dma_map(32, r.below(8) as u32, r.next(), r.next(), 0);
            (Legacy, c, v::VFIO_IOMMU_MAP_DMA, Buf(m))
        }
        "MAP_DMA: the IOVA or vaddr range wraps" => {
            let size = 1 + r.below(1 << 40);
            let wrap = u64::MAX - r.below(size);
            let (vaddr, iova) = if r.below(2) == 0 {
                (wrap, r.next())
            } else {
                (r.next() >> 1, wrap)
            };
            let m = dma_map(32, r.below(8) as u32, vaddr, iova, size);
            (Legacy, c, v::VFIO_IOMMU_MAP_DMA, Buf(m))
        }
        "MAP_DMA: neither READ nor WRITE" | "MAP_DMA: VADDR with READ or WRITE" => {
            let flags = if class.contains("neither") {
                0
            } else {
                4 | rwflags(r)
            };
            let m = dma_map(
                32,
                flags,
                rw + 4096 * r.below(4),
                free_iova(r),
                page(r) + r.below(2),
            );
            (Legacy, c, v::VFIO_IOMMU_MAP_DMA, Buf(m))
        }
        "MAP_DMA: not page-aligned" => {
            let mut x = [rw, free_iova(r), page(r)];
            x[r.below(3) as usize] += 1 + r.below(4095);
            let flags = r.pick(&[1, 2, 3, 4]);
            (
                Legacy,
                c,
                v::VFIO_IOMMU_MAP_DMA,
                Buf(dma_map(32, flags, x[0], x[1], x[2])),
            )
        }
        "MAP_DMA: VADDR where nothing is mapped" => {
            let m = dma_map(32, 4, rw, free_iova(r), page(r));
            (Legacy, c, v::VFIO_IOMMU_MAP_DMA, Buf(m))
        }
        "MAP_DMA: VADDR of a mapping whose vaddr is valid" | "MAP_DMA: overlaps a mapping" => {
            let iova = MAPPED.0 - 0x2000 + 4096 * r.below(5);
            let flags = if class.contains("VADDR") {
                4
            } else {
                rwflags(r)
            };
            // From up to two pages before the mapping, long enough to reach it.
            let m = dma_map(
                32,
                flags,
                r.next() & !0xfff & 0x7fff_ffff_ffff,
                iova,
                page(r) + 0x2000,
            );
            (Legacy, c, v::VFIO_IOMMU_MAP_DMA, Buf(m))
        }
        "MAP_DMA: outside the IOVA ranges" => {
            let iova = r.pick(&[0xfee0_0000, 0xfeef_f000, 1 << 48, !0xffff_ffff]);
            let m = dma_map(32, rwflags(r), rw, iova, page(r));
            (Legacy, c, v::VFIO_IOMMU_MAP_DMA, Buf(m))
        }
        "MAP_DMA: memory not mapped" => {
            let high = 0x7fff_0000_0000 + 4096 * r.below(16);
            let vaddr = r.pick(&[0x1000, high]);
            let m = dma_map(32, rwflags(r), vaddr, free_iova(r), page(r));
            (Legacy, c, v::VFIO_IOMMU_MAP_DMA, Buf(m))
        }
        "MAP_DMA: WRITE over read-only memory" => {
            let flags = r.pick(&[2, 3]);
            let m = dma_map(32, flags, ro + 4096 * r.below(16), free_iova(r), page(r));
            (Legacy, c, v::VFIO_IOMMU_MAP_DMA, Buf(m))
        }
        "MAP_DMA: over PROT_NONE memory" => {
            let m = dma_map(
                32,
                rwflags(r),
                none + 4096 * r.below(16),
                free_iova(r),
                page(r),
            );
            (Legacy, c, v::VFIO_IOMMU_MAP_DMA, Buf(m))
        }
        "UNMAP_DMA: a bad pointer" => (Legacy, c, v::VFIO_IOMMU_UNMAP_DMA, Int(bad_ptr(r))),
        "UNMAP_DMA: argsz < 24 or an unknown flag" => {
            let (argsz, flags) = if r.below(2) == 0 {
                (r.below(24) as u32, r.below(8) as u32)
            } else {
                (24 + r.below(64) as u32, 8 << r.below(28))
            };
            let u = dma_unmap(argsz, flags, r.next(), r.next(), [0; 3]);
            (Legacy, c, v::VFIO_IOMMU_UNMAP_DMA, Buf(u))
        }
        "UNMAP_DMA: GET_DIRTY_BITMAP with ALL or VADDR" => {
            let flags = 1 | r.pick(&[2, 4, 6]);
            let u = dma_unmap(48, flags, r.next(), r.next(), [4096, 8, rw]);
            (Legacy, c, v::VFIO_IOMMU_UNMAP_DMA, Buf(u))
        }
        "UNMAP_DMA: VADDR (vaddr update not offered)" => {
            let flags = r.pick(&[4, 6]);
            let u = dma_unmap(24, flags, r.next(), r.next(), [0; 3]);
            (Legacy, c, v::VFIO_IOMMU_UNMAP_DMA, Buf(u))
        }
        "UNMAP_DMA: IOVA not page-aligned" => {
            let iova = r.next() | (1 + r.below(4095));
            let u = dma_unmap(24, r.pick(&[0, 2]), iova, r.next(), [0; 3]);
            (Legacy, c, v::VFIO_IOMMU_UNMAP_DMA, Buf(u))
        }
        "UNMAP_DMA: ALL with an IOVA or a size" => {
            let (iova, size) = r.pick(&[(4096, 0), (0, 4096), (8192, 1)]);
            (
                Legacy,
                c,
                v::VFIO_IOMMU_UNMAP_DMA,
                Buf(dma_unmap(24, 2, iova, size, [0; 3])),
            )
        }
        "UNMAP_DMA: size 0 or not page-aligned" => {
            let (a, b) = (1 + r.below(4095), 4096 * r.below(99) + 1 + r.below(4095));
            let size = r.pick(&[0, a, b]);
            let u = dma_unmap(24, 0, 4096 * r.below(1 << 20), size, [0; 3]);
            (Legacy, c, v::VFIO_IOMMU_UNMAP_DMA, Buf(u))
        }
        "UNMAP_DMA: the range wraps" => {
            let size = 4096 * (1 + r.below(1 << 20));
            let iova = (u64::MAX - r.below(size - 1)) & !0xfff;
            let u = dma_unmap(24, 0, iova, size, [0; 3]);
            (Legacy, c, v::VFIO_IOMMU_UNMAP_DMA, Buf(u))
        }
        "UNMAP_DMA v2: the range splits a mapping" => {
            let (iova, size) = r.pick(&[
                (MAPPED.0 + 4096, MAPPED.1),
                (MAPPED.0, 4096),
                (MAPPED.0 - 4096, 8192),
                (MAPPED.0 + 4096, 4096),
            ]);
            (
                Legacy,
                c,
                v::VFIO_IOMMU_UNMAP_DMA,
                Buf(dma_unmap(24, 0, iova, size, [0; 3])),
            )
        }
        "device: unknown ioctl" => (Legacy, d, unknown_base(r), Int(0)),
        "GET_REGION_INFO: argsz < 32" => {
            let b = info(r.below(32) as u32, r.below(9) as u32);
            (Legacy, d, v::VFIO_DEVICE_GET_REGION_INFO, Buf(b))
        }
        "GET_REGION_INFO: the VGA region of a device that is no VGA device" => {
            let b = info(
                32 + r.below(64) as u32,
                8, /* VFIO_PCI_VGA_REGION_INDEX */
            );
            (Legacy, d, v::VFIO_DEVICE_GET_REGION_INFO, Buf(b))
        }
        "GET_REGION_INFO: an index past the regions" => {
            let index = r.pick(&[9, 10, 99, u32::MAX]);
            let b = info(32 + r.below(64) as u32, index);
            (Legacy, d, v::VFIO_DEVICE_GET_REGION_INFO, Buf(b))
        }
        "GET_IRQ_INFO: an index past the IRQs" => {
            let b = info(16 + r.below(64) as u32, r.pick(&[5, 6, 99, u32::MAX]));
            (Legacy, d, v::VFIO_DEVICE_GET_IRQ_INFO, Buf(b))
        }
        "SET_IRQS: a bad pointer" => (Legacy, d, v::VFIO_DEVICE_SET_IRQS, Int(bad_ptr(r))),
        "SET_IRQS: argsz < 20, index past the IRQs, or an unknown flag" => {
            let mut x = [20 + r.below(8) as u32, trig | ev, r.below(5) as u32, 0, 1];
            match r.below(3) {
                0 => x[0] = r.below(20) as u32,
                1 => x[2] = r.pick(&[5, 9, u32::MAX]),
                _ => x[1] |= 0x40 << r.below(26),
            }
            let b = irq_set(x[0], x[1], x[2], x[3], x[4], &eventfd_data(efd));
            (Legacy, d, v::VFIO_DEVICE_SET_IRQS, Buf(b))
        }
        "SET_IRQS: start + count past the vectors" => {
            let (index, start, count) = r.pick(&[
                (0, 0, 2),
                (0, 1, 0),
                (1, 1, 1),
                (2, 8, 0),
                (2, 3, 6),
                (3, 0, 2),
                (4, 2, 0),
            ]);
            let data_type = r.pick(&[1, 2, 4]);
            let action = r.pick(&[8, 16, 32]);
            let b = irq_set(64, data_type | action, index, start, count, &[0; 32]);
            (
                r.pick(&[Legacy, Msix, Intx]),
                d,
                v::VFIO_DEVICE_SET_IRQS,
                Buf(b),
            )
        }
        "SET_IRQS: no data type or two" => {
            let data_type = r.pick(&[0, 3, 5, 6, 7]);
            let action = r.pick(&[8, 16, 32, 0, 24]);
            let b = irq_set(64, data_type | action, r.below(5) as u32, 0, 1, &[0; 32]);
            (
                r.pick(&[Legacy, Msix, Intx]),
                d,
                v::VFIO_DEVICE_SET_IRQS,
                Buf(b),
            )
        }
        "SET_IRQS: argsz too small for the data" => {
            let (data_type, per) = r.pick(&[(2u32, 1u32), (4, 4)]);
            let count = 1 + r.below(8) as u32;
            let argsz = 20 + r.below(u64::from(count * per)) as u32;
            let b = irq_set(argsz, data_type | trig, 2, 0, count, &[0; 32]);
            (Legacy, d, v::VFIO_DEVICE_SET_IRQS, Buf(b))
        }
        "SET_IRQS: no action or two" => {
            let action = r.pick(&[0, 24, 40, 48, 56]);
            let data_type = r.pick(&[1, 2]);
            let b = irq_set(24, data_type | action, r.below(5) as u32, 0, 1, &[1; 4]);
            (
                r.pick(&[Legacy, Msix, Intx]),
                d,
                v::VFIO_DEVICE_SET_IRQS,
                Buf(b),
            )
        }
        "SET_IRQS: MASK or UNMASK of MSI or MSI-X" => {
            let index = r.pick(&[1, 2]);
            let flags = r.pick(&[1, 2, 4]) | r.pick(&[8, 16]);
            let b = irq_set(24, flags, index, 0, 1, &eventfd_data(efd));
            (r.pick(&[Legacy, Msix]), d, v::VFIO_DEVICE_SET_IRQS, Buf(b))
        }
        "SET_IRQS: INTx MASK while INTx is not enabled" => {
            let flags = r.pick(&[1, 2]) | r.pick(&[8, 16]);
            let b = irq_set(24, flags, 0, 0, 1, &[1; 4]);
            (r.pick(&[Legacy, Msix]), d, v::VFIO_DEVICE_SET_IRQS, Buf(b))
        }
        "SET_IRQS: INTx MASK through an eventfd" => {
            let b = irq_set(24, 4 | 8, 0, 0, 1, &eventfd_data(efd));
            (Intx, d, v::VFIO_DEVICE_SET_IRQS, Buf(b))
        }
        "SET_IRQS: INTx trigger while MSI-X is enabled" => {
            let data_type = r.pick(&[1, 2, 4]);
            let b = irq_set(24, data_type | trig, 0, 0, 1, &eventfd_data(efd));
            (Msix, d, v::VFIO_DEVICE_SET_IRQS, Buf(b))
        }
        "SET_IRQS: MSI trigger while MSI-X is enabled" => {
            let data_type = r.pick(&[1, 2, 4]);
            let b = irq_set(24, data_type | trig, 1, 0, 1, &eventfd_data(efd));
            (Msix, d, v::VFIO_DEVICE_SET_IRQS, Buf(b))
        }
        "SET_IRQS: MSI-X trigger while INTx is enabled" => {
            let data_type = r.pick(&[1, 2, 4]);
            let b = irq_set(24, data_type | trig, 2, 0, 1, &eventfd_data(efd));
            (Intx, d, v::VFIO_DEVICE_SET_IRQS, Buf(b))
        }
        "SET_IRQS: MSI-X loopback while MSI-X is not enabled" => {
            let data_type = r.pick(&[1, 2]);
            let count = 1 + r.below(8) as u32;
            let b = irq_set(64, data_type | trig, 2, 0, count, &[1; 8]);
            (Legacy, d, v::VFIO_DEVICE_SET_IRQS, Buf(b))
        }
        "SET_IRQS: an eventfd number that is no fd" | "SET_IRQS: an eventfd that is no eventfd" => {
            let fd = if class.contains("no fd") {
                r.pick(&[9999, 100_000, i32::MAX])
            } else {
                r.pick(&[c, g, d, 0, 1, 2])
            };
            let index = r.pick(&[1, 2, 3, 4]);
            let b = irq_set(24, ev | trig, index, 0, 1, &eventfd_data(fd));
            (Legacy, d, v::VFIO_DEVICE_SET_IRQS, Buf(b))
        }
        "SET_IRQS: ERR trigger without an eventfd" => {
            let (data_type, count) = r.pick(&[(none_t, 0), (none_t, 1), (2, 0), (ev, 0)]);
            let index = r.pick(&[3, 4]);
            let b = irq_set(24, data_type | trig, index, 0, count, &[0; 4]);
            (Legacy, d, v::VFIO_DEVICE_SET_IRQS, Buf(b))
        }
        "device: FEATURE with a bad pointer" => {
            (Legacy, d, v::VFIO_DEVICE_FEATURE, Int(bad_ptr(r)))
        }
        "device: FEATURE with argsz < 8, an unknown flag, or GET with SET" => {
            let (argsz, flags) = match r.below(3) {
                0 => (r.below(8) as u32, 1 << 17),
                1 => (24, (1u32 << (19 + r.below(13))) | 1 << 17),
                _ => (24, 3 << 16 | r.below(8) as u32),
            };
            let b = words(&[u64::from(argsz) | u64::from(flags) << 32]);
            (Legacy, d, v::VFIO_DEVICE_FEATURE, Buf(b))
        }
        "device: FEATURE PCI_VF_TOKEN on a function without SR-IOV" => {
            let flags = r.pick(&[1u32 << 17, 1 << 16, 1 << 18 | 1 << 17, 0]);
            let b = words(&[24 | u64::from(flags) << 32, 0x1122_3344, 0x5566_7788]);
            (Legacy, d, v::VFIO_DEVICE_FEATURE, Buf(b))
        }
        "group: a second open" => (Fresh, -1, 0, Int(0)),
        other => panic!("no inputs for the class {other:?}"),
    }
}

#[test]
fn each_rejected_input_gets_the_errno_of_the_kernels_source() {
    let iters: u64 = std::env::var("BARMAP_IOCTL_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(200, |n: u64| (n / 10).max(1));
    let mut rng = Rng(0x7ab1e | 1);
    for &(class, errno, function) in KERNEL_ERRNOS {
        let (setup, ..) = instance(class, &mut rng, None);
        let e = env(setup);
        if class == "group: a second open" {
            assert_eq!(e.f.open("/dev/vfio/42", 0), Err(Errno(errno_of(class))));
            continue;
        }
        for i in 0..iters {
            let (_, fd, req, arg) = instance(class, &mut rng, Some(&e));
            let mut keep = Vec::new();
            let arg = match arg {
                Arg::Int(n) => n,
                Arg::Buf(b) => {
                    keep = b;
                    keep.as_mut_ptr() as usize
                }
            };
            let before = e.f.digest();
            let r = e.f.ioctl(fd, req, arg);
            assert_eq!(
                r,
                Err(Errno(errno)),
                "{class} (the kernel's {function}), input {i}: ioctl({fd}, {req:#x}) with {:x?}",
                &keep.get(..48)
            );
            assert_eq!(
                before,
                e.f.digest(),
                "{class}: the failed call changed state"
            );
        }
    }
}
