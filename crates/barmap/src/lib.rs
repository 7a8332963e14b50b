//! barmap
