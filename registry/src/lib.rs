//! `peft-registry`: one table of plugins, fed by plugins linked into the binary (`inventory`)
//! and by shared libraries loaded from plugin folders (`abi_stable` layout checks over
//! `libloading`). Both paths produce the same [`Entry`].
use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use abi_stable::{
    library::{AbiHeaderRef, LibraryError, RootModule},
    std_types::RStr,
};
use peft_api::{
    ApiError, ApiVersion, ContextEncoderBox, Manifest, PeftModuleBox, PluginKind, PluginRoot_Ref,
    PrimingBox, API_VERSION, ROOT_SYMBOL_PREFIX,
};
use serde_json::Value;

/// Where a plugin came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Linked into the host binary.
    Static { crate_name: String },
    /// Loaded from a shared library.
    Dynamic { path: PathBuf },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Static { crate_name } => write!(f, "built in (crate {crate_name})"),
            Origin::Dynamic { path } => write!(f, "{}", path.display()),
        }
    }
}

#[derive(Clone)]
pub struct Entry {
    pub manifest: Manifest,
    pub origin: Origin,
    pub api_version: ApiVersion,
    root: PluginRoot_Ref,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("name", &self.manifest.name)
            .field("kind", &self.manifest.kind)
            .field("origin", &self.origin)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("plugin `{name}` is provided twice: by {first} and by {second}")]
    Duplicate {
        name: String,
        first: Origin,
        second: Origin,
    },
    #[error("{path}: cannot open shared library: {message}")]
    Open { path: PathBuf, message: String },
    #[error("{path}: not a peft-host plugin (it exports no `{ROOT_SYMBOL_PREFIX}*` symbol)")]
    NotAPlugin { path: PathBuf },
    #[error(
        "{path}: plugin `{symbol}` was built against peft-api {plugin_api}, this host has peft-api {host_api}: {reason}"
    )]
    Incompatible {
        path: PathBuf,
        symbol: String,
        plugin_api: String,
        host_api: String,
        reason: String,
    },
    #[error("{origin}: plugin `{symbol}` has an unreadable manifest: {message}")]
    Manifest {
        origin: Origin,
        symbol: String,
        message: String,
    },
    #[error("no plugin named `{name}`; known: {known}")]
    Unknown { name: String, known: String },
    #[error("plugin `{name}` is a {actual} plugin, not a {expected} plugin")]
    WrongKind {
        name: String,
        expected: PluginKind,
        actual: PluginKind,
    },
    #[error("plugin `{name}` ({origin}): {error}")]
    Plugin {
        name: String,
        origin: Origin,
        error: ApiError,
    },
}

/// The host's view of all plugins it can use.
#[derive(Default, Debug)]
pub struct Registry {
    entries: BTreeMap<String, Entry>,
}

/// The suffix of shared libraries on this platform.
pub const DYLIB_EXTENSION: &str = std::env::consts::DLL_EXTENSION;

