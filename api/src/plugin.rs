//! The plugin root module, the safe traits plugin authors implement, and [`export_plugin!`],
//! which registers a plugin both statically (inventory) and as a loadable library.
use abi_stable::{
    library::RootModule,
    package_version_strings,
    sabi_types::VersionStrings,
    std_types::{RBox, RResult, RStr, RString, RVec},
    StableAbi,
};
use serde_json::Value;

use crate::{
    abi::*,
    error::{guard, ApiError, Result},
    info::{AttachPlan, BackboneInfo, Manifest},
    tensor::{Ctx, Tensor},
};

/// What every plugin library exports. Frozen for API major version 1.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginRoot_Ref)))]
#[sabi(missing_field(panic))]
pub struct PluginRoot {
    /// JSON [`Manifest`].
    pub manifest: extern "C" fn() -> RString,
    pub create_module: extern "C" fn(config: RStr<'_>) -> RResult<PeftModuleBox, ApiError>,
    pub create_context_encoder:
        extern "C" fn(config: RStr<'_>) -> RResult<ContextEncoderBox, ApiError>,
    pub create_priming: extern "C" fn(config: RStr<'_>) -> RResult<PrimingBox, ApiError>,
    #[sabi(last_prefix_field)]
    pub create_backbone: extern "C" fn(config: RStr<'_>) -> RResult<BackboneBox, ApiError>,
}

impl RootModule for PluginRoot_Ref {
    abi_stable::declare_root_module_statics! {PluginRoot_Ref}
    const BASE_NAME: &'static str = "peft_plugin";
    const NAME: &'static str = "peft_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// Symbol prefix under which a library exports a plugin's `LibHeader`; the suffix is the
/// plugin's name, so one process may link many plugins statically without clashes.
pub const ROOT_SYMBOL_PREFIX: &str = "peft_plugin_root__";

/// A plugin registered at compile time (collected with `inventory`).
pub struct StaticPlugin {
    pub root: fn() -> PluginRoot_Ref,
    /// The crate that registered it, for error messages.
    pub crate_name: &'static str,
}

inventory::collect!(StaticPlugin);

/// Every statically registered plugin of this process.
pub fn static_plugins() -> impl Iterator<Item = &'static StaticPlugin> {
    inventory::iter::<StaticPlugin>.into_iter()
}

// ---------------------------------------------------------------------------------------------
// Safe traits for plugin authors.

/// A PEFT module, as a plugin author writes it.
pub trait Module: 'static {
    /// Creates parameters with [`Ctx::create_param`] and says where to attach.
    fn attach(&mut self, ctx: &Ctx<'_>, backbone: &BackboneInfo) -> Result<AttachPlan>;

    /// Computes at one site; see [`SiteKind`](crate::SiteKind) for the inputs of each kind.
    fn apply<'c>(
        &self,
        ctx: &'c Ctx<'_>,
        site: &SiteCall<'_>,
        inputs: Vec<Tensor<'c>>,
    ) -> Result<Vec<Tensor<'c>>>;

    /// Folds the module into the backbone weights (LoRA). Since API 1.1.
    fn merge(&mut self, _ctx: &Ctx<'_>) -> Result<()> {
        Err(ApiError::unsupported("merge"))
    }

    /// Undoes [`Module::merge`]. Since API 1.1.
    fn unmerge(&mut self, _ctx: &Ctx<'_>) -> Result<()> {
        Err(ApiError::unsupported("unmerge"))
    }

    /// Other named calls.
    fn call(&mut self, _ctx: &Ctx<'_>, name: &str, _args: Value) -> Result<Value> {
        Err(ApiError::unsupported(name))
    }
}

/// A context encoder, as a plugin author writes it.
pub trait ContextEncoderImpl: 'static {
    fn attach(&mut self, ctx: &Ctx<'_>, backbone: &BackboneInfo) -> Result<AttachPlan>;
    fn encode<'c>(&self, ctx: &'c Ctx<'_>, inputs: Vec<Tensor<'c>>, spec: &Value) -> Result<()>;
    fn call(&mut self, _ctx: &Ctx<'_>, name: &str, _args: Value) -> Result<Value> {
        Err(ApiError::unsupported(name))
    }
}

/// The host's training services, as a priming algorithm sees them.
pub struct Trainer<'a> {
    raw: TrainerRef<'a>,
}

impl<'a> Trainer<'a> {
    pub fn new(raw: TrainerRef<'a>) -> Self {
        Trainer { raw }
    }

    /// Runs a service by name (see `docs/architecture.md` for the list).
    pub fn service<'c>(
        &self,
        ctx: &'c Ctx<'_>,
        name: &str,
        args: &Value,
        inputs: Vec<Tensor<'c>>,
    ) -> Result<(Vec<Tensor<'c>>, Value)> {
        let mut handles = RVec::with_capacity(inputs.len());
        for t in inputs {
            handles.push(t.into_handle()?);
        }
        let json = serde_json::to_string(args)?;
        let out = self
            .raw
            .service(
                ctx.graph().sabi_reborrow(),
                RStr::from(name),
                RStr::from(json.as_str()),
                handles,
            )
            .into_result()
            .map_err(|e| e.context(format_args!("trainer service `{name}`")))?;
        let tensors = ctx.wrap_all(out.tensors);
        let value = if out.values.text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&out.values.text)?
        };
        Ok((tensors, value))
    }
}

