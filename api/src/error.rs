//! Errors that cross the plugin boundary.
use abi_stable::{std_types::RString, StableAbi};

/// What went wrong, as an open set of codes (new kinds may appear in minor versions).
#[repr(transparent)]
#[derive(StableAbi, Copy, Clone, PartialEq, Eq, Hash)]
pub struct ErrorKind(pub u32);

impl ErrorKind {
    pub const INVALID_ARGUMENT: Self = Self(1);
    pub const SHAPE: Self = Self(2);
    pub const UNKNOWN_OP: Self = Self(3);
    pub const NOT_FOUND: Self = Self(4);
    /// The other side does not implement this extension call (it is older): fall back.
    pub const UNSUPPORTED: Self = Self(5);
    pub const CONFIG: Self = Self(6);
    /// A panic was caught at the boundary and turned into this error.
    pub const PANIC: Self = Self(7);
    pub const INTERNAL: Self = Self(8);

    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "invalid argument",
            2 => "shape mismatch",
            3 => "unknown op",
            4 => "not found",
            5 => "unsupported",
            6 => "config",
            7 => "panic",
            8 => "internal",
            _ => "error",
        }
    }
}

impl std::fmt::Debug for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

#[repr(C)]
#[derive(StableAbi, Clone, PartialEq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: RString,
}

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: RString::from(message.into()),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::INVALID_ARGUMENT, message)
    }
    pub fn shape(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::SHAPE, message)
    }
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::UNSUPPORTED, message)
    }
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::CONFIG, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::INTERNAL, message)
    }
    pub fn is_unsupported(&self) -> bool {
        self.kind == ErrorKind::UNSUPPORTED
    }
    /// Prefixes the message with where it happened.
    pub fn context(mut self, what: impl std::fmt::Display) -> Self {
        self.message = RString::from(format!("{what}: {}", self.message));
        self
    }

    /// Turns a caught panic payload into an error.
    pub fn from_panic(payload: Box<dyn std::any::Any + Send>) -> Self {
        let msg = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "unknown panic payload".to_string()
        };
        Self::new(ErrorKind::PANIC, msg)
    }
}

impl std::fmt::Debug for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} error: {}", self.kind.name(), self.message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<serde_json::Error> for ApiError {
    fn from(e: serde_json::Error) -> Self {
        ApiError::config(e.to_string())
    }
}

/// Runs `f`, turning a panic into an [`ApiError`]: nothing may unwind across the FFI boundary.
pub fn guard<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => Err(ApiError::from_panic(payload)),
    }
}