/// Plugin folders: those given on the command line, then `PEFT_PLUGIN_PATH` (`:`-separated).
pub fn plugin_dirs(cli: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = cli.to_vec();
    if let Some(env) = std::env::var_os("PEFT_PLUGIN_PATH") {
        dirs.extend(std::env::split_paths(&env).filter(|p| !p.as_os_str().is_empty()));
    }
    dirs
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry holding every plugin linked into this binary.
    pub fn with_static_plugins() -> Result<Self, RegistryError> {
        let mut r = Self::new();
        r.add_static_plugins()?;
        Ok(r)
    }

    pub fn add_static_plugins(&mut self) -> Result<(), RegistryError> {
        for sp in peft_api::static_plugins() {
            let origin = Origin::Static {
                crate_name: sp.crate_name.to_string(),
            };
            let root = (sp.root)();
            self.insert(root, origin, sp.crate_name)?;
        }
        Ok(())
    }

    fn insert(
        &mut self,
        root: PluginRoot_Ref,
        origin: Origin,
        symbol: &str,
    ) -> Result<String, RegistryError> {
        let manifest_json = (root.manifest())();
        let manifest: Manifest =
            serde_json::from_str(manifest_json.as_str()).map_err(|e| RegistryError::Manifest {
                origin: origin.clone(),
                symbol: symbol.to_string(),
                message: e.to_string(),
            })?;
        let api_version =
            ApiVersion::parse(&manifest.api_version).ok_or_else(|| RegistryError::Manifest {
                origin: origin.clone(),
                symbol: symbol.to_string(),
                message: format!("api_version `{}` is not major.minor", manifest.api_version),
            })?;
        if !API_VERSION.accepts(api_version) {
            return Err(RegistryError::Incompatible {
                path: match &origin {
                    Origin::Dynamic { path } => path.clone(),
                    Origin::Static { crate_name } => PathBuf::from(crate_name),
                },
                symbol: symbol.to_string(),
                plugin_api: api_version.to_string(),
                host_api: API_VERSION.to_string(),
                reason: "major versions differ".into(),
            });
        }
        let name = manifest.name.clone();
        if let Some(existing) = self.entries.get(&name) {
            return Err(RegistryError::Duplicate {
                name,
                first: existing.origin.clone(),
                second: origin,
            });
        }
        self.entries.insert(
            name.clone(),
            Entry {
                manifest,
                origin,
                api_version,
                root,
            },
        );
        Ok(name)
    }

    /// Loads every shared library in `dir`. Each library that cannot be used is reported and
    /// skipped; the others load.
    pub fn load_dir(&mut self, dir: &Path) -> Vec<RegistryError> {
        let mut errors = Vec::new();
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == DYLIB_EXTENSION))
                .collect(),
            Err(e) => {
                errors.push(RegistryError::Open {
                    path: dir.to_path_buf(),
                    message: e.to_string(),
                });
                return errors;
            }
        };
        files.sort();
        for f in files {
            match self.load_file(&f) {
                Ok(names) => {
                    tracing::info!(path = %f.display(), plugins = ?names, "loaded plugin library")
                }
                Err(e) => {
                    tracing::warn!("{e}");
                    errors.push(e)
                }
            }
        }
        errors
    }

    /// Loads the plugins a shared library exports. The library stays mapped for the life of
    /// the process (plugins' code and vtables must outlive every object they created).
    pub fn load_file(&mut self, path: &Path) -> Result<Vec<String>, RegistryError> {
        let symbols = exported_plugin_symbols(path)?;
        if symbols.is_empty() {
            return Err(RegistryError::NotAPlugin {
                path: path.to_path_buf(),
            });
        }
        // SAFETY: loading a library runs its initialisers; plugin folders are trusted like the
        // host binary itself.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| RegistryError::Open {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut names = Vec::new();
        for symbol in symbols {
            let root = load_root(&lib, path, &symbol)?;
            names.push(self.insert(
                root,
                Origin::Dynamic {
                    path: path.to_path_buf(),
                },
                &symbol,
            )?);
        }
        std::mem::forget(lib);
        Ok(names)
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    pub fn get(&self, name: &str) -> Result<&Entry, RegistryError> {
        self.entries
            .get(name)
            .ok_or_else(|| RegistryError::Unknown {
                name: name.to_string(),
                known: self.entries.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }

    fn get_kind(&self, name: &str, kind: PluginKind) -> Result<&Entry, RegistryError> {
        let e = self.get(name)?;
        if e.manifest.kind != kind {
            return Err(RegistryError::WrongKind {
                name: name.into(),
                expected: kind,
                actual: e.manifest.kind,
            });
        }
        Ok(e)
    }

    pub fn create_module(
        &self,
        name: &str,
        config: &Value,
    ) -> Result<PeftModuleBox, RegistryError> {
        let e = self.get_kind(name, PluginKind::Module)?;
        let json = config.to_string();
        (e.root.create_module())(RStr::from(json.as_str()))
            .into_result()
            .map_err(|error| e.error(error))
    }

    pub fn create_context_encoder(
        &self,
        name: &str,
        config: &Value,
    ) -> Result<ContextEncoderBox, RegistryError> {
        let e = self.get_kind(name, PluginKind::ContextEncoder)?;
        let json = config.to_string();
        (e.root.create_context_encoder())(RStr::from(json.as_str()))
            .into_result()
            .map_err(|error| e.error(error))
    }

    pub fn create_priming(&self, name: &str, config: &Value) -> Result<PrimingBox, RegistryError> {
        let e = self.get_kind(name, PluginKind::Priming)?;
        let json = config.to_string();
        (e.root.create_priming())(RStr::from(json.as_str()))
            .into_result()
            .map_err(|error| e.error(error))
    }
}

impl Entry {
    fn error(&self, error: ApiError) -> RegistryError {
        RegistryError::Plugin {
            name: self.manifest.name.clone(),
            origin: self.origin.clone(),
            error,
        }
    }
}

/// Names of the plugin root symbols a library exports, read from its symbol table without
/// running any of its code.
fn exported_plugin_symbols(path: &Path) -> Result<Vec<String>, RegistryError> {
    use object::{Object, ObjectSymbol};
    let bytes = std::fs::read(path).map_err(|e| RegistryError::Open {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let file = object::File::parse(&*bytes).map_err(|e| RegistryError::Open {
        path: path.to_path_buf(),
        message: format!("not a shared library this platform can read ({e})"),
    })?;
    let mut out: Vec<String> = file
        .exports()
        .map_err(|e| RegistryError::Open {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?
        .iter()
        .filter_map(|s| std::str::from_utf8(s.name()).ok())
        .map(|s| s.trim_start_matches('_').to_string())
        .filter(|s| s.starts_with(ROOT_SYMBOL_PREFIX))
        .collect();
    if out.is_empty() {
        // Some formats list exports only in the dynamic symbol table.
        out = file
            .dynamic_symbols()
            .filter(|s| s.is_definition())
            .filter_map(|s| s.name().ok().map(str::to_string))
            .filter(|s| s.starts_with(ROOT_SYMBOL_PREFIX))
            .collect();
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn load_root(
    lib: &libloading::Library,
    path: &Path,
    symbol: &str,
) -> Result<PluginRoot_Ref, RegistryError> {
    let incompatible = |plugin_api: String, reason: String| RegistryError::Incompatible {
        path: path.to_path_buf(),
        symbol: symbol.to_string(),
        plugin_api,
        host_api: format!(
            "{} (peft-api {})",
            API_VERSION,
            peft_api::version::CRATE_VERSION
        ),
        reason,
    };
    let mut cname = symbol.as_bytes().to_vec();
    cname.push(0);
    // SAFETY: symbols with our prefix are `LibHeader` statics exported by `export_plugin!`;
    // the header's own checks run before anything else of the library is used.
    let header: AbiHeaderRef = unsafe {
        *lib.get::<AbiHeaderRef>(&cname)
            .map_err(|e| RegistryError::Open {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?
    };
    let header = header
        .upgrade()
        .map_err(|e| incompatible("?".into(), summarise(&e)))?;
    let plugin_api = header.version_strings().version.to_string();
    header
        .init_root_module::<PluginRoot_Ref>()
        .map_err(|e| incompatible(plugin_api, summarise(&e)))
}

/// abi_stable's layout reports run to hundreds of lines; keep the first error and a count.
fn summarise(e: &LibraryError) -> String {
    let full = e.to_string();
    tracing::debug!(report = %full, "full abi_stable report");
    let lines: Vec<&str> = full
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let kind = match e {
        LibraryError::IncompatibleVersionNumber { .. } => "incompatible version number",
        LibraryError::AbiInstability(_) => "the interface layout differs",
        LibraryError::InvalidAbiHeader(_) => "built with an incompatible abi_stable",
        LibraryError::InvalidCAbi { .. } => "C ABI mismatch",
        _ => "cannot use the library",
    };
    let interesting: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| {
            l.starts_with("Error")
                || l.contains("mismatch")
                || l.contains("Mismatch")
                || l.contains("expected")
        })
        .take(3)
        .collect();
    let shown = if interesting.is_empty() {
        lines.iter().take(2).copied().collect()
    } else {
        interesting
    };
    format!(
        "{kind}: {}{}",
        shown.join(" | "),
        if lines.len() > shown.len() {
            format!(
                " ({} more lines with RUST_LOG=peft_registry=debug)",
                lines.len() - shown.len()
            )
        } else {
            String::new()
        }
    )
}

/// The module name of a root module type, for diagnostics.
pub fn root_module_name() -> &'static str {
    <PluginRoot_Ref as RootModule>::NAME
}
