//! Random ioctls on every kind of fd the front end hands out, with random
//! arguments: short, long and zero `argsz`, unknown flags, bad indexes,
//! bad pointers, fds of the wrong type. Each call either succeeds or fails
//! with one of the errnos vfio-pci and iommufd use, never panics, and a
//! failed call changes nothing observable (the front end's digest).
//! `BARMAP_IOCTL_FUZZ_ITERS` sets the number of calls (default 100000).

use barmap_front::Errno;
use barmap_vfio::iommufd as ifd;
use barmap_vfio::uapi as v;

mod common;

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

const ERRNOS: [Errno; 16] = [
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
                    ERRNOS.contains(&e),
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
