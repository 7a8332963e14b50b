use barmap::{Device, Policy, Prot, DEFAULT_MEMORY_BAR};

#[test]
fn smoke() {
    for policy in Policy::ALL {
        let dev = Device::builder_with_memory(8 << 20)
            .policy(policy)
            .build()
            .unwrap();
        let m = dev
            .map(DEFAULT_MEMORY_BAR, 0, 4 << 20, Prot::ReadWrite)
            .unwrap();
        m.write_u64(0, 42);
        assert_eq!(m.read_u64(0), 42);
        dev.set_memory_enabled(false);
        assert_eq!(m.touch_u64(0), Err(barmap::touch::Fault::Sigbus));
        let mut b = [0u8; 8];
        assert!(m.try_read(0, &mut b).is_err());
        dev.set_memory_enabled(true);
        assert_eq!(m.read_u64(0), 42);
        m.try_read(4096 * 3, &mut b).unwrap();
        println!("{policy}: {:?}", dev.stats());
    }
}
