//! The plugin SDK: what every module method would otherwise write again. A method is its config
//! type (a [`MethodConfig`]: name, description, parameter groups; the manifest and its JSON
//! Schema are derived from the type) and its maths (a [`crate::Module`]); [`module_plugin!`]
//! joins them and exports the plugin. Shared serde defaults, the "no site matched" error and
//! the per-call lookups are here too. Plugin-side code, compiled into each plugin: not part
//! of the ABI, so it grows freely (compare HF peft's `tuners/<method>/{config,layer,model}.py`).
use std::fmt::Display;

mod services;

pub use services::{batch_size, Services, Vector};

use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use crate::{
    blocks::Stack, ApiError, AttachPlan, BackboneInfo, Manifest, PluginKind, Result, SiteCall,
};

/// A module method's config type, and what the plugin's manifest says about the method.
pub trait MethodConfig: DeserializeOwned + JsonSchema + Sized {
    /// The plugin's name, as configs and errors name it (`houlsby`).
    const NAME: &'static str;
    /// One line: what the method does, and the paper.
    const DESCRIPTION: &'static str;
    /// Parameter groups the method creates by default.
    const GROUPS: &'static [&'static str];
    /// What the plugin provides: a module unless it says otherwise (priming algorithms,
    /// context encoders).
    const KIND: PluginKind = PluginKind::Module;

    /// Checks what the types cannot say (a rank of at least 1, a probability below 1).
    fn validate(&self) -> Result<()> {
        Ok(())
    }

    /// Parses and validates a config section; `null` means every default. Errors name the
    /// plugin.
    fn parse(v: &serde_json::Value) -> Result<Self> {
        let c: Self = crate::blocks::parse_config(Self::NAME, v)?;
        c.validate()?;
        Ok(c)
    }

    /// Every field at its default (the config `{}`).
    fn defaults() -> Result<Self> {
        Self::parse(&serde_json::Value::Null)
    }

    /// The manifest of the plugin whose config this is: the JSON Schema is derived from the
    /// type. `version` is the plugin crate's (`env!("CARGO_PKG_VERSION")`).
    fn manifest(version: &str) -> Manifest {
        Manifest {
            name: Self::NAME.into(),
            version: version.into(),
            kind: Self::KIND,
            api_version: String::new(),
            description: Self::DESCRIPTION.into(),
            config_schema: serde_json::to_value(schemars::schema_for!(Self))
                .unwrap_or(serde_json::Value::Null),
            groups: Self::GROUPS.iter().map(|g| g.to_string()).collect(),
        }
    }
}

/// Serde defaults shared by the methods' configs (`#[serde(default = "peft_api::sdk::yes")]`).
pub fn yes() -> bool {
    true
}

/// The parameter group of adapter-style weights.
pub fn adapter_group() -> String {
    "adapter".into()
}

/// `plan`, or the error that says no `what` (`site`) matched `selection` (the config's
/// selecting fields, e.g. [`sublayers`]) on `backbone`.
pub fn nonempty(
    plugin: &str,
    plan: AttachPlan,
    what: &str,
    selection: impl Display,
    backbone: &BackboneInfo,
) -> Result<AttachPlan> {
    if plan.attachments.is_empty() {
        return Err(ApiError::config(format!(
            "{plugin}: no {what} matched ({selection}) on backbone `{}`",
            backbone.name
        )));
    }
    Ok(plan)
}

/// The selecting fields of a sublayer method (see [`crate::blocks::sublayer_sites`]), for
/// [`nonempty`]'s message.
pub fn sublayers(attention: bool, ffn: bool, layers: &Option<Vec<usize>>, stack: Stack) -> String {
    format!("attention={attention}, ffn={ffn}, layers={layers:?}, stack={stack:?}")
}

/// The state a module keeps for the attachment a site call names.
pub fn attachment<'a, T>(
    plugin: &str,
    per_attachment: &'a [T],
    site: &SiteCall<'_>,
) -> Result<&'a T> {
    per_attachment.get(site.attachment as usize).ok_or_else(|| {
        ApiError::invalid(format!(
            "{plugin}: unknown attachment {} at site `{}`",
            site.attachment, site.site
        ))
    })
}

/// Input `i` of a site call, or the error saying what the site kind passes.
pub fn input<T>(plugin: &str, inputs: Vec<T>, i: usize, passes: &str) -> Result<T> {
    inputs
        .into_iter()
        .nth(i)
        .ok_or_else(|| ApiError::invalid(format!("{plugin}: a {passes}")))
}

/// Declares a module plugin from its config type and a constructor, and exports it:
///
/// ```ignore
/// peft_api::module_plugin!(houlsby, HoulsbyPlugin, HoulsbyConfig => Houlsby::new);
/// ```
#[macro_export]
macro_rules! module_plugin {
    ($name:ident, $plugin:ident, $config:ty => $new:expr) => {
        /// The plugin: manifest from the config type, one module per config section.
        pub struct $plugin;

        impl $crate::Plugin for $plugin {
            fn manifest() -> $crate::Manifest {
                <$config as $crate::sdk::MethodConfig>::manifest(env!("CARGO_PKG_VERSION"))
            }

            fn create_module(
                config: &$crate::__private::serde_json::Value,
            ) -> $crate::Result<Box<dyn $crate::Module>> {
                let config = <$config as $crate::sdk::MethodConfig>::parse(config)?;
                Ok(Box::new(($new)(config)))
            }
        }

        $crate::export_plugin!($name, $plugin);
    };
}

/// Declares a priming plugin from its config type (its `KIND` is `Priming`) and a
/// constructor, and exports it:
///
/// ```ignore
/// peft_api::priming_plugin!(reptile, ReptilePlugin, ReptileConfig => |cfg| Reptile { cfg });
/// ```
#[macro_export]
macro_rules! priming_plugin {
    ($name:ident, $plugin:ident, $config:ty => $new:expr) => {
        /// The plugin: manifest from the config type, one algorithm per config section.
        pub struct $plugin;

        impl $crate::Plugin for $plugin {
            fn manifest() -> $crate::Manifest {
                <$config as $crate::sdk::MethodConfig>::manifest(env!("CARGO_PKG_VERSION"))
            }

            fn create_priming(
                config: &$crate::__private::serde_json::Value,
            ) -> $crate::Result<Box<dyn $crate::Priming>> {
                let config = <$config as $crate::sdk::MethodConfig>::parse(config)?;
                Ok(Box::new(($new)(config)))
            }
        }

        $crate::export_plugin!($name, $plugin);
    };
}
