//! The region-info capability chain, parsed from the bytes the kernel returns.
//!
//! `VFIO_DEVICE_GET_REGION_INFO` with a large enough `argsz` appends a chain
//! of capabilities after `struct vfio_region_info`; each starts with
//! `struct vfio_info_cap_header { u16 id; u16 version; u32 next; }`, where
//! `next` (and the structure's `cap_offset`) count from the start of the
//! region-info structure, and 0 ends the chain. The parser trusts nothing:
//! every header and payload must lie inside the buffer, and offsets must
//! strictly increase (which also rules out loops).

use crate::uapi::{
    CAP_HEADER_SIZE, VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, VFIO_REGION_INFO_CAP_SPARSE_MMAP,
    VFIO_REGION_INFO_CAP_TYPE,
};
use std::fmt;

/// One mmappable area of a sparse region, relative to the region start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseArea {
    /// Offset into the region.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
}

impl SparseArea {
    /// Whether `[offset, offset + len)` lies inside this area.
    pub fn contains(&self, offset: u64, len: u64) -> bool {
        offset >= self.offset
            && offset
                .checked_add(len)
                .is_some_and(|end| end <= self.offset + self.size)
    }
}

/// A capability of a region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// Only these areas of the region may be mmapped.
    SparseMmap(Vec<SparseArea>),
    /// A device-specific region type.
    Type {
        /// Vendor/type class.
        kind: u32,
        /// Subtype within the class.
        subtype: u32,
    },
    /// The MSI-X table inside this BAR may be mmapped.
    MsixMappable,
    /// A capability this client does not decode.
    Unknown {
        /// Capability id.
        id: u16,
        /// Capability version.
        version: u16,
    },
}

/// Why a capability chain could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapError {
    /// A header or payload at `offset` extends past the end of the buffer.
    OutOfBounds {
        /// Where the capability starts.
        offset: u32,
    },
    /// A `next` pointer does not move forward (a loop or a backwards link).
    NotIncreasing {
        /// The offending capability's offset.
        offset: u32,
        /// Its `next` field.
        next: u32,
    },
    /// A capability is not 4-byte aligned.
    Misaligned {
        /// The offending offset.
        offset: u32,
    },
}

impl fmt::Display for CapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CapError::OutOfBounds { offset } => {
                write!(f, "capability at {offset} extends past the buffer")
            }
            CapError::NotIncreasing { offset, next } => {
                write!(f, "capability at {offset} links back to {next}")
            }
            CapError::Misaligned { offset } => write!(f, "capability at {offset} is misaligned"),
        }
    }
}

impl std::error::Error for CapError {}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(buf: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(buf.get(at..at + 8)?.try_into().ok()?))
}