/// A priming algorithm, as a plugin author writes it.
pub trait Priming: 'static {
    fn run(&mut self, ctx: &Ctx<'_>, trainer: &Trainer<'_>) -> Result<Value>;
    fn call(&mut self, name: &str, _args: Value) -> Result<Value> {
        Err(ApiError::unsupported(name))
    }
}

/// A plugin: its manifest and factories. Implement the factory of your manifest's kind.
pub trait Plugin {
    fn manifest() -> Manifest;

    fn create_module(_config: &Value) -> Result<Box<dyn Module>> {
        Err(ApiError::unsupported(
            "this plugin does not provide a PEFT module",
        ))
    }
    fn create_context_encoder(_config: &Value) -> Result<Box<dyn ContextEncoderImpl>> {
        Err(ApiError::unsupported(
            "this plugin does not provide a context encoder",
        ))
    }
    fn create_priming(_config: &Value) -> Result<Box<dyn Priming>> {
        Err(ApiError::unsupported(
            "this plugin does not provide a priming algorithm",
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Adapters from the safe traits to the frozen ABI.

fn parse_json(s: RStr<'_>) -> Result<Value> {
    if s.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(s.as_str()).map_err(|e| ApiError::config(format!("invalid JSON: {e}")))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<RString> {
    serde_json::to_string(v)
        .map(RString::from)
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// Releases handles this side received but did not pass on (error paths).
fn collect_handles(out: Vec<Tensor<'_>>) -> Result<RVec<TensorHandle>> {
    let mut handles = RVec::with_capacity(out.len());
    for t in out {
        handles.push(t.into_handle()?);
    }
    Ok(handles)
}

pub struct ModuleAdapter(pub Box<dyn Module>);

impl PeftModuleAbi for ModuleAdapter {
    fn attach(
        &mut self,
        graph: GraphRef<'_>,
        backbone_json: RStr<'_>,
    ) -> RResult<RString, ApiError> {
        guard(|| {
            let info: BackboneInfo = serde_json::from_str(backbone_json.as_str())?;
            let ctx = Ctx::new(graph);
            to_json(&self.0.attach(&ctx, &info)?)
        })
        .into()
    }

    fn apply(
        &self,
        graph: GraphRef<'_>,
        site: &SiteCall<'_>,
        inputs: RVec<TensorHandle>,
    ) -> RResult<RVec<TensorHandle>, ApiError> {
        guard(|| {
            let ctx = Ctx::new(graph);
            let tensors = ctx.wrap_all(inputs);
            let out = self.0.apply(&ctx, site, tensors)?;
            collect_handles(out)
        })
        .into()
    }

    fn call(
        &mut self,
        graph: GraphRef<'_>,
        name: RStr<'_>,
        json: RStr<'_>,
    ) -> RResult<RString, ApiError> {
        guard(|| {
            let ctx = Ctx::new(graph);
            match name.as_str() {
                "merge" => self.0.merge(&ctx).map(|_| RString::from("null")),
                "unmerge" => self.0.unmerge(&ctx).map(|_| RString::from("null")),
                other => to_json(&self.0.call(&ctx, other, parse_json(json)?)?),
            }
        })
        .into()
    }
}

pub struct ContextEncoderAdapter(pub Box<dyn ContextEncoderImpl>);

impl ContextEncoderAbi for ContextEncoderAdapter {
    fn attach(
        &mut self,
        graph: GraphRef<'_>,
        backbone_json: RStr<'_>,
    ) -> RResult<RString, ApiError> {
        guard(|| {
            let info: BackboneInfo = serde_json::from_str(backbone_json.as_str())?;
            let ctx = Ctx::new(graph);
            to_json(&self.0.attach(&ctx, &info)?)
        })
        .into()
    }

    fn encode(
        &self,
        graph: GraphRef<'_>,
        inputs: RVec<TensorHandle>,
        spec_json: RStr<'_>,
    ) -> RResult<(), ApiError> {
        guard(|| {
            let ctx = Ctx::new(graph);
            let tensors = ctx.wrap_all(inputs);
            self.0.encode(&ctx, tensors, &parse_json(spec_json)?)
        })
        .into()
    }

    fn call(
        &mut self,
        graph: GraphRef<'_>,
        name: RStr<'_>,
        json: RStr<'_>,
    ) -> RResult<RString, ApiError> {
        guard(|| {
            let ctx = Ctx::new(graph);
            to_json(&self.0.call(&ctx, name.as_str(), parse_json(json)?)?)
        })
        .into()
    }
}

pub struct PrimingAdapter(pub Box<dyn Priming>);

impl PrimingAbi for PrimingAdapter {
    fn run(&mut self, graph: GraphRef<'_>, trainer: TrainerRef<'_>) -> RResult<RString, ApiError> {
        guard(|| {
            let ctx = Ctx::new(graph);
            let trainer = Trainer::new(trainer);
            to_json(&self.0.run(&ctx, &trainer)?)
        })
        .into()
    }

    fn call(&mut self, name: RStr<'_>, json: RStr<'_>) -> RResult<RString, ApiError> {
        guard(|| to_json(&self.0.call(name.as_str(), parse_json(json)?)?)).into()
    }
}

/// Glue used by [`export_plugin!`]; not for direct use.
#[doc(hidden)]
pub mod glue {
    use super::*;
    use abi_stable::sabi_trait::TD_Opaque;

    pub fn manifest<P: Plugin>() -> RString {
        let mut m = P::manifest();
        m.api_version = crate::API_VERSION.to_string();
        RString::from(serde_json::to_string(&m).expect("manifest serialises"))
    }

    pub fn create_module<P: Plugin>(config: RStr<'_>) -> RResult<PeftModuleBox, ApiError> {
        guard(|| {
            let m = P::create_module(&parse_json(config)?)?;
            Ok(PeftModuleAbi_TO::from_value(ModuleAdapter(m), TD_Opaque))
        })
        .into()
    }

    pub fn create_context_encoder<P: Plugin>(
        config: RStr<'_>,
    ) -> RResult<ContextEncoderBox, ApiError> {
        guard(|| {
            let m = P::create_context_encoder(&parse_json(config)?)?;
            Ok(ContextEncoderAbi_TO::from_value(
                ContextEncoderAdapter(m),
                TD_Opaque,
            ))
        })
        .into()
    }

    pub fn create_priming<P: Plugin>(config: RStr<'_>) -> RResult<PrimingBox, ApiError> {
        guard(|| {
            let m = P::create_priming(&parse_json(config)?)?;
            Ok(PrimingAbi_TO::from_value(PrimingAdapter(m), TD_Opaque))
        })
        .into()
    }

    pub fn create_backbone(_config: RStr<'_>) -> RResult<BackboneBox, ApiError> {
        RResult::RErr(ApiError::unsupported(
            "this plugin does not provide a backbone",
        ))
    }

    pub fn _unused(_: RBox<()>) {}
}

/// Registers a [`Plugin`] statically (inventory) and exports it from a `cdylib` under the
/// symbol `peft_plugin_root__<name>`, where `<name>` is the identifier given here.
///
/// ```ignore
/// peft_api::export_plugin!(houlsby, HoulsbyPlugin);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($name:ident, $plugin:ty) => {
        #[doc(hidden)]
        pub mod __peft_plugin_export {
            use super::*;
            use $crate::__private::abi_stable::{
                library::{CheckTypeLayout, LibHeader, RootModuleResult},
                prefix_type::{PrefixTypeTrait, WithMetadata},
                std_types::{RResult, RStr, RString},
            };
            use $crate::{glue, ApiError, BackboneBox, ContextEncoderBox, PeftModuleBox, PluginRoot, PluginRoot_Ref, PrimingBox};

            extern "C" fn manifest() -> RString {
                $crate::__private::abi_stable::extern_fn_panic_handling! { glue::manifest::<$plugin>() }
            }
            extern "C" fn create_module(c: RStr<'_>) -> RResult<PeftModuleBox, ApiError> {
                glue::create_module::<$plugin>(c)
            }
            extern "C" fn create_context_encoder(c: RStr<'_>) -> RResult<ContextEncoderBox, ApiError> {
                glue::create_context_encoder::<$plugin>(c)
            }
            extern "C" fn create_priming(c: RStr<'_>) -> RResult<PrimingBox, ApiError> {
                glue::create_priming::<$plugin>(c)
            }
            extern "C" fn create_backbone(c: RStr<'_>) -> RResult<BackboneBox, ApiError> {
                glue::create_backbone(c)
            }

            const ROOT_VALUE: &WithMetadata<PluginRoot> = &WithMetadata::new(PluginRoot {
                manifest,
                create_module,
                create_context_encoder,
                create_priming,
                create_backbone,
            });

            pub fn root() -> PluginRoot_Ref {
                PluginRoot_Ref(ROOT_VALUE.static_as_prefix())
            }

            extern "C" fn erased_root() -> RootModuleResult {
                $crate::__private::abi_stable::library::__call_root_module_loader(root)
            }

            #[export_name = concat!("peft_plugin_root__", stringify!($name))]
            // SAFETY: `erased_root` loads exactly the `PluginRoot_Ref` named as the type
            // argument (abi_stable's contract for `from_constructor`), and its layout is checked
            // against the host's when the registry opens the header.
            pub static HEADER: LibHeader = unsafe {
                LibHeader::from_constructor::<PluginRoot_Ref>(erased_root, CheckTypeLayout::Yes)
            };

            $crate::__private::inventory::submit! {
                $crate::StaticPlugin { root, crate_name: env!("CARGO_PKG_NAME") }
            }

            #[allow(dead_code)]
            fn _assert_prefix_trait() where PluginRoot: PrefixTypeTrait {}
        }
    };
}
