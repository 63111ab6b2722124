//! The API version a plugin was built against, and compatibility between versions.
use abi_stable::StableAbi;

/// Major changes break the ABI; minor versions only add opcodes and extension calls.
#[repr(C)]
#[derive(StableAbi, Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApiVersion {
    pub major: u32,
    pub minor: u32,
}

/// The version of this copy of `peft-api` (kept equal to the crate version's major.minor).
pub const API_VERSION: ApiVersion = ApiVersion { major: 1, minor: 3 };

impl ApiVersion {
    /// A plugin built against `plugin` loads into a host of version `self` when the majors agree;
    /// a newer minor on either side is fine (unknown ops/calls are reported, not undefined).
    pub fn accepts(self, plugin: ApiVersion) -> bool {
        self.major == plugin.major
    }

    pub fn parse(s: &str) -> Option<ApiVersion> {
        let mut it = s.trim().split('.');
        let major = it.next()?.parse().ok()?;
        let minor = it.next().unwrap_or("0").parse().ok()?;
        Some(ApiVersion { major, minor })
    }
}

impl std::fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The full version of this copy of the `peft-api` crate.
pub const CRATE_VERSION: &str = env!("CARGO_PKG_VERSION");
