//! The kernel's answers to rejected legacy VFIO inputs (container, group,
//! type1, vfio-pci device), read from its sources (v7.3:
//! `drivers/vfio/container.c`, `group.c`, `vfio_main.c`,
//! `vfio_iommu_type1.c`, `pci/vfio_pci_core.c`, `pci/vfio_pci_intrs.c`).
//! Each row: the input class, the errno, and the kernel function that
//! returns it. Where several checks could reject an input, the class
//! names the first one the kernel makes: a class's inputs pass every
//! check before it.

/// `(input class, errno, kernel function)`.
#[rustfmt::skip]
pub const KERNEL_ERRNOS: &[(&str, i32, &str)] = &[
    // The container (/dev/vfio/vfio).
    ("container: unknown ioctl before SET_IOMMU", libc::EINVAL, "vfio_fops_unl_ioctl"),
    ("container: MAP_DMA before SET_IOMMU", libc::EINVAL, "vfio_fops_unl_ioctl"),
    ("container: unknown ioctl after SET_IOMMU", libc::ENOTTY, "vfio_iommu_type1_ioctl"),
    ("container: SET_IOMMU without a group", libc::EINVAL, "vfio_ioctl_set_iommu"),
    ("container: SET_IOMMU twice", libc::EINVAL, "vfio_ioctl_set_iommu"),
    ("container: SET_IOMMU of a type no driver claims", libc::ENODEV, "vfio_ioctl_set_iommu"),
    ("container: SET_IOMMU(VFIO_UNMAP_ALL)", libc::EINVAL, "vfio_iommu_type1_open"),
    // The group (/dev/vfio/N).
    ("group: a second open", libc::EBUSY, "vfio_group_fops_open"),
    ("group: unknown ioctl", libc::ENOTTY, "vfio_group_fops_unl_ioctl"),
    ("group: GET_STATUS with a bad pointer", libc::EFAULT, "vfio_group_ioctl_get_status"),
    ("group: GET_STATUS with argsz < 8", libc::EINVAL, "vfio_group_ioctl_get_status"),
    ("group: SET_CONTAINER with a bad pointer", libc::EFAULT, "vfio_group_ioctl_set_container"),
    ("group: SET_CONTAINER with a number that is no fd", libc::EBADF, "vfio_group_ioctl_set_container"),
    ("group: SET_CONTAINER with a container already set", libc::EINVAL, "vfio_group_ioctl_set_container"),
    ("group: SET_CONTAINER with an fd that is no container", libc::EBADFD, "vfio_group_ioctl_set_container"),
    ("group: UNSET_CONTAINER without a container", libc::EINVAL, "vfio_group_ioctl_unset_container"),
    ("group: UNSET_CONTAINER with a device fd open", libc::EBUSY, "vfio_group_ioctl_unset_container"),
    ("group: GET_DEVICE_FD with a bad pointer", libc::EFAULT, "strndup_user"),
    ("group: GET_DEVICE_FD with a name longer than a page", libc::EINVAL, "strndup_user"),
    ("group: GET_DEVICE_FD with an unknown name", libc::ENODEV, "vfio_device_get_from_name"),
    ("group: GET_DEVICE_FD with an unknown option or a malformed vf_token", libc::EINVAL, "vfio_pci_core_match"),
    ("group: GET_DEVICE_FD with a vf_token for a function without SR-IOV", libc::EINVAL, "vfio_pci_core_match_token_uuid"),
    ("group: GET_DEVICE_FD without a container", libc::EINVAL, "vfio_df_group_open"),
    ("group: GET_DEVICE_FD without an IOMMU driver", libc::EINVAL, "vfio_group_use_container"),
    // VFIO_DEVICE_FEATURE.
    ("device: FEATURE with a bad pointer", libc::EFAULT, "vfio_ioctl_device_feature"),
    ("device: FEATURE with argsz < 8, an unknown flag, or GET with SET", libc::EINVAL, "vfio_ioctl_device_feature"),
    ("device: FEATURE PCI_VF_TOKEN on a function without SR-IOV", libc::ENOTTY, "vfio_pci_core_feature_token"),
    // type1 MAP_DMA.
    ("MAP_DMA: a bad pointer", libc::EFAULT, "vfio_iommu_type1_map_dma"),
    ("MAP_DMA: argsz < 32 or an unknown flag", libc::EINVAL, "vfio_iommu_type1_map_dma"),
    ("MAP_DMA: size 0", libc::EINVAL, "vfio_dma_do_map"),
    ("MAP_DMA: the IOVA or vaddr range wraps", libc::EOVERFLOW, "vfio_dma_do_map"),
    ("MAP_DMA: neither READ nor WRITE", libc::EINVAL, "vfio_dma_do_map"),
    ("MAP_DMA: VADDR with READ or WRITE", libc::EINVAL, "vfio_dma_do_map"),
    ("MAP_DMA: not page-aligned", libc::EINVAL, "vfio_dma_do_map"),
    ("MAP_DMA: VADDR where nothing is mapped", libc::ENOENT, "vfio_dma_do_map"),
    ("MAP_DMA: VADDR of a mapping whose vaddr is valid", libc::EINVAL, "vfio_dma_do_map"),
    ("MAP_DMA: overlaps a mapping", libc::EEXIST, "vfio_dma_do_map"),
    ("MAP_DMA: outside the IOVA ranges", libc::EINVAL, "vfio_iommu_iova_dma_valid"),
    ("MAP_DMA: memory not mapped", libc::EFAULT, "vaddr_get_pfns"),
    ("MAP_DMA: WRITE over read-only memory", libc::EFAULT, "vaddr_get_pfns"),
    ("MAP_DMA: over PROT_NONE memory", libc::EFAULT, "vaddr_get_pfns"),
    // type1 UNMAP_DMA.
    ("UNMAP_DMA: a bad pointer", libc::EFAULT, "vfio_iommu_type1_unmap_dma"),
    ("UNMAP_DMA: argsz < 24 or an unknown flag", libc::EINVAL, "vfio_iommu_type1_unmap_dma"),
    ("UNMAP_DMA: GET_DIRTY_BITMAP with ALL or VADDR", libc::EINVAL, "vfio_iommu_type1_unmap_dma"),
    ("UNMAP_DMA: VADDR (vaddr update not offered)", libc::EBUSY, "vfio_dma_do_unmap"),
    ("UNMAP_DMA: IOVA not page-aligned", libc::EINVAL, "vfio_dma_do_unmap"),
    ("UNMAP_DMA: ALL with an IOVA or a size", libc::EINVAL, "vfio_dma_do_unmap"),
    ("UNMAP_DMA: size 0 or not page-aligned", libc::EINVAL, "vfio_dma_do_unmap"),
    ("UNMAP_DMA: the range wraps", libc::EOVERFLOW, "vfio_dma_do_unmap"),
    ("UNMAP_DMA v2: the range splits a mapping", libc::EINVAL, "vfio_dma_do_unmap"),
    // The device fd (vfio-pci).
    ("device: unknown ioctl", libc::ENOTTY, "vfio_pci_core_ioctl"),
    ("GET_REGION_INFO: argsz < 32", libc::EINVAL, "vfio_get_region_info"),
    ("GET_REGION_INFO: the VGA region of a device that is no VGA device", libc::EINVAL, "vfio_pci_ioctl_get_region_info"),
    ("GET_REGION_INFO: an index past the regions", libc::EINVAL, "vfio_pci_ioctl_get_region_info"),
    ("GET_IRQ_INFO: an index past the IRQs", libc::EINVAL, "vfio_pci_ioctl_get_irq_info"),
    ("SET_IRQS: a bad pointer", libc::EFAULT, "vfio_pci_ioctl_set_irqs"),
    ("SET_IRQS: argsz < 20, index past the IRQs, or an unknown flag", libc::EINVAL, "vfio_set_irqs_validate_and_prepare"),
    ("SET_IRQS: start + count past the vectors", libc::EINVAL, "vfio_set_irqs_validate_and_prepare"),
    ("SET_IRQS: no data type or two", libc::EINVAL, "vfio_set_irqs_validate_and_prepare"),
    ("SET_IRQS: argsz too small for the data", libc::EINVAL, "vfio_set_irqs_validate_and_prepare"),
    ("SET_IRQS: no action or two", libc::ENOTTY, "vfio_pci_set_irqs_ioctl"),
    ("SET_IRQS: MASK or UNMASK of MSI or MSI-X", libc::ENOTTY, "vfio_pci_set_irqs_ioctl"),
    ("SET_IRQS: INTx MASK while INTx is not enabled", libc::EINVAL, "vfio_pci_set_intx_mask"),
    ("SET_IRQS: INTx MASK through an eventfd", libc::ENOTTY, "vfio_pci_set_intx_mask"),
    ("SET_IRQS: INTx trigger while MSI-X is enabled", libc::EINVAL, "vfio_pci_set_intx_trigger"),
    ("SET_IRQS: MSI trigger while MSI-X is enabled", libc::EINVAL, "vfio_pci_set_msi_trigger"),
    ("SET_IRQS: MSI-X trigger while INTx is enabled", libc::EINVAL, "vfio_pci_set_msi_trigger"),
    ("SET_IRQS: MSI-X loopback while MSI-X is not enabled", libc::EINVAL, "vfio_pci_set_msi_trigger"),
    ("SET_IRQS: an eventfd number that is no fd", libc::EBADF, "eventfd_ctx_fdget"),
    ("SET_IRQS: an eventfd that is no eventfd", libc::EINVAL, "eventfd_ctx_fdget"),
    ("SET_IRQS: ERR trigger without an eventfd", libc::EINVAL, "vfio_pci_set_ctx_trigger_single"),
];

/// The errno the kernel gives for `class`.
pub fn errno_of(class: &str) -> i32 {
    KERNEL_ERRNOS
        .iter()
        .find(|r| r.0 == class)
        .unwrap_or_else(|| panic!("no row for {class:?}"))
        .1
}
