//! Which paths the front end answers: the VFIO device nodes it serves, and
//! the sysfs and `/dev` paths it redirects into the testbed. Absolute paths
//! only (programs name these paths absolutely).

use std::path::{Path, PathBuf};

/// A VFIO device node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    /// `/dev/vfio/vfio`: a legacy container.
    Container,
    /// `/dev/iommu`: an iommufd.
    Iommufd,
    /// `/dev/vfio/N`: a group.
    Group(u32),
    /// `/dev/vfio/devices/vfioN`: a device cdev.
    Cdev(u32),
}

/// What a path is to the front end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A node to serve on open.
    Node(Node),
    /// A file of the testbed to use instead (sysfs, or the node's
    /// placeholder for stat/access).
    Redirect(PathBuf),
    /// Not ours.
    Pass,
}

/// Prefixes of the sysfs and /dev trees that the testbed replaces.
const REDIRECTED: [&str; 10] = [
    "/sys/bus/pci/devices",
    "/sys/bus/pci/drivers/vfio-pci",
    "/sys/kernel/iommu_groups",
    "/sys/module/vfio",
    "/sys/module/vfio_pci",
    "/sys/module/vfio_pci_core",
    "/sys/module/vfio_iommu_type1",
    "/sys/module/iommufd",
    // The host IOMMU's debugfs knows nothing of emulated devices.
    "/sys/kernel/debug/iommu",
    "/dev/vfio",
];

fn under(path: &str, prefix: &str) -> bool {
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|r| r.starts_with('/'))
}

/// Classifies `path` for `open` (`node` true) or for a lookup such as
/// stat, readlink or opendir (`node` false: nodes are redirected to their
/// placeholders).
pub fn route(path: &str, testbed: &Path, node: bool) -> Route {
    if !path.starts_with('/') {
        return Route::Pass;
    }
    let mut clean = String::with_capacity(path.len());
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        clean.push('/');
        clean.push_str(part);
    }
    if node {
        if clean == "/dev/vfio/vfio" {
            return Route::Node(Node::Container);
        }
        if clean == "/dev/iommu" {
            return Route::Node(Node::Iommufd);
        }
        if let Some(n) = clean.strip_prefix("/dev/vfio/devices/vfio") {
            if let Ok(n) = n.parse() {
                return Route::Node(Node::Cdev(n));
            }
        }
        if let Some(n) = clean.strip_prefix("/dev/vfio/") {
            if let Ok(n) = n.parse() {
                return Route::Node(Node::Group(n));
            }
        }
    }
    if clean == "/dev/iommu" || REDIRECTED.iter().any(|p| under(&clean, p)) {
        return Route::Redirect(testbed.join(&clean[1..]));
    }
    Route::Pass
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_redirects_and_the_rest() {
        let tb = Path::new("/tb");
        assert_eq!(
            route("/dev/vfio/vfio", tb, true),
            Route::Node(Node::Container)
        );
        assert_eq!(route("/dev//iommu", tb, true), Route::Node(Node::Iommufd));
        assert_eq!(
            route("/dev/vfio/42", tb, true),
            Route::Node(Node::Group(42))
        );
        assert_eq!(
            route("/dev/vfio/devices/vfio3", tb, true),
            Route::Node(Node::Cdev(3))
        );
        assert_eq!(
            route("/dev/vfio/42", tb, false),
            Route::Redirect("/tb/dev/vfio/42".into())
        );
        assert_eq!(
            route("/sys/bus/pci/devices/0000:ba:00.0/vendor", tb, true),
            Route::Redirect("/tb/sys/bus/pci/devices/0000:ba:00.0/vendor".into())
        );
        assert_eq!(
            route("/sys/module/vfio_pci", tb, false),
            Route::Redirect("/tb/sys/module/vfio_pci".into())
        );
        assert_eq!(route("/sys/bus/pci/devicesX", tb, false), Route::Pass);
        assert_eq!(route("/etc/passwd", tb, true), Route::Pass);
        assert_eq!(route("relative/dev/iommu", tb, true), Route::Pass);
    }
}
