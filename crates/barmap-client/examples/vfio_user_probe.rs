//! Prints what a vfio-user server presents: `vfio_user_probe SOCKET`.

use std::path::PathBuf;
use std::sync::Arc;

fn main() {
    let path: PathBuf = std::env::args_os()
        .nth(1)
        .expect("usage: vfio_user_probe SOCKET")
        .into();
    let r = barmap_client::Remote::connect(&path, Arc::new(barmap_client::NoDma)).unwrap();
    println!("{:?}", r.info());
    for i in 0..r.info().num_regions {
        let g = r.region(i).unwrap();
        println!(
            "region {i}: flags {:#x} size {:#x} offset {:#x} fd {} areas {:?}",
            g.flags,
            g.size,
            g.offset,
            g.fd.is_some(),
            g.areas
        );
    }
    for i in 0..r.info().num_irqs {
        println!("irq {i}: {:?}", r.irq(i).unwrap());
    }
    let mut cfg = [0u8; 4];
    r.read(7, 0, &mut cfg).unwrap();
    println!("config: {cfg:02x?}");
    let mut four = [0u8; 4];
    println!(
        "BAR0 read of 4 bytes: {:?}",
        r.read(0, 0, &mut four).map_err(|e| e.errno())
    );
}