/// Parses the chain in `buf` (the whole region-info buffer, structure
/// included) starting at `first` (the structure's `cap_offset`; 0 = none).
pub fn parse_chain(buf: &[u8], first: u32) -> Result<Vec<Capability>, CapError> {
    let mut caps = Vec::new();
    let mut offset = first;
    while offset != 0 {
        let at = offset as usize;
        if at % 4 != 0 {
            return Err(CapError::Misaligned { offset });
        }
        let oob = CapError::OutOfBounds { offset };
        let id = u16_at(buf, at).ok_or(oob.clone())?;
        let version = u16_at(buf, at + 2).ok_or(oob.clone())?;
        let next = u32_at(buf, at + 4).ok_or(oob.clone())?;
        let body = at + CAP_HEADER_SIZE;
        let cap = match id {
            VFIO_REGION_INFO_CAP_SPARSE_MMAP => {
                let nr = u32_at(buf, body).ok_or(oob.clone())? as usize;
                let areas_at = body + 8;
                let mut areas = Vec::with_capacity(nr.min(64));
                for i in 0..nr {
                    let a = areas_at + i * 16;
                    let area = SparseArea {
                        offset: u64_at(buf, a).ok_or(oob.clone())?,
                        size: u64_at(buf, a + 8).ok_or(oob.clone())?,
                    };
                    areas.push(area);
                }
                Capability::SparseMmap(areas)
            }
            VFIO_REGION_INFO_CAP_TYPE => Capability::Type {
                kind: u32_at(buf, body).ok_or(oob.clone())?,
                subtype: u32_at(buf, body + 4).ok_or(oob.clone())?,
            },
            VFIO_REGION_INFO_CAP_MSIX_MAPPABLE => Capability::MsixMappable,
            _ => Capability::Unknown { id, version },
        };
        caps.push(cap);
        if next != 0 && next <= offset {
            return Err(CapError::NotIncreasing { offset, next });
        }
        offset = next;
    }
    Ok(caps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uapi::REGION_INFO_SIZE;

    /// A region-info buffer: 32 bytes of structure, then the given bytes.
    fn buf_with(tail: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; REGION_INFO_SIZE];
        b.extend_from_slice(tail);
        b
    }

    fn header(id: u16, version: u16, next: u32) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&id.to_ne_bytes());
        h.extend_from_slice(&version.to_ne_bytes());
        h.extend_from_slice(&next.to_ne_bytes());
        h
    }

    fn sparse(next: u32, areas: &[(u64, u64)]) -> Vec<u8> {
        let mut c = header(VFIO_REGION_INFO_CAP_SPARSE_MMAP, 1, next);
        c.extend_from_slice(&(areas.len() as u32).to_ne_bytes());
        c.extend_from_slice(&0u32.to_ne_bytes());
        for (o, s) in areas {
            c.extend_from_slice(&o.to_ne_bytes());
            c.extend_from_slice(&s.to_ne_bytes());
        }
        c
    }

    #[test]
    fn no_chain_gives_no_capabilities() {
        assert_eq!(parse_chain(&buf_with(&[]), 0), Ok(vec![]));
    }

    #[test]
    fn sparse_then_msix_chain_is_decoded_in_order() {
        let first = REGION_INFO_SIZE as u32;
        let s = sparse(0, &[(0, 0x1000), (0x3000, 0x5000)]);
        let msix_at = first + s.len() as u32;
        let s = sparse(msix_at, &[(0, 0x1000), (0x3000, 0x5000)]);
        let mut tail = s;
        tail.extend(header(VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, 1, 0));
        let caps = parse_chain(&buf_with(&tail), first).unwrap();
        assert_eq!(
            caps,
            vec![
                Capability::SparseMmap(vec![
                    SparseArea {
                        offset: 0,
                        size: 0x1000
                    },
                    SparseArea {
                        offset: 0x3000,
                        size: 0x5000
                    },
                ]),
                Capability::MsixMappable,
            ]
        );
    }

    #[test]
    fn type_and_unknown_capabilities_are_reported() {
        let first = REGION_INFO_SIZE as u32;
        let mut tail = header(VFIO_REGION_INFO_CAP_TYPE, 1, first + 16);
        tail.extend_from_slice(&0x8086u32.to_ne_bytes());
        tail.extend_from_slice(&3u32.to_ne_bytes());
        tail.extend(header(99, 7, 0));
        let caps = parse_chain(&buf_with(&tail), first).unwrap();
        assert_eq!(
            caps,
            vec![
                Capability::Type {
                    kind: 0x8086,
                    subtype: 3
                },
                Capability::Unknown { id: 99, version: 7 }
            ]
        );
    }

    #[test]
    fn a_sparse_area_count_past_the_buffer_is_rejected() {
        let first = REGION_INFO_SIZE as u32;
        let mut s = sparse(0, &[(0, 0x1000)]);
        // Claim three areas while only one is present.
        s[8..12].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(
            parse_chain(&buf_with(&s), first),
            Err(CapError::OutOfBounds { offset: first })
        );
    }

    #[test]
    fn a_truncated_header_is_rejected() {
        let first = REGION_INFO_SIZE as u32;
        let h = header(VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, 1, 0);
        assert_eq!(
            parse_chain(&buf_with(&h[..6]), first),
            Err(CapError::OutOfBounds { offset: first })
        );
    }

    #[test]
    fn a_chain_that_loops_back_is_rejected() {
        let first = REGION_INFO_SIZE as u32;
        let h = header(VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, 1, first);
        assert_eq!(
            parse_chain(&buf_with(&h), first),
            Err(CapError::NotIncreasing {
                offset: first,
                next: first
            })
        );
    }

    #[test]
    fn a_misaligned_offset_is_rejected() {
        let buf = buf_with(&[0u8; 32]);
        assert_eq!(
            parse_chain(&buf, 34),
            Err(CapError::Misaligned { offset: 34 })
        );
    }

    #[test]
    fn sparse_area_containment_checks_both_ends() {
        let a = SparseArea {
            offset: 0x1000,
            size: 0x2000,
        };
        assert!(a.contains(0x1000, 0x2000));
        assert!(!a.contains(0x0, 0x1000));
        assert!(!a.contains(0x2000, 0x2000));
        assert!(!a.contains(u64::MAX, 2));
    }
}
