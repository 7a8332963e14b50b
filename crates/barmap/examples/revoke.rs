//! Serve device memory and revoke it: clear COMMAND.MEM and every mapping is
//! zapped; a touch gets SIGBUS (caught here); re-enable and the data is back.
//!
//! Run: `cargo run --example revoke -p barmap` (as root).

use barmap::device::pci;
use barmap::{Device, Prot, DEFAULT_MEMORY_BAR};

fn main() -> barmap::Result<()> {
    let device = Device::builder_with_memory(16 << 20).build()?;
    let map = device.map(DEFAULT_MEMORY_BAR, 0, 1 << 20, Prot::ReadWrite)?;
    map.write_u64(0, 0xc0ffee);

    // What a guest driver does: clear the memory-enable bit in COMMAND.
    let cmd = device.command();
    device.write_config(pci::COMMAND, &(cmd & !pci::COMMAND_MEMORY).to_le_bytes())?;
    println!("touch while disabled: {:?}", map.touch_u64(0));
    let mut buf = [0u8; 8];
    println!(
        "probe while disabled: {:?}",
        map.try_read(0, &mut buf).err()
    );
    println!(
        "region read while disabled: {:?}",
        device.read_region(DEFAULT_MEMORY_BAR, 0, &mut buf).err()
    );

    device.write_config(pci::COMMAND, &cmd.to_le_bytes())?;
    println!("touch after enable: {:#x}", map.read_u64(0));
    println!("counters: {:?}", device.stats());
    Ok(())
}
