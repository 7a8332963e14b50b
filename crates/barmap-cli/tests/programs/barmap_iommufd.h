// SPDX-License-Identifier: MIT
/*
 * The iommufd and VFIO cdev uAPI that the programs use, as in Linux 7.3's
 * include/uapi/linux/{iommufd,vfio}.h, for systems whose headers predate
 * it (Debian 12's are 6.1's). Prefixed bt_ so that newer system headers
 * do not clash; the ioctl numbers are the kernel's.
 */
#ifndef BARMAP_IOMMUFD_H
#define BARMAP_IOMMUFD_H

#include <stdint.h>
#include <sys/ioctl.h>

#define BT_IOMMUFD_TYPE ';'
#define BT_IOMMU_DESTROY _IO(BT_IOMMUFD_TYPE, 0x80)
#define BT_IOMMU_IOAS_ALLOC _IO(BT_IOMMUFD_TYPE, 0x81)
#define BT_IOMMU_IOAS_MAP _IO(BT_IOMMUFD_TYPE, 0x85)
#define BT_IOMMU_IOAS_UNMAP _IO(BT_IOMMUFD_TYPE, 0x86)
#define BT_IOMMU_HWPT_ALLOC _IO(BT_IOMMUFD_TYPE, 0x89)
#define BT_IOMMU_GET_HW_INFO _IO(BT_IOMMUFD_TYPE, 0x8a)

#define BT_VFIO_DEVICE_BIND_IOMMUFD _IO(';', 100 + 18)
#define BT_VFIO_DEVICE_ATTACH_IOMMUFD_PT _IO(';', 100 + 19)
#define BT_VFIO_DEVICE_DETACH_IOMMUFD_PT _IO(';', 100 + 20)

#define BT_IOAS_MAP_FIXED_IOVA (1 << 0)
#define BT_IOAS_MAP_WRITEABLE (1 << 1)
#define BT_IOAS_MAP_READABLE (1 << 2)
#define BT_HWPT_ALLOC_DIRTY_TRACKING (1 << 1)
#define BT_HW_CAP_DIRTY_TRACKING (1 << 0)

struct bt_iommu_destroy {
	uint32_t size;
	uint32_t id;
};

struct bt_iommu_ioas_alloc {
	uint32_t size;
	uint32_t flags;
	uint32_t out_ioas_id;
};

struct bt_iommu_ioas_map {
	uint32_t size;
	uint32_t flags;
	uint32_t ioas_id;
	uint32_t __reserved;
	uint64_t user_va;
	uint64_t length;
	uint64_t iova;
};

struct bt_iommu_ioas_unmap {
	uint32_t size;
	uint32_t ioas_id;
	uint64_t iova;
	uint64_t length;
};

struct bt_iommu_hwpt_alloc {
	uint32_t size;
	uint32_t flags;
	uint32_t dev_id;
	uint32_t pt_id;
	uint32_t out_hwpt_id;
	uint32_t __reserved;
	uint32_t data_type;
	uint32_t data_len;
	uint64_t data_uptr;
	uint32_t fault_id;
	uint32_t __reserved2;
};

struct bt_iommu_hw_info {
	uint32_t size;
	uint32_t flags;
	uint32_t dev_id;
	uint32_t data_len;
	uint64_t data_uptr;
	uint32_t out_data_type;
	uint8_t out_max_pasid_log2;
	uint8_t __reserved[3];
	uint64_t out_capabilities;
};

struct bt_vfio_device_bind_iommufd {
	uint32_t argsz;
	uint32_t flags;
	int32_t iommufd;
	uint32_t out_devid;
	uint64_t token_uuid_ptr;
};

struct bt_vfio_device_attach_iommufd_pt {
	uint32_t argsz;
	uint32_t flags;
	uint32_t pt_id;
	uint32_t pasid;
};

struct bt_vfio_device_detach_iommufd_pt {
	uint32_t argsz;
	uint32_t flags;
	uint32_t pasid;
};

#endif
