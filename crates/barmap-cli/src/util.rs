//! Small helpers shared by the subcommands.

pub use barmap_front::spec::parse_size;

/// The first word of page `page` of the memory BAR, as the CLI writes it.
pub fn pattern(page: usize) -> u64 {
    0x5eed_0000_0000_0000 | page as u64
}

/// Writes [`pattern`] into the first word of every page of `len` bytes of
/// `region`, in one region write (fast, and through the device, not a map).
pub fn write_pattern(device: &barmap::Device, region: u32, len: usize) -> barmap::Result<()> {
    let mut buf = vec![0u8; len];
    for page in 0..len / 4096 {
        buf[page * 4096..page * 4096 + 8].copy_from_slice(&pattern(page).to_le_bytes());
    }
    device.write_region(region, 0, &buf)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("3T"), Ok(3 << 40));
        assert!(parse_size("3X").is_err());
        assert!(parse_size("x").is_err());
    }
}
